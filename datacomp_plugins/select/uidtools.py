"""Checks, set operations and hex conversions on DataComp uid files, sized for files of tens of millions.

Bad input policy, the same for every ``datacomp-plugins uids`` command:

- a uid file whose array is not 1-D ``u8,u8`` is refused, naming the file, its dtype and the expected one;
- an unsorted or duplicated uid file is accepted: it is sorted and deduplicated, with a warning on stderr
  naming the file (outputs are always sorted and unique, as DataComp's resharder needs);
- a malformed hex uid in ``from-hex`` input is refused, naming the file and its line (text, 1-based) or
  row (parquet, 0-based);
- a parquet file without the uid column is refused, listing the columns it has;
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

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.fileio import atomic_open
from datacomp_plugins.core.uids import (
    HEX_DIGITS,
    UID_DTYPE,
    decode_fixed,
    dedup_sorted,
    encode_lines,
    parse_hex,
    pick,
    read_uid_file,
    sort_uids,
    sorted_unique,
)

CHUNK_ROWS = 1 << 20  # uids per vectorised step in conversions: bounds temporaries to ~100 MB
TEXT_BLOCK_BYTES = 64 << 20
_VALID_HEX = f"^[0-9A-Fa-f]{{{HEX_DIGITS}}}$"


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


# --- hex conversions --------------------------------------------------------------------------------------


def hex_blocks(uids: np.ndarray, chunk_rows: int | None = None) -> Iterator[np.ndarray]:
    """Text of ``uids`` as 32-char lower-case hex lines (byte arrays for ``write``), a chunk at a time."""
    chunk_rows = chunk_rows or CHUNK_ROWS
    for start in range(0, len(uids), chunk_rows):
        yield encode_lines(np.asarray(uids[start : start + chunk_rows]))


def write_hex(path: str, uids: np.ndarray, warn: Callable[[str], None] | None = None) -> None:
    """Write the hex text atomically: an interrupted run leaves no partial list.

    The text is always sorted and unique, like every uid file: other input is fixed first, telling ``warn``.
    """
    uids = ensure_sorted(path, uids, warn)
    with atomic_open(path, "wb") as handle:
        for block in hex_blocks(uids):
            handle.write(block)


def _open_input(path: str, what: str):
    import fsspec

    try:
        return fsspec.open(path, "rb").open()
    except FileNotFoundError:
        raise PluginError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise PluginError(f"{path}: is a directory, expected a {what}") from None
    except (OSError, ValueError) as exc:
        raise PluginError(f"{path}: cannot open {what} ({exc})") from None


def is_parquet(path: str) -> bool:
    """Parquet files start with the magic bytes ``PAR1``; anything else is read as text."""
    with _open_input(path, "input file") as handle:
        return handle.read(4) == b"PAR1"


def read_hex_file(path: str, column: str = "uid") -> np.ndarray:
    """Parse a text file (one hex uid per line, blank lines skipped) or a parquet column, in file order."""
    chunks = _parquet_chunks(path, column) if is_parquet(path) else _text_chunks(path)
    parsed = [_parse_chunk(values, where, path) for values, where in chunks]
    return np.concatenate(parsed) if parsed else np.zeros(0, dtype=UID_DTYPE)


def _parse_chunk(values: pa.Array | np.ndarray, where: Callable[[int], str], source: str) -> np.ndarray:
    """Fast path for 32-digit uids, ``parse_hex`` for the rest; on a bad uid, find and name its line/row."""
    if isinstance(values, np.ndarray):  # (n, 32) digits cut straight from fixed-width text
        parsed = decode_fixed(values)
        if parsed is not None:
            return parsed
        offsets = np.arange(0, values.size + 1, HEX_DIGITS, dtype=np.int64)
        values = pa.LargeStringArray.from_buffers(len(values), pa.py_buffer(offsets),
                                                  pa.py_buffer(np.ascontiguousarray(values)))
    elif values.null_count == 0 and len(values) and pc.min_max(pc.binary_length(values)).as_py() == {
        "min": HEX_DIGITS, "max": HEX_DIGITS
    }:
        offsets = np.frombuffer(values.buffers()[1], dtype=np.int64)[values.offset : values.offset + len(values) + 1]
        chars = np.frombuffer(values.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
        parsed = decode_fixed(chars.reshape(len(values), HEX_DIGITS))
        if parsed is not None:
            return parsed
    try:
        return parse_hex(values, source=source)
    except PluginError:
        valid = pc.fill_null(pc.match_substring_regex(values, _VALID_HEX), False).to_numpy(zero_copy_only=False)
        if valid.all():  # parse_hex refused what the pattern accepts: its own message stands
            raise
        row = int(np.flatnonzero(~valid)[0])
        value = values[row].as_py()
        shown = "a missing value (null)" if value is None else repr(value)
        raise PluginError(f"{where(row)}: malformed uid {shown}; expected {HEX_DIGITS} hex digits "
                          "(DataComp's uid)") from None


def _text_chunks(path: str) -> Iterator[tuple[pa.Array, Callable[[int], str]]]:
    """Non-blank lines, whitespace-trimmed, per block of whole lines; ``where(i)`` names the i-th one."""
    first_line = 1
    with _open_input(path, "input file") as handle:
        carry = b""
        while True:
            data = handle.read(TEXT_BLOCK_BYTES)
            if data:
                buffer = carry + data
                cut = buffer.rfind(b"\n") + 1
                block, carry = buffer[:cut], buffer[cut:]
                if not block:
                    continue
            else:
                if not carry:
                    return
                block, carry = carry + b"\n", b""
            raw = np.frombuffer(block, dtype=np.uint8)
            width = HEX_DIGITS + 1
            if len(raw) % width == 0 and (raw[HEX_DIGITS::width] == ord("\n")).all():
                # Every line exactly 32 characters (what to-hex writes): no splitting or trimming needed.
                numbers = first_line + np.arange(len(raw) // width)
                first_line += len(numbers)
                yield raw.reshape(-1, width)[:, :HEX_DIGITS], partial(_line, path, numbers)
                continue
            ends = np.flatnonzero(raw == ord("\n"))
            non_ascii = np.flatnonzero(raw >= 128)
            if non_ascii.size:
                line = int(np.searchsorted(ends, non_ascii[0]))
                start = ends[line - 1] + 1 if line else 0
                text = block[start : ends[line]].decode("utf-8", errors="replace").strip()
                raise PluginError(f"{path} line {first_line + line}: malformed uid {text!r}; "
                                  f"expected {HEX_DIGITS} hex digits (DataComp's uid)")
            offsets = np.zeros(len(ends) + 1, dtype=np.int64)
            offsets[1:] = ends + 1
            lines = pa.LargeStringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(block))
            lines = pc.ascii_trim_whitespace(lines)
            filled = np.flatnonzero(pc.binary_length(lines).to_numpy() > 0)
            numbers = first_line + filled
            first_line += len(ends)
            if filled.size:
                yield lines.take(pa.array(filled)), partial(_line, path, numbers)


def _line(path: str, numbers: np.ndarray, i: int) -> str:
    return f"{path} line {int(numbers[i])}"


def _parquet_chunks(path: str, column: str) -> Iterator[tuple[pa.Array, Callable[[int], str]]]:
    import pyarrow.parquet as pq

    with _open_input(path, "input file") as handle:
        try:
            parquet = pq.ParquetFile(handle)
        except (pa.ArrowInvalid, OSError) as exc:
            raise PluginError(f"{path}: not a readable parquet file ({exc})") from None
        names = parquet.schema_arrow.names
        if column not in names:
            raise PluginError(f"{path}: no column {column!r}; it has {names} (choose one with --column)")
        kind = parquet.schema_arrow.field(column).type
        is_string_view = getattr(pa.types, "is_string_view", lambda _: False)  # pyarrow >= 16
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or is_string_view(kind)):
            raise PluginError(f"{path}: column {column!r} has type {kind}; expected hex strings")
        first_row = 0
        for batch in parquet.iter_batches(batch_size=CHUNK_ROWS, columns=[column]):
            values = batch.column(0).cast(pa.large_string())
            if len(values):
                yield values, partial(_row, f"{path} column {column!r}", first_row)
            first_row += len(values)


def _row(source: str, first_row: int, i: int) -> str:
    return f"{source} row {first_row + i}"
