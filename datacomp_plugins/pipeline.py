"""One filter run, from settings to uid file: restrict the pool, score every shard (cached), select, write.

Every baseline goes through :func:`run_filter`: its stages come from the registry (config.Baseline, scores/),
never from a branch on its name. The command line, recipes and DataComp's patched ``baselines.py`` all call
it, so they produce byte-identical uid files for the same settings.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from datacomp_plugins import provenance, scores
from datacomp_plugins.config import Summary, validate
from datacomp_plugins.core.cache import ScoreCache, default_cache_dir
from datacomp_plugins.core.compute import decide
from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.pool import Pool
from datacomp_plugins.core.progress import disable as progress_disable
from datacomp_plugins.core.uids import UID_DTYPE, save_uid_file
from datacomp_plugins.runs import engine_options, params_of, relevance_cut, run_context
from datacomp_plugins.scores.base import RunContext, Score, ScoreSpec
from datacomp_plugins.select.masks import (
    datacomp_fraction_mask,
    first_occurrence,
    isin,
    threshold_mask,
    top_k_mask,
)


@dataclass(frozen=True)
class Plan:
    """What a run computes: its stages' score specs, decided from the settings alone."""

    quality: ScoreSpec | None  # None: --fraction 1.0 before a relevance stage (no quality stage)
    relevance: ScoreSpec | None
    exact: bool  # the quality stage alone on the values as DataComp stores them, cut by DataComp's rule

    @classmethod
    def of(cls, config) -> Plan:
        relevance = scores.get(config.relevance) if config.relevance is not None else None
        use_quality = not (config.fraction == 1.0 and relevance is not None)
        quality = scores.get(config.quality) if use_quality else None
        return cls(quality, relevance, relevance is None and quality is not None
                   and quality.provides("exact_values"))

    @property
    def products(self) -> bool:
        """Whether anything is multiplied in --precision (else ``auto`` needs no probe)."""
        return any(spec is not None and spec.products for spec in (self.quality, self.relevance))

    def shard_scores(self, config, run: RunContext) -> dict[str, Score]:
        """The per-shard scores to cache, by stage: the quality stage's (unless read exactly), the relevance's."""
        out = {}
        if self.quality is not None and not self.exact:
            out["quality"] = self.quality.shard_score(params_of(self.quality, config), run)
        if self.relevance is not None and self.relevance.provides("shard_score"):
            out["relevance"] = self.relevance.shard_score(params_of(self.relevance, config), run)
        return out


def shard_score(config, name: str, cache: ScoreCache | None = None) -> Score:
    """The cached per-shard score ``name`` with ``config``'s settings, as a run would build it (for compare,
    tools and tests; NormSim needs ``cache`` for its materialised target)."""
    spec = scores.get(name)
    return spec.shard_score(params_of(spec, config), run_context(config, cache=cache))


def score_pool(pool: Pool, cache: ScoreCache, shard_scores: tuple[Score, ...], engine_name: str = "local",
               options=None, progress: bool = True, label: str = "scoring") -> int:
    """Make sure every shard has every score cached, by engine ``engine_name`` with ``options`` (an
    EngineOptions); returns how many shards computed.

    Whichever ``--engine`` scores, selection afterwards reads the cache in shard order, so the engine never
    changes a uid file (see engines/base.py).
    """
    from datacomp_plugins.engines import EngineOptions, Job, get_engine, uncached_shards

    engine = get_engine(engine_name)
    job = Job(pool, cache, shard_scores)
    shards = pool.shards
    if engine.uncached_only:  # e.g. Ray: an all-cached rerun then connects to no cluster
        shards = uncached_shards(job, shards)
    results = engine.score(job, shards, options if options is not None else EngineOptions())
    computed = done = 0
    bar = None
    try:
        for result in results:
            done += 1
            computed += bool(result.computed)
            # the bar appears with the first shard actually scored: a run served from the cache shows none
            if bar is None and result.computed:
                bar = tqdm(total=len(shards), initial=done, desc=label, unit="shard",
                           disable=progress_disable(progress))
            elif bar is not None:
                bar.update(1)
    finally:  # stops the engine's workers now on an error or Ctrl-C, not when the generator is collected
        if bar is not None:
            bar.close()
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


