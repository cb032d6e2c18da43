"""Atomic output: write under a temporary name beside the target, then rename.

An interrupted run must never leave a half-written uid file (the resharder would silently use it), so every
output of the project goes through these helpers. Local paths use ``os.replace`` (atomic on POSIX); other
fsspec URLs write a temporary object and move it, the best an object store offers.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO

import fsspec
import numpy as np

from datacomp_plugins.errors import PluginError


def is_local(path: str) -> bool:
    """True for plain paths and file:// URLs, which get a real atomic rename."""
    return "://" not in str(path) or str(path).startswith("file://")


def local_path(path: str) -> str:
    """Strip a file:// prefix so os functions can use the path."""
    path = str(path)
    return path[len("file://") :] if path.startswith("file://") else path


def check_writable(path: str, flag: str = "--save_path") -> None:
    """Fail before any heavy work when ``path`` cannot be written (missing folder, no permission)."""
    if not is_local(path):
        return  # remote stores are checked by the write itself; nothing cheap and reliable to probe
    target = os.path.abspath(local_path(path))
    parent = os.path.dirname(target)
    if os.path.isdir(target):
        raise PluginError(f"{flag} {path}: is a directory, expected a file path")
    if not os.path.isdir(parent):
        raise PluginError(f"{flag} {path}: folder {parent} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=parent)
    except OSError as exc:
        raise PluginError(f"{flag} {path}: cannot write in {parent} ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success rename it to ``path``, on error delete it."""
    if is_local(path):
        target = os.path.abspath(local_path(path))
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp",
                                   dir=os.path.dirname(target))
        try:
            with os.fdopen(fd, mode) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return
    fs, _, (remote,) = fsspec.get_fs_token_paths(path)
    tmp = f"{remote}.tmp-{os.getpid()}"
    try:
        with fs.open(tmp, mode) as handle:
            yield handle
        fs.mv(tmp, remote)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save_npy(path: str, array: np.ndarray) -> None:
    """``np.save`` to ``path`` atomically (no pickles: object arrays are refused by numpy here)."""
    with atomic_open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
