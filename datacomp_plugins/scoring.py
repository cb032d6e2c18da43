"""Score one shard -> one cached score column per score; the global selection reads only these.

Score once, select many: a score is computed per shard and saved as ``<score>-<key>.npy`` (float32, one
value per parquet row, NaN for a sample that cannot be scored) beside the shard's ``uids-<key>.npy``.
The key hashes everything that can change a single bit of the values (the shard's name and content identity,
see pool.py; the score's parameters, device and precision), so a rerun reuses what is valid and recomputes
the rest.
Files are written atomically, and an unreadable or truncated file counts as missing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np

from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.fileio import CRC_SUFFIX, load_npy_checked, save_npy_checked
from datacomp_plugins.core.pool import ARCH_DIMS, Pool, Shard
from datacomp_plugins.core.uids import UID_DTYPE

if TYPE_CHECKING:
    import torch

CACHE_ENV = "DATACOMP_PLUGINS_CACHE"
CACHE_FORMAT = 5
# Cache files live under <cache_dir>/<CACHE_LAYOUT>/: a layout change moves to a new folder, so an older
# layout's files are never looked at (hence never misread), only recomputed.
CACHE_LAYOUT = f"v{CACHE_FORMAT}"


def default_cache_dir() -> str:
    """``$DATACOMP_PLUGINS_CACHE``, else ``~/.cache/datacomp_plugins/scores`` (never the metadata dir)."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache",
                                                     "datacomp_plugins", "scores")


def shard_seed(seed: int, stem: str) -> np.random.SeedSequence:
    """One generator seed per (seed, shard name): results do not depend on worker count or order."""
    digest = hashlib.sha256(stem.encode()).digest()
    return np.random.SeedSequence([seed, *np.frombuffer(digest[:16], dtype=np.uint32).tolist()])


