"""What a score is: a name, its settings, what it needs, and how its values are computed.

Two objects describe a score. A :class:`ScoreSpec` subclass (one per score module, listed in the registry)
is the declaration: its role in a filter run (a quality stage, a relevance stage, or a restriction of the
pool), its settings as a frozen dataclass (from which ``filter``'s flags, the recipe schema and the help are
built), the files it reads, and the hooks the pipeline calls with those settings. A :class:`Score` is one
configured per-shard computation: its dataclass fields are every value-affecting parameter, so they key the
score cache (core/cache.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from datacomp_plugins.core.cache import CACHE_FORMAT, ScoreCache
from datacomp_plugins.core.compute import Compute
from datacomp_plugins.core.pool import Pool, Shard

if TYPE_CHECKING:
    from datacomp_plugins.core.ranges import Range

ROLES = ("quality", "relevance", "restriction")


def setting(default: Any, help: str, check: Range | None = None, choices: tuple[str, ...] | None = None,
            flag: bool = True) -> Any:
    """A score setting: a dataclass field carrying its ``filter`` flag's help, range and choices.

    ``flag=False`` keeps it out of the command line (it stays a recipe and Python setting).
    """
    return field(default=default, metadata={"help": help, "range": check, "choices": choices, "flag": flag})


@dataclass(frozen=True)
class Score:
    """A per-sample score of a shard: what it reads, what its value depends on, how to compute it."""

    name: str = field(init=False, default="")

    @property
    def column(self) -> str:
        """The cache file's label (one score module may cache several columns, e.g. normsim2/normsiminf)."""
        return self.name

    @property
    def parquet_columns(self) -> tuple[str, ...]:
        return ()

    @property
    def npz_keys(self) -> tuple[str, ...]:
        return ()

    def key(self, shard: Shard) -> str:
        """Hash of the shard's identity and every parameter that affects the values."""
        params = {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("key", True)}
        payload = {"format": CACHE_FORMAT, "score": self.name, "shard": shard.fingerprint, **params}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def compute(self, shard: Shard, columns: dict, embeddings: dict) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class RunContext:
    """What a score's hooks may know of the run besides their own settings: never the whole run's settings.

    ``pool`` and ``cache`` are None where a hook is called before the pool is opened (``check``).
    """

    arch: str = "l14"
    compute: Compute = field(default_factory=Compute)
    pool: Pool | None = None
    cache: ScoreCache | None = None


@dataclass(frozen=True)
class StageCut:
    """How much the relevance stage keeps: a fraction of the pool, or a threshold on the score."""

    fraction: float | None = None
    threshold: float | None = None


# The hooks a subclass may override, each with the parameters after ``self`` it must take.
HOOKS: dict[str, tuple[str, ...]] = {
    "shard_score": ("params", "run"),
    "exact_values": ("params", "run", "shard"),
    "select": ("params", "run", "uids", "survivors", "want"),
    "restrict": ("params", "run", "uids", "eligible", "notes"),
    "active": ("params",),
    "check": ("params",),
    "rule": ("params", "cut"),
}
# Which hooks a role needs (any one of each tuple).
NEEDED: dict[str, tuple[tuple[str, ...], ...]] = {
    "quality": (("shard_score",),),
    "relevance": (("shard_score", "select"),),
    "restriction": (("restrict",), ("active",)),
}