def exact_column(spec: ScoreSpec, params, run: RunContext) -> np.ndarray:
    """A quality score's values for the whole pool in shard order, as DataComp stores them."""
    parts = [spec.exact_values(params, run, shard)
             for shard in tqdm(run.pool.shards, desc=f"reading {spec.name}", unit="shard",
                               disable=progress_disable(run.compute.progress))]
    return np.concatenate(parts) if parts else np.zeros(0)


def _quality_stage(config, plan: Plan, values: np.ndarray | None, uids: np.ndarray, eligible: np.ndarray,
                   pool_samples: int, summary: Summary) -> np.ndarray:
    if values is None:  # --fraction 1.0: no quality stage
        return eligible
    if plan.exact and config.fraction is not None:
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


def _restrict(config, uids: np.ndarray, eligible: np.ndarray, summary: Summary) -> np.ndarray:
    """Restrict the pool to other methods' selections before our stages (DFN's uid list, HYPE's scores).

    ``--given_uids A.npy::B.npy`` keeps pool samples in every file; then each registered restriction the
    run uses (``--external_scores``) cuts what remains. Our fractions are then shares of the restricted
    pool, as in the official code.
    """
    from datacomp_plugins.core.uids import load_uid_file

    unique = eligible
    for path in (config.given_uids.split("::") if config.given_uids else []):
        given = load_uid_file(path)
        inside = isin(uids, given) & unique
        summary.notes.append(f"{path}: {len(given)} uids, {len(given) - int(inside.sum())} not in the pool")
        eligible = eligible & inside
    for spec in scores.registry().values():
        if spec.role == "restriction" and spec.active(params := params_of(spec, config)):
            eligible, missing = spec.restrict(params, run_context(config), uids, eligible, summary.notes)
            summary.missing_scores += missing
    return eligible


def _run_streaming(config, plan: Plan, run: RunContext, score: Score | None, summary: Summary,
                   started: float) -> Summary:
    """Quality-stage selection in passes over the cached score files (see select/streaming.py): bounded memory.

    ``score`` None: the values as DataComp stores them (``plan.exact``), read shard by shard.
    """
    from datacomp_plugins.select.streaming import kth_largest_streaming, threshold_streaming, top_k_streaming

    pool, cache = run.pool, run.cache

    def shards():
        for shard in pool.shards:
            uids = cache.load_uids(shard, verify=False)  # scoring verified every file already
            if score is None:
                yield uids, plan.quality.exact_values(params_of(plan.quality, config), run, shard)
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
    summary.seconds = time.perf_counter() - started
    summary.kept = summary.after_quality = provenance.save_with_sidecar(
        config.save_path, lambda: save_uid_file(config.save_path, kept),
        provenance.filter_record(config, pool, cache, summary, []))
    return summary


def run_filter(config, validated: bool = False) -> Summary:
    """Run one baseline end to end and write ``config.save_path``; returns the run's summary.

    SIGTERM unwinds like Ctrl-C (procs.terminate_as_interrupt): workers are terminated and temporaries
    deleted, also when DataComp's patched ``baselines.py`` calls this directly. ``validated``: the caller
    already ran ``config.validate`` on these settings (a recipe checks them before its own work).
    """
    from datacomp_plugins import runtime
    from datacomp_plugins.core.errors import from_environment
    from datacomp_plugins.core.procs import terminate_as_interrupt

    runtime.configure()  # also when DataComp's patched baselines.py calls this without our command line
    with terminate_as_interrupt():
        try:
            return _run_filter(config, validated)
        except OSError as exc:  # a write the helpers did not name (disk full, read-only): the user's to fix
            error = from_environment(exc)
            if error is None:
                raise
            raise error from None


