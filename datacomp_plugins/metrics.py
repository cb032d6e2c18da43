"""Score math as pure torch functions: no I/O, no randomness, any device.

Notation (DESIGN.md section 3): ``image`` rows f_i and ``text`` rows g_i are unit embeddings of the same n
samples, τ the teacher's temperature. Randomness (which samples share a batch) is decided by the caller and
passed in as index batches, so every function here can be checked against a brute force on the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# Column sums below this (relative to the block's largest logit) are recomputed exactly; above it the
# fused path's rounding is far below float32 resolution. See _pair_logsumexp.
_UNDERFLOW_GUARD = 1e-30


def clip_score(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """CLIPScore f_i·g_i of each sample (DataComp's ``clip_*_similarity_score``)."""
    return (image * text).sum(dim=-1)


COMPUTE_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _pair_logsumexp(image: torch.Tensor, text: torch.Tensor, inv_tau: float, block_rows: int,
                    compute_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column logsumexp of the logits ``image @ text.T / τ`` without holding the whole matrix.

    Why fused: the matrix product is the cost we cannot avoid; a plain ``torch.logsumexp`` along both
    axes reads and exponentiates every logit twice, which costs ~30% on a CPU. Here each row block is
    exponentiated once, shifted by its row maxima: row sums come directly, column sums as a weighted
    sum ``w @ exp(S - m)`` with w_i = exp(m_i - c), c the block's largest logit. A column whose weighted
    sum is tiny (its best logit in the block is ~69 below c, so float32 might lose it) is recomputed
    exactly from its logits. Never exponentiates a positive number: no overflow at any τ.

    With ``compute_dtype`` (bf16/fp16) only the matrix product runs in it; its result is widened to the
    input dtype before any exp or log.
    """
    n = image.shape[0]
    scaled = image * inv_tau
    wide = image.dtype
    if compute_dtype is not None:
        scaled, text = scaled.to(compute_dtype), text.to(compute_dtype)
    row = torch.empty(n, dtype=wide, device=image.device)
    col_parts = []
    for start in range(0, n, block_rows):
        stop = min(n, start + block_rows)
        block = (scaled[start:stop] @ text.T).to(wide)  # (rows, n) logits
        row_max = block.amax(dim=1, keepdim=True)
        block.sub_(row_max).exp_()
        row[start:stop] = row_max.squeeze(1) + block.sum(dim=1).log()
        top = row_max.max()
        weighted = (row_max - top).exp_().squeeze(1) @ block
        small = weighted < _UNDERFLOW_GUARD
        part = weighted.log_().add_(top)
        if bool(small.any()):
            cols = small.nonzero().squeeze(1)
            part[cols] = torch.logsumexp((scaled[start:stop] @ text[cols].T).to(wide), dim=0)
        col_parts.append(part)
    return row, torch.logsumexp(torch.stack(col_parts), dim=0)


def normalisation_term(image: torch.Tensor, text: torch.Tensor, batches: Sequence[torch.Tensor],
                       temperature: float, reference_size: int, block_rows: int = 512,
                       compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """R(i) of every sample for one partition of the samples into ``batches`` (index tensors).

    R_B(i) = (τ/2)[log Σ_{j∈B} exp(f_i·g_j/τ) + log Σ_{j∈B} exp(f_j·g_i/τ)], each log-sum taken as a
    log-mean-exp scaled to ``reference_size`` (log Σ - log|B| + log reference_size): exactly the sum for a
    batch of the reference size, and without the log|B| drift that a short batch would otherwise add.
    Samples not in any batch get NaN.
    """
    inv_tau = 1.0 / temperature
    out = torch.full((image.shape[0],), float("nan"), dtype=image.dtype, device=image.device)
    for idx in batches:
        row, col = _pair_logsumexp(image[idx], text[idx], inv_tau, block_rows, compute_dtype)
        shift = math.log(reference_size) - math.log(len(idx))
        out[idx] = (row + col + 2.0 * shift) * (temperature / 2.0)
    return out


def negcliploss(image: torch.Tensor, text: torch.Tensor, rounds: Sequence[Sequence[torch.Tensor]],
                temperature: float, reference_size: int, block_rows: int = 512,
                compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """negCLIPLoss(i) = CLIPScore(i) - mean over rounds of R(i), one round = one partition into batches.

    Equals τ × (minus the symmetric CLIP loss of sample i) averaged over the rounds (paper, eq. 1).
    """
    total = torch.zeros(image.shape[0], dtype=image.dtype, device=image.device)
    for batches in rounds:
        total += normalisation_term(image, text, batches, temperature, reference_size, block_rows, compute_dtype)
    return clip_score(image, text) - total / len(rounds)


def normsim2(image: torch.Tensor, gram: torch.Tensor, compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """NormSim_2(i) = (Σ_t (f_i·h_t)²)^½ = (f_iᵀ G f_i)^½ with G = Σ_t h_t h_tᵀ (d×d).

    Through the Gram matrix the cost is 2·d² per sample whatever the target's size.
    """
    if compute_dtype is not None:
        projected = (image.to(compute_dtype) @ gram.to(compute_dtype)).to(image.dtype)
    else:
        projected = image @ gram
    return (projected * image).sum(dim=1).clamp_min(0).sqrt()


def normsim_inf(image: torch.Tensor, target: torch.Tensor, block: int = 16384,
                compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """NormSim_inf(i) = max_t f_i·h_t, exact, over target blocks of ``block`` rows (bounded memory)."""
    best = torch.full((image.shape[0],), float("-inf"), dtype=image.dtype, device=image.device)
    dtype = compute_dtype or image.dtype
    rows = image.to(dtype)
    for start in range(0, target.shape[0], block):
        part = target[start : start + block].to(device=image.device, dtype=dtype)
        torch.maximum(best, (rows @ part.T).amax(dim=1).to(image.dtype), out=best)
    return best


def normsim2_squared_scores(image: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """f_iᵀ G f_i for every row: the score NormSim_2-D ranks by (monotone in NormSim_2)."""
    return ((image @ gram) * image).sum(dim=1)
