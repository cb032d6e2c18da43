"""What a score is: a name, its settings, what it needs, and how its values are computed.

Two objects describe a score. A :class:`ScoreSpec` (one per score module, listed in the registry) is the
declaration: its role in a filter run (a quality stage, a relevance stage, or a restriction of the pool),
its settings as a frozen dataclass (from which ``filter``'s flags, the recipe schema and the help are built),
and the hooks the pipeline calls. A :class:`Score` is one configured per-shard computation: its dataclass
fields are every value-affecting parameter, so they key the score cache (core/cache.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from datacomp_plugins.core.cache import CACHE_FORMAT
from datacomp_plugins.core.pool import Shard

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


# Hook signatures (``config`` is the run's FilterConfig, ``compute`` its device and precision):
#   shard_score(config, compute, cache) -> Score        a per-shard score, cached
#   exact_values(pool, config) -> values                the pool's values as DataComp stores them
#   select(config, compute, pool, cache, uids, survivors, want) -> mask   a stage that needs the selected set
#   restrict(config, uids, eligible, notes) -> (eligible, missing)        a restriction of the pool
#   check(config) -> None                               checks beyond ranges, with the score's own messages
@dataclass(frozen=True)
class ScoreSpec:
    """The declaration of one score: the registry maps its name to this."""

    name: str
    role: str
    summary: str
    params: type | None = None
    needs_target: bool = False
    products: bool = False  # multiplies matrices in --precision (so --precision auto probes for it)
    thresholds: bool = True  # a --threshold/--normsim_threshold can stand for the fraction
    note: str | None = None  # a line for the run summary where the stage has no single cut-off
    rule: Callable[[Any], str] | None = None  # the stage's rule in words, for the provenance sidecar
    shard_score: Callable[..., Score] | None = None
    exact_values: Callable[..., np.ndarray] | None = None
    select: Callable[..., np.ndarray] | None = None
    restrict: Callable[..., tuple[np.ndarray, int]] | None = None
    check: Callable[..., None] | None = None
    active: Callable[[Any], bool] | None = None  # restrictions: whether this run uses it

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"score {self.name}: role {self.role!r}, expected one of {ROLES}")
        if self.params is not None and not (dataclasses.is_dataclass(self.params)
                                            and self.params.__dataclass_params__.frozen):
            raise ValueError(f"score {self.name}: params must be a frozen dataclass")

    def settings(self) -> tuple[dataclasses.Field, ...]:
        return dataclasses.fields(self.params) if self.params is not None else ()