def partition(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random partition of range(n) into ceil(n / batch_size) batches whose sizes differ by at most one.

    Equal-sized batches instead of full batches plus a short last one: a short batch would give its
    samples a smaller normalisation term (see metrics.normalisation_term, which also rescales to B).
    """
    count = max(1, -(-n // batch_size))
    return np.array_split(rng.permutation(n), count)


@dataclass(frozen=True)
class Score:
    """A per-sample score of a shard: what it reads, what its value depends on, how to compute it."""

    name: str = field(init=False, default="")

    @property
    def parquet_columns(self) -> tuple[str, ...]:
        return ()

    @property
    def npz_keys(self) -> tuple[str, ...]:
        return ()

    def key(self, shard: Shard) -> str:
        """Hash of the shard's identity and every parameter that affects the values."""
        params = {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("key", True)}
        payload = {"format": CACHE_FORMAT, "score": self.name, "shard": shard.fingerprint, **params}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def compute(self, shard: Shard, columns: dict, embeddings: dict) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class ParquetScore(Score):
    """DataComp's precomputed CLIP score column, e.g. ``clip_l14_similarity_score`` (the clip_score baseline)."""

    arch: str = "l14"
    name: str = field(init=False, default="clip_score")

    @property
    def parquet_columns(self) -> tuple[str, ...]:
        return (f"clip_{self.arch}_similarity_score",)

    def compute(self, shard: Shard, columns: dict, embeddings: dict) -> np.ndarray:
        """The column as float32; null, NaN and ±inf become NaN ("not scorable", counted in the summary)."""
        values = numeric_column(columns[self.parquet_columns[0]], shard.parquet, self.parquet_columns[0])
        return np.where(np.isfinite(values), values, np.nan).astype(np.float32)


def numeric_column(values: np.ndarray, path: str, column: str) -> np.ndarray:
    """A parquet column read with ``to_numpy`` that must hold numbers: strings, booleans, lists refused.

    Nulls arrive as NaN (pyarrow widens a nullable integer column to float), which the caller treats as
    not scorable; any other type is an error naming the file, the column and the first row.
    """
    values = np.asarray(values)
    if values.dtype.kind in "iuf":
        return values
    first = values[0] if len(values) else None
    raise PluginError(f"{path}: column {column!r} holds {values.dtype} values (row 0: {first!r}); expected "
                      "numbers (DataComp's CLIP similarity score)")


@dataclass(frozen=True)
class NegCLIPLossScore(Score):
    """negCLIPLoss from the image and text embeddings (Wang et al. 2024; README "Filtering a DataComp pool")."""

    arch: str = "l14"
    num_batches: int = 10
    batch_size: int = 32768
    temperature: float = 0.01
    seed: int = 0
    block_rows: int = field(default=0, metadata={"key": False})  # changes memory and speed, never a bit
    device: str = "cpu"
    precision: str = "fp32"
    name: str = field(init=False, default="negcliploss")

    @property
    def npz_keys(self) -> tuple[str, ...]:
        return (f"{self.arch}_img", f"{self.arch}_txt")

    def compute(self, shard: Shard, columns: dict, embeddings: dict) -> np.ndarray:
        import torch

        from datacomp_plugins.scores.metrics import COMPUTE_DTYPES, negcliploss

        device = torch.device(self.device)
        # Stored float16 is widened by torch on the device (vectorised, threaded: ~5x numpy's astype).
        image, text = (torch.from_numpy(embeddings[k]).to(device=device, dtype=torch.float32)
                       for k in self.npz_keys)
        # A row is scored when its norm is finite: NaN or inf anywhere in it makes the norm non-finite, in one
        # cheap reduction instead of an elementwise mask. (Float16 values cannot overflow it; a float32 row so
        # large that they do would overflow its logits too.)
        norms = torch.linalg.vector_norm(image, dim=1), torch.linalg.vector_norm(text, dim=1)
        finite = torch.isfinite(norms[0]) & torch.isfinite(norms[1])
        out = np.full(len(image), np.nan, dtype=np.float32)
        rows = finite.nonzero().squeeze(1)
        n = len(rows)
        if n == 0:
            return out
        reference = min(self.batch_size, n)
        if reference == n:  # one batch = the whole shard (None: in row order, no gather): every round is the same
            rounds = [[None]]
        else:
            rng = np.random.default_rng(shard_seed(self.seed, shard.stem))
            rounds = [partition(n, self.batch_size, rng) for _ in range(self.num_batches)]
        if n < len(image):
            image, text, norms = image[rows], text[rows], (norms[0][rows], norms[1][rows])
        batches = [[None if b is None else torch.from_numpy(b).to(device) for b in r] for r in rounds]
        with torch.no_grad():
            values = negcliploss(image, text, batches, self.temperature, reference, self.block_rows,
                                 COMPUTE_DTYPES[self.precision], (float(norms[0].max()), float(norms[1].max())))
        rows = rows.cpu().numpy()
        out[rows] = values.float().cpu().numpy()
        return out


def _image_rows(embeddings: dict, key: str, device: str) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """Finite rows of an image-embedding array on ``device``; returns (row indices, tensor, NaN output)."""
    import torch

    image = embeddings[key]
    rows = np.flatnonzero(np.isfinite(image).all(axis=1))
    tensor = torch.from_numpy(np.ascontiguousarray(image[rows])).to(device=device, dtype=torch.float32)
    return rows, tensor, np.full(len(image), np.nan, dtype=np.float32)


@functools.lru_cache(maxsize=2)
def _matrix(path: str, device: str) -> torch.Tensor:
    """A materialised target or Gram matrix as float32 on ``device``, loaded (and CRC-checked) once per process.

    The main process verified (or wrote) it just before scoring; a mismatch here means it changed since.
    """
    import torch

    array = load_npy_checked(path, mmap=False)
    if array is None:
        raise PluginError(f"{path}: materialised target changed or vanished during the run; run again")
    return torch.from_numpy(array.astype(np.float32)).to(device)


@dataclass(frozen=True)
class NormSimScore(Score):
    """NormSim_p of pool images against a target set (p = 2 through the Gram matrix, or p = inf).

    The target travels as files (see targets.materialise); the cache key holds its content hash only.
    """

    arch: str = "l14"
    p: str = "2"
    target: str = ""  # content fingerprint of the target
    target_path: str = field(default="", metadata={"key": False})
    gram_path: str = field(default="", metadata={"key": False})
    block_rows: int = 4096
    device: str = "cpu"
    precision: str = "fp32"
    name: str = field(init=False, default="normsim")

    @property
    def column(self) -> str:
        return f"normsim{self.p}"

    @property
    def npz_keys(self) -> tuple[str, ...]:
        return (f"{self.arch}_img",)

    def compute(self, shard: Shard, columns: dict, embeddings: dict) -> np.ndarray:
        import torch

        from datacomp_plugins.scores.metrics import COMPUTE_DTYPES, normsim2, normsim_inf

        rows, image, out = _image_rows(embeddings, self.npz_keys[0], self.device)
        if len(rows):
            with torch.no_grad():
                dtype = COMPUTE_DTYPES[self.precision]
                if self.p == "2":
                    values = normsim2(image, _matrix(self.gram_path, self.device), dtype)
                else:
                    target = _matrix(self.target_path, self.device)
                    values = torch.cat([normsim_inf(image[i : i + self.block_rows], target, compute_dtype=dtype)
                                        for i in range(0, len(image), self.block_rows)])
            out[rows] = values.float().cpu().numpy()
        return out


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
        label = getattr(score, "column", score.name)
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


@dataclass
class ShardResult:
    """What scoring one shard did (for progress and the run summary)."""

    stem: str
    rows: int
    computed: tuple[str, ...]


@dataclass
class ShardInputs:
    """Everything read from storage for the scores a shard still lacks (the I/O half of scoring)."""

    shard: Shard
    rows: int
    missing: list[Score]
    columns: dict
    embeddings: dict


def load_shard(pool: Pool, cache: ScoreCache, shard: Shard,
               scores: Sequence[Score]) -> ShardInputs | ShardResult:
    """Read what the missing scores of ``shard`` need; a ShardResult when the cache already has everything.

    Split from :func:`compute_shard` so an engine can read the next shard while computing this one.
    """
    uids = cache.load_uids(shard)
    if uids is None:
        uids = pool.read_uids(shard)
        cache.save(cache.uid_path(shard), uids)
    rows = len(uids)
    missing = [s for s in scores if cache.load_score(shard, s, rows) is None]
    if not missing:
        return ShardResult(shard.stem, rows, ())
    columns: dict = {}
    wanted_columns = sorted({c for s in missing for c in s.parquet_columns})
    if wanted_columns:
        table = pool.read_columns(shard, wanted_columns)
        columns = {c: table.column(c).to_numpy(zero_copy_only=False) for c in wanted_columns}
    wanted_keys = sorted({k for s in missing for k in s.npz_keys})
    embeddings = pool.read_embeddings(shard, wanted_keys, rows) if wanted_keys else {}
    for key in wanted_keys:
        dim = ARCH_DIMS.get(key.split("_")[0])
        if dim is not None and embeddings[key].shape[1] != dim:
            raise PluginError(f"{shard.npz}: {key!r} has dimension {embeddings[key].shape[1]}, "
                              f"expected {dim} for this arch")
    return ShardInputs(shard, rows, missing, columns, embeddings)


def compute_shard(cache: ScoreCache, inputs: ShardInputs | ShardResult) -> ShardResult:
    """Compute and cache the missing scores (the compute half of scoring)."""
    if isinstance(inputs, ShardResult):
        return inputs
    for score in inputs.missing:
        values = score.compute(inputs.shard, inputs.columns, inputs.embeddings)
        if values.shape != (inputs.rows,):
            raise AssertionError(f"{score.name} returned shape {values.shape} for {inputs.rows} rows")
        cache.save(cache.score_path(inputs.shard, score), values.astype(np.float32))
    return ShardResult(inputs.shard.stem, inputs.rows, tuple(s.name for s in inputs.missing))


def cached_rows(cache: ScoreCache, shard: Shard, scores: Sequence[Score]) -> int | None:
    """The shard's row count when its uids and every score are cached and pass their checks, else None."""
    uids = cache.load_uids(shard)
    if uids is None or any(cache.load_score(shard, s, len(uids)) is None for s in scores):
        return None
    return len(uids)


def score_shard(pool: Pool, cache: ScoreCache, shard: Shard, scores: Sequence[Score]) -> ShardResult:
    """Make sure ``shard`` has a valid uid file and every score in the cache; compute only what is missing."""
    return compute_shard(cache, load_shard(pool, cache, shard, scores))
