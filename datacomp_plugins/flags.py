"""The run's settings as command-line flags: one schema (config.py, each score's and engine's Params) gives the
flags of ``filter``, ``scores``, ``recipe`` and of DataComp's patched ``baselines.py``.

Nothing here is imported by ``datacomp-plugins --help`` or ``--version``: building these flags loads every
registered score and engine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from collections.abc import Iterator
from contextvars import ContextVar

from datacomp_plugins import config, scores

_STATIC_ONLY: ContextVar[bool] = ContextVar("static_only", default=False)


@contextlib.contextmanager
def static_only() -> Iterator[None]:
    """Within it, the helpers below add no flag that needs the registries: a command's parser built only to
    list it in ``datacomp-plugins --help`` then loads no score or engine."""
    token = _STATIC_ONLY.set(True)
    try:
        yield
    finally:
        _STATIC_ONLY.reset(token)


def deferred() -> bool:
    """Whether flags that need the registries are left out now (see :func:`static_only`)."""
    return _STATIC_ONLY.get()


def baseline_choices() -> list[str] | None:
    """``--name``'s choices: every baseline, or None while the registries are deferred."""
    return None if deferred() else sorted(config.baselines())


def add_setting(group, name: str, kind: str, f: dataclasses.Field, default_none: bool = False) -> None:
    """One setting as a flag: its type, default, choices and help from the schema; its older names
    (config.ALIASES) as further option strings. ``default_none``: unset means "not given" (recipe overrides)."""
    meta = f.metadata
    if not meta.get("flag", True):
        return
    names = [f"--{name}", *(f"--{old}" for old, new in config.ALIASES.items() if new == name)]
    kind = kind.split("|")[0].strip()
    if kind == "bool":
        group.add_argument(*names, dest=name, action="store_true", default=None if default_none else False,
                           help=meta.get("help"))
        return
    group.add_argument(*names, dest=name, type={"int": int, "float": float}.get(kind, str),
                       default=None if default_none else f.default, choices=config.choices_of(f),
                       help=meta.get("help"))


def add_engine_arguments(parser: argparse.ArgumentParser, default_none: bool = False) -> None:
    """Each registered engine's own settings, one group per engine."""
    from datacomp_plugins import engines

    if deferred():
        return
    for name, factory in engines.registry().items():
        params = engines.engine_params(factory)
        if params is None:
            continue
        group = parser.add_argument_group(f"--engine {name}")
        for f in dataclasses.fields(params):
            add_setting(group, f.name, scores.type_name(f.type), f, default_none)


def engine_setting_names() -> list[str]:
    """The names of every registered engine's own settings."""
    from datacomp_plugins import engines

    return [f.name for factory in engines.registry().values()
            if (params := engines.engine_params(factory)) is not None for f in dataclasses.fields(params)]


def add_plugin_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags DataComp's baselines.py does not have (shared with the DataComp patch), built from the
    settings' schema: the run's own settings, one group per registered score with settings, one per engine
    with settings."""
    if deferred():
        return
    group = parser.add_argument_group("negCLIPLoss / NormSim")
    for name, kind, f in config.RUN_SETTINGS:
        add_setting(group, name, kind, f)
    group.add_argument("--no_progress", action="store_true", help="no progress bar")
    taken = {name for name, _, _ in config.DATACOMP_SETTINGS + config.RUN_SETTINGS}
    for spec in scores.registry().values():
        own = [f for f in spec.settings() if f.name not in taken]
        if own:
            section = parser.add_argument_group(f"{spec.name}: {spec.summary}")
            for f in own:
                add_setting(section, f.name, scores.type_name(f.type), f)
                taken.add(f.name)
    add_engine_arguments(parser)


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    """Every registered per-shard score's own settings, with the names and defaults of ``filter`` (so the
    ``scores`` command and ``filter`` share cache entries)."""
    if deferred():
        return
    seen = set()
    for spec in scores.registry().values():
        if not spec.provides("shard_score"):
            continue
        for f in spec.settings():
            if f.name not in seen:
                seen.add(f.name)
                add_setting(parser, f.name, scores.type_name(f.type), f)


def config_from_args(args: argparse.Namespace):
    """Take the FilterConfig fields from parsed arguments (unknown attributes are ignored)."""
    from datacomp_plugins.config import FilterConfig

    fields = {f.name: f for f in dataclasses.fields(FilterConfig)}
    # a flag left unset (None) by another parser, e.g. DataComp's --arch, keeps our default
    values = {config.canonical(k): v for k, v in vars(args).items()
              if config.canonical(k) in fields and not (v is None and fields[config.canonical(k)].default is not None)}
    values["progress"] = not getattr(args, "no_progress", False)
    return FilterConfig(**values)
