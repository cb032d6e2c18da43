"""Image embeddings of a target set with any open_clip model: the targets NormSim compares pool images to.

The rows must be comparable with the pool's embedding cache, so the model's own validation transform and
``encode_image`` are used, and rows are L2-normalised float32. Row order depends only on the input (folder
files sorted by path; tar shards in the given order, members in tar order), never on ``--num_workers``:
every sample carries its position and rows are put back in that order before writing.

This module reads the images and writes the target rows; loading the model is apps/models.py, shared with the
mini DataComp's teachers. Heavy libraries (torch, open_clip, PIL) are imported inside functions, so the core
package works without the ``embed`` extra.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np

from datacomp_plugins.apps.models import load_model, resolve_device
from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.fileio import (
    atomic_save_npy,
    check_writable,
    is_local,
    local_path,
    refuse_input_as_output,
)
from datacomp_plugins.core.progress import disable as progress_disable
from datacomp_plugins.core.registry import EXTRAS

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
INSTALL_HINT = EXTRAS.hint("embed")
MAX_WARNINGS = 10

# webdataset's split of a tar member name into sample key and extension: the key ends at the first dot of
# the basename, so "a/000123.jpg" and "a/000123.cls" belong to sample "a/000123".
_WDS_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


@dataclass(frozen=True)
class Unit:
    """A piece of input read by one worker, in order: a run of image files or one tar shard."""

    kind: str  # "files" or "tar"
    paths: tuple[str, ...]


@dataclass
class EmbedResult:
    """Embeddings in input order, plus what was left out and why (for the summary line)."""

    embeddings: np.ndarray
    names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------
# Input resolution (cheap; runs before the model is loaded so bad specs fail fast)


def _has_image_ext(path: str) -> bool:
    return path.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS if "." in os.path.basename(path) else False


def _is_tar(path: str) -> bool:
    return path.lower().endswith(TAR_SUFFIXES)


def _expand_braces(spec: str) -> list[str]:
    """``'train/{000..009}.tar'`` -> ten paths, the same expansion webdataset uses."""
    if "{" not in spec:
        return [spec]
    try:
        import braceexpand
    except ImportError:
        raise PluginError(f"--images {spec}: brace patterns need the braceexpand package ({INSTALL_HINT})") \
            from None
    return list(braceexpand.braceexpand(spec))


def _folder_images(fs: Any, root: str, spec: str) -> list[str]:
    """Image files under ``root``, recursively, sorted by path; hidden files and folders are left out."""
    root = root.rstrip("/")
    found = []
    for path in fs.find(root):
        rel = path[len(root):].lstrip("/")
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # e.g. macOS "._x.jpg" resource forks, which are not images
        if _has_image_ext(path):
            found.append(path)
    found.sort()
    if is_local(spec):
        return found
    return [fs.unstrip_protocol(p) for p in found]


def _units_for(fs: Any, path: str, item: str, spec: str, files_per_unit: int) -> list[Unit]:
    """Units for one existing path: a folder's images in runs, a tar shard, or a single image."""
    url = path if is_local(item) else fs.unstrip_protocol(path)
    if fs.isdir(path):
        images = _folder_images(fs, path, item)
        return [Unit("files", tuple(images[i:i + files_per_unit])) for i in range(0, len(images), files_per_unit)]
    if _is_tar(path):
        return [Unit("tar", (url,))]
    if _has_image_ext(path):
        return [Unit("files", (url,))]
    raise PluginError(f"--images {spec}: {url} is neither a folder, a .tar shard nor an image "
                      f"({', '.join(IMAGE_EXTENSIONS)})")


def resolve_images(specs: Sequence[str], files_per_unit: int = 256) -> list[Unit]:
    """Turn ``--images`` values into ordered work units; raise PluginError for anything missing.

    Each spec is a folder (searched recursively), a tar shard, a brace pattern or glob of shards, or a
    single image file; local paths or fsspec URLs. Specs are used in the order given.
    """
    units: list[Unit] = []
    for spec in specs:
        for item in _expand_braces(spec):
            fs, path = fsspec.core.url_to_fs(local_path(item) if is_local(item) else item)
            if any(ch in path for ch in "*?["):
                matches = sorted(fs.glob(path))
                if not matches:
                    raise PluginError(f"--images {spec}: pattern {item} matches no files")
            elif fs.exists(path):
                matches = [path]
            else:
                raise PluginError(f"--images {spec}: {item} does not exist")
            for match in matches:
                units.extend(_units_for(fs, match, item, spec, files_per_unit))
    if not units:
        raise PluginError(f"--images {' '.join(specs)}: no images found (looked for "
                          f"{', '.join(IMAGE_EXTENSIONS)} files, recursively in folders)")
    return units


