"""Every sample's scores, out of the score cache: one table per pool, for ``scores``, ``compare`` and ``inspect``.

A filter keeps or drops samples by score; to look at what it did one needs the scores themselves. They come
from the same per-shard cache the filter reads (computed there first when missing, with the filter's
parameters), and are handed out shard by shard so a pool larger than memory can be written out.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datacomp_plugins.core.cache import ScoreCache, default_cache_dir
from datacomp_plugins.core.compute import Compute, device_for
from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.pool import ARCH_DIMS, Pool, Shard
from datacomp_plugins.core.progress import disable as progress_disable
from datacomp_plugins.core.uids import UID_DTYPE
from datacomp_plugins.scores.base import RunContext, Score


def score_names() -> tuple[str, ...]:
    """Every registered score with one cached value per sample (restrictions and normsim_d have none)."""
    from datacomp_plugins import scores

    return tuple(n for n, spec in scores.registry().items() if spec.provides("shard_score"))
DEFAULT_SCORES = ("clip_score", "negcliploss")


@dataclass
class ScoreSettings:
    """What the scores depend on; names and defaults as in ``filter``, so both share cache entries.

    ``params`` holds the registered scores' own settings by name (``target``, ``num_batches``, a plugin's);
    one not given takes its default, as in ``filter``.
    """

    metadata_dir: str
    arch: str = "l14"
    scores: tuple[str, ...] = DEFAULT_SCORES
    precision: str = "fp32"
    num_workers: int = 1
    num_gpus: int = 0
    batch_size: int = 0
    cache_dir: str | None = None
    progress: bool = True
    params: dict[str, Any] = field(default_factory=dict)


def parse_score_names(text: str | None, params: dict[str, Any] | str | None,
                      flag: str = "--scores") -> tuple[str, ...]:
    """``a,b`` -> names; default clip_score and negcliploss, plus both NormSims when a target is given.

    ``params``: the scores' settings by name (or, as before, the ``--target`` value alone).
    """
    from datacomp_plugins import scores

    params = params if isinstance(params, dict) else {"target": params}
    if text is None:
        return DEFAULT_SCORES + (("normsim2", "normsiminf") if params.get("target") else ())
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise PluginError(f"{flag} {text!r}: expected comma-separated score names from {list(score_names())}")
    unknown = [n for n in names if n not in score_names()]
    if unknown:
        raise PluginError(f"{flag}: unknown score(s) {unknown}; choose from {list(score_names())}")
    wanting = [n for n in names if scores.get(n).needs_target]
    if wanting and not params.get("target"):
        raise PluginError(f"{flag}: {'/'.join(wanting)} need --target (in1k, or a file or folder of target "
                          "image embeddings)")
    for name in names:  # each score's own checks, as ``filter`` runs them
        spec = scores.get(name)
        spec.check(spec.params_of(params))
    return names


def check_settings(settings: ScoreSettings) -> None:
    """The checks that need no data: the arch, then every number against its range (as ``filter`` does)."""
    from datacomp_plugins.config import number_ranges

    if settings.arch not in ARCH_DIMS:
        raise PluginError(f"--arch {settings.arch}: expected one of {sorted(ARCH_DIMS)}")
    ranges = number_ranges()
    values = {"num_workers": settings.num_workers, "num_gpus": settings.num_gpus,
              "batch_size": settings.batch_size, **settings.params}
    for name, value in values.items():
        if name in ranges:
            ranges[name].check(value, f"--{name}")


def run_context(settings: ScoreSettings, pool: Pool, cache: ScoreCache) -> RunContext:
    """What the scores' hooks receive: the arch and where they compute (no filter run's settings)."""
    return RunContext(arch=settings.arch, pool=pool, cache=cache, compute=Compute(
        device=device_for(settings.num_gpus), precision=settings.precision, block_rows=settings.batch_size,
        progress=settings.progress))


class PoolScores:
    """A pool, its cache and the Score objects for the requested names, scored (cached) on construction."""

    def __init__(self, settings: ScoreSettings) -> None:
        from datacomp_plugins import scores
        from datacomp_plugins.engines import EngineOptions
        from datacomp_plugins.pipeline import score_pool

        check_settings(settings)
        self.settings = settings
        self.pool = Pool(settings.metadata_dir)
        self.cache = ScoreCache(settings.cache_dir or default_cache_dir(), self.pool)
        self.names = tuple(settings.scores)
        run = run_context(settings, self.pool, self.cache)
        objects: list[Score] = []
        for name in self.names:
            spec = scores.get(name)
            objects.append(spec.shard_score(spec.params_of(settings.params), run))
        self.objects = tuple(objects)
        self.shards_scored = score_pool(self.pool, self.cache, self.objects, "local",
                                        EngineOptions(settings.num_workers, settings.num_gpus), settings.progress,
                                        "scoring")

    def shards(self) -> Iterator[tuple[Shard, np.ndarray, dict[str, np.ndarray]]]:
        """(shard, uids, {name: float32 values}) per shard, in stem order, memory-mapped from the cache."""
        for shard in self.pool.shards:
            uids = self.cache.load_uids(shard, verify=False)
            if uids is None:
                raise PluginError(f"score cache {self.cache.folder(shard)}: uids missing after scoring")
            values = {}
            for name, score in zip(self.names, self.objects, strict=True):
                column = self.cache.load_score(shard, score, len(uids), verify=False)
                if column is None:
                    raise PluginError(f"score cache {self.cache.folder(shard)}: {name} missing after scoring")
                values[name] = column
            yield shard, uids, values

    def gather(self) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """Pool-wide uids, score columns and each row's shard index (for pages of a pool that fits memory)."""
        uids, shard_index = [], []
        columns: dict[str, list[np.ndarray]] = {n: [] for n in self.names}
        for index, (_, shard_uids, values) in enumerate(self.shards()):
            uids.append(np.asarray(shard_uids))
            shard_index.append(np.full(len(shard_uids), index, dtype=np.int32))
            for name in self.names:
                columns[name].append(np.asarray(values[name]))
        joined = {n: (np.concatenate(c) if c else np.zeros(0, np.float32)) for n, c in columns.items()}
        return ((np.concatenate(uids) if uids else np.zeros(0, UID_DTYPE)), joined,
                np.concatenate(shard_index) if shard_index else np.zeros(0, np.int32))


