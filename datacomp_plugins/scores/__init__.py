"""The score registry: a name maps to a lazily imported :class:`~.base.ScoreSpec`.

Built-in scores are listed in :data:`BUILTIN` as ``"module:attribute"``; another installed package adds one
without touching this package through the entry-point group ``datacomp_plugins.scores``, e.g. in its
``pyproject.toml``::

    [project.entry-points."datacomp_plugins.scores"]
    aesthetic = "my_package.aesthetic:SPEC"

A quality score becomes a baseline of its own name and a ``--quality_score`` choice; a relevance score a
baseline (quality stage, then it); a restriction cuts the pool before both. Their settings become ``filter``
flags, recipe keys and DataComp ``baselines.py`` flags (see config.py).
"""

from __future__ import annotations

import functools
import importlib
import sys
from importlib import metadata

from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.scores.base import ScoreSpec

ENTRY_POINT_GROUP = "datacomp_plugins.scores"

BUILTIN: dict[str, str] = {
    "clip_score": "datacomp_plugins.scores.clip_score:SPEC",
    "negcliploss": "datacomp_plugins.scores.negcliploss:SPEC",
    "normsim2": "datacomp_plugins.scores.normsim:SPEC_2",
    "normsiminf": "datacomp_plugins.scores.normsim:SPEC_INF",
    "normsim_d": "datacomp_plugins.scores.normsim_d:SPEC",
    "external": "datacomp_plugins.scores.external:SPEC",
}


def _load(target: str) -> ScoreSpec:
    module, _, attribute = target.partition(":")
    spec = getattr(importlib.import_module(module), attribute)
    if not isinstance(spec, ScoreSpec):
        raise TypeError(f"{target} is a {type(spec).__name__}, expected a ScoreSpec")
    return spec


@functools.cache
def registry() -> dict[str, ScoreSpec]:
    """Every score: the built-ins, then those of installed packages (a broken one is skipped with a warning)."""
    specs = {name: _load(target) for name, target in BUILTIN.items()}
    for point in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        if point.name in specs:
            print(f"warning: score {point.name!r} of {point.value} ignored: the name is taken", file=sys.stderr)
            continue
        try:
            spec = point.load()
            if not isinstance(spec, ScoreSpec) or spec.name != point.name:
                raise TypeError(f"expected a ScoreSpec named {point.name!r}, got {spec!r:.80}")
        except Exception as exc:  # a broken plugin must not take the built-in baselines down with it
            print(f"warning: score {point.name!r} ({point.value}) not offered: {exc}", file=sys.stderr)
            continue
        specs[point.name] = spec
        _ORIGINS[point.name] = f"entry point {point.name} = {point.value} ({ENTRY_POINT_GROUP})"
    return specs


_ORIGINS: dict[str, str] = {}


def origin(name: str) -> str:
    """Where score ``name`` comes from, for messages: its entry point, or the built-in module."""
    registry()
    return _ORIGINS.get(name) or f"built-in {BUILTIN.get(name, name)}"


def get(name: str) -> ScoreSpec:
    """The spec of a registered score; a PluginError listing the known ones otherwise."""
    specs = registry()
    if name not in specs:
        raise PluginError(f"score {name!r}: unknown; registered: {sorted(specs)}")
    return specs[name]


def names(role: str | None = None) -> tuple[str, ...]:
    """Registered score names (in registry order), optionally only those of one role."""
    return tuple(name for name, spec in registry().items() if role is None or spec.role == role)
