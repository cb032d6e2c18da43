"""Reading shard files on object stores by byte range: only the npz members and parquet column chunks a score needs.

A remote file is opened with the ``prefetched`` cache below, never fsspec's readahead (s3fs's default block of
50 MB pulls a whole npz on the first read). Each read first looks in the parts already fetched; a read outside
them costs one ranged GET of exactly the bytes asked for. The block size therefore plays no part: nothing is
read ahead. The reads are planned instead:

* the file's tail (``TAIL_BYTES``, one GET) holds the zip central directory or the parquet footer;
* from it, the byte ranges of the wanted npz members (local header + data, up to the next member) or of the
  wanted parquet column chunks (every row group) are fetched concurrently with ``fs.cat_ranges``;
* zipfile and pyarrow then read from memory: zipfile checks each member's CRC-32 as it reads it to the end.

Local files are not touched by any of this: they are opened as always (the OS caches and reads ahead).
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.caching import KnownPartsOfAFile, register_cache
from fsspec.implementations.local import LocalFileSystem

from datacomp_plugins.core.errors import PluginError

log = logging.getLogger(__name__)

# One GET for the tail: a zip central directory of DataComp's five arrays is ~0.5 KB, a DataComp parquet
# footer a few KB. A larger footer costs one more GET for the rest, never a re-read. Small, because the tail's
# bytes beyond the footer are wasted unless a wanted column chunk lies there.
TAIL_BYTES = 16 * 1024
CACHE_NAME = "datacomp_prefetched"


class PrefetchedParts(KnownPartsOfAFile):
    """fsspec's known-parts cache, except that bytes outside the known parts are fetched, exactly those bytes
    (one ranged GET per gap), and kept.

    fsspec's own ``parts`` cache raises, zero-fills or returns short there; the readahead caches fetch far more
    than asked.
    """

    name = CACHE_NAME

    def __init__(self, blocksize: int, fetcher, size: int, data: dict | None = None, **_: Any) -> None:
        super().__init__(blocksize, fetcher, size, data=dict(data or {}), strict=True)
        self.file_size = size

    def gaps(self, start: int, stop: int) -> list[tuple[int, int]]:
        """The sub-ranges of [start, stop) not in any known part."""
        missing, position = [], start
        for part_start, part_stop in sorted(self.data):
            if part_stop <= position:
                continue
            if part_start >= stop:
                break
            if part_start > position:
                missing.append((position, part_start))
            position = part_stop
            if position >= stop:
                break
        if position < stop:
            missing.append((position, stop))
        return missing

    def _fetch(self, start: int | None, stop: int | None) -> bytes:
        start = 0 if start is None else start
        stop = self.file_size if stop is None else min(stop, self.file_size)
        if start >= stop:
            return b""
        for gap_start, gap_stop in self.gaps(start, stop):
            log.debug("unplanned ranged read %d-%d", gap_start, gap_stop)
            self.add(gap_start, gap_stop, self.fetcher(gap_start, gap_stop))
        pieces, position = [], start
        for part_start, part_stop in sorted(self.data):
            if part_stop <= position or part_start > position:
                continue
            pieces.append(self.data[(part_start, part_stop)][position - part_start : min(part_stop, stop) - part_start])
            position = min(part_stop, stop)
            if position >= stop:
                break
        if position < stop:
            raise AssertionError(f"range {start}-{stop} not assembled from known parts")
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def add(self, start: int, stop: int, data: bytes) -> None:
        if len(data) != stop - start:
            raise OSError(f"short read: {len(data)} bytes for range {start}-{stop}")
        self.data[(start, stop)] = data


register_cache(PrefetchedParts, clobber=True)


def is_ranged(handle: IO) -> bool:
    """True for a file opened by :func:`open_file` on an object store (reads are planned ranges)."""
    return isinstance(getattr(handle, "cache", None), PrefetchedParts)


def open_file(fs: fsspec.AbstractFileSystem, path: str, size: int | None = None, tail: bool = True) -> IO:
    """Open a shard file for reading: as always when local; else with the prefetched-parts cache and (``tail``)
    its last ``TAIL_BYTES`` fetched."""
    if isinstance(fs, LocalFileSystem):
        return fs.open(path, "rb")
    options: dict[str, Any] = {"cache_type": CACHE_NAME, "cache_options": {}}
    if size is not None:
        options["size"] = size  # spares a HEAD request: the size came with the listing
    try:
        handle = fs.open(path, "rb", **options)
    except TypeError:  # a filesystem whose files take no cache options: read as it reads
        handle = fs.open(path, "rb")
    if tail and is_ranged(handle):
        total = handle.size
        start = max(0, total - TAIL_BYTES)
        if total:
            handle.cache.add(start, total, handle.cache.fetcher(start, total))
    return handle


def fetch_ranges(fs: fsspec.AbstractFileSystem, handle: IO, ranges: Sequence[tuple[int, int]]) -> None:
    """Fetch byte ranges of ``handle``'s file concurrently (one GET each) into its cache; touching ranges merge."""
    if not is_ranged(handle):
        return
    merged: list[list[int]] = []
    for start, stop in sorted(r for r in ranges if r[1] > r[0]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    # only the bytes not fetched yet (e.g. a column chunk partly in the tail)
    wanted = [gap for start, stop in merged for gap in handle.cache.gaps(start, stop)]
    if not wanted:
        return
    results = fs.cat_ranges([handle.path] * len(wanted), [a for a, _ in wanted], [b for _, b in wanted])
    for (start, stop), data in zip(wanted, results, strict=True):
        if isinstance(data, BaseException):
            raise data
        handle.cache.add(start, stop, data)


# --- npz ------------------------------------------------------------------------------------------------


def read_npz_arrays(fs: fsspec.AbstractFileSystem, path: str, keys: Sequence[str],
                    size: int | None = None) -> dict[str, np.ndarray]:
    """The named arrays of an npz, reading (remotely) only the central directory and those members.

    The same zipfile + ``np.lib.format`` calls as ``np.load`` (no pickles); zipfile raises on a bad CRC-32
    when a member has been read to its end, which ``read_array`` always does.
    """
    with open_file(fs, path, size) as handle, zipfile.ZipFile(handle) as archive:
        infos = archive.infolist()
        members = {info.filename.removesuffix(".npy"): info for info in infos}
        for key in keys:
            if key not in members:
                raise PluginError(f"{path}: no array {key!r}; it has {sorted(members)}")
        if is_ranged(handle):
            # A member's local header, data and descriptor lie between its header offset and the next
            # member's (or the central directory's) offset.
            bounds = sorted({i.header_offset for i in infos} | {archive.start_dir})
            following = {b: bounds[n + 1] for n, b in enumerate(bounds[:-1])}
            fetch_ranges(fs, handle, [(members[k].header_offset, following[members[k].header_offset])
                                      for k in keys])
        out = {}
        for key in keys:
            with archive.open(members[key]) as member:
                out[key] = np.lib.format.read_array(member, allow_pickle=False)
        return out


def zip_directory(handle: IO, path: str) -> bytes:
    """The npz's central directory: every array's name, sizes and the CRC-32 of its bytes."""
    try:
        with zipfile.ZipFile(handle) as archive:
            entries = [(i.filename, i.CRC, i.file_size, i.compress_size, i.header_offset)
                       for i in archive.infolist()]
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise PluginError(f"{path}: unreadable npz ({exc})") from None
    return json.dumps(entries).encode()


# --- parquet --------------------------------------------------------------------------------------------


def parquet_footer(handle: IO, size: int, path: str) -> bytes:
    """The parquet footer (schema, row groups, per-chunk sizes, offsets and statistics): two small reads."""
    if size < 12:
        raise PluginError(f"{path}: not a parquet file ({size} bytes)")
    handle.seek(size - 8)
    tail = handle.read(8)
    length = int.from_bytes(tail[:4], "little")
    if tail[4:] != b"PAR1" or length > size - 12:
        raise PluginError(f"{path}: not a parquet file (no parquet footer at its end)")
    handle.seek(size - 8 - length)
    return handle.read(length)


@dataclass(frozen=True)
class ParquetTail:
    """A remote parquet file's parsed footer and the tail bytes fetched with it (reused by the next read)."""

    metadata: pq.FileMetaData
    parts: tuple[tuple[int, int, bytes], ...]


def parquet_metadata(handle: IO, path: str) -> pq.FileMetaData:
    """The parsed footer, read through ``handle`` (remote: from the fetched tail)."""
    footer = parquet_footer(handle, handle.size, path)
    return pq.read_metadata(io.BytesIO(b"PAR1" + footer + len(footer).to_bytes(4, "little") + b"PAR1"))


def read_parquet_metadata(fs: fsspec.AbstractFileSystem, path: str, size: int | None = None
                          ) -> tuple[pq.FileMetaData, ParquetTail | None]:
    """The footer alone; remotely with the tail it came in, for the next read of the same file."""
    with open_file(fs, path, size) as handle:
        if not is_ranged(handle):
            return pq.ParquetFile(handle).metadata, None
        metadata = parquet_metadata(handle, path)
        return metadata, _tail_of(handle, metadata)


def column_chunk_ranges(metadata: pq.FileMetaData, columns: Sequence[str]) -> list[tuple[int, int]]:
    """Byte ranges of the named top-level columns' chunks in every row group (dictionary page included)."""
    wanted = set(columns)
    ranges = []
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for index in range(row_group.num_columns):
            chunk = row_group.column(index)
            if chunk.path_in_schema.split(".")[0] not in wanted:
                continue
            start = chunk.data_page_offset
            if chunk.has_dictionary_page and 0 < (chunk.dictionary_page_offset or 0) < start:
                start = chunk.dictionary_page_offset
            ranges.append((start, start + chunk.total_compressed_size))
    return ranges


def read_parquet_columns(fs: fsspec.AbstractFileSystem, path: str, columns: Sequence[str],
                         size: int | None = None, tail: ParquetTail | None = None
                         ) -> tuple[pa.Table, ParquetTail | None]:
    """The named columns, reading (remotely) the footer once and then only their column chunks.

    ``tail`` (from an earlier read of the same file) spares the tail's GET and its bytes are reused.
    Returns the table and the tail for the next read (None for local files).
    """
    with open_file(fs, path, size, tail=tail is None) as handle:
        if not is_ranged(handle):
            parquet = pq.ParquetFile(handle)
            _check_columns(parquet.schema_arrow.names, columns, path)
            return parquet.read(columns=list(columns)), None
        if tail is None:
            metadata = parquet_metadata(handle, path)
            tail = _tail_of(handle, metadata)
        else:
            metadata = tail.metadata
            for start, stop, data in tail.parts:
                handle.cache.data[(start, stop)] = data
        _check_columns(metadata.schema.to_arrow_schema().names, columns, path)
        fetch_ranges(fs, handle, column_chunk_ranges(metadata, columns))
        return pq.ParquetFile(handle, metadata=metadata).read(columns=list(columns)), tail


def _tail_of(handle: IO, metadata: pq.FileMetaData) -> ParquetTail:
    return ParquetTail(metadata, tuple((a, b, d) for (a, b), d in handle.cache.data.items()))


def _check_columns(names: Sequence[str], columns: Sequence[str], path: str) -> None:
    missing = [c for c in columns if c not in names]
    if missing:
        raise PluginError(f"{path}: missing column(s) {missing}; it has {list(names)}")


# --- credentials and endpoints ----------------------------------------------------------------------------


def apply_storage_options(text: str, url: str) -> None:
    """Make ``text`` (a JSON object of filesystem arguments, e.g. s3fs's ``endpoint_url``, ``profile``, ``key``)
    the defaults for every URL of ``url``'s protocol in this process.

    Set through fsspec's config, as ``FSSPEC_S3_ENDPOINT_URL=...`` or ``~/.config/fsspec/s3.json`` would: the pool,
    a remote ``--save_path`` or ``--target`` on the same store get them; worker processes receive the pool's
    filesystem with them already applied.
    """
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PluginError(f"--storage_options: not JSON ({exc}); expected an object such as "
                          "'{\"endpoint_url\": \"https://...\"}'") from None
    if not isinstance(options, dict):
        raise PluginError("--storage_options: expected a JSON object such as '{\"endpoint_url\": \"https://...\"}', "
                          f"got {type(options).__name__}")
    protocol = fsspec.core.split_protocol(url)[0]
    if protocol in (None, "file", "local"):
        raise PluginError(f"--storage_options: --metadata_dir {url} is a local path; the options are for a "
                          "remote store (s3://, gs://, ...)")
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except (ValueError, ImportError) as exc:
        raise PluginError(f"--metadata_dir {url}: cannot open ({exc})") from None
    protocols = cls.protocol if isinstance(cls.protocol, (tuple, list)) else (cls.protocol,)
    from fsspec.config import conf

    conf[protocols[0]] = {**conf.get(protocols[0], {}), **options}