def _run_filter(config, validated: bool) -> Summary:
    started = time.perf_counter()
    if not validated:
        validate(config)
    plan = Plan.of(config)
    compute = decide(config.num_gpus, config.precision, config.batch_size, config.progress, plan.products)
    config = dataclasses.replace(config, precision=compute.precision)
    pool = Pool(config.metadata_dir)
    cache = ScoreCache(config.cache_dir or default_cache_dir(), pool)
    cache.sweep()
    run = run_context(config, compute, pool, cache)
    stage_scores = plan.shard_scores(config, run)
    summary = Summary(config.name, shards=len(pool.shards))
    if compute.note:
        summary.notes.append(compute.note)
    summary.shards_scored = score_pool(pool, cache, tuple(stage_scores.values()), config.engine,
                                       engine_options(config), config.progress, f"scoring {config.name}")
    if config.streaming:
        return _run_streaming(config, plan, run, stage_scores.get("quality"), summary, started)
    uids, gathered = gather(pool, cache, tuple(stage_scores.values()))
    columns = dict(zip(stage_scores, gathered, strict=True))
    if plan.exact:
        columns["quality"] = exact_column(plan.quality, params_of(plan.quality, config), run)
    quality_values, relevance_values = columns.get("quality"), columns.get("relevance")
    eligible = first_occurrence(uids)
    summary.pool_rows = len(uids)
    summary.duplicates = summary.pool_rows - int(eligible.sum())
    eligible = _restrict(config, uids, eligible, summary)
    summary.pool_samples = int(eligible.sum())
    unscorable = np.zeros(len(uids), dtype=bool)
    for values in columns.values():
        unscorable |= ~np.isfinite(values)
    summary.unscorable = int((unscorable & eligible).sum())
    keep = _quality_stage(config, plan, quality_values, uids, eligible, summary.pool_samples, summary)
    summary.after_quality = int(keep.sum())
    quality_keep = keep
    if plan.relevance is not None:
        keep = _relevance_stage(config, plan.relevance, run, uids, keep, relevance_values, summary)
    refuse_empty(config, int(keep.sum()), summary)
    summary.kept = int(keep.sum())
    summary.seconds = time.perf_counter() - started
    rule = None
    if plan.relevance is not None:
        rule = plan.relevance.rule(params_of(plan.relevance, config), relevance_cut(config))
    stages = provenance.filter_stages(config, quality_values, relevance_values, eligible, quality_keep, keep, rule)
    provenance.save_with_sidecar(config.save_path, lambda: save_uid_file(config.save_path, uids[keep]),
                                 provenance.filter_record(config, pool, cache, summary, stages))
    return summary


def _relevance_stage(config, spec: ScoreSpec, run: RunContext, uids: np.ndarray, survivors: np.ndarray,
                     values: np.ndarray | None, summary: Summary) -> np.ndarray:
    """The relevance stage among the quality stage's survivors: by its cached values, or by its own
    selection when it depends on the selected set (normsim_d)."""
    want = math.floor(summary.pool_samples * (config.relevance_fraction or 0.0))
    if spec.provides("select"):
        keep = spec.select(params_of(spec, config), run, uids, survivors, want)
        if spec.note:
            summary.notes.append(spec.note)
        return keep
    if config.relevance_fraction is not None:
        keep = top_k_mask(values, uids, want, survivors)
    else:
        keep = threshold_mask(values, config.relevance_threshold, survivors)
    summary.notes.append(describe_stage(config.relevance, values, survivors, keep, config.relevance_threshold,
                                        source="--relevance_threshold"))
    return keep


def refuse_empty(config, kept: int, summary: Summary) -> None:
    """Keeping nothing is almost always a wrong --threshold or broken scores: stop unless --allow_empty."""
    if kept or config.allow_empty:
        return
    details = "; ".join(summary.notes)
    raise PluginError(f"--name {config.name}: no sample of the {summary.pool_samples} kept ({details}); nothing "
                      f"written to {config.save_path}. Check --threshold/--relevance_threshold against the "
                      "scores above, or pass --allow_empty to write an empty uid file")