def write_parquet(scores: PoolScores, out: str, progress: bool = True) -> int:
    """One row per pool row (hex ``uid`` + one float32 column per score), one row group per shard, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from datacomp_plugins.core.fileio import atomic_open
    from datacomp_plugins.core.uids import to_hex

    schema = pa.schema([("uid", pa.string())] + [(name, pa.float32()) for name in scores.names])
    rows = 0
    with atomic_open(out, "wb") as handle, pq.ParquetWriter(handle, schema) as writer:
        for _, uids, values in tqdm(scores.shards(), total=len(scores.pool.shards), desc="writing scores",
                                    unit="shard", disable=progress_disable(progress)):
            hexes = pa.array(to_hex(np.asarray(uids))).cast(pa.string())
            table = pa.table([hexes] + [pa.array(np.asarray(values[n]), type=pa.float32()) for n in scores.names],
                             schema=schema)
            writer.write_table(table)
            rows += len(uids)
    return rows


def quantiles(values: np.ndarray, qs: Sequence[float] = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)) -> dict:
    """Count, NaN count and quantiles (linear interpolation, float64) of the finite values."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    out: dict = {"count": int(len(values)), "not_scorable": int(len(values) - len(finite))}
    if len(finite):
        out["mean"] = float(finite.mean())
        for q, v in zip(qs, np.quantile(finite, qs), strict=True):
            out[f"q{q * 100:g}"] = float(v)
    return out
