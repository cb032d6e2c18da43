"""Reading a DataComp metadata pool: ``<stem>.parquet`` + ``<stem>.npz`` pairs under any fsspec URL.

Parquet row i belongs to npz row i. Only the columns and npz keys a score needs are read (one npz key
decompresses that array alone), embeddings come back as stored (float16 or float32), and nothing
assumes a row count per shard.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.uids import parse_hex

ARCH_DIMS = {"l14": 768, "b32": 512}
# Listing fields derived from a file's content, by filesystem (S3/GCS/Azure ...): free to read, and they
# change exactly when the content does. Times (mtime, LastModified) are not used: they change when a pool
# is copied and say nothing about the content.
_CONTENT_FIELDS = ("ETag", "etag", "md5Hash", "content_md5", "crc32c", "checksum", "sha256")

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """One metadata shard: where its two files are and a fingerprint of its name and content (not its place)."""

    stem: str
    parquet: str
    npz: str
    fingerprint: str


def _parquet_footer(handle, size: int, path: str) -> bytes:
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


def _zip_directory(handle, path: str) -> bytes:
    """The npz's central directory: every array's name, sizes and the CRC-32 of its bytes."""
    try:
        with zipfile.ZipFile(handle) as archive:
            entries = [(i.filename, i.CRC, i.file_size, i.compress_size, i.header_offset)
                       for i in archive.infolist()]
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise PluginError(f"{path}: unreadable npz ({exc})") from None
    return json.dumps(entries).encode()


def file_identity(fs: fsspec.AbstractFileSystem, path: str, info: dict) -> str:
    """Size and a content fingerprint of one shard file, independent of where the file lies.

    A content hash from the listing (ETag, md5, ...) where the store has one; else the parquet footer or
    the npz central directory (CRC-32 of every array), each read with a seek to the file's end.
    """
    size = info.get("size")
    content = {k: str(info[k]) for k in _CONTENT_FIELDS if info.get(k)}
    if not content:
        def read() -> bytes:
            with fs.open(path, "rb") as handle:
                if path.endswith(".npz"):
                    return _zip_directory(handle, path)
                return _parquet_footer(handle, int(size if size is not None else fs.size(path)), path)
        try:
            tail = with_retries(read, path)
        except FileNotFoundError:
            raise PluginError(f"{path}: file not found") from None
        content = {"tail": hashlib.sha256(tail).hexdigest()}
    return json.dumps({"size": size, **content}, sort_keys=True)


def with_retries(action: Callable[[], T], what: str, attempts: int = 4, delay: float = 0.5) -> T:
    """Run ``action``, retrying transient I/O errors with exponential backoff; then name ``what``.

    Remote object stores drop connections now and then; a pool of thousands of shards would otherwise
    fail on one hiccup. Missing files and bad content are not transient and surface at once.
    """
    for attempt in range(attempts):
        try:
            return action()
        except (FileNotFoundError, PluginError, ValueError, pa.ArrowInvalid):
            raise
        except OSError as exc:
            if attempt == attempts - 1:
                raise PluginError(f"{what}: read failed after {attempts} attempts ({exc})") from None
            time.sleep(delay * 2**attempt)
    raise AssertionError("unreachable")


def open_directory(url: str, flag: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and root of a folder given on the command line (path or fsspec URL), or a clear error."""
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ValueError, ImportError) as exc:
        raise PluginError(f"{flag} {url}: cannot open ({exc})") from None
    if not fs.isdir(root):
        raise PluginError(f"{flag} {url}: no such directory")
    return fs, root


