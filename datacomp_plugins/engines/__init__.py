"""Engines by name: ``--engine NAME`` picks the object that scores shards (see :mod:`.base` for the contract).

Built-in engines are listed in :data:`ENGINES` as ``"module:attribute"`` and imported only when chosen, so
``--help`` or ``--engine local`` never loads another engine's code. An installed package adds an engine
through an entry point in the ``datacomp_plugins.engines`` group, for example in its ``pyproject.toml``::

    [project.entry-points."datacomp_plugins.engines"]
    slurm = "mypackage.slurm_engine:SlurmEngine"

The object named is called with no arguments and must return an :class:`Engine`. A built-in name cannot
be replaced by an entry point.
"""

from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint, entry_points

from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.engines.base import Engine, EngineOptions, Job, uncached_shards

__all__ = ["ENGINES", "ENTRY_POINT_GROUP", "Engine", "EngineOptions", "Job", "engine_names", "get_engine",
           "uncached_shards"]

ENTRY_POINT_GROUP = "datacomp_plugins.engines"
# name -> "module:attribute" of the built-in engine, imported when chosen
ENGINES: dict[str, str] = {
    "local": "datacomp_plugins.engines.local:LocalEngine",
    "ray": "datacomp_plugins.engines.ray:RayEngine",
}


def _installed() -> dict[str, EntryPoint]:
    """Engines other installed packages declare (built-in names excluded: those always mean ours)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in ENGINES}


def engine_names() -> tuple[str, ...]:
    """Every valid ``--engine`` value: the built-ins first, then installed ones, sorted."""
    return (*ENGINES, *sorted(_installed()))


def get_engine(name: str) -> Engine:
    """The engine called ``name``, imported now; a PluginError naming ``--engine`` and the choices if unknown."""
    if name in ENGINES:
        module, _, attribute = ENGINES[name].partition(":")
        factory = getattr(importlib.import_module(module), attribute)
    else:
        found = _installed().get(name)
        if found is None:
            raise PluginError(f"--engine {name}: expected one of {list(engine_names())}")
        try:
            factory = found.load()
        except (ImportError, AttributeError) as exc:  # a broken plugin package: say which one, no traceback
            raise PluginError(f"--engine {name}: cannot load {found.value} ({exc})") from None
    return factory()
