"""``--engine local``: score shards in this process, or in a pool of worker processes on this machine.

The engine only fills the score cache (the contract is in :mod:`datacomp_plugins.engines.base`).
Workers split the machine's cores between them (torch intra-op threads) and, with ``num_gpus``, each
takes one GPU, as DataComp's own workers do. Workers are started only for shards the cache lacks, end with
their parent however it ends (see procs.py), and are terminated, not waited for, when the run is interrupted.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed

from datacomp_plugins import runtime
from datacomp_plugins.core.pool import Shard
from datacomp_plugins.core.procs import bind_to_parent
from datacomp_plugins.engines.base import EngineOptions, Job
from datacomp_plugins.scores.shard import (
    ShardResult,
    cached_rows,
    compute_shard,
    load_shard,
    score_shard,
)

_JOB: Job | None = None


def _init_worker(job: Job, threads: int, gpu_queue: mp.Queue | None, parent: int) -> None:
    global _JOB
    bind_to_parent(parent)
    runtime.configure()  # before torch is loaded in this fresh (spawned) process
    import torch

    torch.set_num_threads(threads)
    if gpu_queue is not None:  # "cuda" then means this worker's GPU; the cache key keeps saying "cuda"
        torch.cuda.set_device(gpu_queue.get())
    _JOB = job


def _work(shard: Shard) -> ShardResult:
    assert _JOB is not None
    return score_shard(_JOB.pool, _JOB.cache, shard, _JOB.scores)


def _run_prefetching(job: Job, shards: Sequence[Shard]) -> Iterator[ShardResult]:
    """One process: read shard i+1 in a thread while shard i computes (I/O and decompression overlap)."""
    if not shards:
        return
    with ThreadPoolExecutor(1) as reader:
        pending = reader.submit(load_shard, job.pool, job.cache, shards[0], job.scores)
        for following in [*shards[1:], None]:
            inputs = pending.result()
            if following is not None:
                pending = reader.submit(load_shard, job.pool, job.cache, following, job.scores)
            yield compute_shard(job.cache, inputs)


def _terminate(executor: ProcessPoolExecutor) -> None:
    """Stop the workers now: cancel what has not started and kill what is computing (nobody will read it)."""
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(5)
        if process.is_alive():
            process.kill()


def run_local(job: Job, shards: Sequence[Shard], num_workers: int, num_gpus: int = 0) -> Iterator[ShardResult]:
    """Score ``shards``, yielding each result as it completes (order may vary; results do not)."""
    workers = max(1, num_gpus if num_gpus > 0 else num_workers)
    if workers > 1:  # processes only for what the cache lacks: an all-cached rerun starts none
        todo = []
        for shard in shards:
            rows = cached_rows(job.cache, shard, job.scores)
            if rows is not None:
                yield ShardResult(shard.stem, rows, ())
            else:
                todo.append(shard)
        shards = todo
    workers = min(workers, max(1, len(shards)))
    if workers == 1:  # one process (and at most one GPU, the current one): run here
        yield from _run_prefetching(job, shards)
        return
    context = mp.get_context("spawn")
    gpu_queue = None
    if num_gpus > 0:
        gpu_queue = context.Queue()
        for gpu in range(workers):
            gpu_queue.put(gpu)
    threads = max(1, (os.cpu_count() or 1) // workers)
    executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                   initargs=(job, threads, gpu_queue, os.getpid()))
    try:
        futures = [executor.submit(_work, shard) for shard in shards]
        for future in as_completed(futures):
            yield future.result()
    except BaseException:  # an error, Ctrl-C, SIGTERM (procs.terminate_as_interrupt) or an abandoned generator
        _terminate(executor)
        raise
    executor.shutdown(wait=True)


class LocalEngine:
    """This machine: one process (reading ahead) or ``--num_workers`` spawn processes, one per GPU with GPUs.

    It takes every shard and checks the cache itself: one process reads the cache in the read-ahead thread
    while the previous shard computes, and several processes are started only for what the cache lacks.
    """

    uncached_only = False
    local_gpus = True  # --num_gpus is checked against this machine's GPUs

    def score(self, job: Job, shards: Sequence[Shard], options: EngineOptions) -> Iterator[ShardResult]:
        """Score ``shards``, yielding each result as it completes (see :func:`run_local`)."""
        return run_local(job, shards, options.num_workers, options.num_gpus)
