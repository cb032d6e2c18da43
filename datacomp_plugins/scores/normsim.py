"""NormSim_p: how similar a pool image is to a target set (Wang et al. 2024), a relevance score.

NormSim_2 is the Gram-matrix form sqrt(f^T (T^T T / m) f); NormSim_inf the best cosine similarity to any
target image. The target (``--target``: in1k or a file or folder of embeddings, see targets.py) is loaded,
checked and materialised once in the main process; workers read those files, and the cache key holds only
the target's content fingerprint.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.fileio import load_npy_checked
from datacomp_plugins.core.pool import ARCH_DIMS, Shard
from datacomp_plugins.scores.base import RunContext, Score, ScoreSpec, setting

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Params:
    """The target set of the NormSim scores."""

    target: str | None = setting(None, "normsim2/normsiminf: 'in1k' (DataComp's ImageNet-1k L/14 features) or a "
                                       ".npy/.npz/.pt file or folder of target image embeddings")
    target_key: str | None = setting(None, "array name inside a .npz target")


def _image_rows(embeddings: dict, key: str, device: str) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """Finite rows of an image-embedding array on ``device``; returns (row indices, tensor, NaN output)."""
    import torch

    image = embeddings[key]
    rows = np.flatnonzero(np.isfinite(image).all(axis=1))
    tensor = torch.from_numpy(np.ascontiguousarray(image[rows])).to(device=device, dtype=torch.float32)
    return rows, tensor, np.full(len(image), np.nan, dtype=np.float32)


@functools.lru_cache(maxsize=2)
def _matrix(path: str, device: str) -> torch.Tensor:
    """A materialised target or Gram matrix as float32 on ``device``, loaded (and CRC-checked) once per process.

    The main process verified (or wrote) it just before scoring; a mismatch here means it changed since.
    """
    import torch

    array = load_npy_checked(path, mmap=False)
    if array is None:
        raise PluginError(f"{path}: materialised target changed or vanished during the run; run again")
    return torch.from_numpy(array.astype(np.float32)).to(device)


@dataclass(frozen=True)
class NormSimScore(Score):
    """NormSim_p of pool images against a target set (p = 2 through the Gram matrix, or p = inf).

    The target travels as files (see targets.materialise); the cache key holds its content hash only.
    """

    arch: str = "l14"
    p: str = "2"
    target: str = ""  # content fingerprint of the target
    target_path: str = field(default="", metadata={"key": False})
    gram_path: str = field(default="", metadata={"key": False})
    block_rows: int = 4096
    device: str = "cpu"
    precision: str = "fp32"
    name: str = field(init=False, default="normsim")

    @property
    def column(self) -> str:
        return f"normsim{self.p}"

    @property
    def npz_keys(self) -> tuple[str, ...]:
        return (f"{self.arch}_img",)

    def compute(self, shard: Shard, columns: dict, embeddings: dict) -> np.ndarray:
        import torch

        from datacomp_plugins.scores.metrics import COMPUTE_DTYPES, normsim2, normsim_inf

        rows, image, out = _image_rows(embeddings, self.npz_keys[0], self.device)
        if len(rows):
            with torch.no_grad():
                dtype = COMPUTE_DTYPES[self.precision]
                if self.p == "2":
                    values = normsim2(image, _matrix(self.gram_path, self.device), dtype)
                else:
                    target = _matrix(self.target_path, self.device)
                    values = torch.cat([normsim_inf(image[i : i + self.block_rows], target, compute_dtype=dtype)
                                        for i in range(0, len(image), self.block_rows)])
            out[rows] = values.float().cpu().numpy()
        return out


class NormSimSpec(ScoreSpec):
    """NormSim_p for one p ("2" or "inf")."""

    def __init__(self, name: str, p: str, summary: str) -> None:
        super().__init__(name, "relevance", summary, Params, inputs=("target",), needs_target=True, products=True)
        self.p = p

    def shard_score(self, params: Params, run: RunContext) -> NormSimScore:
        """Load, check and materialise the target once (main process), then describe the score."""
        from datacomp_plugins.scores import targets

        matrix = targets.load_target(params.target, run.arch, ARCH_DIMS[run.arch], params.target_key)
        key, target_path, gram_path = targets.materialise(matrix, run.cache.targets)
        return NormSimScore(arch=run.arch, p=self.p, target=key, target_path=target_path, gram_path=gram_path,
                            device=run.compute.device, precision=run.compute.precision)


SPEC_2 = NormSimSpec("normsim2", "2", "NormSim_2: Gram-matrix similarity to a target set")
SPEC_INF = NormSimSpec("normsiminf", "inf", "NormSim_inf: best cosine similarity to a target image")
