"""NormSim_2-D: the dynamic variant that needs no target set (Wang et al. 2024; README "Filtering a DataComp pool").

S starts as the quality-stage survivors S0. Each iteration scores every x in S by xᵀΣx with
Σ = Σ_{y∈S} y yᵀ and drops the lowest-scoring share, until the target size remains.

Memory: S0's image embeddings are spilled once to a memory-mapped float16 file (2·d bytes per sample:
1.5 KB for L/14, about 1.43 GiB per million samples), read back in chunks each iteration, so RAM holds only
indices, uids and scores (about 40 bytes per sample) plus one chunk. Σ is kept in float64 and updated by
subtracting the dropped samples' outer products, which is exact up to float64 rounding and costs only
|dropped|·d² per iteration; the scoring pass (2·d² FLOP per surviving sample per iteration) is the cost.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.pool import Pool, Shard
from datacomp_plugins.core.procs import owned_name, sweep_stale
from datacomp_plugins.core.progress import disable as progress_disable
from datacomp_plugins.select.masks import top_k_mask

if TYPE_CHECKING:
    import torch

CHUNK_ROWS = 65536
# S0 is held as one float32 tensor up to this size (4 bytes·d per sample), else streamed from the spill file.
RESIDENT_BYTES = int(os.environ.get("DATACOMP_PLUGINS_RESIDENT_BYTES", 4 << 30))


def drop_schedule(start: int, target: int, iterations: int) -> list[int]:
    """How many samples each iteration drops: equal shares (differing by at most one) of start - target.

    Capped so every iteration drops at least one sample (a small pool cannot use 500 iterations).
    """
    total = max(0, start - target)
    steps = max(1, min(iterations, total)) if total else 0
    base, extra = divmod(total, steps) if steps else (0, 0)
    return [base + (1 if i < extra else 0) for i in range(steps)]


class _Rows:
    """Row access to S0: one float32 tensor when it fits ``RESIDENT_BYTES``, else chunked memmap reads."""

    def __init__(self, embeddings: np.ndarray, device: str) -> None:
        import torch

        self.device = device
        self.embeddings = embeddings
        self.resident = None
        if embeddings.shape[0] * embeddings.shape[1] * 4 <= RESIDENT_BYTES:
            self.resident = torch.from_numpy(np.asarray(embeddings, dtype=np.float32)).to(device)

    def chunks(self, index: np.ndarray) -> Iterator[tuple[slice, torch.Tensor]]:
        import torch

        for start in range(0, len(index), CHUNK_ROWS):
            part = index[start : start + CHUNK_ROWS]
            if self.resident is not None:
                rows = self.resident[torch.from_numpy(part).to(self.device)]
            else:
                rows = torch.from_numpy(np.asarray(self.embeddings[part], dtype=np.float32)).to(self.device)
            yield slice(start, start + len(part)), rows

    def gather(self, index: np.ndarray) -> torch.Tensor:
        return torch_cat([rows for _, rows in self.chunks(index)], self.embeddings.shape[1], self.device)


def torch_cat(parts: list, dim: int, device: str) -> torch.Tensor:
    import torch

    return torch.cat(parts) if parts else torch.zeros((0, dim), device=device)


def iterate(embeddings: np.ndarray, uids: np.ndarray, target: int, iterations: int, device: str = "cpu",
            progress: bool = False) -> np.ndarray:
    """Run NormSim_2-D on ``embeddings`` (rows of S0, any float array or memmap); returns the kept mask.

    Scores are exact xᵀΣx of the current set. Each iteration takes the cheaper of two exact routes:
    recompute every score through Σ (2·d² FLOP per sample), or, when fewer than d samples were dropped,
    subtract their contributions Σ_dropped (x·y)² (2·d·|dropped| FLOP per sample) — on small pools and
    late iterations the second is many times cheaper. Σ is float64, updated by subtracting the dropped
    samples' outer products. Ties: the smaller uid stays, as everywhere.
    """
    import torch

    n, dim = embeddings.shape
    rows = _Rows(embeddings, device)
    alive = np.arange(n)
    gram = torch.zeros((dim, dim), dtype=torch.float64, device=device)
    for _, block in rows.chunks(alive):
        gram += block.double().T @ block.double()
    scores = torch.zeros(0, dtype=torch.float64, device=device)
    dropped = torch.zeros((0, dim), device=device)
    pending: list[np.ndarray] = []  # dropped since Σ was last brought up to date
    for number, drop in enumerate(tqdm(drop_schedule(n, target, iterations), desc="normsim_d", unit="iter",
                                       disable=progress_disable(progress))):
        if number == 0 or len(dropped) >= dim:
            if pending:  # Σ of the current set, from all drops since the last full pass in one product
                gone = rows.gather(np.concatenate(pending)).double()
                gram -= gone.T @ gone
                pending = []
            sigma = gram.float()
            scores = torch_cat([((block @ sigma) * block).sum(dim=1).double() for _, block in rows.chunks(alive)],
                               0, device).reshape(-1)
        else:
            for where, block in rows.chunks(alive):
                scores[where] -= (block @ dropped.T).square().sum(dim=1).double()
        keep = top_k_mask(scores.cpu().numpy(), uids[alive], len(alive) - drop)
        pending.append(alive[~keep])
        dropped = rows.gather(pending[-1])
        alive, scores = alive[keep], scores[torch.from_numpy(keep).to(device)]
    mask = np.zeros(n, dtype=bool)
    mask[alive] = True
    return mask


def _reserve(handle, nbytes: int, folder: str) -> None:
    """Allocate the spill's blocks now: a memory map written on a full disk dies of SIGBUS, with no message."""
    try:
        os.posix_fallocate(handle.fileno(), 0, nbytes)
    except AttributeError:  # not on this system: the memmap's own write reports what it can
        return
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # filesystem without fallocate
            return
        raise PluginError(f"{folder}: no room for the normsim_d spill of {nbytes / 2**30:.2f} GiB "
                          f"({exc.strerror}); free space there or use another --cache_dir") from None


