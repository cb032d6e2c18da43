"""Score one shard: read what its missing scores need, compute them, and cache them.

An engine maps :func:`score_shard` (or its two halves, for prefetching) over a pool's shards; the cache is
the hand-off to selection, so engines can be swapped without touching it and a killed run resumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from datacomp_plugins.core.cache import ScoreCache
from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.pool import ARCH_DIMS, Pool, Shard
from datacomp_plugins.scores.base import Score


@dataclass
class ShardResult:
    """What scoring one shard did (for progress and the run summary)."""

    stem: str
    rows: int
    computed: tuple[str, ...]


@dataclass
class ShardInputs:
    """Everything read from storage for the scores a shard still lacks (the I/O half of scoring)."""

    shard: Shard
    rows: int
    missing: list[Score]
    columns: dict
    embeddings: dict


def load_shard(pool: Pool, cache: ScoreCache, shard: Shard,
               scores: Sequence[Score]) -> ShardInputs | ShardResult:
    """Read what the missing scores of ``shard`` need; a ShardResult when the cache already has everything.

    Split from :func:`compute_shard` so an engine can read the next shard while computing this one.
    """
    uids = cache.load_uids(shard)
    if uids is None:
        uids = pool.read_uids(shard)
        cache.save(cache.uid_path(shard), uids)
    rows = len(uids)
    missing = [s for s in scores if cache.load_score(shard, s, rows) is None]
    if not missing:
        return ShardResult(shard.stem, rows, ())
    columns: dict = {}
    wanted_columns = sorted({c for s in missing for c in s.parquet_columns})
    if wanted_columns:
        table = pool.read_columns(shard, wanted_columns)
        columns = {c: table.column(c).to_numpy(zero_copy_only=False) for c in wanted_columns}
    wanted_keys = sorted({k for s in missing for k in s.npz_keys})
    embeddings = pool.read_embeddings(shard, wanted_keys, rows) if wanted_keys else {}
    for key in wanted_keys:
        dim = ARCH_DIMS.get(key.split("_")[0])
        if dim is not None and embeddings[key].shape[1] != dim:
            raise PluginError(f"{shard.npz}: {key!r} has dimension {embeddings[key].shape[1]}, "
                              f"expected {dim} for this arch")
    return ShardInputs(shard, rows, missing, columns, embeddings)


def compute_shard(cache: ScoreCache, inputs: ShardInputs | ShardResult) -> ShardResult:
    """Compute and cache the missing scores (the compute half of scoring)."""
    if isinstance(inputs, ShardResult):
        return inputs
    for score in inputs.missing:
        values = _checked_compute(score, inputs)
        cache.save(cache.score_path(inputs.shard, score), values.astype(np.float32))
    return ShardResult(inputs.shard.stem, inputs.rows, tuple(s.name for s in inputs.missing))


def _checked_compute(score: Score, inputs: ShardInputs) -> np.ndarray:
    """``score.compute`` on one shard, its failure or a wrong result turned into one line naming the score and
    where it comes from (a plugin's entry point), so the user knows whose code to look at; nothing is cached."""
    from datacomp_plugins import scores

    def fail(what: str) -> PluginError:
        return PluginError(f"score {score.name} ({scores.origin(score.name)}): {what} on shard {inputs.shard.stem} "
                           f"({inputs.rows} rows); nothing was written")

    try:
        values = score.compute(inputs.shard, inputs.columns, inputs.embeddings)
    except (PluginError, MemoryError):
        raise
    except Exception as exc:  # a score's own bug: one line, not its traceback
        if score.name not in scores.BUILTIN:
            raise fail(f"compute raised {type(exc).__name__}: {exc}") from None
        raise
    try:
        values = np.asarray(values)
    except Exception as exc:
        raise fail(f"compute returned {type(values).__name__}, not an array ({exc})") from None
    if values.shape != (inputs.rows,):
        raise fail(f"compute returned shape {values.shape}, expected ({inputs.rows},): one value per row")
    if values.dtype.kind not in "fiub":
        raise fail(f"compute returned dtype {values.dtype}, expected numbers")
    return values


def cached_rows(cache: ScoreCache, shard: Shard, scores: Sequence[Score]) -> int | None:
    """The shard's row count when its uids and every score are cached and pass their checks, else None."""
    uids = cache.load_uids(shard)
    if uids is None or any(cache.load_score(shard, s, len(uids)) is None for s in scores):
        return None
    return len(uids)


def score_shard(pool: Pool, cache: ScoreCache, shard: Shard, scores: Sequence[Score]) -> ShardResult:
    """Make sure ``shard`` has a valid uid file and every score in the cache; compute only what is missing."""
    return compute_shard(cache, load_shard(pool, cache, shard, scores))
