"""Global selection from per-sample scores: fractions, thresholds, deterministic ties, duplicate uids.

Works on whole-pool columns (16 bytes of uid + 4 bytes per score per sample) in O(n): a partition finds
the k-th best score, and only the samples tied with it are ordered (by uid, ascending), so the same scores
always give the same subset whatever order the shards were read in.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datacomp_plugins.core.uids import UID_DTYPE, sort_order


def check_fraction(value: float | None, flag: str) -> None:
    """Fractions are shares of the pool in (0, 1] (the range lives in :mod:`datacomp_plugins.core.ranges`)."""
    from datacomp_plugins.core.ranges import FRACTION

    FRACTION.check(value, flag)


def top_k_mask(scores: np.ndarray, uids: np.ndarray, k: int, eligible: np.ndarray | None = None) -> np.ndarray:
    """Mask of the k highest scores among ``eligible`` finite ones; ties at the boundary go to smaller uids.

    NaN never counts as a score. When fewer than k samples qualify, all of them are kept.
    """
    ok = np.isfinite(scores)
    if eligible is not None:
        ok &= eligible
    candidates = np.flatnonzero(ok)
    mask = np.zeros(len(scores), dtype=bool)
    if k <= 0 or len(candidates) == 0:
        return mask
    if k >= len(candidates):
        mask[candidates] = True
        return mask
    values = scores[candidates]
    kth = np.partition(values, len(values) - k)[len(values) - k]  # k-th largest value
    above = candidates[values > kth]
    mask[above] = True
    tied = candidates[values == kth]
    need = k - len(above)
    if need:
        mask[tied[sort_order(uids[tied])[:need]]] = True
    return mask


def threshold_mask(scores: np.ndarray, threshold: float, eligible: np.ndarray | None = None) -> np.ndarray:
    """Mask of finite scores >= threshold (NaN compares false, so unscorable samples are never kept)."""
    with np.errstate(invalid="ignore"):
        mask = scores >= threshold
    return mask & eligible if eligible is not None else mask


def _keys(uids: np.ndarray) -> pa.FixedSizeBinaryArray:
    """uids as 16-byte keys for pyarrow's hash kernels (equality only; the byte order is irrelevant)."""
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(16), len(uids), [None, pa.py_buffer(np.ascontiguousarray(uids, dtype=UID_DTYPE))])


def isin(uids: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Mask of ``uids`` that appear in ``other``, O(n + m) with a hash set (either may be empty)."""
    return pc.is_in(_keys(uids), value_set=_keys(other)).to_numpy(zero_copy_only=False)


def index_in(uids: np.ndarray, other: np.ndarray) -> np.ndarray:
    """For each of ``uids``, its row in ``other`` (first occurrence), or -1; O(n + m) with a hash table (either
    may be empty)."""
    found = pc.index_in(_keys(uids), value_set=_keys(other))
    return found.fill_null(-1).to_numpy().astype(np.int64)


def first_occurrence(uids: np.ndarray) -> np.ndarray:
    """Mask keeping the first occurrence of each uid (pool order).

    A uid listed twice in a pool is one sample: counting it twice would let it take two places of the
    selection and make the resharder upsample it. Duplicates are rare, so this sorts one mixed 64-bit key
    per uid (numpy's SIMD sort, seconds for 100M) and verifies only the rows whose keys collide.
    """
    mask = np.ones(len(uids), dtype=bool)
    hi, lo = np.asarray(uids["f0"]), np.asarray(uids["f1"])
    key = hi ^ (lo * np.uint64(0x9E3779B97F4A7C15))  # equal uids give equal keys
    ordered = np.sort(key)
    collide = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    if len(collide):  # the usual pool has none: no pass over the keys to find their rows
        rows = np.flatnonzero(np.isin(key, collide))
        order = np.lexsort((rows, lo[rows], hi[rows]))  # equal uids together, in pool order
        r = rows[order]
        repeat = (hi[r][1:] == hi[r][:-1]) & (lo[r][1:] == lo[r][:-1])
        mask[r[1:][repeat]] = False
    return mask


def datacomp_fraction_mask(values: np.ndarray, n: int, eligible: np.ndarray) -> tuple[np.ndarray, float | None]:
    """DataComp's CLIPScore rule (``apply_filter.get_threshold``): the cut-off is the (n+1)-th highest score
    and every score >= it is kept, so n + 1 samples plus any tied with the cut-off.

    The comparison baseline must select what DataComp's ``baselines.py --name clip_score`` selects, byte for
    byte, so the comparison runs in the column's stored dtype, as pandas does there. Where DataComp fails
    (n at or beyond the scorable samples: an IndexError, or a NaN cut-off that keeps nothing) every scorable
    sample is kept.
    """
    ok = eligible & np.isfinite(values)
    finite = values[ok]
    if n >= len(finite):
        return ok, None
    position = len(finite) - 1 - n
    cutoff = np.partition(finite, position)[position]
    with np.errstate(invalid="ignore"):
        return ok & (values >= cutoff), cutoff
