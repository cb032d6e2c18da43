"""Score math as pure torch functions: no I/O, no randomness, any device.

Notation (DESIGN.md section 3): ``image`` rows f_i and ``text`` rows g_i are unit embeddings of the same n
samples, τ the teacher's temperature. Randomness (which samples share a batch) is decided by the caller and
passed in as index batches, so every function here can be checked against a brute force on the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass
class _Operands:
    """Work done once per shard for all its batches and rounds: image rows scaled by 1/τ, the copies the
    product reads (narrowed to the compute dtype), and a bound on every logit."""

    scaled: torch.Tensor  # f/τ in the input dtype
    text: torch.Tensor
    left: torch.Tensor  # what the product reads: scaled, or scaled narrowed to the compute dtype
    right: torch.Tensor
    largest: float  # max |f| · max |g|: every logit of every batch is at most largest/τ

    @classmethod
    def of(cls, image: torch.Tensor, text: torch.Tensor, inv_tau: float,
           compute_dtype: torch.dtype | None) -> _Operands:
        scaled = image * inv_tau
        left, right = (scaled, text) if compute_dtype is None else (scaled.to(compute_dtype), text.to(compute_dtype))
        largest = float(image.norm(dim=1).max() * text.norm(dim=1).max()) if len(image) else 0.0
        return cls(scaled, text, left, right, largest)


def _exp_sums(left: torch.Tensor, right: torch.Tensor, shift: float, block_rows: int,
              wide: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column sums of exp(left @ right.T - shift), a block of rows at a time, in ``wide`` precision.

    A non-zero shift rides along as an extra embedding column, (f/τ, -shift)·(g, 1), so it costs no pass
    over the logits. Column sums go through fixed pieces of rows (BLAS gemv, ~20x faster than
    ``sum(dim=0)``), so no bit depends on ``block_rows``. bf16 keeps float32's exponent range, so its logits
    are exponentiated and summed as they are (gemv accumulates in float32; rounding the sums adds 2^-9,
    far below bf16's own rounding of the logits); fp16 cannot hold exp above ~11 and is widened first.
    """
    n, dim = left.shape
    if shift:
        augmented = torch.empty((n, dim + 1), dtype=left.dtype, device=left.device)
        augmented[:, :dim] = left
        augmented[:, dim] = -shift
        left = augmented
        augmented = torch.empty((n, dim + 1), dtype=right.dtype, device=right.device)
        augmented[:, :dim] = right
        augmented[:, dim] = 1.0
        right = augmented
    narrow = left.dtype == torch.bfloat16
    work = left.dtype if narrow else wide
    row = torch.empty(n, dtype=wide, device=left.device)
    col = torch.zeros(n, dtype=wide, device=left.device)
    step = max(_PIECE, block_rows // _PIECE * _PIECE)
    ones = torch.ones(max(_PIECE, n), dtype=work, device=left.device)
    for start in range(0, n, step):
        block = (left[start : start + step] @ right.T).to(work).exp_()
        row[start : start + step] = block @ ones[:n] if narrow else block.sum(dim=1)
        for piece in range(0, len(block), _PIECE):
            part = block[piece : piece + _PIECE]
            col += ones[: len(part)] @ part
    return row, col


def _pair_logsumexp(ops: _Operands, idx: torch.Tensor | None, inv_tau: float,
                    block_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column logsumexp of the logits of batch ``idx`` (None: all rows), never holding them all.

    Why this shape: the matrix product is the cost we cannot avoid, so everything else must be cheap:
    one exp pass over each block of logits, then its row and column sums. No max pass is needed because
    the logits are bounded by M/τ (M = largest |f|·|g|, ~1 for unit embeddings): when exp of the bound,
    times n, fits float32, the plain sums cannot overflow. Otherwise the sums are tried plain (real
    similarities rarely come near the bound) and, if any overflowed, the batch is redone with one integer
    shift c = ceil(M/τ + log n - 88) that makes every term and sum fit. A row or column whose sum is tiny
    (all its logits ~57 below the shift) may have lost terms to underflow and is recomputed exactly.
    The result does not depend on ``block_rows`` or the thread count (same sums in the same order).
    """
    pick = (lambda t: t) if idx is None else (lambda t: t[idx])
    left, right = pick(ops.left), pick(ops.right)
    n, wide = len(left), ops.scaled.dtype
    bound = ops.largest * inv_tau + math.log(n)  # log of the largest possible sum
    shift = 0.0
    row, col = _exp_sums(left, right, shift, block_rows, wide)
    if bound >= _EXP_CEILING and not bool(torch.isfinite(row).all() and torch.isfinite(col).all()):
        shift = float(math.ceil(bound - _EXP_CEILING))
        row, col = _exp_sums(left, right, shift, block_rows, wide)
    low_rows, low_cols = row < _UNDERFLOW_GUARD, col < _UNDERFLOW_GUARD
    row = row.log_().add_(shift)
    col = col.log_().add_(shift)
    if bool(low_rows.any()) or bool(low_cols.any()):
        scaled, text = pick(ops.scaled), pick(ops.text)
        rows, cols = low_rows.nonzero().squeeze(1), low_cols.nonzero().squeeze(1)
        if len(rows):
            row[rows] = torch.logsumexp(scaled[rows] @ text.T, dim=1)
        if len(cols):
            col[cols] = torch.logsumexp(scaled @ text[cols].T, dim=0)
    return row, col


def _round_terms(ops: _Operands, n: int, batches: Sequence[torch.Tensor | None], temperature: float,
                 reference_size: int, block_rows: int) -> torch.Tensor:
    inv_tau = 1.0 / temperature
    out = torch.full((n,), float("nan"), dtype=ops.scaled.dtype, device=ops.scaled.device)
    for idx in batches:
        row, col = _pair_logsumexp(ops, idx, inv_tau, block_rows)
        size = n if idx is None else len(idx)
        shift = math.log(reference_size) - math.log(size)
        value = (row + col + 2.0 * shift) * (temperature / 2.0)
        if idx is None:
            out = value
        else:
            out[idx] = value
    return out


def normalisation_term(image: torch.Tensor, text: torch.Tensor, batches: Sequence[torch.Tensor],
                       temperature: float, reference_size: int, block_rows: int = 512,
                       compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """R(i) of every sample for one partition of the samples into ``batches`` (index tensors).

    R_B(i) = (τ/2)[log Σ_{j∈B} exp(f_i·g_j/τ) + log Σ_{j∈B} exp(f_j·g_i/τ)], each log-sum taken as a
    log-mean-exp scaled to ``reference_size`` (log Σ - log|B| + log reference_size): exactly the sum for a
    batch of the reference size, and without the log|B| drift that a short batch would otherwise add.
    Samples not in any batch get NaN. With ``compute_dtype`` (bf16/fp16) the product runs in it.
    """
    ops = _Operands.of(image, text, 1.0 / temperature, compute_dtype)
    return _round_terms(ops, len(image), batches, temperature, reference_size, block_rows)


def negcliploss(image: torch.Tensor, text: torch.Tensor, rounds: Sequence[Sequence[torch.Tensor | None]],
                temperature: float, reference_size: int, block_rows: int = 512,
                compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """negCLIPLoss(i) = CLIPScore(i) - mean over rounds of R(i), one round = one partition into batches.

    Equals τ × (minus the symmetric CLIP loss of sample i) averaged over the rounds (paper, eq. 1). A batch
    given as None is all samples in their own order (no gather). Scaling and narrowing are done once for
    all rounds.
    """
    ops = _Operands.of(image, text, 1.0 / temperature, compute_dtype)
    total = torch.zeros(image.shape[0], dtype=image.dtype, device=image.device)
    for batches in rounds:
        total += _round_terms(ops, len(image), batches, temperature, reference_size, block_rows)
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
