"""Score math as pure torch functions: no I/O, no randomness, any device.

Notation (Wang et al. 2024): ``image`` rows f_i and ``text`` rows g_i are unit embeddings of the same n
samples, τ the teacher's temperature. Randomness (which samples share a batch) is decided by the caller and
passed in as index batches, so every function here can be checked against a brute force on the same batches.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from datacomp_plugins.core.errors import PluginError

# Row/column sums of exp(logit - shift) below this are recomputed exactly (their terms may have underflowed);
# above it, everything float32 can lose is < 1e-8 of the sum.
_UNDERFLOW_GUARD = 1e-25
# exp(88) < float32's largest value: the shift keeps every term, and every sum of n terms, below it.
_EXP_CEILING = 88.0
# Column sums are accumulated over this many rows at a time, so no bit depends on the block size.
_PIECE = 256
_LOG2E = 1.0 / math.log(2.0)
# Logits held at once when no block size is given. Bigger blocks keep the product nearer the machine's matmul
# rate (512-row blocks of a batch of 8192 ran ~10% slower than 2048 rows), and 64 MiB stays in a server's L3.
BLOCK_BYTES = 64 << 20


def block_step(block_rows: int, n: int, element_size: int = 4) -> int:
    """Rows of logits computed at once: ``block_rows`` (0: fit BLOCK_BYTES), a whole number of pieces.

    Never more pieces than the ``n`` rows need (a larger ``--batch_size`` changes nothing but memory), and a
    block that cannot fit in this machine's memory is refused before it is allocated.
    """
    wanted = block_rows if block_rows > 0 else BLOCK_BYTES // (element_size * max(n, 1))
    step = max(_PIECE, min(wanted // _PIECE * _PIECE, -(-max(n, 1) // _PIECE) * _PIECE))
    need = step * max(n, 1) * element_size * 2  # the block and its exponentials' column pieces
    available = _physical_memory()
    if block_rows > 0 and available and need > available // 2:
        raise PluginError(f"--batch_size {block_rows}: a block of {step} x {n} logits needs "
                          f"{need / 2**30:.1f} GiB, more than half of this machine's {available / 2**30:.1f} GiB; "
                          "use a smaller --batch_size, or 0 for automatic")
    return step


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def clip_score(image: torch.Tensor, text: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """CLIPScore f_i·g_i of each sample (DataComp's ``clip_*_similarity_score``).

    Rows go in chunks through one reused buffer: an n×d temporary would cost page faults on every touch.
    Each row's sum is the same whatever the chunking.
    """
    if image.dim() != 2 or len(image) <= chunk:
        return (image * text).sum(dim=-1)
    dtype = torch.result_type(image, text)
    product = torch.empty((chunk, image.shape[1]), dtype=dtype, device=image.device)
    out = torch.empty(len(image), dtype=dtype, device=image.device)
    for start in range(0, len(image), chunk):
        part = product[: min(chunk, len(image) - start)]
        torch.mul(image[start : start + len(part)], text[start : start + len(part)], out=part)
        torch.sum(part, dim=-1, out=out[start : start + len(part)])
    return out


COMPUTE_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def wide_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The precision scores are accumulated and returned in: float64 for float64 input, else float32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


@dataclass
class _Operands:
    """Work done once per shard for all its batches and rounds: the copies the product reads (embeddings as
    stored, e.g. float16, converted once to the compute dtype), a bound on every logit, and scratch buffers
    reused by every block (a fresh multi-MB tensor per block costs page faults on every touch, which slowed
    the product by up to a third)."""

    image: torch.Tensor  # as given
    text: torch.Tensor
    left: torch.Tensor  # what the product reads: image in the compute dtype
    right: torch.Tensor
    wide: torch.dtype
    largest: float  # max |f| · max |g|: every logit of every batch is at most largest/τ
    scratch: dict = field(default_factory=dict)

    @classmethod
    def of(cls, image: torch.Tensor, text: torch.Tensor, compute_dtype: torch.dtype | None,
           largest_norms: tuple[float, float] | None = None) -> _Operands:
        wide = wide_dtype(image)
        dtype = compute_dtype or wide
        largest = 0.0
        if len(image):
            if largest_norms is None:
                largest_norms = (float(torch.linalg.vector_norm(image, dim=1, dtype=wide).max()),
                                 float(torch.linalg.vector_norm(text, dim=1, dtype=wide).max()))
            # Rounding the operands to the compute dtype can lengthen a row by a relative eps (and round the
            # logit again): the slack keeps this a true bound for the narrowed product.
            slack = 1.0 + 4.0 * torch.finfo(dtype).eps
            largest = slack * largest_norms[0] * largest_norms[1]
        return cls(image, text, image.to(dtype), text.to(dtype), wide, largest)

    def buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A contiguous tensor of ``shape``, carved from storage kept across calls."""
        numel = math.prod(shape)
        have = self.scratch.get(name)
        if have is None or have.numel() < numel or have.dtype != dtype:
            have = torch.empty(numel, dtype=dtype, device=self.left.device)
            self.scratch[name] = have
        return have[:numel].view(shape)


def _exp_sums(ops: _Operands, left: torch.Tensor, right: torch.Tensor, shift: float, inv_tau: float,
              block_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column sums of exp(left @ right.T / τ - shift), a block of rows at a time, in ``ops.wide``.

    1/τ is the product's alpha (no scaled copy of the embeddings). A non-zero shift rides along as an extra
    embedding column, (f/τ, -shift)·(g, 1), so it costs no pass over the logits (this rare path uses exp).
    Column sums go through fixed pieces of rows (BLAS, ~20x faster than ``sum(dim=0)``), so no bit depends
    on ``block_rows``.
    bf16 keeps float32's exponent range, so its logits are exponentiated and summed as they are (the
    products accumulate in float32; rounding the sums adds 2^-9, far below bf16's own rounding of the
    logits); fp16 cannot hold exp above ~11 and is widened first.
    """
    n, dim = left.shape
    wide, device = ops.wide, left.device
    # exp(x/τ) = 2^(x·log2(e)/τ): the factor rides in the product's alpha, and exp2 is ~5% cheaper for bf16.
    alpha, base2 = inv_tau * _LOG2E, True
    if shift:
        augmented = torch.empty((n, dim + 1), dtype=left.dtype, device=device)
        augmented[:, :dim] = left.to(wide) * inv_tau
        augmented[:, dim] = -shift
        left = augmented
        augmented = torch.empty((n, dim + 1), dtype=right.dtype, device=device)
        augmented[:, :dim] = right
        augmented[:, dim] = 1.0
        right = augmented
        alpha, base2 = 1.0, False
    narrow = left.dtype == torch.bfloat16
    work = left.dtype if narrow else wide
    row = torch.empty(n, dtype=wide, device=device)
    step = block_step(block_rows, n, left.element_size())
    product = ops.buffer("product", (min(step, n), n), left.dtype)
    block = product if left.dtype == work else ops.buffer("block", product.shape, work)
    ones = torch.ones(max(_PIECE, n), dtype=work, device=device)
    # Column sums: each fixed piece of rows gets its own sum (one batched product per block, ~3x faster than
    # a gemv per piece; for bf16 a 16-row product beats a 1-row one on CPUs with bf16 matrix units), and
    # the pieces are added in one reduction at the end, so the block size changes no bit.
    height = 16 if narrow else 1
    col_ones = torch.ones((max(1, step // _PIECE), height, _PIECE), dtype=work, device=device)
    pieces = ops.buffer("col_pieces", (-(-n // _PIECE), n), wide)
    for start in range(0, n, step):
        rows = min(step, n - start)
        out = product[:rows]
        torch.addmm(out, left[start : start + rows], right.T, beta=0, alpha=alpha, out=out)
        part = block[:rows]
        if part is not out:
            part.copy_(out)
        if base2:
            part.exp2_()
        else:
            part.exp_()
        if narrow:
            row[start : start + rows] = part @ ones[:n]
        else:
            torch.sum(part, dim=1, out=row[start : start + rows])  # (a gemv here varies with the thread count)
        first, whole = start // _PIECE, rows // _PIECE
        if whole:
            into = pieces[first : first + whole].unsqueeze(1)
            if narrow:
                sums = ops.buffer("col_sums", (whole, height, n), work)
                torch.bmm(col_ones[:whole], part[: whole * _PIECE].view(whole, _PIECE, n), out=sums)
                into.copy_(sums[:, :1])
            else:
                torch.bmm(col_ones[:whole], part[: whole * _PIECE].view(whole, _PIECE, n), out=into)
        if rows % _PIECE:
            pieces[first + whole] = ones[: rows % _PIECE] @ part[whole * _PIECE :]
    col = pieces.sum(dim=0)
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
    if idx is None:
        left, right = ops.left, ops.right
    else:  # gathered into reused buffers: the batch's rows become contiguous for the product
        shape = (len(idx), ops.left.shape[1])
        left = torch.index_select(ops.left, 0, idx, out=ops.buffer("left", shape, ops.left.dtype))
        right = torch.index_select(ops.right, 0, idx, out=ops.buffer("right", shape, ops.right.dtype))
    n = len(left)
    bound = ops.largest * inv_tau + math.log(n)  # log of the largest possible sum
    shift = 0.0
    row, col = _exp_sums(ops, left, right, shift, inv_tau, block_rows)
    if bound >= _EXP_CEILING and not bool(torch.isfinite(row).all() and torch.isfinite(col).all()):
        shift = float(math.ceil(bound - _EXP_CEILING))
        row, col = _exp_sums(ops, left, right, shift, inv_tau, block_rows)
    low_rows, low_cols = row < _UNDERFLOW_GUARD, col < _UNDERFLOW_GUARD
    row = row.log_().add_(shift)
    col = col.log_().add_(shift)
    if bool(low_rows.any()) or bool(low_cols.any()):
        image, text = (ops.image, ops.text) if idx is None else (ops.image[idx], ops.text[idx])
        scaled, text = image.to(ops.wide) * inv_tau, text.to(ops.wide)
        rows, cols = low_rows.nonzero().squeeze(1), low_cols.nonzero().squeeze(1)
        if len(rows):
            row[rows] = torch.logsumexp(scaled[rows] @ text.T, dim=1)
        if len(cols):
            col[cols] = torch.logsumexp(scaled @ text[cols].T, dim=0)
    return row, col


def _round_terms(ops: _Operands, n: int, batches: Sequence[torch.Tensor | None], temperature: float,
                 reference_size: int, block_rows: int) -> torch.Tensor:
    inv_tau = 1.0 / temperature
    out = torch.full((n,), float("nan"), dtype=ops.wide, device=ops.left.device)
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
                       temperature: float, reference_size: int, block_rows: int = 0,
                       compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """R(i) of every sample for one partition of the samples into ``batches`` (index tensors).

    R_B(i) = (τ/2)[log Σ_{j∈B} exp(f_i·g_j/τ) + log Σ_{j∈B} exp(f_j·g_i/τ)], each log-sum taken as a
    log-mean-exp scaled to ``reference_size`` (log Σ - log|B| + log reference_size): exactly the sum for a
    batch of the reference size, and without the log|B| drift that a short batch would otherwise add.
    Samples not in any batch get NaN. With ``compute_dtype`` (bf16/fp16) the product runs in it.
    """
    ops = _Operands.of(image, text, compute_dtype)
    return _round_terms(ops, len(image), batches, temperature, reference_size, block_rows)


def negcliploss(image: torch.Tensor, text: torch.Tensor, rounds: Sequence[Sequence[torch.Tensor | None]],
                temperature: float, reference_size: int, block_rows: int = 0,
                compute_dtype: torch.dtype | None = None,
                largest_norms: tuple[float, float] | None = None) -> torch.Tensor:
    """negCLIPLoss(i) = CLIPScore(i) - mean over rounds of R(i), one round = one partition into batches.

    Equals τ × (minus the symmetric CLIP loss of sample i) averaged over the rounds (paper, eq. 1). A batch
    given as None is all samples in their own order (no gather). The embeddings may be in their stored
    dtype (float16): they are converted once, and the result is float32 (float64 for float64 input).
    ``largest_norms`` (max |f|, max |g|), when the caller already has the row norms, saves a pass.
    """
    ops = _Operands.of(image, text, compute_dtype, largest_norms)
    total = torch.zeros(image.shape[0], dtype=ops.wide, device=image.device)
    for batches in rounds:
        total += _round_terms(ops, len(image), batches, temperature, reference_size, block_rows)
    if compute_dtype is None:
        clip = clip_score(ops.left, ops.right)
    else:
        clip = clip_score(image.to(ops.wide), text.to(ops.wide))
    return clip - total / len(rounds)


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
    # One product buffer for all target blocks: a fresh (n x block) tensor each time costs page faults.
    product = torch.empty((image.shape[0], min(block, target.shape[0])), dtype=dtype, device=image.device)
    for start in range(0, target.shape[0], block):
        part = target[start : start + block].to(device=image.device, dtype=dtype)
        out = product[:, : len(part)]
        torch.mm(rows, part.T, out=out)
        torch.maximum(best, out.amax(dim=1).to(image.dtype), out=best)
    return best
