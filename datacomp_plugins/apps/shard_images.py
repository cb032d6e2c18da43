"""Finding a sample's image in the pool's webdataset tars, by uid, reading only what is needed.

Two layouts are read, told apart per sample by the member names, never by configuration:

- img2dataset's (DataComp's downloaded pool): ``<key>.jpg``, ``<key>.txt``, ``<key>.json`` with the uid
  inside the json. When img2dataset's ``<stem>.parquet`` (``key`` and ``uid`` columns) lies beside the tar
  it is used instead of the json members.
- DataComp's resharder's: the key is ``<uid>-<j>``, so the tar headers alone give the uid.

A tar is scanned by its headers (data is skipped by seeking); the image members are read only for the
samples shown, and the scan stops once every wanted uid is found.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.fileio import is_local

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
RESHARDED_KEY = re.compile(r"^([0-9a-f]{32})-\d+$")


@dataclass(frozen=True)
class ImageRef:
    """Where one image is: the tar, the member name, and its data's byte range."""

    tar: str
    member: str
    offset: int
    size: int


def _split(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the name up to the first dot of the last path component."""
    folder, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(folder, stem), ext.lower()


class ShardImages:
    """The tars of a shard folder (local path or fsspec URL)."""

    def __init__(self, shards_dir: str, flag: str = "--shards") -> None:
        from datacomp_plugins.core.pool import open_directory

        self.url = str(shards_dir)
        self.fs, self.root = open_directory(self.url, flag)
        names = sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.root, detail=False))
        self.tars = [posixpath.join(self.root, n) for n in names if n.endswith(".tar")]
        if not self.tars:
            raise PluginError(f"{flag} {self.url}: no .tar shards; expected webdataset tars as img2dataset or "
                              "DataComp's resharder write them (<key>.jpg + <key>.json with the uid)")
        self._listing = set(names)
        self.members_scanned = 0

    def locate(self, wanted: Iterable[str]) -> dict[str, ImageRef]:
        """Hex uid -> where its image is, for the wanted uids found (a sample img2dataset failed to download
        has none)."""
        wanted = set(wanted)
        found: dict[str, ImageRef] = {}
        for tar in self.tars:
            if len(found) == len(wanted):
                break
            found.update(self._scan(tar, wanted - found.keys()))
        return found

    def _key_uids(self, tar: str) -> dict[str, str] | None:
        """img2dataset's per-shard parquet (key -> uid), when it is there and has both columns."""
        name = posixpath.basename(tar)[: -len(".tar")] + ".parquet"
        if name not in self._listing:
            return None
        import pyarrow.parquet as pq

        try:
            with self.fs.open(posixpath.join(self.root, name), "rb") as handle:
                parquet = pq.ParquetFile(handle)
                if not {"key", "uid"} <= set(parquet.schema_arrow.names):
                    return None
                table = parquet.read(columns=["key", "uid"])
        except (OSError, ValueError) as exc:
            raise PluginError(f"{posixpath.join(self.root, name)}: unreadable ({exc})") from None
        keys = table.column("key").to_pylist()
        return {str(k): str(u).lower().zfill(32) for k, u in zip(keys, table.column("uid").to_pylist(),
                                                                  strict=True) if k is not None and u}

    def _open(self, path: str):
        # the builtin file object for local files: fsspec's wrapper costs more than the header parse itself
        return open(path, "rb") if is_local(self.url) else self.fs.open(path, "rb")

    def _scan(self, tar: str, wanted: set[str]) -> dict[str, ImageRef]:
        key_uids = self._key_uids(tar)
        images: dict[str, ImageRef] = {}
        uid_of: dict[str, str] = {}
        with self._open(tar) as handle:
            for name, offset, size in tar_members(handle, tar):
                self.members_scanned += 1
                key, ext = _split(name)
                if ext in IMAGE_EXTENSIONS and key not in images:
                    images[key] = ImageRef(tar, name, offset, size)
                if key in uid_of:
                    continue
                match = RESHARDED_KEY.match(posixpath.basename(key))
                if match:
                    uid_of[key] = match.group(1)
                elif key_uids is not None:
                    if key in key_uids:
                        uid_of[key] = key_uids[key]
                elif ext == "json":  # tar_members seeks to the next header itself
                    handle.seek(offset)
                    uid_of[key] = _json_uid(handle.read(size), tar, name)
        return {uid: images[key] for key, uid in uid_of.items() if uid in wanted and key in images}

    def read(self, refs: Iterable[ImageRef]) -> dict[ImageRef, bytes]:
        """The bytes of the given image members, each tar opened once."""
        by_tar: dict[str, list[ImageRef]] = {}
        for ref in refs:
            by_tar.setdefault(ref.tar, []).append(ref)
        out = {}
        for tar, group in by_tar.items():
            with self._open(tar) as handle:
                for ref in sorted(group, key=lambda r: r.offset):
                    handle.seek(ref.offset)
                    out[ref] = handle.read(ref.size)
        return out


def _json_uid(raw: bytes, tar: str, member: str) -> str:
    try:
        uid = json.loads(raw).get("uid")
    except (ValueError, AttributeError):
        raise PluginError(f"{tar}: member {member} is not a JSON object with a 'uid'") from None
    if not isinstance(uid, str):
        raise PluginError(f"{tar}: member {member} has no string 'uid' (expected the sample's hex uid)")
    return uid.lower().zfill(32)


def _octal(field: bytes, tar: str) -> int:
    if field[:1] == b"\x80":  # GNU base-256 for large sizes
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise PluginError(f"{tar}: corrupt tar header (size field {field!r})") from None


def tar_members(handle, tar: str) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) of each regular file in a tar, reading the 512-byte headers only.

    A minimal reader of the ustar/GNU/pax layouts webdataset and img2dataset write (GNU long names and pax
    ``path`` records included): ~10x faster than :mod:`tarfile`, which parses every field of every header.
    """
    position = 0
    long_name: str | None = None
    while True:
        handle.seek(position)
        header = handle.read(512)
        if len(header) < 512 or header == ZERO_BLOCK:
            return
        if _checksum(header) != _octal(header[148:156], tar):
            raise PluginError(f"{tar}: corrupt tar header at byte {position} (checksum mismatch)")
        size = _octal(header[124:136], tar)
        kind = header[156:157]
        data = position + 512
        position = data + (size + 511) // 512 * 512
        if kind in (b"L", b"x", b"g"):
            handle.seek(data)
            payload = handle.read(size)
            if kind == b"L":
                long_name = payload.split(b"\0", 1)[0].decode("utf-8", "replace")
            elif kind == b"x":
                long_name = _pax_path(payload) or long_name
            continue
        name = long_name
        long_name = None
        if name is None:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            if header[257:263] == b"ustar\0" and header[345:346] != b"\0":
                name = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") + "/" + name
        if kind in (b"0", b"\0", b"7"):
            yield name, data, size


ZERO_BLOCK = bytes(512)


def _checksum(header: bytes) -> int:
    return sum(header[:148]) + 8 * 32 + sum(header[156:])


def _pax_path(payload: bytes) -> str | None:
    for record in payload.split(b"\n"):
        _, _, field = record.partition(b" ")
        key, _, value = field.partition(b"=")
        if key == b"path":
            return value.decode("utf-8", "replace")
    return None