# ---------------------------------------------------------------------------------------------------------
# Reading and decoding (runs in DataLoader workers)


def _read_bytes(path: str) -> bytes:
    if is_local(path):
        with open(local_path(path), "rb") as handle:
            return handle.read()
    with fsspec.open(path, "rb") as handle:
        return handle.read()


def _decode(data: bytes, preprocess: Callable) -> Any:
    """Bytes -> preprocessed tensor; ``load()`` forces full decoding so truncated files fail here."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return preprocess(img.convert("RGB"))


def _decode_error(exc: Exception) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image format"
    return f"{type(exc).__name__}: {exc}"


def _tar_images(path: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the first image of each webdataset sample, in tar order, streaming."""
    with fsspec.open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
        last_key = None
        for member in tar:
            if not member.isfile():
                continue
            match = _WDS_KEY.match(member.name)
            if match is None:
                continue
            key, ext = match.groups()
            if key == last_key or ext.rsplit(".", 1)[-1].lower() not in IMAGE_EXTENSIONS:
                continue
            last_key = key
            handle = tar.extractfile(member)
            if handle is not None:
                yield f"{path}:{member.name}", handle.read()


def _unit_items(unit: Unit) -> Iterator[tuple[str, bytes | None, str | None]]:
    """(name, bytes or None, error) for each image of a unit; an unreadable file is an error, not a stop."""
    if unit.kind == "files":
        for path in unit.paths:
            try:
                yield path, _read_bytes(path), None
            except OSError as exc:
                yield path, None, f"cannot read ({exc.strerror or exc})"
    else:
        yield from ((name, data, None) for name, data in _tar_images(unit.paths[0]))


class _ImageStream:
    """Iterable over (unit index, position, name, tensor | None, error | None); workers split the units.

    A tar that cannot be read to the end yields one ``("fatal", message)`` marker instead of raising, so
    the main process can report it as a PluginError rather than a wrapped worker traceback.
    """

    def __init__(self, units: Sequence[Unit], preprocess: Callable) -> None:
        self.units = list(units)
        self.preprocess = preprocess

    def __iter__(self) -> Iterator[tuple]:
        import torch.utils.data

        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for index in range(worker, len(self.units), workers):
            unit = self.units[index]
            try:
                for position, (name, data, error) in enumerate(_unit_items(unit)):
                    if data is None:
                        yield index, position, name, None, error
                        continue
                    try:
                        tensor = _decode(data, self.preprocess)
                    except Exception as exc:  # any decoder error means this one image is unusable
                        yield index, position, name, None, _decode_error(exc)
                        continue
                    yield index, position, name, tensor, None
            except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
                yield "fatal", f"--images: cannot read {unit.paths[0]} ({type(exc).__name__}: {exc}); " \
                               f"expected a readable tar shard (re-download it?)"
                return


def __getattr__(name: str) -> Any:
    """Build ``_ImageDataset`` (which needs torch) on first use; spawned workers find it by name the same way."""
    if name != "_ImageDataset":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import torch.utils.data

    cls = type("_ImageDataset", (_ImageStream, torch.utils.data.IterableDataset), {"__module__": __name__})
    globals()["_ImageDataset"] = cls
    return cls


def _collate(items: list[tuple]) -> dict[str, Any]:
    """Keep decoded tensors, positions and failures apart; a batch may contain no usable image."""
    import torch

    fatal = [item[1] for item in items if item[0] == "fatal"]
    good = [item for item in items if item[0] != "fatal" and item[3] is not None]
    return {
        "fatal": fatal,
        "keys": [(item[0], item[1]) for item in good],
        "names": [item[2] for item in good],
        "pixels": torch.stack([item[3] for item in good]) if good else None,
        "failed": [(item[2], item[4]) for item in items if item[0] != "fatal" and item[3] is None],
    }


