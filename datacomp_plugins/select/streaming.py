"""Selection for pools whose score columns do not fit in memory: passes over the cached score files.

The in-memory path holds ~22 bytes per sample (uid, score, masks): 28 GiB for DataComp-large, 280 GiB for
xlarge. This path holds only a histogram, the samples of one histogram bin and the kept uids:

1. count the scores per bin of their order-preserving 32-bit key's top ``BITS`` bits, over all shards;
2. find the bin holding the k-th best score, collect that bin's (score, uid) pairs, and resolve the
   boundary exactly (the k-th score, and which of the samples tied at it are kept: the smaller uids);
3. collect the uids above the boundary plus the chosen tied ones, shard by shard.

It selects exactly what the in-memory path selects, except that duplicate uids across shards are not
detected before selection (the written file is still deduplicated); DataComp pools have unique uids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from datacomp_plugins.core.uids import UID_DTYPE, sort_order

BITS = 20


def order_key(scores: np.ndarray) -> np.ndarray:
    """float32 -> uint32 whose unsigned order is the float order (NaN must be removed first)."""
    canonical = np.ascontiguousarray(scores, dtype=np.float32) + np.float32(0.0)  # -0.0 -> 0.0: equal floats
    bits = canonical.view(np.uint32)
    negative = (bits >> np.uint32(31)).astype(bool)
    return np.where(negative, ~bits, bits | np.uint32(0x80000000))


Source = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]  # yields (uids, scores) per shard


def top_k_streaming(shards: Source, k: int) -> np.ndarray:
    """The uids of the k best finite scores over all shards (ties: smaller uid first), in three passes."""
    counts = np.zeros(1 << BITS, dtype=np.int64)
    for _, scores in shards():
        finite = scores[np.isfinite(scores)]
        counts += np.bincount(order_key(finite) >> np.uint32(32 - BITS), minlength=1 << BITS)
    total = int(counts.sum())
    k = min(k, total)
    if k <= 0:
        return np.zeros(0, dtype=UID_DTYPE)
    above = np.cumsum(counts[::-1])[::-1]  # above[b] = samples in bins >= b
    boundary = int(np.flatnonzero(above >= k)[-1])
    need_in_bin = k - (int(above[boundary + 1]) if boundary + 1 < len(above) else 0)
    bin_scores, bin_uids = [], []
    for uids, scores in shards():
        finite = np.isfinite(scores)
        key = np.zeros(len(scores), dtype=np.uint32)
        key[finite] = order_key(scores[finite])
        pick = finite & ((key >> np.uint32(32 - BITS)) == boundary)
        bin_scores.append(scores[pick])
        bin_uids.append(np.asarray(uids)[pick])
    scores_b, uids_b = np.concatenate(bin_scores), np.concatenate(bin_uids)
    order = np.lexsort((uids_b["f1"], uids_b["f0"], -scores_b.astype(np.float64)))  # best first, then uid
    kth = scores_b[order[need_in_bin - 1]]
    tied = uids_b[order[:need_in_bin]][scores_b[order[:need_in_bin]] == kth]
    tied = tied[sort_order(tied)]
    kept = [tied]
    for uids, scores in shards():
        with np.errstate(invalid="ignore"):
            kept.append(np.asarray(uids)[scores > kth])
    return np.concatenate(kept)


def threshold_streaming(shards: Source, threshold: float) -> np.ndarray:
    """The uids with score >= threshold, one shard at a time."""
    kept = []
    for uids, scores in shards():
        with np.errstate(invalid="ignore"):
            kept.append(np.asarray(uids)[scores >= threshold])
    return np.concatenate(kept) if kept else np.zeros(0, dtype=UID_DTYPE)


def kth_largest_streaming(shards: Source, k: int) -> float | None:
    """The k-th best finite score over all shards (1-based), or None when fewer than k are finite.

    Two passes: the histogram of order keys finds the bin, then that bin's scores are sorted. Scores of any
    float dtype are compared as stored (the bins only need float32's order).
    """
    counts = np.zeros(1 << BITS, dtype=np.int64)
    for _, scores in shards():
        finite = scores[np.isfinite(scores)]
        counts += np.bincount(order_key(finite) >> np.uint32(32 - BITS), minlength=1 << BITS)
    if k <= 0 or k > int(counts.sum()):
        return None
    above = np.cumsum(counts[::-1])[::-1]
    boundary = int(np.flatnonzero(above >= k)[-1])
    need_in_bin = k - (int(above[boundary + 1]) if boundary + 1 < len(above) else 0)
    in_bin = []
    for _, scores in shards():
        finite = scores[np.isfinite(scores)]
        in_bin.append(finite[(order_key(finite) >> np.uint32(32 - BITS)) == boundary])
    values = np.sort(np.concatenate(in_bin))[::-1]
    return values[need_in_bin - 1]
