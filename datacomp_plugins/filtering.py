"""The filter pipeline: validate, score every shard (cached), select globally, write the uid file.

This is the one entry point that both our command line and the DataComp ``baselines.py`` patch call, so
the two produce byte-identical uid files for the same flags.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from datacomp_plugins import provenance, ranges
from datacomp_plugins.engines import EngineOptions, Job, engine_names, get_engine, uncached_shards
from datacomp_plugins.errors import PluginError
from datacomp_plugins.fileio import check_folder_writable, check_writable
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
PRECISIONS = ("fp32", "bf16", "fp16", "auto")  # auto: the faster of fp32/bf16 here, measured (precision.py)
# --missing_score: what to do with pool samples that --external_scores has no score for
MISSING_SCORE = ("drop", "error")
ENGINES = engine_names()  # the built-ins, then engines installed packages add (datacomp_plugins.engines)


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
    batch_size: int = 0  # 0: automatic (metrics.BLOCK_BYTES of logits at once)
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
    missing_score: str = "drop"
    allow_empty: bool = False
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
    missing_scores: int = 0
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
    for spec in dataclasses.fields(config):  # a recipe or the Python API may hand over any type
        value = getattr(config, spec.name)
        kind = str(spec.type)
        if kind.startswith("str") and not (isinstance(value, str) or (value is None and "None" in kind)):
            raise PluginError(f"--{spec.name} {value!r}: expected a string (a name or a path)")
    if config.name not in BASELINES:
        raise PluginError(f"--name {config.name}: unknown baseline; choose from {sorted(BASELINES)}")
    if config.arch not in ARCH_DIMS:
        raise PluginError(f"--arch {config.arch}: expected one of {sorted(ARCH_DIMS)}")
    if (config.fraction is None) == (config.threshold is None):
        raise PluginError("exactly one of --fraction and --threshold is required")
    check_numbers(config)
    if config.quality_score not in QUALITY_SCORES:
        raise PluginError(f"--quality_score {config.quality_score}: expected one of {list(QUALITY_SCORES)}")
    _validate_relevance(config)
    external = (config.external_scores, config.external_column, config.external_fraction)
    if any(v is not None for v in external) and any(v is None for v in external):
        raise PluginError("--external_scores, --external_column and --external_fraction go together")
    if config.missing_score not in MISSING_SCORE:
        raise PluginError(f"--missing_score {config.missing_score}: expected one of {list(MISSING_SCORE)}")
    for flag in ("streaming", "allow_empty", "progress"):
        if not isinstance(getattr(config, flag), bool):
            raise PluginError(f"--{flag} {getattr(config, flag)!r}: expected true or false")
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
    refuse_input_as_output(config)
    check_writable(config.save_path)
    check_folder_writable(config.cache_dir or default_cache_dir(), "--cache_dir")


# Every number of a filter run and its range (datacomp_plugins.ranges): checked before any work, whoever
# built the config (command line, recipe, DataComp's patched baselines.py).
NUMBER_RANGES = {
    "fraction": ranges.FRACTION,
    "threshold": ranges.THRESHOLD,
    "num_workers": ranges.NUM_WORKERS,
    "num_gpus": ranges.NUM_GPUS,
    "batch_size": ranges.BLOCK_ROWS,
    "num_batches": ranges.NUM_BATCHES,
    "negcliploss_batch_size": ranges.NEGCLIPLOSS_BATCH_SIZE,
    "temperature": ranges.TEMPERATURE,
    "seed": ranges.SEED,
    "normsim_fraction": ranges.FRACTION,
    "normsim_threshold": ranges.THRESHOLD,
    "normsim_d_iters": ranges.NORMSIM_D_ITERS,
    "external_fraction": ranges.FRACTION,
}


def check_numbers(config: FilterConfig) -> None:
    """Range-check every numeric setting (a recipe or the Python API may hand over any type)."""
    for name, allowed in NUMBER_RANGES.items():
        allowed.check(getattr(config, name), f"--{name}")


def refuse_input_as_output(config: FilterConfig, extra_inputs: tuple[str, ...] = ()) -> None:
    """Refuse a --save_path that is one of the run's inputs, before anything is read.

    The output is renamed over its path at the end, so writing onto a pool shard, the target or a uid file
    the run restricts to would destroy an input (and, for a cached score, go unnoticed until the next run).
    """
    from datacomp_plugins.fileio import is_local, local_path

    if not is_local(config.save_path):
        return
    out = os.path.realpath(local_path(config.save_path))
    inputs = [(flag, value) for flag, value in (
        ("--target", config.target), ("--external_scores", config.external_scores)) if value]
    inputs += [("--given_uids", path) for path in (config.given_uids.split("::") if config.given_uids else [])]
    inputs += [("recipe union file", path) for path in extra_inputs]
    for flag, path in inputs:
        if not is_local(path):
            continue
        real = os.path.realpath(local_path(path))
        if out == real or (os.path.isdir(real) and out.startswith(real.rstrip(os.sep) + os.sep)):
            raise PluginError(f"--save_path {config.save_path}: is the {flag} input {path}; choose another "
                              "output path (writing there would replace the input)")
    if is_local(config.metadata_dir):
        pool = os.path.realpath(local_path(config.metadata_dir))
        if os.path.dirname(out) == pool and out.endswith((".parquet", ".npz")):
            raise PluginError(f"--save_path {config.save_path}: is a shard file of --metadata_dir "
                              f"{config.metadata_dir}; choose another output path")


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
    """Make sure every shard has every score cached; returns how many shards needed computing.

    Whichever ``--engine`` scores, selection afterwards reads the cache in shard order, so the engine never
    changes a uid file (see datacomp_plugins.engines.base).
    """
    engine = get_engine(config.engine)
    job = Job(pool, cache, scores)
    shards = pool.shards
    if engine.uncached_only:  # e.g. Ray: an all-cached rerun then connects to no cluster
        shards = uncached_shards(job, shards)
    results = engine.score(job, shards, EngineOptions(config.num_workers, config.num_gpus, config.ray_address))
    computed = 0
    try:
        for result in tqdm(results, total=len(shards), desc=f"scoring {config.name}", unit="shard",
                           disable=not config.progress):
            computed += bool(result.computed)
    finally:  # stops the engine's workers now on an error or Ctrl-C, not when the generator is collected
        close = getattr(results, "close", None)
        if close is not None:
            close()
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
    if config.name == "clip_score" and config.fraction is not None:
        keep, _ = datacomp_fraction_mask(values, math.floor(pool_samples * config.fraction), eligible)
    elif config.fraction is not None:
        want = math.floor(pool_samples * config.fraction)
        keep = top_k_mask(values, uids, want, eligible)
        if keep.sum() < want:
            summary.notes.append(f"only {int(keep.sum())} scorable samples for the {want} asked")
    else:
        keep = threshold_mask(values, config.threshold, eligible)
    summary.notes.append(describe_stage(config.quality, values, eligible, keep,
                                        config.threshold if config.fraction is None else None))
    return keep


def datacomp_fraction_mask(values: np.ndarray, n: int, eligible: np.ndarray) -> tuple[np.ndarray, float | None]:
    """DataComp's CLIPScore rule (``apply_filter.get_threshold``): the cut-off is the (n+1)-th highest score
    and every score >= it is kept, so n + 1 samples plus any tied with the cut-off.

    The comparison baseline must select what DataComp's ``baselines.py --name clip_score`` selects, byte for
    byte, so the comparison runs in the column's stored dtype, as pandas does there. Where DataComp fails
    (n at or beyond the scorable samples: an IndexError, or a NaN cut-off that keeps nothing) every scorable
    sample is kept.
    """
    ok = eligible & np.isfinite(values)
    finite = values[ok]
    if n >= len(finite):
        return ok, None
    position = len(finite) - 1 - n
    cutoff = np.partition(finite, position)[position]
    with np.errstate(invalid="ignore"):
        return ok & (values >= cutoff), cutoff


def describe_stage(name: str, values: np.ndarray, eligible: np.ndarray | None, keep: np.ndarray | None,
                   threshold: float | None, sampled: bool = False, source: str = "--threshold") -> str:
    """Quantiles of a stage's scores and its cut-off, so a threshold that keeps nothing (or all) shows why."""
    finite = values[eligible & np.isfinite(values)] if eligible is not None else values[np.isfinite(values)]
    if len(finite) == 0:
        return f"{name}: no finite scores"
    q = np.quantile(finite.astype(np.float64), [0.0, 0.25, 0.5, 0.75, 1.0])
    kept = values[keep & np.isfinite(values)] if keep is not None else finite[:0]
    if threshold is not None:
        cut = f"cut-off {threshold:.6g} ({source})"
    elif len(kept):
        cut = f"cut-off {float(kept.min()):.6g} (lowest kept)"
    else:
        cut = "cut-off: none (nothing kept)"
    label = " (sampled)" if sampled else ""
    return (f"{name} scores{label} min/25%/50%/75%/max " + "/".join(f"{v:.4g}" for v in q) + f"; {cut}")


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
                                cache.spill, config.progress) as (spill, finite):
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
    from datacomp_plugins.uids import load_uid_file, to_hex

    unique = eligible
    for path in (config.given_uids.split("::") if config.given_uids else []):
        given = load_uid_file(path)
        inside = isin(uids, given) & unique
        summary.notes.append(f"{path}: {len(given)} uids, {len(given) - int(inside.sum())} not in the pool")
        eligible = eligible & inside
    if config.external_scores:
        values = external_scores(config.external_scores, config.external_column, uids)
        missing = eligible & np.isnan(values)  # the file's own values are all finite
        if missing.any() and config.missing_score == "error":
            first = to_hex(uids[np.flatnonzero(missing)[:1]])[0].decode()
            raise PluginError(f"--external_scores {config.external_scores}: no score for {int(missing.sum())} of "
                              f"{int(eligible.sum())} pool samples (first: uid {first}); expected one per sample "
                              "with --missing_score error (--missing_score drop leaves them out)")
        summary.missing_scores = int(missing.sum())
        summary.notes.append(f"{config.external_scores}: no score for {int(missing.sum())} pool samples"
                             + (" (dropped)" if missing.any() else ""))
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
    theirs = parse_hex(table.column("uid"), source=f"--external_scores {path}", column="uid")
    values = table.column(column)
    if values.null_count:
        nulls = np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))
        raise PluginError(f"--external_scores {path}: column {column!r} is empty (null) at row {int(nulls[0])} "
                          f"({len(nulls)} such rows); expected a finite number for every uid listed")
    scores = values.to_numpy(zero_copy_only=False).astype(np.float64)
    bad = ~np.isfinite(scores)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise PluginError(f"--external_scores {path}: column {column!r} is {scores[rows[0]]} at row {int(rows[0])} "
                          f"({len(rows)} non-finite rows); expected a finite number for every uid listed "
                          "(leave a sample out of the file to give it no score)")
    row = index_in(uids, theirs)
    return np.where(row >= 0, scores[row], np.nan)


