"""The score cache: per-shard score files, named by the shard's content and every value-affecting parameter.

Score once, select many: a score is computed per shard and saved as ``<score>-<key>.npy`` (float32, one
value per parquet row, NaN for a sample that cannot be scored) beside the shard's ``uids-<key>.npy``.
The key hashes everything that can change a single bit of the values (the shard's name and content identity,
see pool.py; the score's parameters, device and precision), so a rerun reuses what is valid and recomputes
the rest. Files are written atomically, and an unreadable or truncated file counts as missing.
"""

from __future__ import annotations

import os
import zlib
from typing import TYPE_CHECKING

import numpy as np

from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.fileio import CRC_SUFFIX, save_npy_checked
from datacomp_plugins.core.pool import Pool, Shard
from datacomp_plugins.core.uids import UID_DTYPE

if TYPE_CHECKING:
    from datacomp_plugins.scores.base import Score

CACHE_ENV = "DATACOMP_PLUGINS_CACHE"
CACHE_FORMAT = 5
# Cache files live under <cache_dir>/<CACHE_LAYOUT>/: a layout change moves to a new folder, so an older
# layout's files are never looked at (hence never misread), only recomputed.
CACHE_LAYOUT = f"v{CACHE_FORMAT}"


def default_cache_dir() -> str:
    """``$DATACOMP_PLUGINS_CACHE``, else ``~/.cache/datacomp_plugins/scores`` (never the metadata dir)."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache",
                                                     "datacomp_plugins", "scores")


class ScoreCache:
    """Per-shard score files under ``<cache_dir>/v<format>/<stem>/``, named by the shard's content identity.

    Not by the pool's location: a moved or renamed pool folder finds its scores again, and a shard replaced
    by other content (same name) gets new file names, so its old scores are never read for it.
    """

    def __init__(self, cache_dir: str, pool: Pool | None = None) -> None:
        self.root = os.path.join(os.path.abspath(os.path.expanduser(cache_dir)), CACHE_LAYOUT)

    def folder(self, shard: Shard) -> str:
        return os.path.join(self.root, shard.stem)

    def uid_path(self, shard: Shard) -> str:
        return os.path.join(self.folder(shard), f"uids-{shard.fingerprint}.npy")

    def score_path(self, shard: Shard, score: Score) -> str:
        label = score.column
        return os.path.join(self.folder(shard), f"{label}-{score.key(shard)}.npy")

    @property
    def targets(self) -> str:
        """Where materialised target sets live (shared by every shard of the pool)."""
        return os.path.join(self.root, "_targets")

    def load_uids(self, shard: Shard, verify: bool = True) -> np.ndarray | None:
        """The shard's cached uids; ``verify=False`` skips the CRC for files this run already verified."""
        return _load_valid(self.uid_path(shard), UID_DTYPE, None, verify)

    def load_score(self, shard: Shard, score: Score, num_rows: int, verify: bool = True) -> np.ndarray | None:
        """The shard's cached score; ``verify=False`` as for :meth:`load_uids`."""
        return _load_valid(self.score_path(shard, score), np.dtype(np.float32), num_rows, verify)

    @property
    def spill(self) -> str:
        """Where normsim_d spills its survivors' embeddings (temporaries, deleted after use)."""
        return os.path.join(self.root, "_spill")

    def sweep(self) -> int:
        """Delete temporaries that killed runs left in the shared folders (their owner process is gone)."""
        from datacomp_plugins.core.procs import sweep_stale

        return (sweep_stale(self.spill, ("normsim_d-",), suffix=".f16")
                + sweep_stale(self.targets, (".",), suffix=".tmp"))

    def save(self, path: str, array: np.ndarray) -> None:
        """Write ``array`` and, first, the CRC32 of its bytes (``<path>.crc32``), both atomically."""
        try:
            save_npy_checked(path, array)
        except OSError as exc:  # e.g. --cache_dir replaced by a file mid-run
            raise PluginError(f"score cache {os.path.dirname(path)}: cannot write ({exc.strerror or exc})") from None


def _load_valid(path: str, dtype: np.dtype, rows: int | None, verify: bool = True) -> np.ndarray | None:
    """The cached array, or None when it is missing, truncated, corrupt, or of the wrong type or length.

    Corruption that keeps the length (a flipped bit, a file overwritten in place) is caught by the CRC32
    written beside it; a rerun then recomputes that shard instead of selecting from garbage.
    """
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        with open(path + CRC_SUFFIX) as handle:
            expected = handle.read().strip()
    except (OSError, ValueError, EOFError):
        return None
    if array.dtype != dtype or array.ndim != 1 or (rows is not None and len(array) != rows):
        return None
    if verify and f"{zlib.crc32(np.ascontiguousarray(array)):08x}" != expected:
        return None
    return array
