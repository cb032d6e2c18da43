"""Atomic output: write under a temporary name beside the target, then rename.

An interrupted run must never leave a half-written uid file (the resharder would silently use it), so every
output of the project goes through these helpers. Local paths use ``os.replace`` (atomic on POSIX); other
fsspec URLs write a temporary object and move it, the best an object store offers.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import fsspec
import numpy as np

from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.procs import owned_name, sweep_stale

# Errors of a write that the user can fix (disk full, quota, file-size limit, read-only, permissions).
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
# ... and those of a path in the way (a file where a folder should be, or the reverse).
ENVIRONMENT_ERRNOS = WRITE_ERRNOS | {errno.ENOTDIR, errno.EISDIR, errno.EEXIST}
CRC_SUFFIX = ".crc32"


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
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise PluginError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.path.isdir(parent):
        raise PluginError(f"{flag} {path}: folder {parent} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=owned_name(".write-probe-"), dir=parent)
    except OSError as exc:
        raise PluginError(f"{flag} {path}: cannot write in {parent} ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)
    sweep_temporaries(target)
    sweep_stale(parent, (".write-probe-",))


def refuse_input_as_output(out: str, flag: str, inputs: Iterable[tuple[str, str | None]] = (),
                           pools: Iterable[tuple[str, str | None]] = (),
                           folders: Iterable[tuple[str, str | None]] = ()) -> None:
    """Refuse an output path that is one of the command's inputs, before anything is read or written.

    Every output is renamed over its path when complete, so an output equal to an input (or a symlink to one,
    or a file inside an input folder such as the score cache) would silently destroy that input. ``inputs``
    are (flag, file or folder) pairs; ``pools`` are (flag, metadata folder) pairs whose ``.parquet``/``.npz``
    files are shards; ``folders`` are (flag, folder) pairs that own everything under them, existing yet or
    not (the score cache). Every command that writes calls this one check.
    """
    if not out or not is_local(out):
        return
    real_out = os.path.realpath(os.path.expanduser(local_path(out)))
    owned = [(name, path, True) for name, path in folders]
    for name, path, folder in [(name, path, False) for name, path in inputs] + owned:
        if not path or not is_local(path):
            continue
        real = os.path.realpath(os.path.expanduser(local_path(path)))
        inside = real_out.startswith(real.rstrip(os.sep) + os.sep)
        if real_out == real or (inside and (folder or os.path.isdir(real))):
            where = "is" if real_out == real else "lies inside"
            raise PluginError(f"{flag} {out}: {where} the {name} input {path}; choose another output path "
                              "(writing there would replace the input)")
    for name, pool in pools:
        if not pool or not is_local(pool):
            continue
        real = os.path.realpath(local_path(pool))
        if os.path.dirname(real_out) == real and real_out.endswith((".parquet", ".npz")):
            raise PluginError(f"{flag} {out}: is a shard file of {name} {pool}; choose another output path "
                              "(writing there would replace the pool's metadata)")


def check_folder_writable(path: str, flag: str) -> None:
    """Fail early when folder ``path`` is a file, lies under a file, or cannot be created or written.

    The folder is created (it would be at the first write anyway) and probed with a real file, which is
    the only test that holds for root, read-only mounts and quotas alike.
    """
    if not is_local(path):
        return
    folder = os.path.abspath(os.path.expanduser(local_path(path)))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is a file" if existing == folder else f"lies under {existing}, which is a file"
        raise PluginError(f"{flag} {path}: {where}; expected a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=owned_name(".write-probe-"), dir=folder)
    except OSError as exc:
        raise PluginError(f"{flag} {path}: cannot write there ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def _temp_prefix(target: str) -> str:
    return f".{os.path.basename(target)}."


def sweep_temporaries(path: str) -> int:
    """Delete temporaries of ``path`` left by killed runs (their owner process is gone); returns the count."""
    target = os.path.abspath(local_path(path))
    return sweep_stale(os.path.dirname(target), (_temp_prefix(target),), suffix=".tmp")


def write_error(path: str, exc: OSError) -> PluginError:
    """The message for a failed write: which file, and the system's reason (disk full, read-only, ...)."""
    return PluginError(f"{path}: writing failed ({exc.strerror or exc}); nothing was written there")


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success rename it to ``path``, on error delete it."""
    if is_local(path):
        target = os.path.abspath(local_path(path))
        if os.path.isdir(target):
            raise PluginError(f"{path}: is a directory, expected a file path")
        sweep_temporaries(target)
        try:  # the owner's pid in the name: a run killed outright leaves it to the next run's sweep
            fd, tmp = tempfile.mkstemp(prefix=owned_name(_temp_prefix(target)), suffix=".tmp",
                                       dir=os.path.dirname(target))
        except OSError as exc:
            raise write_error(path, exc) from None
        try:
            handle = os.fdopen(fd, mode)
            try:
                try:
                    yield handle
                except OSError as exc:  # numpy's short write (a full disk) carries no errno
                    if exc.errno is None or exc.errno in WRITE_ERRNOS:
                        raise write_error(path, exc) from None
                    raise
                try:
                    handle.flush()
                    os.fsync(handle.fileno())
                except OSError as exc:
                    raise write_error(path, exc) from None
            except BaseException:
                # closing flushes the buffer again, which fails again on a full disk: that second error must
                # not replace the first (it carries no file name)
                with contextlib.suppress(OSError):
                    handle.close()
                raise
            try:
                handle.close()
            except OSError as exc:
                raise write_error(path, exc) from None
            try:
                os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
                os.replace(tmp, target)
            except OSError as exc:
                raise write_error(path, exc) from None
        except BaseException:
            with contextlib.suppress(OSError):
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


def write_json(path: str, obj: Any, *, indent: int = 2, sort_keys: bool = True,
               default: Callable[[Any], Any] | None = None) -> None:
    """``obj`` as JSON with a final newline, atomically: a reader never sees half a manifest or sidecar, and
    sorted keys give the same bytes for the same content."""
    with atomic_open(path, "w") as handle:
        json.dump(obj, handle, indent=indent, sort_keys=sort_keys, default=default)
        handle.write("\n")


def atomic_save_npy(path: str, array: np.ndarray) -> None:
    """``np.save`` to ``path`` atomically (no pickles: object arrays are refused by numpy here)."""
    with atomic_open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def save_npy_checked(path: str, array: np.ndarray) -> None:
    """Write ``array`` and, first, the CRC32 of its bytes (``<path>.crc32``), both atomically.

    The checksum is written first so that a crash between the two leaves a file that fails its check
    (recomputed), never one that passes it unverified.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    array = np.ascontiguousarray(array)
    with atomic_open(path + CRC_SUFFIX, "w") as handle:
        handle.write(f"{zlib.crc32(array):08x}")
    atomic_save_npy(path, array)


def load_npy_checked(path: str, verify: bool = True, mmap: bool = True) -> np.ndarray | None:
    """The array written by :func:`save_npy_checked`, or None when it is missing, unreadable or fails its CRC.

    ``verify=False`` skips the CRC for files this run has already verified.
    """
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        with open(path + CRC_SUFFIX) as handle:
            expected = handle.read().strip()
    except (OSError, ValueError, EOFError):
        return None
    if verify and f"{zlib.crc32(np.ascontiguousarray(array)):08x}" != expected:
        return None
    return array


def sha256_file(path: str) -> str:
    """sha256 of a file's bytes (a path or fsspec URL), streamed: uid files and shards reach hundreds of MB."""
    digest = hashlib.sha256()
    with fsspec.open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
