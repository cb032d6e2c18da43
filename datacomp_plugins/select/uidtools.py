"""Checks and set operations on DataComp uid files, sized for files of tens of millions.

Bad input policy, the same for every ``datacomp-plugins uids`` command:

- a uid file whose array is not 1-D ``u8,u8`` is refused, naming the file, its dtype and the expected one;
- an unsorted or duplicated uid file is accepted: it is sorted and deduplicated, with a warning on stderr
  naming the file (outputs are always sorted and unique, as DataComp's resharder needs);
- hex text and parquet input (``from-hex``): see hexfiles.py;
- a missing input file is refused, naming it.

Refusals raise :class:`PluginError` (exit code 2, one line, no traceback) before any output exists.

Set operations take sorted unique input (anything else, a sorted file with a repeat included, is fixed first,
with a warning) and never sort it again: each query uid is placed in the other array with ``searchsorted``
on the high halves (sorted queries walk the array in order, cache friendly) and a
vectorised binary search on the low halves inside the rare runs of equal high halves: about a second of CPU
per 20M uids, where ``np.intersect1d`` on structured arrays took 18 s for 2M. Unsorted input is sorted by a
packed 64-bit key (high-half prefix + row index) with numpy's SIMD sort: 1.6 s for 20M uids, against 27 s
for ``np.lexsort``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from datacomp_plugins.core.uids import (
    UID_DTYPE,
    dedup_sorted,
    pick,
    read_uid_file,
    sort_uids,
    sorted_unique,
)

CHUNK_ROWS = 1 << 20  # queries per vectorised step: bounds temporaries to ~100 MB


# --- reading and checking uid files -----------------------------------------------------------------------


@dataclass(frozen=True)
class OrderCheck:
    """How far a uid array is from the resharder's contract (sorted ascending, unique)."""

    count: int
    out_of_order: int  # adjacent pairs where the next uid is smaller than the one before
    duplicates: int  # copies beyond the first of each uid

    @property
    def ok(self) -> bool:
        """True when the array can be used as it is."""
        return self.out_of_order == 0 and self.duplicates == 0


def check_order(uids: np.ndarray) -> OrderCheck:
    """Count descents and duplicates; sorts only when there are descents (then duplicates need a sort)."""
    return _check_order(uids)[0]


def _check_order(uids: np.ndarray) -> tuple[OrderCheck, np.ndarray | None]:
    """The check, and the sorted unique array when it had to build one (so callers need not sort again)."""
    n = len(uids)
    if n < 2:
        return OrderCheck(n, 0, 0), None
    hi, lo = uids["f0"], uids["f1"]
    same_hi = hi[1:] == hi[:-1]
    out_of_order = int(np.count_nonzero((hi[1:] < hi[:-1]) | (same_hi & (lo[1:] < lo[:-1]))))
    if out_of_order == 0:
        return OrderCheck(n, 0, int(np.count_nonzero(same_hi & (lo[1:] == lo[:-1])))), None
    fixed = sorted_unique(uids)
    return OrderCheck(n, out_of_order, n - len(fixed)), fixed


def load_sorted(path: str, warn: Callable[[str], None]) -> np.ndarray:
    """A uid file ready for set operations; an unsorted or duplicated one is fixed and ``warn`` told why."""
    return ensure_sorted(path, read_uid_file(path), warn)


def ensure_sorted(path: str, uids: np.ndarray, warn: Callable[[str], None] | None) -> np.ndarray:
    """``uids`` (read from ``path``) if sorted and unique, else a fixed copy after telling ``warn``.

    A sorted array can still hold a repeat (a list that makes the resharder upsample a sample): the lookups
    below find only one copy of it, so repeats are dropped here, never passed on.
    """
    check, fixed = _check_order(uids)
    if check.ok:
        return uids
    if warn is not None:
        warn(f"{path}: uids are not sorted and unique ({check.out_of_order:,} out of order, "
             f"{check.duplicates:,} duplicates); sorted and deduplicated them")
    return fixed if fixed is not None else dedup_sorted(uids)


# --- sorting ----------------------------------------------------------------------------------------------


# --- locating uids in a sorted unique array ---------------------------------------------------------------


