"""Score math as pure torch functions: no I/O, no randomness, any device.

Notation (DESIGN.md section 3): ``image`` rows f_i and ``text`` rows g_i are unit embeddings of the same n
samples, τ the teacher's temperature. Randomness (which samples share a batch) is decided by the caller and
passed in as index batches, so every function here can be checked against a brute force on the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# Row/column sums of exp(logit - shift) below this are recomputed exactly (their terms may have underflowed);
# above it, everything float32 can lose is < 1e-8 of the sum.
_UNDERFLOW_GUARD = 1e-25
# exp(88) < float32's largest value: the shift keeps every term, and every sum of n terms, below it.
_EXP_CEILING = 88.0
# Column sums are accumulated over this many rows at a time, so no bit depends on the block size.
_PIECE = 256


def clip_score(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """CLIPScore f_i·g_i of each sample (DataComp's ``clip_*_similarity_score``)."""
    return (image * text).sum(dim=-1)


COMPUTE_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _exp_sums(scaled: torch.Tensor, text: torch.Tensor, shift: float, block_rows: int,
              compute_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column sums of exp(scaled @ text.T - shift), a block of rows at a time.

    A non-zero shift rides along as an extra embedding column, (f/τ, -shift)·(g, 1), so it costs no pass
    over the logits. Column sums go through fixed pieces of rows (BLAS gemv, ~20x faster than
    ``sum(dim=0)``), so no bit depends on ``block_rows``.
    """
    n, dim = scaled.shape
    wide = scaled.dtype
    dtype = compute_dtype or wide
    if shift:
        left = torch.empty((n, dim + 1), dtype=dtype, device=scaled.device)
        left[:, :dim] = scaled
        left[:, dim] = -shift
        right = torch.empty((n, dim + 1), dtype=dtype, device=scaled.device)
        right[:, :dim] = text
        right[:, dim] = 1.0
    else:
        left, right = scaled.to(dtype), text.to(dtype)
    # bf16 keeps float32's exponent range, so its logits are exponentiated and summed as they are (BLAS
    # gemv accumulates in float32; rounding the sums adds 2^-9, far below bf16's own rounding of the
    # logits). fp16 cannot hold exp above ~11, so its logits are widened first.
    narrow = dtype == torch.bfloat16
    work = dtype if narrow else wide
    row = torch.empty(n, dtype=wide, device=scaled.device)
    col = torch.zeros(n, dtype=wide, device=scaled.device)
    step = max(_PIECE, block_rows // _PIECE * _PIECE)
    ones = torch.ones(max(_PIECE, n), dtype=work, device=scaled.device)
    for start in range(0, n, step):
        block = (left[start : start + step] @ right.T).to(work).exp_()
        row[start : start + step] = block @ ones[:n] if narrow else block.sum(dim=1)
        for piece in range(0, len(block), _PIECE):
            part = block[piece : piece + _PIECE]
            col += ones[: len(part)] @ part
    return row, col


def _pair_logsumexp(image: torch.Tensor, text: torch.Tensor, inv_tau: float, block_rows: int,
                    compute_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column logsumexp of the logits ``image @ text.T / τ`` without holding the whole matrix.

    Why this shape: the matrix product is the cost we cannot avoid, so everything else must be cheap:
    one exp pass over each block of logits, then its row and column sums. No max pass is needed because
    the logits are bounded by M/τ (M = largest |f|·|g|, ~1 for unit embeddings): when exp of the bound,
    times n, fits float32, the plain sums cannot overflow. Otherwise the sums are tried plain (real
    similarities rarely come near the bound) and, if any overflowed, the batch is redone with one integer
    shift c = ceil(M/τ + log n - 88) that makes every term and sum fit. A row or column whose sum is tiny
    (all its logits ~57 below the shift) may have lost terms to underflow and is recomputed exactly.
    The result does not depend on ``block_rows`` or the thread count (same sums in the same order).

    With ``compute_dtype`` (bf16/fp16) only the product runs in it; exp and sums use the input dtype.
    """
    n = image.shape[0]
    largest = float(image.norm(dim=1).max() * text.norm(dim=1).max())
    bound = largest * inv_tau + math.log(n)  # log of the largest possible sum
    scaled = image * inv_tau
    shift = 0.0
    row, col = _exp_sums(scaled, text, shift, block_rows, compute_dtype)
    if bound >= _EXP_CEILING and not bool(torch.isfinite(row).all() and torch.isfinite(col).all()):
        shift = float(math.ceil(bound - _EXP_CEILING))
        row, col = _exp_sums(scaled, text, shift, block_rows, compute_dtype)
    low_rows, low_cols = row < _UNDERFLOW_GUARD, col < _UNDERFLOW_GUARD
    row = row.log_().add_(shift)
    col = col.log_().add_(shift)
    if bool(low_rows.any()):
        rows = low_rows.nonzero().squeeze(1)
        row[rows] = torch.logsumexp(scaled[rows] @ text.T, dim=1)
    if bool(low_cols.any()):
        cols = low_cols.nonzero().squeeze(1)
        col[cols] = torch.logsumexp(scaled @ text[cols].T, dim=0)
    return row, col


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
