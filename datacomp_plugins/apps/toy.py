"""A small example pool in DataComp's layout, with planted structure whose labels are known.

Geometry (per arch, in its own random basis): every image is ``α·s + β·c_k + noise`` for its concept c_k
and a direction s shared by all images (the "it is a photo" part every CLIP image embedding has). Captions:

- clean: mostly c_k — CLIPScore ~0.2-0.45, and little similarity to images of other concepts;
- mismatched: the caption of another concept — CLIPScore ~0;
- generic ("image", "photo", ...): mostly s — CLIPScore ~0.3-0.36 with its own image *and with every other
  image*. CLIPScore ranks them with good clean pairs; negCLIPLoss's normalisation term sees that they
  match the whole batch and ranks them low. That is the bias negCLIPLoss exists to correct.

Concepts 0..7 are the "target" concepts (like a downstream task's classes): ``targets/target_<arch>.npy``
holds fresh image embeddings of them, for the NormSim baselines. Labels go to ``labels.parquet`` beside
``metadata/`` (never inside it: every parquet there must be a metadata shard).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.fileio import atomic_open, atomic_save_npy
from datacomp_plugins.core.pool import ARCH_DIMS
from datacomp_plugins.core.uids import to_hex

KINDS = ("clean", "mismatched", "generic")
KIND_SHARES = (0.55, 0.30, 0.15)
NUM_CONCEPTS = 64
TARGET_CONCEPTS = 8
GENERIC_CAPTIONS = ("image", "photo", "picture", "untitled", "img", "stock photo")
_SHARED, _CONCEPT = 0.36, 0.6  # image = _SHARED·s + _CONCEPT·c_k + noise (unit norm overall)
MAX_ROWS = 1_000_000  # per shard: ~5 KB of embeddings per row are built in memory at once
MAX_SHARDS = 100_000


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _mix(rng: np.random.Generator, weights: list[tuple[np.ndarray, np.ndarray]], dim: int) -> np.ndarray:
    """Σ w_i·v_i plus orthogonal-ish noise that fills the rest of the unit norm."""
    out = np.zeros((len(weights[0][0]), dim))
    used = np.zeros(len(out))
    for weight, vectors in weights:
        out += weight[:, None] * vectors
        used += weight**2
    noise = _unit(rng.standard_normal(out.shape))
    return _unit(out + np.sqrt(np.clip(1.0 - used, 0.0, None))[:, None] * noise)


@functools.lru_cache(maxsize=8)
def _arch_space(arch: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, ARCH_DIMS[arch]])
    basis = np.linalg.qr(rng.standard_normal((ARCH_DIMS[arch], NUM_CONCEPTS + 1)))[0].T
    return basis[0], basis[1:]  # shared direction s, concept directions c_k (orthonormal)


def _images(rng: np.random.Generator, concepts: np.ndarray, arch: str, seed: int) -> np.ndarray:
    shared, concept_dirs = _arch_space(arch, seed)
    n = len(concepts)
    return _mix(rng, [(np.full(n, _SHARED), np.tile(shared, (n, 1))),
                      (np.full(n, _CONCEPT), concept_dirs[concepts])], ARCH_DIMS[arch])


def _texts(rng: np.random.Generator, kinds: np.ndarray, concepts: np.ndarray, other: np.ndarray,
           arch: str, seed: int) -> np.ndarray:
    shared, concept_dirs = _arch_space(arch, seed)
    n = len(kinds)
    clean_w = rng.uniform(0.35, 0.75, n)
    generic_w = rng.uniform(0.85, 1.0, n)
    text_concept = np.where(kinds == 1, other, concepts)
    is_generic = kinds == 2
    return _mix(rng, [(np.where(is_generic, 0.0, clean_w), concept_dirs[text_concept]),
                      (np.where(is_generic, generic_w, 0.0), np.tile(shared, (n, 1)))], ARCH_DIMS[arch])


def target_embeddings(arch: str, rows: int = 512, seed: int = 0) -> np.ndarray:
    """Fresh image embeddings of the target concepts (float32, unit rows)."""
    rng = np.random.default_rng([seed, 7, ARCH_DIMS[arch]])
    concepts = rng.integers(0, TARGET_CONCEPTS, rows)
    return _images(rng, concepts, arch, seed).astype(np.float32)


def _check_arguments(out: str, shards: int, rows: int, seed: int, overwrite: bool) -> None:
    """Refuse bad sizes and an existing pool before writing anything."""
    for flag, value, low, high in (("--shards", shards, 1, MAX_SHARDS), ("--rows", rows, 1, MAX_ROWS),
                                   ("--seed", seed, 0, 2**32 - 1)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise PluginError(f"{flag} {value}: expected an integer from {low} to {high}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise PluginError(f"{out}: is a file; expected a folder to write the toy pool into")
    metadata = os.path.join(out, "metadata")
    existing = sorted(name for name in (os.listdir(metadata) if os.path.isdir(metadata) else [])
                      if name.endswith((".parquet", ".npz")))
    if os.path.exists(os.path.join(out, "labels.parquet")):
        existing.append(os.path.join("..", "labels.parquet"))
    if existing and not overwrite:
        raise PluginError(f"{out}: already holds a pool ({os.path.join(metadata, existing[0])}"
                          f"{f' and {len(existing) - 1} more files' if len(existing) > 1 else ''}); "
                          "pass --overwrite to replace it")


def write_toy_pool(out: str, shards: int = 6, rows: int = 4000, seed: int = 0, overwrite: bool = False) -> str:
    """Write the pool under ``out``; returns a one-line summary. Same arguments give the same bytes.

    An existing pool there is refused unless ``overwrite``, which replaces it whole: shards beyond the new
    count are deleted, so the folder never mixes two pools.
    """
    _check_arguments(out, shards, rows, seed, overwrite)
    metadata = os.path.join(out, "metadata")
    folders = [f for f in (out, metadata, os.path.join(out, "targets")) if not os.path.isdir(f)]
    try:
        for folder in folders:
            os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        _remove_empty(folders)
        raise PluginError(f"{out}: cannot create the pool's folders ({exc.strerror or exc})") from None
    try:
        return _write(out, metadata, shards, rows, seed)
    except BaseException:
        _remove_empty(folders)  # a failed first write leaves no empty metadata/ and targets/ behind
        raise


def _remove_empty(folders: list[str]) -> None:
    """Remove the folders this run created, deepest first, where they are still empty."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def _write(out: str, metadata: str, shards: int, rows: int, seed: int) -> str:
    rewritten = {f"{index:08d}.{ext}" for index in range(shards) for ext in ("parquet", "npz")}
    for name in os.listdir(metadata):
        if name.endswith((".parquet", ".npz")) and name not in rewritten:
            os.unlink(os.path.join(metadata, name))  # a shard of the replaced pool beyond the new count
    rng = np.random.default_rng(seed)
    labels = []
    total = 0
    for index in range(shards):
        n = rows if index < shards - 1 else max(1, rows * 3 // 5)  # never assume equal shards
        kinds = rng.choice(len(KINDS), size=n, p=KIND_SHARES)
        concepts = rng.integers(0, NUM_CONCEPTS, n)
        other = (concepts + rng.integers(1, NUM_CONCEPTS, n)) % NUM_CONCEPTS
        raw = rng.integers(0, 2**63, size=(n, 2), dtype=np.int64).astype(np.uint64) * np.uint64(2) + \
            rng.integers(0, 2, size=(n, 2)).astype(np.uint64)
        raw[: max(1, n // 100), 0] >>= np.uint64(40)  # some uids with leading zero digits
        uids = np.empty(n, dtype=np.dtype("u8,u8"))
        uids["f0"], uids["f1"] = raw[:, 0], raw[:, 1]
        hexes = to_hex(uids).astype(str)
        arrays, scores = {}, {}
        for arch in ARCH_DIMS:
            image = _images(rng, concepts, arch, seed).astype(np.float16)
            text = _texts(rng, kinds, concepts, other, arch, seed).astype(np.float16)
            arrays[f"{arch}_img"], arrays[f"{arch}_txt"] = image, text
            scores[arch] = (image.astype(np.float32) * text.astype(np.float32)).sum(axis=1)
        captions = np.where(kinds == 2, np.array(GENERIC_CAPTIONS)[rng.integers(0, len(GENERIC_CAPTIONS), n)],
                            np.char.add("a photo of concept ", np.where(kinds == 1, other, concepts).astype(str)))
        table = pa.table({
            "uid": hexes,
            "url": [f"https://example.com/toy/{index:08d}/{i}.jpg" for i in range(n)],
            "text": captions.astype(str),
            "original_width": rng.integers(200, 2000, n),
            "original_height": rng.integers(200, 2000, n),
            "clip_b32_similarity_score": scores["b32"].astype(np.float64),
            "clip_l14_similarity_score": scores["l14"].astype(np.float64),
            "sha256": [hashlib.sha256(h.encode()).hexdigest() for h in hexes],
        })
        stem = os.path.join(metadata, f"{index:08d}")
        with atomic_open(f"{stem}.parquet") as handle:
            pq.write_table(table, handle)
        with atomic_open(f"{stem}.npz") as handle:
            np.savez(handle, **arrays)
        labels.append(pa.table({"uid": hexes, "component": np.array(KINDS)[kinds], "concept": concepts,
                                "target_relevant": concepts < TARGET_CONCEPTS}))
        total += n
    with atomic_open(os.path.join(out, "labels.parquet")) as handle:
        pq.write_table(pa.concat_tables(labels), handle)
    for arch in ARCH_DIMS:
        atomic_save_npy(os.path.join(out, "targets", f"target_{arch}.npy"), target_embeddings(arch, seed=seed))
    return f"wrote {total} samples in {shards} shards to {metadata} (labels: {os.path.join(out, 'labels.parquet')})"
