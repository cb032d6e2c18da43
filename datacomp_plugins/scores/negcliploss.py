"""negCLIPLoss: CLIPScore corrected by a batch normalisation term (Wang et al. 2024), a quality score.

Each sample's score is its CLIP similarity minus the log-sum-exp normalisation it would get in random
batches of the teacher's training size, averaged over ``num_batches`` batchings; batches are drawn per shard
from (seed, shard name), so results do not depend on workers or their order. The math is in metrics.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from datacomp_plugins.core import ranges
from datacomp_plugins.core.pool import Shard
from datacomp_plugins.scores.base import RunContext, Score, ScoreSpec, setting


@dataclass(frozen=True)
class Params:
    """negCLIPLoss's settings (flags of ``filter``, keys of a recipe's [filter] table)."""

    num_batches: int = setting(10, "negCLIPLoss: random batches averaged per sample (K; paper: 10)",
                               ranges.NUM_BATCHES)
    negcliploss_batch_size: int = setting(
        32768, "negCLIPLoss: batch size B (the teacher's training batch; paper: 32768); >= the shard size "
        "means one batch = the whole shard", ranges.NEGCLIPLOSS_BATCH_SIZE)
    temperature: float = setting(0.01, "negCLIPLoss: teacher temperature τ (0.01 for OpenAI CLIP)",
                                 ranges.TEMPERATURE)
    seed: int = setting(0, "seed of the random batches (one generator per shard from seed and shard name)",
                        ranges.SEED)


def shard_seed(seed: int, stem: str) -> np.random.SeedSequence:
    """One generator seed per (seed, shard name): results do not depend on worker count or order."""
    digest = hashlib.sha256(stem.encode()).digest()
    return np.random.SeedSequence([seed, *np.frombuffer(digest[:16], dtype=np.uint32).tolist()])


def partition(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random partition of range(n) into ceil(n / batch_size) batches whose sizes differ by at most one.

    Equal-sized batches instead of full batches plus a short last one: a short batch would give its
    samples a smaller normalisation term (see metrics.normalisation_term, which also rescales to B).
    """
    count = max(1, -(-n // batch_size))
    return np.array_split(rng.permutation(n), count)


@dataclass(frozen=True)
class NegCLIPLossScore(Score):
    """negCLIPLoss from the image and text embeddings (Wang et al. 2024; README "Filtering a DataComp pool")."""

    arch: str = "l14"
    num_batches: int = 10
    batch_size: int = 32768
    temperature: float = 0.01
    seed: int = 0
    block_rows: int = field(default=0, metadata={"key": False})  # changes memory and speed, never a bit
    device: str = "cpu"
    precision: str = "fp32"
    name: str = field(init=False, default="negcliploss")

    @property
    def npz_keys(self) -> tuple[str, ...]:
        return (f"{self.arch}_img", f"{self.arch}_txt")

    def compute(self, shard: Shard, columns: dict, embeddings: dict) -> np.ndarray:
        import torch

        from datacomp_plugins.scores.metrics import COMPUTE_DTYPES, negcliploss

        device = torch.device(self.device)
        # Stored float16 is widened by torch on the device (vectorised, threaded: ~5x numpy's astype).
        image, text = (torch.from_numpy(embeddings[k]).to(device=device, dtype=torch.float32)
                       for k in self.npz_keys)
        # A row is scored when its norm is finite: NaN or inf anywhere in it makes the norm non-finite, in one
        # cheap reduction instead of an elementwise mask. (Float16 values cannot overflow it; a float32 row so
        # large that they do would overflow its logits too.)
        norms = torch.linalg.vector_norm(image, dim=1), torch.linalg.vector_norm(text, dim=1)
        finite = torch.isfinite(norms[0]) & torch.isfinite(norms[1])
        out = np.full(len(image), np.nan, dtype=np.float32)
        rows = finite.nonzero().squeeze(1)
        n = len(rows)
        if n == 0:
            return out
        reference = min(self.batch_size, n)
        if reference == n:  # one batch = the whole shard (None: in row order, no gather): every round is the same
            rounds = [[None]]
        else:
            rng = np.random.default_rng(shard_seed(self.seed, shard.stem))
            rounds = [partition(n, self.batch_size, rng) for _ in range(self.num_batches)]
        if n < len(image):
            image, text, norms = image[rows], text[rows], (norms[0][rows], norms[1][rows])
        batches = [[None if b is None else torch.from_numpy(b).to(device) for b in r] for r in rounds]
        with torch.no_grad():
            values = negcliploss(image, text, batches, self.temperature, reference, self.block_rows,
                                 COMPUTE_DTYPES[self.precision], (float(norms[0].max()), float(norms[1].max())))
        rows = rows.cpu().numpy()
        out[rows] = values.float().cpu().numpy()
        return out


class NegCLIPLossSpec(ScoreSpec):
    def shard_score(self, params: Params, run: RunContext) -> NegCLIPLossScore:
        compute = run.compute
        return NegCLIPLossScore(arch=run.arch, num_batches=params.num_batches,
                                batch_size=params.negcliploss_batch_size, temperature=params.temperature,
                                seed=params.seed, block_rows=compute.block_rows, device=compute.device,
                                precision=compute.precision)


SPEC = NegCLIPLossSpec("negcliploss", "quality", "CLIPScore minus a batch normalisation term (Wang et al. 2024)",
                       params=Params, products=True)
