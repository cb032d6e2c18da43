"""The filter pipeline: validate, score every shard (cached), select globally, write the uid file.

This is the one entry point that both our command line and the DataComp ``baselines.py`` patch call, so
the two produce byte-identical uid files for the same flags.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from datacomp_plugins import provenance
from datacomp_plugins.engine import Job, run_local
from datacomp_plugins.errors import PluginError
from datacomp_plugins.fileio import check_writable
from datacomp_plugins.pool import ARCH_DIMS, Pool
from datacomp_plugins.scoring import (
    NegCLIPLossScore,
    NormSimScore,
    ParquetScore,
    Score,
    ScoreCache,
    default_cache_dir,
)
from datacomp_plugins.select import (
    check_fraction,
    first_occurrence,
    index_in,
    isin,
    threshold_mask,
    top_k_mask,
)
from datacomp_plugins.uids import UID_DTYPE, save_uid_file

QUALITY_SCORES = ("negcliploss", "clip_score")
# name -> relevance stage after the quality stage (None: the quality stage alone)
BASELINES: dict[str, str | None] = {
    "clip_score": None,
    "negcliploss": None,
    "normsim2": "2",
    "normsiminf": "inf",
    "normsim_d": "d",
}
PRECISIONS = ("fp32", "bf16", "fp16")
ENGINES = ("local", "ray")


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
    batch_size: int = 0  # 0: automatic (metrics.BLOCK_ELEMENTS logits at once)
    num_batches: int = 10
    negcliploss_batch_size: int = 32768
    temperature: float = 0.01
    seed: int = 0
    precision: str = "fp32"
    cache_dir: str | None = None
    quality_score: str = "negcliploss"
    normsim_fraction: float | None = None
    normsim_threshold: float | None = None
    target: str | None = None
    target_key: str | None = None
    normsim_d_iters: int = 500
    engine: str = "local"
    ray_address: str | None = None
    given_uids: str | None = None
    external_scores: str | None = None
    external_column: str | None = None
    external_fraction: float | None = None
    streaming: bool = False
    progress: bool = True

    @property
    def quality(self) -> str:
        """The quality score: the baseline's own for clip_score/negcliploss, else --quality_score."""
        return self.name if BASELINES.get(self.name, "") is None else self.quality_score

    @property
    def relevance(self) -> str | None:
        return BASELINES.get(self.name)


@dataclass
class Summary:
    """What a run did, for the closing line and for callers (tests, the demo)."""

    name: str
    pool_rows: int = 0
    pool_samples: int = 0
    duplicates: int = 0
    unscorable: int = 0
    after_quality: int = 0
    kept: int = 0
    shards: int = 0
    shards_scored: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        share = 100.0 * self.kept / self.pool_samples if self.pool_samples else 0.0
        extra = "".join(f"; {note}" for note in self.notes)
        if self.after_quality != self.kept:
            extra = f"; {self.after_quality} after the quality stage" + extra
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
    for flag in ("num_batches", "negcliploss_batch_size"):
        if getattr(config, flag) < 1:
            raise PluginError(f"--{flag} {getattr(config, flag)}: must be at least 1")
    if config.batch_size < 0:
        raise PluginError(f"--batch_size {config.batch_size}: must be 0 (automatic) or a number of rows")
    if config.num_workers < 0 or config.num_gpus < 0:
        raise PluginError("--num_workers and --num_gpus must not be negative")
    if not (config.temperature > 0 and math.isfinite(config.temperature)):
        raise PluginError(f"--temperature {config.temperature}: must be a positive number")
    if config.quality_score not in QUALITY_SCORES:
        raise PluginError(f"--quality_score {config.quality_score}: expected one of {list(QUALITY_SCORES)}")
    _validate_relevance(config)
    external = (config.external_scores, config.external_column, config.external_fraction)
    if any(v is not None for v in external) and any(v is None for v in external):
        raise PluginError("--external_scores, --external_column and --external_fraction go together")
    check_fraction(config.external_fraction, "--external_fraction")
    if config.streaming and (config.relevance is not None or config.given_uids or config.external_scores):
        raise PluginError("--streaming: only for a quality stage alone (clip_score, negcliploss) without "
                          "--given_uids/--external_scores")
    if config.engine not in ENGINES:
        raise PluginError(f"--engine {config.engine}: expected one of {list(ENGINES)}")
    if config.precision not in PRECISIONS:
        raise PluginError(f"--precision {config.precision}: expected one of {list(PRECISIONS)}")
    if config.num_gpus > 0 and config.engine == "local":  # Ray checks its cluster's GPUs itself
        import torch

        if torch.cuda.device_count() < config.num_gpus:
            raise PluginError(f"--num_gpus {config.num_gpus}: only {torch.cuda.device_count()} CUDA "
                              "device(s) visible; use --num_gpus 0 for the CPU")
    check_writable(config.save_path)


