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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datacomp_plugins.errors import PluginError
from datacomp_plugins.uids import parse_hex

ARCH_DIMS = {"l14": 768, "b32": 512}
# Info fields that change when a file's content changes, by filesystem (local, memory, S3, GCS, ...).
_VERSION_FIELDS = ("mtime", "LastModified", "updated", "ETag", "etag", "md5Hash", "created")

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """One metadata shard: where its two files are and a fingerprint that changes when they do."""

    stem: str
    parquet: str
    npz: str
    fingerprint: str


def _version(info: dict) -> dict:
    return {"size": info.get("size"), **{k: str(info[k]) for k in _VERSION_FIELDS if k in info}}


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


class Pool:
    """A metadata directory and its shards, sorted by stem (the order never affects results)."""

    def __init__(self, metadata_dir: str, flag: str = "--metadata_dir") -> None:
        self.url = str(metadata_dir)
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url)
        except (ValueError, ImportError) as exc:
            raise PluginError(f"{flag} {self.url}: cannot open ({exc})") from None
        if not self.fs.isdir(self.root):
            raise PluginError(f"{flag} {self.url}: no such directory")
        listing = {posixpath.basename(e["name"].rstrip("/")): e for e in self.fs.ls(self.root, detail=True)}
        stems = sorted(name[: -len(".parquet")] for name in listing if name.endswith(".parquet"))
        if not stems:
            raise PluginError(f"{flag} {self.url}: no .parquet files; expected DataComp metadata "
                              "(<stem>.parquet with <stem>.npz beside it)")
        shards = []
        for stem in stems:
            parquet, npz = f"{stem}.parquet", f"{stem}.npz"
            if npz not in listing:
                raise PluginError(f"{self.join(parquet)}: no matching {npz} beside it "
                                  "(DataComp's embedding cache is required)")
            key = json.dumps([_version(listing[parquet]), _version(listing[npz])], sort_keys=True)
            shards.append(Shard(stem, self.join(parquet), self.join(npz),
                                hashlib.sha256(key.encode()).hexdigest()[:16]))
        self.shards: list[Shard] = shards

    def join(self, name: str) -> str:
        """Full path of a file in the metadata directory, as the filesystem names it."""
        return posixpath.join(self.root, name)

    @property
    def fingerprint(self) -> str:
        """Identity of the pool's location, used to separate score caches of different pools."""
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return hashlib.sha256(f"{protocol}://{self.root}".encode()).hexdigest()[:16]

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
