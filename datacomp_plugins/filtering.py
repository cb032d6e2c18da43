"""The filter pipeline: validate, score every shard (cached), select globally, write the uid file.

This is the one entry point that both our command line and the DataComp ``baselines.py`` patch call, so
the two produce byte-identical uid files for the same flags.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from datacomp_plugins.engine import Job, run_local
from datacomp_plugins.errors import PluginError
from datacomp_plugins.fileio import check_writable
from datacomp_plugins.pool import ARCH_DIMS, Pool
from datacomp_plugins.scoring import (
    NegCLIPLossScore,
    ParquetScore,
    Score,
    ScoreCache,
    default_cache_dir,
)
from datacomp_plugins.select import check_fraction, first_occurrence, threshold_mask, top_k_mask
from datacomp_plugins.uids import UID_DTYPE, save_uid_file

QUALITY_SCORES = ("negcliploss", "clip_score")
BASELINES = {
    # name -> the quality score it selects by
    "clip_score": "clip_score",
    "negcliploss": "negcliploss",
}
PRECISIONS = ("fp32",)


@dataclass
class FilterConfig:
    """All settings of one filter run; flag names match the command line (DataComp's where they exist)."""

    name: str
    metadata_dir: str
    save_path: str
    arch: str = "l14"
    fraction: float | None = None
    threshold: float | None = None
    num_workers: int = 1
    num_gpus: int = 0
    batch_size: int = 512
    num_batches: int = 10
    negcliploss_batch_size: int = 32768
    temperature: float = 0.01
    seed: int = 0
    precision: str = "fp32"
    cache_dir: str | None = None
    progress: bool = True


@dataclass
class Summary:
    """What a run did, for the closing line and for callers (tests, the demo)."""

    name: str
    pool_rows: int = 0
    pool_samples: int = 0
    duplicates: int = 0
    unscorable: int = 0
    kept: int = 0
    shards: int = 0
    shards_scored: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        share = 100.0 * self.kept / self.pool_samples if self.pool_samples else 0.0
        extra = "".join(f"; {note}" for note in self.notes)
        return (f"{self.name}: kept {self.kept} of {self.pool_samples} samples ({share:.1f}%) from "
                f"{self.shards} shards ({self.shards_scored} scored, {self.shards - self.shards_scored} "
                f"from cache); {self.unscorable} not scorable; {self.duplicates} duplicate uids counted "
                f"once{extra}; {self.seconds:.1f} s")


def validate(config: FilterConfig) -> None:
    """Every flag check that needs no data, so bad flags fail before any heavy work."""
    if config.name not in BASELINES:
        raise PluginError(f"--name {config.name}: unknown baseline; choose from {sorted(BASELINES)}")
    if config.arch not in ARCH_DIMS:
        raise PluginError(f"--arch {config.arch}: expected one of {sorted(ARCH_DIMS)}")
    if (config.fraction is None) == (config.threshold is None):
        raise PluginError("exactly one of --fraction and --threshold is required")
    check_fraction(config.fraction, "--fraction")
    if config.threshold is not None and not math.isfinite(config.threshold):
        raise PluginError(f"--threshold {config.threshold}: must be a finite number")
    for flag in ("num_batches", "negcliploss_batch_size", "batch_size"):
        if getattr(config, flag) < 1:
            raise PluginError(f"--{flag} {getattr(config, flag)}: must be at least 1")
    if config.num_workers < 0 or config.num_gpus < 0:
        raise PluginError("--num_workers and --num_gpus must not be negative")
    if not (config.temperature > 0 and math.isfinite(config.temperature)):
        raise PluginError(f"--temperature {config.temperature}: must be a positive number")
    if config.precision not in PRECISIONS:
        raise PluginError(f"--precision {config.precision}: expected one of {list(PRECISIONS)}")
    if config.num_gpus > 0:
        import torch

        if torch.cuda.device_count() < config.num_gpus:
            raise PluginError(f"--num_gpus {config.num_gpus}: only {torch.cuda.device_count()} CUDA "
                              "device(s) visible; use --num_gpus 0 for the CPU")
    check_writable(config.save_path)


def quality_score(config: FilterConfig, which: str) -> Score:
    """The Score object (with every value-affecting parameter) for a quality score name."""
    if which == "clip_score":
        return ParquetScore(arch=config.arch)
    return NegCLIPLossScore(
        arch=config.arch, num_batches=config.num_batches, batch_size=config.negcliploss_batch_size,
        temperature=config.temperature, seed=config.seed, block_rows=config.batch_size,
        device="cuda" if config.num_gpus > 0 else "cpu", precision=config.precision,
    )


def score_pool(pool: Pool, cache: ScoreCache, scores: tuple[Score, ...], config: FilterConfig) -> int:
    """Make sure every shard has every score cached; returns how many shards needed computing."""
    job = Job(pool, cache, scores)
    computed = 0
    results = run_local(job, pool.shards, config.num_workers, config.num_gpus)
    for result in tqdm(results, total=len(pool.shards), desc=f"scoring {config.name}", unit="shard",
                       disable=not config.progress):
        computed += bool(result.computed)
    return computed


def gather(pool: Pool, cache: ScoreCache, scores: tuple[Score, ...]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Pool-wide uid column and score columns, in shard order, read from the cache only."""
    uids, columns = [], [[] for _ in scores]
    for shard in pool.shards:
        shard_uids = cache.load_uids(shard)
        if shard_uids is None:
            raise PluginError(f"score cache {cache.folder(shard)}: uids missing after scoring")
        uids.append(np.asarray(shard_uids))
        for column, score in zip(columns, scores, strict=True):
            values = cache.load_score(shard, score, len(shard_uids))
            if values is None:
                raise PluginError(f"score cache {cache.folder(shard)}: {score.name} missing after scoring")
            column.append(np.asarray(values))
    joined = [np.concatenate(c) if c else np.zeros(0, np.float32) for c in columns]
    return (np.concatenate(uids) if uids else np.zeros(0, UID_DTYPE)), joined


def run_filter(config: FilterConfig) -> Summary:
    """Run one baseline end to end and write ``config.save_path``; returns the run's summary."""
    started = time.perf_counter()
    validate(config)
    pool = Pool(config.metadata_dir)
    cache = ScoreCache(config.cache_dir or default_cache_dir(), pool)
    quality = quality_score(config, BASELINES[config.name])
    scores = (quality,)
    summary = Summary(config.name, shards=len(pool.shards))
    summary.shards_scored = score_pool(pool, cache, scores, config)
    uids, (quality_values,) = gather(pool, cache, scores)
    eligible = first_occurrence(uids)
    summary.pool_rows = len(uids)
    summary.pool_samples = int(eligible.sum())
    summary.duplicates = summary.pool_rows - summary.pool_samples
    summary.unscorable = int((~np.isfinite(quality_values) & eligible).sum())
    if config.fraction is not None:
        want = math.floor(summary.pool_samples * config.fraction)
        keep = top_k_mask(quality_values, uids, want, eligible)
        if keep.sum() < want:
            summary.notes.append(f"only {int(keep.sum())} scorable samples for the {want} asked")
    else:
        keep = threshold_mask(quality_values, config.threshold, eligible)
    summary.kept = save_uid_file(config.save_path, uids[keep])
    summary.seconds = time.perf_counter() - started
    return summary
