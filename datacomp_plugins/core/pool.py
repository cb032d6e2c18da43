"""Reading a DataComp metadata pool: ``<stem>.parquet`` + ``<stem>.npz`` pairs under any fsspec URL.

Parquet row i belongs to npz row i. Only the columns and npz keys a score needs are read (one npz key
decompresses that array alone) and, on object stores, only their bytes are fetched (core/remote.py);
embeddings come back as stored (float16 or float32), and nothing assumes a row count per shard.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import fsspec
import numpy as np
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.remote import (
    ParquetTail,
    open_file,
    parquet_footer,
    read_npz_arrays,
    read_parquet_columns,
    read_parquet_metadata,
    zip_directory,
)
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
    # sizes from the listing: a remote read then needs no HEAD request to learn them
    parquet_size: int | None = field(default=None, compare=False)
    npz_size: int | None = field(default=None, compare=False)


def file_identity(fs: fsspec.AbstractFileSystem, path: str, info: dict) -> str:
    """Size and a content fingerprint of one shard file, independent of where the file lies.

    A content hash from the listing (ETag, md5, ...) where the store has one; else the parquet footer or
    the npz central directory (CRC-32 of every array), each read with a seek to the file's end.
    """
    size = info.get("size")
    content = {k: str(info[k]) for k in _CONTENT_FIELDS if info.get(k)}
    if not content:
        def read() -> bytes:
            with open_file(fs, path, size) as handle:  # remote: the tail alone, one ranged GET
                if path.endswith(".npz"):
                    return zip_directory(handle, path)
                return parquet_footer(handle, int(size if size is not None else fs.size(path)), path)
        try:
            tail = with_retries(read, path)
        except FileNotFoundError:
            raise PluginError(f"{path}: file not found") from None
        except PermissionError as exc:
            raise PluginError(f"{path}: access denied ({exc})") from None
        content = {"tail": hashlib.sha256(tail).hexdigest()}
    return json.dumps({"size": size, **content}, sort_keys=True)


def with_retries(action: Callable[[], T], what: str, attempts: int = 4, delay: float = 0.5) -> T:
    """Run ``action``, retrying transient I/O errors with exponential backoff; then name ``what``.

    Remote object stores drop connections and answer 500/503 now and then; a pool of thousands of shards
    would otherwise fail on one hiccup. Missing files, refused access (403) and bad content are not transient
    and surface at once.
    """
    for attempt in range(attempts):
        try:
            return action()
        except (FileNotFoundError, PermissionError, PluginError, ValueError, pa.ArrowInvalid):
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
    fs.invalidate_cache(root)  # a listing cached earlier in this process would hide objects changed since
    try:
        isdir = with_retries(lambda: fs.isdir(root), f"{flag} {url}")
    except PermissionError as exc:
        raise PluginError(f"{flag} {url}: access denied ({exc})") from None
    if not isdir:
        raise PluginError(f"{flag} {url}: no such directory")
    return fs, root


class Pool:
    """A metadata directory and its shards, sorted by stem (the order never affects results)."""

    def __init__(self, metadata_dir: str, flag: str = "--metadata_dir") -> None:
        self.url = str(metadata_dir)
        self.fs, self.root = open_directory(self.url, flag)
        try:
            entries = with_retries(lambda: self.fs.ls(self.root, detail=True), f"{flag} {self.url}")
        except PermissionError as exc:
            raise PluginError(f"{flag} {self.url}: access denied ({exc})") from None
        listing = {posixpath.basename(e["name"].rstrip("/")): e for e in entries}
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
            return Shard(stem, self.join(parquet), self.join(npz), hashlib.sha256(key.encode()).hexdigest()[:16],
                         _size(listing[parquet]), _size(listing[npz]))

        with ThreadPoolExecutor(min(16, len(stems))) as readers:  # small reads: latency-bound on object stores
            self.shards: list[Shard] = list(readers.map(shard, stems))

    def join(self, name: str) -> str:
        """Full path of a file in the metadata directory, as the filesystem names it."""
        return posixpath.join(self.root, name)

    # --- reading one shard -------------------------------------------------------------------------
    # Remote files are read by planned byte ranges (core/remote.py). A parquet footer read for one call is
    # kept for the next call on the same file (uids, then a score's column): one tail GET per shard, not two.

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_footers", None)
        state.pop("_footers_lock", None)
        return state

    def _footer(self, path: str) -> ParquetTail | None:
        return getattr(self, "_footers", {}).get(path)

    def _keep_footer(self, path: str, tail: ParquetTail | None) -> None:
        if tail is None:  # local files: the OS caches them
            return
        if "_footers_lock" not in self.__dict__:
            self._footers_lock, self._footers = threading.Lock(), {}
        with self._footers_lock:
            self._footers.pop(path, None)
            self._footers[path] = tail
            while len(self._footers) > 8:  # shards in flight; footers are a few KB each
                self._footers.pop(next(iter(self._footers)))

    def num_rows(self, shard: Shard) -> int:
        """Row count from the parquet footer, without reading data."""
        known = self._footer(shard.parquet)
        if known is not None:
            return known.metadata.num_rows

        def read() -> int:
            metadata, tail = read_parquet_metadata(self.fs, shard.parquet, shard.parquet_size)
            self._keep_footer(shard.parquet, tail)
            return metadata.num_rows
        return self._guard(read, shard.parquet)

    def read_columns(self, shard: Shard, columns: Sequence[str]) -> pa.Table:
        """Only the named parquet columns (remotely: only their column chunks cross the network)."""
        def read() -> pa.Table:
            table, tail = read_parquet_columns(self.fs, shard.parquet, columns, shard.parquet_size,
                                               self._footer(shard.parquet))
            self._keep_footer(shard.parquet, tail)
            return table
        return self._guard(read, shard.parquet)

    def read_uids(self, shard: Shard) -> np.ndarray:
        """The shard's uids as ``u8,u8``, in row order, parsed vectorised."""
        return parse_hex(self.read_columns(shard, ["uid"]).column("uid"), source=shard.parquet, column="uid")

    def read_embeddings(self, shard: Shard, keys: Sequence[str], num_rows: int) -> dict[str, np.ndarray]:
        """The named npz arrays (n, d) as float16 or float32, checked against the parquet's row count.

        Remotely only the zip's central directory and these members are fetched; their CRC-32 is checked.
        """
        def read() -> dict[str, np.ndarray]:
            arrays = read_npz_arrays(self.fs, shard.npz, keys, shard.npz_size)
            out = {}
            for key in keys:
                array = arrays[key]
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
        if not isinstance(self.fs, LocalFileSystem):
            path = self.fs.unstrip_protocol(path)  # name the object as the user wrote it: s3://bucket/key
        try:
            return with_retries(action, path)
        except FileNotFoundError:
            raise PluginError(f"{path}: file not found") from None
        except PermissionError as exc:
            raise PluginError(f"{path}: access denied ({exc})") from None
        except (pa.ArrowInvalid, ValueError, EOFError) as exc:
            raise PluginError(f"{path}: unreadable ({exc})") from None
        except Exception as exc:  # zipfile.BadZipFile and friends
            if isinstance(exc, PluginError):
                raise
            raise PluginError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None


def _size(entry: dict) -> int | None:
    size = entry.get("size")
    return int(size) if isinstance(size, int) else None