class ScoreSpec:
    """The declaration of one score, and its hooks: subclass it, override the hooks your role needs.

    Every hook receives the score's own ``params`` (an instance of :attr:`params`, built from ``filter``'s
    flags, a recipe's keys or DataComp's ``baselines.py`` flags) and, where it needs one, a small
    :class:`RunContext`:

    * ``shard_score(params, run) -> Score``: a per-shard score, cached (quality and relevance scores);
    * ``exact_values(params, run, shard) -> values``: a quality score's values as DataComp stores them, cut
      by DataComp's own rule when the score runs alone;
    * ``select(params, run, uids, survivors, want) -> mask``: a relevance stage that depends on the selected
      set (normsim_d) instead of cached per-sample values;
    * ``restrict(params, run, uids, eligible, notes) -> (eligible, missing)`` and ``active(params) -> bool``:
      a restriction of the pool;
    * ``check(params)``: checks beyond ranges and choices, with the score's own messages;
    * ``rule(params, cut) -> str``: the relevance stage's rule in words, for the provenance sidecar.

    The declaration: ``role`` (quality, relevance or restriction), ``params`` (a frozen dataclass of
    :func:`setting` fields), ``inputs`` (names of settings that are files the run reads, so no output may
    overwrite them), ``needs_target`` (the ``target`` setting is required), ``products`` (multiplies
    matrices in ``--precision``), ``thresholds`` (a ``--relevance_threshold`` can stand for the fraction)
    and ``note`` (a summary line where the stage has no single cut-off). Hook signatures are checked when the
    registry loads the score, so a wrong one is a warning at start-up, not an error in the middle of a run.
    """

    def __init__(self, name: str, role: str, summary: str, params: type | None = None, *,
                 inputs: tuple[str, ...] = (), needs_target: bool = False, products: bool = False,
                 thresholds: bool = True, note: str | None = None, **hooks: Any) -> None:
        if hooks:  # the earlier form, ScoreSpec(..., shard_score=lambda config, compute, cache: ...)
            raise TypeError(f"score {name}: hooks {sorted(hooks)} are methods now: subclass ScoreSpec and define "
                            f"e.g. shard_score(self, params, run) (see docs/ARCHITECTURE.md, Add a score)")
        self.name, self.role, self.summary, self.params = name, role, summary, params
        self.inputs, self.needs_target, self.products = tuple(inputs), needs_target, products
        self.thresholds, self.note = thresholds, note
        if role not in ROLES:
            raise ValueError(f"score {name}: role {role!r}, expected one of {ROLES}")
        if params is not None and not (dataclasses.is_dataclass(params) and params.__dataclass_params__.frozen):
            raise ValueError(f"score {name}: params must be a frozen dataclass")
        own = {f.name for f in self.settings()}
        unknown = [i for i in (*self.inputs, *(("target",) if needs_target else ())) if i not in own]
        if unknown:
            raise ValueError(f"score {name}: inputs/needs_target name {unknown}, which are not its settings "
                             f"{sorted(own)}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} ({self.role})>"

    def settings(self) -> tuple[dataclasses.Field, ...]:
        return dataclasses.fields(self.params) if self.params is not None else ()

    def provides(self, hook: str) -> bool:
        """Whether this score overrides ``hook``."""
        return getattr(type(self), hook) is not getattr(ScoreSpec, hook)

    def params_of(self, values: Any) -> Any:
        """This score's Params from an object or mapping holding its settings by name (a run's settings, parsed
        flags); a setting missing there takes its default."""
        if self.params is None:
            return None
        get = values.get if isinstance(values, dict) else (lambda k, d: getattr(values, k, d))
        missing = object()
        given = {f.name: v for f in self.settings() if (v := get(f.name, missing)) is not missing}
        return self.params(**given)

    def validate(self) -> None:
        """The contract checked once, when the registry loads the score: hooks for its role, their signatures."""
        for hook, wanted in HOOKS.items():
            if not self.provides(hook):
                continue
            try:
                signature = inspect.signature(getattr(self, hook))
            except (TypeError, ValueError):
                continue
            takes = [p for p in signature.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            variadic = any(p.kind == p.VAR_POSITIONAL for p in signature.parameters.values())
            required = [p for p in takes if p.default is p.empty]
            if not (len(required) <= len(wanted) and (variadic or len(takes) >= len(wanted))):
                raise TypeError(f"score {self.name}: {hook}{signature} must take ({', '.join(wanted)})")
        for options in NEEDED[self.role]:
            if not any(self.provides(h) for h in options):
                raise TypeError(f"score {self.name}: a {self.role} score must define {' or '.join(options)}")

    # --- hooks (see the class docstring) ------------------------------------------------------------------------
    def shard_score(self, params: Any, run: RunContext) -> Score:
        raise NotImplementedError(f"score {self.name}: no per-shard score")

    def exact_values(self, params: Any, run: RunContext, shard: Shard) -> np.ndarray:
        raise NotImplementedError(f"score {self.name}: no exact values")

    def select(self, params: Any, run: RunContext, uids: np.ndarray, survivors: np.ndarray, want: int) -> np.ndarray:
        raise NotImplementedError(f"score {self.name}: no selection of its own")

    def restrict(self, params: Any, run: RunContext, uids: np.ndarray, eligible: np.ndarray,
                 notes: list[str]) -> tuple[np.ndarray, int]:
        raise NotImplementedError(f"score {self.name}: not a restriction")

    def active(self, params: Any) -> bool:
        return False

    def check(self, params: Any) -> None:
        return None

    def rule(self, params: Any, cut: StageCut) -> str | None:
        return None
