"""Target sets for NormSim: DataComp's ImageNet-1k L/14 features, or the user's own embedding files.

A target is an (m, d) matrix of unit image embeddings. ``--target in1k`` uses the five
``in1k_clip_vit_l14_{0..4}.pt`` files DataComp's own baselines use (same URLs and sha256, same cache
folder ``~/.cache/datacomp``, so a DataComp user downloads nothing twice). Anything else is a path: a
``.npy``, a ``.npz`` (``--target_key``), a ``.pt`` (a tensor or a dict with ``image_features``, loaded with
``weights_only=True`` so no pickled code runs), or a folder of those. Rows are checked and L2-normalised.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.request
import zipfile

import numpy as np

from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.fileio import atomic_open, load_npy_checked, save_npy_checked, sha256_file

IN1K_BASE_URL = "https://github.com/sagadre/datacomp_baseline_assets/releases/download/v0.1.0-alpha/"
IN1K_SHA256 = {
    "in1k_clip_vit_l14_0": "304990fd492f40ba90072b80af78d6e8edcab9d042476ef513e03441cf53743b",
    "in1k_clip_vit_l14_1": "72f008e6aa3bfb54174fa322963215337f843fc90fd642a9dccc815dd9e7ee76",
    "in1k_clip_vit_l14_2": "83c3cc6503b8a50a22cac7023ca6cd61b130ab9725db2a7519f1bec5cabf5493",
    "in1k_clip_vit_l14_3": "83faa289f847799ddcd438e5b74df1cb5973c345674896d10ba31ea48bc63804",
    "in1k_clip_vit_l14_4": "067a45f4a140a93371876510a2fd9198a89ac1d194ae4063a51b45a6da69cadf",
}
DATACOMP_CACHE_ENV = "DATACOMP_ASSET_CACHE"
TARGET_SUFFIXES = (".npy", ".npz", ".pt")


def datacomp_cache_dir() -> str:
    """DataComp's asset cache (``~/.cache/datacomp``), overridable for tests and shared clusters."""
    return os.environ.get(DATACOMP_CACHE_ENV) or os.path.expanduser("~/.cache/datacomp")


def _download(url: str, path: str) -> None:
    """Stream ``url`` to ``path`` atomically, with a progress bar."""
    from tqdm import tqdm

    try:
        with urllib.request.urlopen(url) as response, atomic_open(path) as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(path), disable=None) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
    except OSError as exc:
        raise PluginError(f"--target in1k: cannot download {url} ({exc})") from None


def fetch_asset(name: str, base_url: str | None = None) -> str:
    """Path of a verified DataComp asset: reuse the cached file, else download; re-download once on a bad hash."""
    expected = IN1K_SHA256[name]
    folder = datacomp_cache_dir()
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}.pt")
    for attempt in range(2):
        if os.path.isfile(path) and sha256_file(path) == expected:
            return path
        if attempt == 1:
            break
        _download((base_url or IN1K_BASE_URL) + f"{name}.pt", path)
    raise PluginError(f"--target in1k: {path} does not match its sha256 {expected} even after a fresh "
                      "download; delete it and check your network or mirror")


def _load_pt(path: str) -> np.ndarray:
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError, zipfile.BadZipFile) as exc:
        raise PluginError(f"{path}: refused to load: not a plain tensor file (loaded with weights_only=True; "
                          f"{str(exc).splitlines()[0][:200]})") from None
    if isinstance(obj, dict):
        if "image_features" not in obj:
            raise PluginError(f"{path}: dict without 'image_features'; it has {sorted(map(str, obj))}")
        obj = obj["image_features"]
    if not isinstance(obj, torch.Tensor):
        raise PluginError(f"{path}: expected a tensor or a dict with 'image_features', got {type(obj).__name__}")
    return obj.float().numpy()


def _load_file(path: str, key: str | None, arch: str) -> np.ndarray:
    try:
        if path.endswith(".pt"):
            return _load_pt(path)
        if path.endswith(".npy"):
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as npz:
            names = sorted(npz.files)
            choice = key or next((k for k in ("image_features", f"{arch}_img") if k in names),
                                 names[0] if len(names) == 1 else None)
            if choice not in names:
                raise PluginError(f"{path}: no array {choice!r} (set --target_key); it has {names}"
                                  if choice else f"{path}: several arrays {names}; choose one with --target_key")
            return npz[choice]
    except FileNotFoundError:
        raise PluginError(f"--target {path}: file not found") from None
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise PluginError(f"{path}: unreadable target file ({exc})") from None


def _matching_dimension(folder: str, parts: list[tuple[str, np.ndarray]], arch: str,
                        dim: int) -> list[tuple[str, np.ndarray]]:
    """The files of a target folder whose embeddings have ``--arch``'s dimension.

    A folder may hold one target per architecture (the demo's ``targets/`` has ``target_b32.npy`` and
    ``target_l14.npy``): the files of the other dimension are left out, named on stderr. A folder with no
    file of the right dimension keeps them all, so the per-file check names the mismatch.
    """
    def width(array: np.ndarray) -> int | None:
        array = np.asarray(array)
        return int(array.shape[1]) if array.ndim == 2 else None

    matching = [(f, a) for f, a in parts if width(a) == dim]
    other = [(f, a) for f, a in parts if width(a) != dim and width(a) is not None]
    if not matching or not other:
        return parts
    skipped = ", ".join(f"{os.path.basename(f)} ({width(a)}-d)" for f, a in other)
    print(f"note: --target {folder}: using the {len(matching)} file(s) of --arch {arch}'s dimension {dim}; "
          f"left out {skipped}", file=sys.stderr)
    return matching + [(f, a) for f, a in parts if width(a) is None]