def _validate_relevance(config: FilterConfig) -> None:
    relevance = config.relevance
    given = [flag for flag, value in (("--normsim_fraction", config.normsim_fraction),
                                      ("--normsim_threshold", config.normsim_threshold),
                                      ("--target", config.target)) if value is not None]
    if relevance is None:
        if given:
            raise PluginError(f"{', '.join(given)}: only for the normsim baselines, not --name {config.name}")
        return
    if (config.normsim_fraction is None) == (config.normsim_threshold is None):
        raise PluginError(f"--name {config.name}: exactly one of --normsim_fraction and --normsim_threshold "
                          "is required")
    check_fraction(config.normsim_fraction, "--normsim_fraction")
    if (config.fraction is not None and config.normsim_fraction is not None
            and config.normsim_fraction > config.fraction):
        raise PluginError(f"--normsim_fraction {config.normsim_fraction} is larger than --fraction "
                          f"{config.fraction}: the NormSim stage keeps a share of the pool among the quality "
                          "stage's survivors, so it cannot keep more than they are")
    if relevance == "d":
        if config.target is not None:
            raise PluginError("--target: normsim_d uses no target set (the selected subset is its own target)")
        if config.normsim_threshold is not None:
            raise PluginError("--normsim_threshold: normsim_d needs --normsim_fraction (its final size)")
        if config.normsim_d_iters < 1:
            raise PluginError(f"--normsim_d_iters {config.normsim_d_iters}: must be at least 1")
    elif config.target is None:
        raise PluginError(f"--name {config.name}: needs --target (in1k, or a .npy/.npz/.pt file or folder of "
                          "target image embeddings)")


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
    if config.engine == "ray":
        from datacomp_plugins.engine_ray import run_ray

        results = run_ray(job, pool.shards, config.num_workers, config.num_gpus, config.ray_address)
    else:
        results = run_local(job, pool.shards, config.num_workers, config.num_gpus)
    for result in tqdm(results, total=len(pool.shards), desc=f"scoring {config.name}", unit="shard",
                       disable=not config.progress):
        computed += bool(result.computed)
    return computed


