"""``--engine ray``: score shards with Ray actors, on this machine or on a Ray cluster.

The engine only fills the score cache (see :mod:`datacomp_plugins.engines.base`); selection then runs in the
main process from the cache, so the uid file is byte-identical to ``--engine local`` for the same inputs
and seed (each shard's random batches come from the seed and the shard's name, not from a worker).

Where things must live on a multi-node cluster:

* ``--metadata_dir`` may be any fsspec URL every node can read (``s3://``, ``gs://``, a shared mount):
  workers open the shards themselves through fsspec; install ``s3fs`` or ``gcsfs`` on every node.
* ``--cache_dir`` must be a filesystem path that every node and the driver see at the same place (NFS,
  Lustre, a FUSE mount of a bucket): the score cache and the materialised target set are plain files
  written with ``os``, not URLs, and the cache is how scores travel back to the driver.
* ``datacomp-plugins`` itself (and torch) must be installed on every node.

Without ``--ray_address`` or ``$RAY_ADDRESS`` a private local Ray instance is started and shut down again;
``--ray_address auto`` joins a cluster started with ``ray start`` on this machine. A Ray session the caller
already opened (``ray.init`` in a notebook) is reused and left running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.pool import Shard
from datacomp_plugins.core.procs import sweep_stale
from datacomp_plugins.core.registry import EXTRAS
from datacomp_plugins.engines.base import EngineOptions, Job
from datacomp_plugins.scores.base import setting
from datacomp_plugins.scores.shard import ShardResult, score_shard

INSTALL_HINT = f"--engine ray: {EXTRAS.hint('ray')}"  # one table of extras: core/registry.py
CONNECT_TIMEOUT_S = 5.0
SHARD_RETRIES = 2  # a shard whose worker is lost is scored again this many times before the run fails


class _Scorer:
    """One worker: holds the job (fetched once from the object store) and scores shards one at a time.

    An actor rather than a task per shard: torch is imported, threads are set and (on a GPU) CUDA is
    initialised once per worker, and Ray keeps its GPU for the whole run.
    """

    def __init__(self, job: Job, threads: int, gpu: bool) -> None:
        from datacomp_plugins import runtime

        runtime.configure()  # before torch is loaded in this Ray worker process
        import torch

        if gpu:  # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU, so the scores' "cuda" is that GPU
            threads = _node_threads_per_gpu()
        torch.set_num_threads(threads)
        self.job = job

    def score(self, shard: Shard) -> ShardResult:
        return score_shard(self.job.pool, self.job.cache, shard, self.job.scores)


def _node_threads_per_gpu() -> int:
    """This node's cores shared evenly among its GPUs (each GPU worker reads and decodes its shards)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            resources = node.get("Resources", {})
            return max(1, int(resources.get("CPU", 1)) // max(1, int(resources.get("GPU", 1))))
    return 1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise PluginError(INSTALL_HINT) from None
    return ray


def _check_reachable(target: str, source: str) -> None:
    """Fail in seconds on an address where nothing listens (Ray itself keeps retrying for minutes)."""
    if target in ("auto", "local"):
        return
    hostport = target.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep:
        host, port = hostport, "6379"  # Ray's default GCS port
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except ValueError:
        raise PluginError(f"{source} {target}: expected host:port, ray://host:port or auto") from None
    except OSError as exc:
        raise PluginError(f"{source} {target}: no Ray cluster reachable there ({exc}); start one with "
                          "`ray start --head`, or leave out --ray_address to run a local one") from None


def _connect(ray: Any, address: str | None) -> bool:
    """Join ``address`` / ``$RAY_ADDRESS``, else start a private local instance; True if we must shut down."""
    if ray.is_initialized():
        return False
    target = address or os.environ.get("RAY_ADDRESS") or None
    quiet = {"ignore_reinit_error": True, "logging_level": logging.WARNING, "log_to_driver": False,
             "configure_logging": True}
    source = "--ray_address" if address else "$RAY_ADDRESS"
    if target is not None:
        _check_reachable(target, source)
    try:
        if target is None:
            ray.init(address="local", include_dashboard=False, **quiet)
        else:
            ray.init(address=target, **quiet)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
        reason = _first_line(exc)
        if target is None:
            raise PluginError(f"--engine ray: could not start a local Ray instance ({reason})") from None
        raise PluginError(f"{source} {target}: cannot connect to Ray ({reason}); start a cluster with "
                          "`ray start --head`, or leave out --ray_address to run a local one") from None
    return True


def _plan(ray: Any, shards: int, num_workers: int, num_gpus: int) -> tuple[int, int]:
    """(number of actors, CPUs each): what the cluster can actually hold, so no actor waits forever."""
    resources = ray.cluster_resources()
    if num_gpus > 0:
        available = int(resources.get("GPU", 0))
        if available < num_gpus:
            raise PluginError(f"--num_gpus {num_gpus}: the Ray cluster has {available} GPU(s); use "
                              "--num_gpus 0 for the CPU")
        return min(num_gpus, shards), 1
    node_cpus = [int(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    total = sum(node_cpus)
    if total < 1:
        raise PluginError("--engine ray: the Ray cluster has no CPUs to run workers on")
    workers = min(max(1, num_workers), shards, total)
    threads = max(1, min(max(node_cpus), total // workers))
    # more workers than the nodes can place (num_cpus=threads each) would wait forever, holding their shard
    return min(workers, sum(c // threads for c in node_cpus)), threads


def _unwrap(ray: Any, exc: BaseException, shard: Shard) -> BaseException:
    """The user's PluginError out of Ray's wrapper; a dead worker becomes a PluginError naming the shard."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, PluginError):
        return cause
    if getattr(exc, "actor_init_failed", False):  # the remote traceback ends with the real error
        lines = [line.strip().strip("'\"") for line in str(exc).splitlines() if line.strip()]
        return PluginError(f"--engine ray: a worker failed to start ({lines[-1] if lines else type(exc).__name__}); "
                           "is datacomp-plugins (with torch) installed on every node?")
    if isinstance(exc, ray.exceptions.RayActorError | ray.exceptions.WorkerCrashedError):
        return PluginError(f"--engine ray: the worker scoring shard {shard.stem} died ({_first_line(exc)}); "
                           "out of memory? use fewer --num_workers per node")
    return exc


def _worker_lost(ray: Any, exc: BaseException) -> bool:
    """Whether ``exc`` says the worker (its process or its node) is gone, not that the scoring failed."""
    if getattr(exc, "cause", None) is not None or getattr(exc, "actor_init_failed", False):
        return False
    kinds = tuple(getattr(ray.exceptions, name) for name in ("RayActorError", "WorkerCrashedError",
                                                             "NodeDiedError", "ActorUnavailableError")
                  if hasattr(ray.exceptions, name))
    return isinstance(exc, kinds)


def run_ray(job: Job, shards: Sequence[Shard], num_workers: int, num_gpus: int,
            address: str | None) -> Iterator[ShardResult]:
    """Score ``shards`` on Ray, yielding each result as it completes (order may vary; results do not).

    CPU: ``num_workers`` actors (0 or 1 means one), the cluster's cores split between them. GPU: one actor
    per GPU, ``num_gpus`` of them. One shard per actor is in flight at a time, which bounds memory.

    A worker lost with its node (or killed) hands its shard to the other workers, up to ``SHARD_RETRIES``
    times per shard, so a cluster that loses a node still finishes with the same uid file. A run that fails
    anyway resumes from the score cache: shards already scored are not scored again.
    """
    if not shards:
        return
    ray = _import_ray()
    owns = _connect(ray, address)
    actors: list[Any] = []
    try:
        count, threads = _plan(ray, len(shards), num_workers, num_gpus)
        gpu = num_gpus > 0
        job_ref = ray.put(job)
        remote = ray.remote(_Scorer).options(num_cpus=threads, num_gpus=1 if gpu else 0)
        actors = [remote.remote(job_ref, threads, gpu) for _ in range(count)]
        queue = list(reversed(shards))
        running: dict[Any, tuple[Any, Shard]] = {}
        idle: list[Any] = []
        lost: dict[str, int] = {}
        lost_shards: dict[str, Shard] = {}

        def dispatch(actor: Any) -> None:
            if queue:
                shard = queue.pop()
                running[actor.score.remote(shard)] = (actor, shard)
            else:
                idle.append(actor)

        for actor in actors:
            dispatch(actor)
        while running:
            (done,), _ = ray.wait(list(running), num_returns=1)
            actor, shard = running.pop(done)
            try:
                result = ray.get(done)
            except ray.exceptions.RayError as exc:
                if _worker_lost(ray, exc) and lost.get(shard.stem, 0) < SHARD_RETRIES:
                    # its node (or process) went away: the shard goes to another worker; the cache makes a
                    # second scoring of the same shard write the same bytes
                    lost[shard.stem] = lost.get(shard.stem, 0) + 1
                    lost_shards[shard.stem] = shard
                    print(f"note: --engine ray: the worker scoring shard {shard.stem} was lost "
                          f"({_first_line(exc)[:160]}); scoring it again on another worker", file=sys.stderr)
                    with contextlib.suppress(Exception):
                        ray.kill(actor)
                    actors.remove(actor)
                    queue.append(shard)
                    if not actors:  # every worker gone: one new one, placed wherever the cluster has room
                        actors.append(remote.remote(job_ref, threads, gpu))
                        idle.append(actors[-1])
                    while idle and queue:
                        dispatch(idle.pop())
                    continue
                unwrapped = _unwrap(ray, exc, shard)
                if unwrapped is exc:
                    raise
                raise unwrapped from None
            dispatch(actor)
            yield result
        for shard in lost_shards.values():  # temporaries a lost worker left in the cache, once it is gone
            sweep_stale(job.cache.folder(shard), (".",), suffix=".tmp")
    finally:
        for actor in actors:  # stops work still in flight after an error or an early stop
            ray.kill(actor)
        if owns:
            ray.shutdown()


@dataclass(frozen=True)
class Params:
    """The Ray engine's own settings (flags of ``filter``, keys of a recipe)."""

    ray_address: str | None = setting(None, "--engine ray: the Ray cluster to join; unset: $RAY_ADDRESS, else "
                                            "start a local one")


class RayEngine:
    """Ray actors on this machine or a cluster. It takes only the shards the cache lacks, so an all-cached
    rerun imports, starts and joins no Ray at all."""

    uncached_only = True
    params = Params

    def score(self, job: Job, shards: Sequence[Shard], options: EngineOptions) -> Iterator[ShardResult]:
        """Score ``shards`` on Ray, yielding each result as it completes (see :func:`run_ray`)."""
        address = options.params.ray_address if options.params is not None else None
        return run_ray(job, shards, options.num_workers, options.num_gpus, address)