def load_target(spec: str, arch: str, dim: int, key: str | None = None) -> np.ndarray:
    """The target matrix for ``--target spec``: float32 (m, dim), finite, unit rows."""
    if spec == "in1k":
        if dim != 768:
            raise PluginError(f"--target in1k: DataComp's ImageNet-1k features are L/14 (768-d); "
                              f"--arch {arch} needs {dim}-d target embeddings")
        parts = [(p, _load_pt(fetch_asset(p))) for p in sorted(IN1K_SHA256)]
    elif os.path.isdir(spec):
        files = sorted(os.path.join(spec, f) for f in os.listdir(spec) if f.endswith(TARGET_SUFFIXES))
        if not files:
            raise PluginError(f"--target {spec}: folder has no {'/'.join(TARGET_SUFFIXES)} files")
        parts = _matching_dimension(spec, [(f, _load_file(f, key, arch)) for f in files], arch, dim)
    elif spec.endswith(TARGET_SUFFIXES):
        parts = [(spec, _load_file(spec, key, arch))]
    else:
        raise PluginError(f"--target {spec}: expected 'in1k', a folder, or a {'/'.join(TARGET_SUFFIXES)} file")
    checked = []
    for path, array in parts:
        array = np.asarray(array)
        if array.ndim != 2 or array.dtype.kind != "f":
            raise PluginError(f"{path}: target must be a 2-D float array (rows = images), got {array.dtype} "
                              f"{array.shape}")
        if array.shape[1] != dim:
            raise PluginError(f"{path}: target dimension {array.shape[1]} does not match --arch {arch} ({dim})")
        if len(array) == 0:
            raise PluginError(f"{path}: no target rows (the array has 0 rows); expected at least one image "
                              "embedding in every target file")
        bad = ~np.isfinite(array).all(axis=1)
        if bad.any():
            raise PluginError(f"{path}: row {int(np.flatnonzero(bad)[0])} is not finite "
                              f"({int(bad.sum())} such rows)")
        checked.append(unit_rows(array, path))
    if not checked:
        raise PluginError(f"--target {spec}: no target rows")
    return np.concatenate(checked)


def unit_rows(array: np.ndarray, path: str) -> np.ndarray:
    """Rows scaled to unit L2 norm as float32, whatever their magnitude.

    A float64 row of 1e200 (whose squares overflow the norm) or of 1e-200 (whose squares underflow to a
    zero norm) is first divided by its largest entry, so it gives the same direction as any other scale:
    only directions matter to NormSim. Rows of ordinary magnitude take the plain division, bit for bit as
    before. A row of zeros has no direction and is refused.
    """
    peak = np.abs(array).max(axis=1).astype(np.float64)
    if (peak == 0).any():
        zero = np.flatnonzero(peak == 0)
        raise PluginError(f"{path}: row {int(zero[0])} is all zeros ({len(zero)} such rows); a target row "
                          "must be an image embedding")
    extreme = (peak > 1e150) | (peak < 1e-150)
    if extreme.any():
        array = np.asarray(array, dtype=np.float64).copy()
        array[extreme] /= peak[extreme, None]
    norms = np.linalg.norm(array.astype(np.float64), axis=1)
    return (array / norms[:, None]).astype(np.float32)


def fingerprint(target: np.ndarray) -> str:
    """Content hash of a target matrix: NormSim caches are keyed by it."""
    return hashlib.sha256(np.ascontiguousarray(target, dtype=np.float32).tobytes()).hexdigest()[:16]


def _gram(target: np.ndarray) -> np.ndarray:
    gram = np.zeros((target.shape[1], target.shape[1]))
    for start in range(0, len(target), 65536):
        block = target[start : start + 65536].astype(np.float64)
        gram += block.T @ block
    return gram


def _reuse(path: str, matches) -> bool:
    """Whether the materialised file at ``path`` can be used: present, CRC intact and ``matches`` its content.

    A file that exists but fails is reported (one line) and then rewritten by the caller.
    """
    if not os.path.isfile(path):
        return False
    array = load_npy_checked(path, mmap=True)
    if array is not None and matches(array):
        return True
    print(f"warning: {path}: cached target file failed its checksum (corrupt or modified); recomputing it",
          file=sys.stderr)
    return False


def materialise(target: np.ndarray, folder: str) -> tuple[str, str, str]:
    """Save the normalised target and its Gram matrix (float64) once for all workers, each with a CRC32.

    Returns (fingerprint, target path, gram path). Workers load these instead of receiving copies. Files
    from an earlier run are reused only when their CRC32 and shape check out; a corrupt one is rewritten,
    never silently used.
    """
    key = fingerprint(target)
    os.makedirs(folder, exist_ok=True)
    target_path = os.path.join(folder, f"target-{key}.npy")
    gram_path = os.path.join(folder, f"gram-{key}.npy")
    if not _reuse(target_path, lambda a: a.shape == target.shape and a.dtype == np.float32):
        save_npy_checked(target_path, target)
    dim = target.shape[1]
    if not _reuse(gram_path, lambda a: a.shape == (dim, dim) and a.dtype == np.float64):
        save_npy_checked(gram_path, _gram(target))
    return key, target_path, gram_path