def gather(pool: Pool, cache: ScoreCache, scores: tuple[Score, ...]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Pool-wide uid column and score columns, in shard order, read from the cache only.

    Called after scoring, which verified (or wrote) every file, so the CRCs are not checked again.
    """
    uids: list[np.ndarray] = []
    columns: list[list[np.ndarray]] = [[] for _ in scores]
    for shard in pool.shards:
        shard_uids = cache.load_uids(shard, verify=False)
        if shard_uids is None:
            raise PluginError(f"score cache {cache.folder(shard)}: uids missing after scoring")
        uids.append(np.asarray(shard_uids))
        for column, score in zip(columns, scores, strict=True):
            values = cache.load_score(shard, score, len(shard_uids), verify=False)
            if values is None:
                raise PluginError(f"score cache {cache.folder(shard)}: {score.name} missing after scoring")
            column.append(np.asarray(values))
    joined = [np.concatenate(c) if c else np.zeros(0, np.float32) for c in columns]
    return (np.concatenate(uids) if uids else np.zeros(0, UID_DTYPE)), joined


def _relevance_score(config: FilterConfig, cache: ScoreCache, pool: Pool) -> NormSimScore:
    """Load, check and materialise the target once (main process), then describe the NormSim score."""
    from datacomp_plugins import targets

    matrix = targets.load_target(config.target, config.arch, ARCH_DIMS[config.arch], config.target_key)
    key, target_path, gram_path = targets.materialise(matrix, cache.targets)
    return NormSimScore(arch=config.arch, p=config.relevance, target=key, target_path=target_path,
                        gram_path=gram_path, device="cuda" if config.num_gpus > 0 else "cpu",
                        precision=config.precision)


def _quality_stage(config: FilterConfig, values: np.ndarray | None, uids: np.ndarray, eligible: np.ndarray,
                   pool_samples: int, summary: Summary) -> np.ndarray:
    if values is None:  # --fraction 1.0: no quality stage
        return eligible
    if config.fraction is not None:
        want = math.floor(pool_samples * config.fraction)
        keep = top_k_mask(values, uids, want, eligible)
        if keep.sum() < want:
            summary.notes.append(f"only {int(keep.sum())} scorable samples for the {want} asked")
        return keep
    return threshold_mask(values, config.threshold, eligible)


def _normsim_d_stage(config: FilterConfig, pool: Pool, cache: ScoreCache, uids: np.ndarray,
                     survivors: np.ndarray, want: int) -> np.ndarray:
    """Run NormSim_2-D on the survivors' image embeddings (spilled to the cache folder, then deleted)."""
    from datacomp_plugins.dynamic import iterate, spill_image_embeddings

    key = f"{config.arch}_img"
    offsets = np.cumsum([0] + [len(cache.load_uids(s, verify=False)) for s in pool.shards])
    chosen = np.flatnonzero(survivors)
    rows = [chosen[(chosen >= a) & (chosen < b)] - a for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    device = "cuda" if config.num_gpus > 0 else "cpu"
    with spill_image_embeddings(pool, pool.shards, rows, key, ARCH_DIMS[config.arch],
                                os.path.join(cache.root, "_spill"), config.progress) as (spill, finite):
        index = chosen[finite]
        kept = iterate(spill, uids[index], want, config.normsim_d_iters, device, config.progress)
    mask = np.zeros(len(uids), dtype=bool)
    mask[index[kept]] = True
    return mask


def _restrict(config: FilterConfig, uids: np.ndarray, eligible: np.ndarray, summary: Summary) -> np.ndarray:
    """Restrict the pool to other methods' selections before our stages (DFN's uid list, HYPE's scores).

    ``--given_uids A.npy::B.npy`` keeps pool samples in every file; ``--external_scores`` keeps the top
    ``--external_fraction`` of what remains by a score column keyed by uid. Our fractions are then shares
    of the restricted pool, as in the official code.
    """
    from datacomp_plugins.uids import load_uid_file

    unique = eligible
    for path in (config.given_uids.split("::") if config.given_uids else []):
        given = load_uid_file(path)
        inside = isin(uids, given) & unique
        summary.notes.append(f"{path}: {len(given)} uids, {len(given) - int(inside.sum())} not in the pool")
        eligible = eligible & inside
    if config.external_scores:
        values = external_scores(config.external_scores, config.external_column, uids)
        want = math.floor(int(eligible.sum()) * config.external_fraction)
        eligible = top_k_mask(values, uids, want, eligible)
        summary.notes.append(f"{config.external_column} top {config.external_fraction:g}: {int(eligible.sum())}")
    return eligible


def external_scores(path: str, column: str, uids: np.ndarray) -> np.ndarray:
    """A score per pool sample from a parquet file keyed by hex ``uid``; NaN where the file has none."""
    import fsspec
    import pyarrow.parquet as pq

    from datacomp_plugins.uids import parse_hex

    try:
        with fsspec.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            names = parquet.schema_arrow.names
            missing = [c for c in ("uid", column) if c not in names]
            if missing:
                raise PluginError(f"--external_scores {path}: no column(s) {missing}; it has {names}")
            table = parquet.read(columns=["uid", column])
    except FileNotFoundError:
        raise PluginError(f"--external_scores {path}: file not found") from None
    except (OSError, ValueError) as exc:
        raise PluginError(f"--external_scores {path}: unreadable parquet ({exc})") from None
    if not _is_numeric(table.schema.field(column).type):
        raise PluginError(f"--external_scores {path}: column {column!r} is {table.schema.field(column).type}, "
                          "expected numbers")
    theirs = parse_hex(table.column("uid"), source=path)
    scores = table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
    row = index_in(uids, theirs)
    return np.where(row >= 0, scores[row], np.nan)


def _is_numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)


def _run_streaming(config: FilterConfig, pool: Pool, cache: ScoreCache, score: Score, summary: Summary,
                   started: float) -> Summary:
    """Quality-stage selection in passes over the cached score files (see streaming.py): bounded memory."""
    from datacomp_plugins.streaming import threshold_streaming, top_k_streaming

    def shards():
        for shard in pool.shards:
            uids = cache.load_uids(shard, verify=False)  # scoring verified every file already
            yield uids, np.asarray(cache.load_score(shard, score, len(uids), verify=False))

    rows = unscorable = 0
    for _, values in shards():
        rows += len(values)
        unscorable += int((~np.isfinite(values)).sum())
    summary.pool_rows = summary.pool_samples = rows
    summary.unscorable = unscorable
    if config.fraction is not None:
        kept = top_k_streaming(shards, math.floor(rows * config.fraction))
    else:
        kept = threshold_streaming(shards, config.threshold)
    summary.notes.append("streaming selection (duplicate uids merged in the output only)")
    summary.kept = summary.after_quality = provenance.save_with_sidecar(
        config.save_path, lambda: save_uid_file(config.save_path, kept),
        provenance.filter_record(config, pool, cache, summary, []))
    summary.seconds = time.perf_counter() - started
    return summary


def run_filter(config: FilterConfig) -> Summary:
    """Run one baseline end to end and write ``config.save_path``; returns the run's summary."""
    started = time.perf_counter()
    validate(config)
    pool = Pool(config.metadata_dir)
    cache = ScoreCache(config.cache_dir or default_cache_dir(), pool)
    use_quality = not (config.fraction == 1.0 and config.relevance is not None)
    scores: list[Score] = [quality_score(config, config.quality)] if use_quality else []
    if config.relevance in ("2", "inf"):
        scores.append(_relevance_score(config, cache, pool))
    summary = Summary(config.name, shards=len(pool.shards))
    summary.shards_scored = score_pool(pool, cache, tuple(scores), config)
    if config.streaming:
        return _run_streaming(config, pool, cache, scores[0], summary, started)
    uids, columns = gather(pool, cache, tuple(scores))
    eligible = first_occurrence(uids)
    summary.pool_rows = len(uids)
    summary.duplicates = summary.pool_rows - int(eligible.sum())
    eligible = _restrict(config, uids, eligible, summary)
    summary.pool_samples = int(eligible.sum())
    unscorable = np.zeros(len(uids), dtype=bool)
    for values in columns:
        unscorable |= ~np.isfinite(values)
    summary.unscorable = int((unscorable & eligible).sum())
    keep = _quality_stage(config, columns[0] if use_quality else None, uids, eligible, summary.pool_samples,
                          summary)
    summary.after_quality = int(keep.sum())
    quality_keep = keep
    if config.relevance is not None:
        want = math.floor(summary.pool_samples * (config.normsim_fraction or 0.0))
        if config.relevance == "d":
            keep = _normsim_d_stage(config, pool, cache, uids, keep, want)
        elif config.normsim_fraction is not None:
            keep = top_k_mask(columns[-1], uids, want, keep)
        else:
            keep = threshold_mask(columns[-1], config.normsim_threshold, keep)
    summary.kept = int(keep.sum())
    summary.seconds = time.perf_counter() - started
    stages = provenance.filter_stages(config, columns, use_quality, eligible, quality_keep, keep)
    provenance.save_with_sidecar(config.save_path, lambda: save_uid_file(config.save_path, uids[keep]),
                                 provenance.filter_record(config, pool, cache, summary, stages))
    return summary
