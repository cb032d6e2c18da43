"""Uid files as hex text or parquet (``uids to-hex`` / ``from-hex``), a block at a time, for tens of millions.

A malformed hex uid is refused naming the file and its line (text, 1-based) or row (parquet, 0-based); a
parquet file without the uid column is refused listing the columns it has; a missing file is refused naming
it. Output text is always sorted and unique, like every uid file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.fileio import atomic_open
from datacomp_plugins.core.uids import HEX_DIGITS, UID_DTYPE, decode_fixed, encode_lines, hex_uid_mask, parse_hex
from datacomp_plugins.select.uidtools import ensure_sorted

CHUNK_ROWS = 1 << 20  # uids per vectorised step in conversions: bounds temporaries to ~100 MB
TEXT_BLOCK_BYTES = 64 << 20


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
        valid = hex_uid_mask(values)
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

        def is_text(t: pa.DataType) -> bool:
            return pa.types.is_string(t) or pa.types.is_large_string(t) or is_string_view(t)

        # a dictionary-encoded string column is hex strings too (filter reads it so in pool metadata)
        if not (is_text(kind) or (pa.types.is_dictionary(kind) and is_text(kind.value_type))):
            raise PluginError(f"{path}: column {column!r} has type {kind}; expected hex strings")
        first_row = 0
        for batch in parquet.iter_batches(batch_size=CHUNK_ROWS, columns=[column]):
            values = batch.column(0)
            if pa.types.is_dictionary(values.type):
                values = values.dictionary_decode()
            values = values.cast(pa.large_string())
            if len(values):
                yield values, partial(_row, f"{path} column {column!r}", first_row)
            first_row += len(values)


def _row(source: str, first_row: int, i: int) -> str:
    return f"{source} row {first_row + i}"