class SortedIndex:
    """A sorted unique uid array prepared for many lookups (its high halves copied contiguous once)."""

    def __init__(self, uids: np.ndarray) -> None:
        self.hi = np.ascontiguousarray(uids["f0"])  # searchsorted needs contiguous keys
        self.lo = uids["f1"]

    def locate(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each query: how many indexed uids are smaller (its insertion point) and whether it is present.

        Queries need not be sorted, but sorted ones are several times faster (memory locality). They are
        processed a chunk at a time so temporaries stay small whatever the file size.
        """
        pos = np.empty(len(queries), dtype=np.int64)
        found = np.zeros(len(queries), dtype=bool)
        for start in range(0, len(queries), CHUNK_ROWS):
            part = slice(start, start + CHUNK_ROWS)
            pos[part], found[part] = self._locate(queries[part])
        return pos, found

    def _locate(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q_hi, q_lo = np.ascontiguousarray(queries["f0"]), np.ascontiguousarray(queries["f1"])
        n = len(self.hi)
        pos = np.searchsorted(self.hi, q_hi, side="left")
        if n == 0:
            return pos, np.zeros(len(queries), dtype=bool)
        at = np.minimum(pos, n - 1)
        same_hi = self.hi[at] == q_hi  # the index holds this high half, starting at pos
        after = np.minimum(at + 1, n - 1)
        run = same_hi & (at + 1 < n) & (self.hi[after] == q_hi)  # ... and more than once
        # Usual case: one indexed uid has this high half; compare low halves directly.
        lo_there = self.lo[at]
        one = same_hi & ~run
        found = one & (lo_there == q_lo)
        pos += one & (lo_there < q_lo)
        many = np.flatnonzero(run)
        if many.size:  # runs of equal high halves: binary-search the low half inside [start, end)
            left = pos[many]
            end = np.searchsorted(self.hi, q_hi[many], side="right")
            right = end.copy()
            target = q_lo[many]
            active = np.flatnonzero(left < right)
            while active.size:
                mid = (left[active] + right[active]) // 2
                go_right = self.lo[mid] < target[active]
                left[active[go_right]] = mid[go_right] + 1
                right[active[~go_right]] = mid[~go_right]
                active = active[left[active] < right[active]]
            pos[many] = left
            inside = left < end
            found[many[inside]] = self.lo[left[inside]] == target[inside]
        return pos, found

    def contains(self, queries: np.ndarray) -> np.ndarray:
        """Boolean mask over ``queries``: which are in the index."""
        found = np.zeros(len(queries), dtype=bool)
        for start in range(0, len(queries), CHUNK_ROWS):
            found[start : start + CHUNK_ROWS] = self._locate(queries[start : start + CHUNK_ROWS])[1]
        return found


# --- set operations on sorted unique arrays ---------------------------------------------------------------


def _as_sets(arrays: Sequence[np.ndarray], warn: Callable[[str], None] | None) -> list[np.ndarray]:
    """Every input sorted and unique (an O(n) check when it already is; the CLI fixes files before)."""
    return [ensure_sorted(f"input {i + 1}", uids, warn) for i, uids in enumerate(arrays)]


def intersect(arrays: Sequence[np.ndarray], warn: Callable[[str], None] | None = None) -> np.ndarray:
    """Uids present in every array; smallest first, so each step queries the shrinking result.

    Inputs that are not sorted and unique (e.g. sorted with a repeat) are fixed first, telling ``warn``.
    """
    arrays = sorted(_as_sets(arrays, warn), key=len)
    result = np.asarray(arrays[0])
    for other in arrays[1:]:
        if len(result) == 0:
            break
        result = pick(result, SortedIndex(other).contains(result))
    return result


def union(arrays: Sequence[np.ndarray], warn: Callable[[str], None] | None = None) -> np.ndarray:
    """Uids present in any array; always merges the two smallest, so k files cost O(n log k).

    Inputs that are not sorted and unique are fixed first, telling ``warn``: a repeat would be copied out.
    """
    pending = sorted(_as_sets(arrays, warn), key=len)
    while len(pending) > 1:
        merged = _union2(pending.pop(0), pending.pop(0))
        pending.append(merged)
        pending.sort(key=len)
    return pending[0]


def _union2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(b) > len(a):
        a, b = b, a
    pos, found = SortedIndex(a).locate(b)
    new = np.flatnonzero(~found)
    slots = pos[new] + np.arange(len(new), dtype=pos.dtype)  # where each new uid lands in the output
    out = np.empty(len(a) + len(slots), dtype=UID_DTYPE)
    from_b = np.zeros(len(out), dtype=bool)
    from_b[slots] = True
    out[slots] = np.asarray(b)[new]
    out[np.flatnonzero(~from_b)] = a  # index scatter: several times faster than a masked assignment
    return out


def difference(first: np.ndarray, others: Sequence[np.ndarray],
               warn: Callable[[str], None] | None = None) -> np.ndarray:
    """Uids of ``first`` in none of ``others``.

    Inputs that are not sorted and unique are fixed first, telling ``warn``: a hit strikes one position of
    ``first``, so a second copy of a struck uid would survive.
    """
    first, *others = _as_sets([first, *others], warn)
    keep = np.ones(len(first), dtype=bool)
    for other in others:
        if len(other) == 0:
            continue
        if len(other) < len(first):  # query the smaller side, then strike its hits in first
            pos, found = SortedIndex(first).locate(other)
            keep[pos[found]] = False
        else:
            keep &= ~SortedIndex(other).contains(first)
    return pick(first, keep)


# --- pool overlap -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolOverlap:
    """How a uid file and a metadata pool overlap."""

    shards: int
    pool_rows: int
    pool_rows_in_file: int  # pool rows whose uid is in the file
    file_uids_in_pool: int  # distinct file uids seen somewhere in the pool


def pool_overlap(uids: np.ndarray, pool) -> PoolOverlap:
    """Overlap of a uid array (made sorted and unique first) with every shard of ``pool`` (a :class:`Pool`)."""
    uids = ensure_sorted("uids", uids, None)
    index = SortedIndex(uids)
    seen = np.zeros(len(uids), dtype=bool)
    rows = rows_in_file = 0
    for shard in pool.shards:
        shard_uids = sort_uids(pool.read_uids(shard))  # sorted queries: far faster lookups
        pos, found = index.locate(shard_uids)
        rows += len(shard_uids)
        rows_in_file += int(found.sum())
        seen[pos[found]] = True
    return PoolOverlap(len(pool.shards), rows, rows_in_file, int(seen.sum()))
