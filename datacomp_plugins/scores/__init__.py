"""The score registry: a name maps to a lazily imported :class:`~.base.ScoreSpec` (core/registry.py).

Built-in scores are listed in :data:`BUILTIN` as ``"module:attribute"``; another installed package adds one
without touching this package through the entry-point group ``datacomp_plugins.scores``, e.g. in its
``pyproject.toml``::

    [project.entry-points."datacomp_plugins.scores"]
    aesthetic = "my_package.aesthetic:SPEC"

A quality score becomes a baseline of its own name and a ``--quality_score`` choice; a relevance score a
baseline (quality stage, then it); a restriction cuts the pool before both. Their settings become ``filter``
flags, recipe keys and DataComp ``baselines.py`` flags (see config.py). Scores are imported the first time
the registry is asked for them, never on import of this package; a plugin that fails to import, breaks the
contract (ScoreSpec.validate) or redefines a setting is left out with one warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.registry import Registry
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

# The run's own settings (DataComp's flags and config.RUN_SETTINGS; config.py checks the two agree) and the
# built-in engines' (engines/ checks): no score may take one of these names, nor redefine another score's
# setting with another type or default.
RESERVED_SETTINGS = frozenset({
    "name", "metadata_dir", "save_path", "arch", "fraction", "threshold", "num_workers", "num_gpus", "batch_size",
    "precision", "quality_score", "relevance_fraction", "relevance_threshold", "normsim_fraction",
    "normsim_threshold", "cache_dir", "given_uids", "allow_empty", "streaming", "engine", "progress",
    "no_progress", "image_based_scale", "storage_options", "ray_address"})


def type_name(kind: Any) -> str:
    """A field's type as the schema writes it ("float", "str | None"), whether or not its module postpones
    annotations (a score from another package may not)."""
    return kind if isinstance(kind, str) else getattr(kind, "__name__", None) or str(kind).replace("NoneType", "None")


def setting_clashes(fields, accepted_fields) -> list[str]:
    """Names among ``fields`` that are the run's own or another's setting with another type or default."""
    seen = {f.name: (type_name(f.type), f.default) for f in accepted_fields}
    return [f.name for f in fields if f.name in RESERVED_SETTINGS
            or (f.name in seen and seen[f.name] != (type_name(f.type), f.default))]


def _check(name: str, spec: Any, accepted: Mapping[str, ScoreSpec]) -> ScoreSpec:
    if not isinstance(spec, ScoreSpec) or spec.name != name:
        raise TypeError(f"expected a ScoreSpec named {name!r}, got {spec!r:.80}")
    spec.validate()
    clash = setting_clashes(spec.settings(), [f for other in accepted.values() for f in other.settings()])
    if clash:
        raise TypeError(f"its setting(s) {clash} collide with another's")
    return spec


# a setting collision depends on the scores accepted before it
REGISTRY: Registry[ScoreSpec] = Registry("score", BUILTIN, ENTRY_POINT_GROUP, _check, check_needs_all=True)


def registry() -> Mapping[str, ScoreSpec]:
    """Every score offered, imported: the built-ins, then installed packages' (read-only)."""
    return REGISTRY.load_all()


def origin(name: str) -> str:
    """Where score ``name`` comes from, for messages: its entry point, or the built-in module."""
    return REGISTRY.origin(name)


def get(name: str) -> ScoreSpec:
    """The spec of a registered score; a PluginError listing the known ones otherwise."""
    specs = registry()
    if name not in specs:
        raise PluginError(f"score {name!r}: unknown; registered: {sorted(specs)}")
    return specs[name]


def names(role: str | None = None) -> tuple[str, ...]:
    """Registered score names (in registry order), optionally only those of one role."""
    return tuple(name for name, spec in registry().items() if role is None or spec.role == role)
