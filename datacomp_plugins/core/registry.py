"""Name -> lazily imported object, with an install hint: one helper for scores, engines and optional extras.

A :class:`Registry` knows names before it imports anything: its built-ins as ``"module:attribute"``
strings, names added with :meth:`Registry.register`, and the entry points of installed packages (read from
their metadata, not imported). An object is imported when it is first asked for, so ``--help`` or
``--version`` load no plugin. A plugin that fails to import or to pass the registry's check is left out
with one warning; a built-in that fails is a bug and raises. What callers see is a read-only view.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from importlib import metadata
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from datacomp_plugins.core.errors import PluginError

T = TypeVar("T")

# check(name, object, accepted so far) -> the object to offer (raise to refuse it)
Check = Callable[[str, Any, Mapping[str, Any]], T]


def import_target(target: str) -> Any:
    """``"module:attribute"`` (or a bare module name) imported now."""
    module, _, attribute = target.partition(":")
    found = importlib.import_module(module)
    for part in filter(None, attribute.split(".")):
        found = getattr(found, part)
    return found


class Registry(Generic[T]):
    """Named, lazily imported objects of one kind (``"score"``, ``"engine"``, ``"extra"``)."""

    def __init__(self, kind: str, builtin: Mapping[str, str], group: str | None = None,
                 check: Check | None = None, hints: Mapping[str, str] | None = None,
                 check_needs_all: bool = False) -> None:
        """``check`` vets each object against those accepted before it; ``check_needs_all``: that comparison
        matters (setting names must not collide), so asking for one object loads them all, in order."""
        self.kind = kind
        self._check_needs_all = check_needs_all
        self.group = group
        self._builtin = dict(builtin)
        self._added: dict[str, str | Any] = {}
        self._check = check
        self._hints = dict(hints or {})
        self._objects: dict[str, T] = {}
        self._refused: dict[str, str] = {}
        self._points: dict[str, metadata.EntryPoint] | None = None
        self._all: Mapping[str, T] | None = None

    # --- names, without importing ---------------------------------------------------------------------------
    def _entry_points(self) -> dict[str, metadata.EntryPoint]:
        if self._points is None:
            points = {}
            if self.group is not None:
                for point in sorted(metadata.entry_points(group=self.group), key=lambda p: p.name):
                    if point.name in self._builtin or point.name in points:
                        _warn(f"{self.kind} {point.name!r} of {point.value} ignored: the name is taken")
                        continue
                    points[point.name] = point
            self._points = points
        return self._points

    def known(self) -> Mapping[str, str]:
        """Every name and where it comes from (``module:attribute``), read-only; nothing is imported."""
        out = dict(self._builtin)
        out.update({name: _describe(target) for name, target in self._added.items()})  # clobber=True wins
        out.update({name: point.value for name, point in self._entry_points().items() if name not in out})
        return MappingProxyType(out)

    def names(self) -> tuple[str, ...]:
        """Every name offered: built-ins first, then added ones, then installed packages' (sorted)."""
        return tuple(name for name in self.known() if name not in self._refused)

    def origin(self, name: str) -> str:
        """Where ``name`` comes from, for messages: its entry point, or the built-in module."""
        if name in self._added:
            return f"registered {_describe(self._added[name])}"
        if name in self._builtin:
            return f"built-in {self._builtin[name]}"
        point = self._entry_points().get(name)
        if point is not None:
            return f"entry point {name} = {point.value} ({self.group})"
        return f"unknown {self.kind} {name}"

    def hint(self, name: str) -> str | None:
        return self._hints.get(name)

    # --- registration -----------------------------------------------------------------------------------------
    def register(self, name: str, target: str | Any, hint: str | None = None, clobber: bool = False) -> None:
        """Offer ``target`` (an object, or ``"module:attribute"`` imported when asked for) as ``name``."""
        if not clobber and name in self.known():
            raise PluginError(f"{self.kind} {name!r}: the name is taken ({self.origin(name)})")
        self._added[name] = target
        if hint:
            self._hints[name] = hint
        self._objects.pop(name, None)
        self._refused.pop(name, None)
        self._all = None

    # --- objects ----------------------------------------------------------------------------------------------
    def _import(self, name: str) -> Any:
        if name in self._added:
            target = self._added[name]
            return import_target(target) if isinstance(target, str) else target
        if name in self._builtin:
            return import_target(self._builtin[name])
        return self._entry_points()[name].load()

    def _accept(self, name: str, accepted: Mapping[str, T]) -> T | None:
        """Import and check ``name``; a plugin that fails is refused with one warning (a built-in raises)."""
        if name in self._objects:
            return self._objects[name]
        if name in self._refused:
            return None
        try:
            found = self._import(name)
            if self._check is not None:
                found = self._check(name, found, accepted)
        except ImportError as exc:
            hint = self._hints.get(name)
            if hint is not None:  # an optional extra that is not installed: not a broken plugin
                raise PluginError(f"{self.kind} {name}: {hint}") from None
            if name in self._builtin:
                raise
            return self._refuse(name, f"{exc}")
        except Exception as exc:  # a broken plugin must not take the built-ins down with it
            if name in self._builtin:
                raise
            return self._refuse(name, f"{exc}")
        self._objects[name] = found
        return found

    def _refuse(self, name: str, reason: str) -> None:
        self._refused[name] = reason
        _warn(f"{self.kind} {name!r} ({self.known().get(name, '?')}) not offered: {reason}")
        return None

    def get(self, name: str, flag: str | None = None) -> T:
        """The object called ``name``, imported now; a PluginError naming the choices if unknown or broken."""
        label = f"{flag} {name}" if flag else f"{self.kind} {name!r}"
        if name not in self.known():
            raise PluginError(f"{label}: unknown; expected one of {list(self.names())}")
        if self._check_needs_all:
            found = self.load_all().get(name)
        else:
            found = self._accept(name, MappingProxyType(dict(self._objects)))
        if found is None:
            raise PluginError(f"{label}: cannot load {self.known()[name]} ({self._refused.get(name)})")
        return found

    def load_all(self) -> Mapping[str, T]:
        """Every offered object, imported (in :meth:`names` order), as a read-only mapping."""
        if self._all is None:
            accepted: dict[str, T] = {}
            for name in self.known():
                found = self._accept(name, MappingProxyType(accepted))
                if found is not None:
                    accepted[name] = found
            self._all = MappingProxyType(accepted)
        return self._all

    def reset(self) -> None:
        """Forget what was imported and read (tests that install entry points mid-process)."""
        self._objects.clear()
        self._refused.clear()
        self._points = None
        self._all = None


def _describe(target: Any) -> str:
    if isinstance(target, str):
        return target
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', type(target).__name__)}"


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# Optional dependencies: each extra of pyproject.toml, the module that says it is installed, and its hint.
_EXTRA_MODULES = {"ray": "ray", "report": "matplotlib", "inspect": "PIL", "embed": "open_clip",
                  "minicomp": "open_clip"}
EXTRAS: Registry[Any] = Registry(
    "extra", _EXTRA_MODULES,
    hints={name: f"needs the '{name}' extra: pip install 'datacomp-plugins[{name}]'" for name in _EXTRA_MODULES})


def require(extra: str, what: str) -> Any:
    """The module that extra ``extra`` installs, imported now; else a PluginError saying ``what`` needs it and
    how to install it."""
    try:
        return import_target(EXTRAS.known()[extra])
    except ImportError as exc:
        raise PluginError(f"{what}: {EXTRAS.hint(extra)} ({exc})") from None