class Pool:
    """A metadata directory and its shards, sorted by stem (the order never affects results)."""

    def __init__(self, metadata_dir: str, flag: str = "--metadata_dir") -> None:
        self.url = str(metadata_dir)
        self.fs, self.root = open_directory(self.url, flag)
        listing = {posixpath.basename(e["name"].rstrip("/")): e for e in self.fs.ls(self.root, detail=True)}
        stems = sorted(name[: -len(".parquet")] for name in listing if name.endswith(".parquet"))
        if not stems:
            raise PluginError(f"{flag} {self.url}: no .parquet files; expected DataComp metadata "
                              "(<stem>.parquet with <stem>.npz beside it)")
        for stem in stems:
            if f"{stem}.npz" not in listing:
                raise PluginError(f"{self.join(stem + '.parquet')}: no matching {stem}.npz beside it "
                                  "(DataComp's embedding cache is required)")

        def shard(stem: str) -> Shard:
            # The stem is part of the identity: negCLIPLoss's batches are drawn from it.
            parquet, npz = f"{stem}.parquet", f"{stem}.npz"
            key = json.dumps([stem, file_identity(self.fs, self.join(parquet), listing[parquet]),
                              file_identity(self.fs, self.join(npz), listing[npz])])
            return Shard(stem, self.join(parquet), self.join(npz), hashlib.sha256(key.encode()).hexdigest()[:16])

        with ThreadPoolExecutor(min(16, len(stems))) as readers:  # small reads: latency-bound on object stores
            self.shards: list[Shard] = list(readers.map(shard, stems))

    def join(self, name: str) -> str:
        """Full path of a file in the metadata directory, as the filesystem names it."""
        return posixpath.join(self.root, name)

    # --- reading one shard -------------------------------------------------------------------------

    def num_rows(self, shard: Shard) -> int:
        """Row count from the parquet footer, without reading data."""
        def read() -> int:
            with self.fs.open(shard.parquet, "rb") as handle:
                return pq.ParquetFile(handle).metadata.num_rows
        return self._guard(read, shard.parquet)

    def read_columns(self, shard: Shard, columns: Sequence[str]) -> pa.Table:
        """Only the named parquet columns."""
        def read() -> pa.Table:
            with self.fs.open(shard.parquet, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                missing = [c for c in columns if c not in parquet.schema_arrow.names]
                if missing:
                    raise PluginError(f"{shard.parquet}: missing column(s) {missing}; it has "
                                      f"{parquet.schema_arrow.names}")
                return parquet.read(columns=list(columns))
        return self._guard(read, shard.parquet)

    def read_uids(self, shard: Shard) -> np.ndarray:
        """The shard's uids as ``u8,u8``, in row order, parsed vectorised."""
        return parse_hex(self.read_columns(shard, ["uid"]).column("uid"), source=shard.parquet, column="uid")

    def read_embeddings(self, shard: Shard, keys: Sequence[str], num_rows: int) -> dict[str, np.ndarray]:
        """The named npz arrays (n, d) as float16 or float32, checked against the parquet's row count."""
        def read() -> dict[str, np.ndarray]:
            with self.fs.open(shard.npz, "rb") as handle, np.load(handle, allow_pickle=False) as npz:
                out = {}
                for key in keys:
                    if key not in npz.files:
                        raise PluginError(f"{shard.npz}: no array {key!r}; it has {sorted(npz.files)}")
                    array = npz[key]
                    if array.ndim != 2 or array.dtype.kind != "f":
                        raise PluginError(f"{shard.npz}: {key!r} should be a 2-D float array, got "
                                          f"{array.dtype} {array.shape}")
                    if array.shape[0] != num_rows:
                        raise PluginError(f"{shard.npz}: {key!r} has {array.shape[0]} rows but "
                                          f"{shard.parquet} has {num_rows}; the two must match row for row")
                    # float16 (DataComp's storage) and float32 are kept as stored: the consumer converts
                    # once, where it is cheapest (negCLIPLoss straight to its compute dtype).
                    keep = array.dtype in (np.float16, np.float32)
                    out[key] = array if keep else array.astype(np.float32)
                return out
        return self._guard(read, shard.npz)

    def _guard(self, action: Callable[[], T], path: str) -> T:
        try:
            return with_retries(action, path)
        except FileNotFoundError:
            raise PluginError(f"{path}: file not found") from None
        except (pa.ArrowInvalid, ValueError, EOFError) as exc:
            raise PluginError(f"{path}: unreadable ({exc})") from None
        except Exception as exc:  # zipfile.BadZipFile and friends
            if isinstance(exc, PluginError):
                raise
            raise PluginError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
