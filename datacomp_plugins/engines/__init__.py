"""Engines by name: ``--engine NAME`` picks the object that scores shards (see :mod:`.base` for the contract).

Built-in engines are listed in :data:`ENGINES` as ``"module:attribute"`` and imported only when chosen or
when the run's settings are built (an engine's own settings are flags), never by ``--help``/``--version`` of
the program itself. An installed package adds an engine through an entry point in the
``datacomp_plugins.engines`` group, for example in its ``pyproject.toml``::

    [project.entry-points."datacomp_plugins.engines"]
    slurm = "mypackage.slurm_engine:SlurmEngine"

The object named is called with no arguments and must return an :class:`Engine`. Its class may declare
``params``, a frozen dataclass of :func:`~datacomp_plugins.scores.base.setting` fields (a Slurm partition,
a Ray address): each becomes a ``filter`` flag, a recipe key and a range check, and reaches the engine as
``options.params``. A built-in name cannot be replaced by an entry point.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.registry import Registry
from datacomp_plugins.engines.base import Engine, EngineOptions, Job, engine_params, uncached_shards

__all__ = ["ENGINES", "ENTRY_POINT_GROUP", "Engine", "EngineOptions", "Job", "engine_names", "engine_params",
           "get_engine", "registry", "uncached_shards"]

ENTRY_POINT_GROUP = "datacomp_plugins.engines"
# name -> "module:attribute" of the built-in engine, imported when chosen
ENGINES: dict[str, str] = {
    "local": "datacomp_plugins.engines.local:LocalEngine",
    "ray": "datacomp_plugins.engines.ray:RayEngine",
}


def _check(name: str, factory: Any, accepted: Mapping[str, Any]) -> Any:
    """An engine factory whose settings are a frozen dataclass that takes no name of the run's or a score's."""
    import dataclasses

    from datacomp_plugins import scores

    if not callable(factory):
        raise TypeError(f"expected an engine class or factory, got {factory!r:.80}")
    params = engine_params(factory)
    if params is None:
        return factory
    if not (dataclasses.is_dataclass(params) and params.__dataclass_params__.frozen):
        raise TypeError("its params must be a frozen dataclass")
    if name in ENGINES:  # a built-in engine's settings are reserved, so no score plugin can take them
        unreserved = {f.name for f in dataclasses.fields(params)} - scores.RESERVED_SETTINGS
        if unreserved:
            raise TypeError(f"built-in engine {name}: add {sorted(unreserved)} to scores.RESERVED_SETTINGS")
        return factory
    others = [f for spec in scores.registry().values() for f in spec.settings()]
    others += [f for other in accepted.values() if (p := engine_params(other)) is not None
               for f in dataclasses.fields(p)]
    taken = scores.RESERVED_SETTINGS | {f.name for f in others}
    clash = [f.name for f in dataclasses.fields(params) if f.name in taken]
    if clash:
        raise TypeError(f"its setting(s) {clash} collide with another's")
    return factory


REGISTRY: Registry[Any] = Registry("engine", ENGINES, ENTRY_POINT_GROUP, _check, check_needs_all=True)


def engine_names() -> tuple[str, ...]:
    """Every valid ``--engine`` value: the built-ins first, then installed ones, sorted (nothing imported)."""
    return REGISTRY.names()


def registry() -> Mapping[str, Any]:
    """Every engine factory offered, imported (a broken plugin is left out with a warning)."""
    return REGISTRY.load_all()


def get_engine(name: str) -> Engine:
    """The engine called ``name``, imported now; a PluginError naming ``--engine`` and the choices if unknown."""
    if name not in REGISTRY.known():
        raise PluginError(f"--engine {name}: expected one of {list(engine_names())}")
    return REGISTRY.get(name, "--engine")()