def _is_numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)


def clip_score_column(pool: Pool, arch: str, progress: bool = False) -> np.ndarray:
    """DataComp's ``clip_<arch>_similarity_score`` of the whole pool in shard order, in its stored dtype."""
    from datacomp_plugins.scoring import numeric_column

    column = f"clip_{arch}_similarity_score"
    parts = [_shard_clip_scores(pool, shard, column, numeric_column)
             for shard in tqdm(pool.shards, desc="reading clip scores", unit="shard", disable=not progress)]
    return np.concatenate(parts) if parts else np.zeros(0)


def _shard_clip_scores(pool: Pool, shard, column: str, numeric_column) -> np.ndarray:
    values = pool.read_columns(shard, [column]).column(column).to_numpy(zero_copy_only=False)
    return numeric_column(values, shard.parquet, column)


def _run_streaming(config: FilterConfig, pool: Pool, cache: ScoreCache, score: Score | None, summary: Summary,
                   started: float) -> Summary:
    """Quality-stage selection in passes over the cached score files (see streaming.py): bounded memory.

    ``score`` None: --name clip_score, whose values are DataComp's parquet column read shard by shard.
    """
    from datacomp_plugins.scoring import numeric_column
    from datacomp_plugins.streaming import kth_largest_streaming, threshold_streaming, top_k_streaming

    column = f"clip_{config.arch}_similarity_score"

    def shards():
        for shard in pool.shards:
            uids = cache.load_uids(shard, verify=False)  # scoring verified every file already
            if score is None:
                yield uids, _shard_clip_scores(pool, shard, column, numeric_column)
            else:
                yield uids, np.asarray(cache.load_score(shard, score, len(uids), verify=False))

    rows = unscorable = 0
    sample = []
    for _, values in shards():
        rows += len(values)
        unscorable += int((~np.isfinite(values)).sum())
        sample.append(np.asarray(values[:: max(1, len(values) // 4096)], dtype=np.float64))
    summary.pool_rows = summary.pool_samples = rows
    summary.unscorable = unscorable
    cutoff = config.threshold
    if config.fraction is not None and score is None:  # DataComp's rule: the (n+1)-th best, then >=
        n = math.floor(rows * config.fraction)
        cutoff = kth_largest_streaming(shards, n + 1)
        kept = threshold_streaming(shards, cutoff) if cutoff is not None else top_k_streaming(shards, rows)
    elif config.fraction is not None:
        kept = top_k_streaming(shards, math.floor(rows * config.fraction))
    else:
        kept = threshold_streaming(shards, config.threshold)
    values = np.concatenate(sample) if sample else np.zeros(0)
    note = describe_stage(config.quality, values, None, None, cutoff, sampled=True,
                          source="--threshold" if config.fraction is None else "the (floor(N*F)+1)-th best score")
    if cutoff is None and config.fraction is not None:
        note = note.replace("; cut-off: none (nothing kept)", "; cut-off: the fraction's boundary score")
    summary.notes.append(note)
    refuse_empty(config, len(kept), summary)
    summary.notes.append("streaming selection (duplicate uids merged in the output only)")
    summary.kept = summary.after_quality = provenance.save_with_sidecar(
        config.save_path, lambda: save_uid_file(config.save_path, kept),
        provenance.filter_record(config, pool, cache, summary, []))
    summary.seconds = time.perf_counter() - started
    return summary


def run_filter(config: FilterConfig) -> Summary:
    """Run one baseline end to end and write ``config.save_path``; returns the run's summary.

    SIGTERM unwinds like Ctrl-C (procs.terminate_as_interrupt): workers are terminated and temporaries
    deleted, also when DataComp's patched ``baselines.py`` calls this directly.
    """
    from datacomp_plugins import runtime
    from datacomp_plugins.fileio import ENVIRONMENT_ERRNOS
    from datacomp_plugins.procs import terminate_as_interrupt

    runtime.configure()  # also when DataComp's patched baselines.py calls this without our command line
    with terminate_as_interrupt():
        try:
            return _run_filter(config)
        except OSError as exc:  # a write the helpers did not name (disk full, read-only): the user's to fix
            if exc.errno not in ENVIRONMENT_ERRNOS:
                raise
            raise PluginError(f"{exc.filename or 'a file'}: {exc.strerror or exc}") from None


def _precision(config: FilterConfig) -> tuple[FilterConfig, str | None]:
    """Resolve ``--precision auto`` (a short probe) and warn once when bf16 will be slow on this CPU."""
    from datacomp_plugins import precision

    device = "cuda" if config.num_gpus > 0 else "cpu"
    use_quality = not (config.fraction == 1.0 and config.relevance is not None)
    products = config.relevance in ("2", "inf") or (use_quality and config.quality == "negcliploss")
    if not products:  # clip_score (and normsim_d's own stage) multiply nothing in --precision
        return (dataclasses.replace(config, precision="fp32"), None) if config.precision == "auto" else (config, None)
    if config.precision == "bf16" and (warning := precision.bf16_warning(device)):
        print(warning, file=sys.stderr)
    chosen, note = precision.resolve(config.precision, device)
    return dataclasses.replace(config, precision=chosen), note


def _run_filter(config: FilterConfig) -> Summary:
    started = time.perf_counter()
    validate(config)
    config, precision_note = _precision(config)
    pool = Pool(config.metadata_dir)
    cache = ScoreCache(config.cache_dir or default_cache_dir(), pool)
    cache.sweep()
    use_quality = not (config.fraction == 1.0 and config.relevance is not None)
    # --name clip_score reads DataComp's column itself, in its stored dtype (see datacomp_fraction_mask)
    direct = config.name == "clip_score"
    scores: list[Score] = [quality_score(config, config.quality)] if use_quality and not direct else []
    if config.relevance in ("2", "inf"):
        scores.append(_relevance_score(config, cache, pool))
    summary = Summary(config.name, shards=len(pool.shards))
    if precision_note:
        summary.notes.append(precision_note)
    summary.shards_scored = score_pool(pool, cache, tuple(scores), config)
    if config.streaming:
        return _run_streaming(config, pool, cache, None if direct else scores[0], summary, started)
    uids, columns = gather(pool, cache, tuple(scores))
    if direct:
        columns = [clip_score_column(pool, config.arch, config.progress)]
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
        survivors = keep
        if config.relevance == "d":
            keep = _normsim_d_stage(config, pool, cache, uids, keep, want)
            summary.notes.append("normsim_d: no single cut-off (iterative selection)")
        else:
            if config.normsim_fraction is not None:
                keep = top_k_mask(columns[-1], uids, want, keep)
            else:
                keep = threshold_mask(columns[-1], config.normsim_threshold, keep)
            summary.notes.append(describe_stage(f"normsim{config.relevance}", columns[-1], survivors, keep,
                                                config.normsim_threshold))
    refuse_empty(config, int(keep.sum()), summary)
    summary.kept = int(keep.sum())
    summary.seconds = time.perf_counter() - started
    stages = provenance.filter_stages(config, columns, use_quality, eligible, quality_keep, keep)
    provenance.save_with_sidecar(config.save_path, lambda: save_uid_file(config.save_path, uids[keep]),
                                 provenance.filter_record(config, pool, cache, summary, stages))
    return summary


def refuse_empty(config: FilterConfig, kept: int, summary: Summary) -> None:
    """Keeping nothing is almost always a wrong --threshold or broken scores: stop unless --allow_empty."""
    if kept or config.allow_empty:
        return
    details = "; ".join(summary.notes)
    raise PluginError(f"--name {config.name}: no sample of the {summary.pool_samples} kept ({details}); nothing "
                      f"written to {config.save_path}. Check --threshold/--normsim_threshold against the "
                      "scores above, or pass --allow_empty to write an empty uid file")