# ---------------------------------------------------------------------------------------------------------
# Embedding


def embed_units(units: Sequence[Unit], net: Any, preprocess: Callable, device: str = "cpu",
                input_dtype: Any = None, batch_size: int = 256, num_workers: int = 0,
                progress: bool = True, total: int | None = None) -> EmbedResult:
    """Encode every image of ``units``; rows L2-normalised float32, in input order whatever the workers."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    workers = min(num_workers, len(units))
    dataset = __getattr__("_ImageDataset")(units, preprocess)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=_collate,
                                         pin_memory=device.startswith("cuda"))
    chunks: list[np.ndarray] = []
    keys: list[tuple[int, int]] = []
    names: list[str] = []
    skipped: list[tuple[str, str]] = []
    bar = tqdm(total=total, unit="img", desc="embed", disable=progress_disable(progress), file=sys.stderr)
    with torch.no_grad(), contextlib.closing(bar):
        for batch in loader:
            if batch["fatal"]:
                raise PluginError(batch["fatal"][0])
            for name, why in batch["failed"]:
                if len(skipped) < MAX_WARNINGS:
                    bar.write(f"warning: skipped unreadable image {name}: {why}", file=sys.stderr)
                skipped.append((name, why))
            if batch["pixels"] is not None:
                pixels = batch["pixels"].to(device, non_blocking=True)
                if input_dtype is not None:
                    pixels = pixels.to(input_dtype)
                rows = F.normalize(net.encode_image(pixels).float(), dim=-1)
                chunks.append(rows.cpu().numpy().astype(np.float32, copy=False))
                keys.extend(batch["keys"])
                names.extend(batch["names"])
            bar.update(len(batch["keys"]) + len(batch["failed"]))
    if len(skipped) > MAX_WARNINGS:
        print(f"warning: {len(skipped) - MAX_WARNINGS} more unreadable images skipped", file=sys.stderr)
    if not chunks:
        return EmbedResult(np.zeros((0, 0), dtype=np.float32), [], skipped)
    embeddings = np.concatenate(chunks)
    order = np.lexsort((np.array([k[1] for k in keys]), np.array([k[0] for k in keys])))
    return EmbedResult(np.ascontiguousarray(embeddings[order]), [names[i] for i in order], skipped)


def run_embed(model: str, pretrained: str | None, images: Sequence[str], out: str, batch_size: int = 256,
              num_workers: int = 0, device: str = "auto", precision: str = "fp32",
              model_config: str | None = None, progress: bool = True) -> EmbedResult:
    """The ``embed`` command: check everything cheap first, then load the model, encode, save atomically."""
    from datacomp_plugins.core.ranges import EMBED_BATCH_SIZE, NUM_WORKERS

    start = time.monotonic()
    EMBED_BATCH_SIZE.check(batch_size, "--batch_size")
    NUM_WORKERS.check(num_workers, "--num_workers")
    refuse_input_as_output(out, "--out", [("--images", path) for path in images if not os.path.isdir(path)])
    check_writable(out, "--out")
    units = resolve_images(images, files_per_unit=max(1, batch_size))
    device = resolve_device(device)
    net, preprocess, input_dtype = load_model(model, pretrained, device, precision, model_config)
    known = sum(len(u.paths) for u in units) if all(u.kind == "files" for u in units) else None
    result = embed_units(units, net, preprocess, device=device, input_dtype=input_dtype, batch_size=batch_size,
                         num_workers=num_workers, progress=progress, total=known)
    spec = " ".join(images)
    if not result.names:
        if result.skipped:
            name, why = result.skipped[0]
            raise PluginError(f"--images {spec}: all {len(result.skipped)} images are unreadable "
                              f"(first: {name}: {why}); nothing written")
        raise PluginError(f"--images {spec}: no images found (tar shards hold no "
                          f"{'/'.join(IMAGE_EXTENSIONS)} members); nothing written")
    atomic_save_npy(out, result.embeddings)
    seconds = time.monotonic() - start
    print(f"embedded {len(result.names)} images, skipped {len(result.skipped)} unreadable, "
          f"in {seconds:.1f} s -> {out} ({result.embeddings.shape[0]} x {result.embeddings.shape[1]} float32)")
    return result
