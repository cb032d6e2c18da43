"""The engine contract: run "score one shard" over many shards, so that every shard's scores are cached.

The score cache is the hand-off. An engine only fills the cache; the caller (``pipeline.score_pool``) then
reads every shard's uids and scores from the cache in shard order and selects from them, so the uid file
never depends on the engine, its number of workers or where they ran, and a killed run resumes where it
stopped. That is also why results may arrive in any order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from datacomp_plugins.core.cache import ScoreCache
from datacomp_plugins.core.pool import Pool, Shard
from datacomp_plugins.scores.base import Score
from datacomp_plugins.scores.shard import ShardResult, cached_rows


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to score shards (picklable, so it travels to processes and Ray actors)."""

    pool: Pool
    cache: ScoreCache
    scores: tuple[Score, ...]


@dataclass(frozen=True)
class EngineOptions:
    """The run's engine settings: the shared ones, and ``params``, the engine's own (its ``params`` class
    filled from the flags or recipe; None for an engine without settings)."""

    num_workers: int = 1  # CPU workers (0 or 1: one)
    num_gpus: int = 0  # one worker per GPU when > 0
    params: Any = None


def engine_params(engine: Any) -> type | None:
    """The frozen dataclass of an engine's own settings (its ``params`` attribute), or None."""
    return getattr(engine, "params", None)


class Engine(Protocol):
    """Maps "score one shard" (``scores.shard.score_shard``) over shards.

    Contract:

    * :meth:`score` yields one :class:`ShardResult` per shard it is given, as each completes, in any order.
      It only has to leave every shard's uids and scores in ``job.cache``; nothing else it returns is used
      for selection.
    * :attr:`uncached_only` says which shards it is given. True: only those the cache lacks, checked by the
      caller in the main process (:func:`uncached_shards`), so an all-cached rerun calls :meth:`score` with
      no shards, and the engine must then start no worker and connect to nothing; progress counts those
      shards only. False: every shard of the pool, and the engine checks the cache itself (``score_shard``
      computes only what is missing) and yields a result for cached shards too.
    * Cancellation: when the caller stops early (an exception, KeyboardInterrupt, SIGTERM turned into one by
      ``procs.terminate_as_interrupt``) the generator is closed or the exception is raised inside it; the
      engine must then stop its workers (terminate processes, kill actors), not wait for them, and release
      what it started.
    * Workers call ``datacomp_plugins.runtime.configure()`` before they import torch.
    * Optional: ``params`` (class attribute), a frozen dataclass of ``scores.base.setting`` fields, the
      engine's own settings (flags, recipe keys, range checks; handed over as ``options.params``);
      ``check(params)`` for checks beyond ranges; ``local_gpus = True`` when its workers use this machine's
      GPUs, so ``--num_gpus`` is checked against them before the run.
    """

    @property
    def uncached_only(self) -> bool:
        """True: hand over only the shards the cache lacks; False: every shard."""
        ...

    def score(self, job: Job, shards: Sequence[Shard], options: EngineOptions) -> Iterator[ShardResult]:
        """Score ``shards`` into ``job.cache``, yielding each shard's result as it completes."""
        ...


def uncached_shards(job: Job, shards: Sequence[Shard]) -> list[Shard]:
    """The shards whose uids or any requested score are missing from the cache (or fail their checks)."""
    return [shard for shard in shards if cached_rows(job.cache, shard, job.scores) is None]