@contextlib.contextmanager
def spill_image_embeddings(pool: Pool, shards: Sequence[Shard], rows_per_shard: Sequence[np.ndarray], key: str,
                           dim: int, folder: str, progress: bool = False) -> Iterator[tuple[np.memmap, np.ndarray]]:
    """Copy the chosen rows of each shard's ``key`` array into one float16 memmap, deleted on exit.

    Rows with non-finite embeddings are left out (they can never be selected); the second value marks,
    over all chosen rows in order, which ones were kept. The file's name records its owner process, so a
    run killed outright (SIGKILL) leaves a spill the next run deletes (procs.sweep_stale); SIGTERM and
    Ctrl-C unwind through this block and delete it at once.
    """
    total = sum(len(r) for r in rows_per_shard)
    os.makedirs(folder, exist_ok=True)
    sweep_stale(folder, ("normsim_d-",), suffix=".f16")
    with tempfile.NamedTemporaryFile(prefix=owned_name("normsim_d-"), suffix=".f16", dir=folder) as handle:
        _reserve(handle, max(total, 1) * dim * 2, folder)
        spill = np.memmap(handle, dtype=np.float16, mode="w+", shape=(max(total, 1), dim))
        finite = np.zeros(total, dtype=bool)
        seen = written = 0
        for shard, rows in tqdm(list(zip(shards, rows_per_shard, strict=True)), desc="normsim_d: reading S0",
                                unit="shard", disable=progress_disable(progress)):
            if len(rows) == 0:
                continue
            image = pool.read_embeddings(shard, [key], pool.num_rows(shard))[key][rows]
            ok = np.isfinite(image).all(axis=1)
            finite[seen : seen + len(rows)] = ok
            spill[written : written + int(ok.sum())] = image[ok]
            seen += len(rows)
            written += int(ok.sum())
        yield spill[:written], finite
        del spill
