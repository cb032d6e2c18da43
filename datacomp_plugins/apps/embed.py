"""Image embeddings of a target set with any open_clip model: the targets NormSim compares pool images to.

The rows must be comparable with the pool's embedding cache, so the model's own validation transform and
``encode_image`` are used, and rows are L2-normalised float32. Row order depends only on the input (folder
files sorted by path; tar shards in the given order, members in tar order), never on ``--num_workers``:
every sample carries its position and rows are put back in that order before writing.

Heavy libraries (torch, open_clip, PIL) are imported inside functions, so the core package works without
the ``embed`` extra.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import pickle
import re
import sys
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np

from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.fileio import (
    atomic_save_npy,
    check_writable,
    is_local,
    local_path,
    refuse_input_as_output,
)
from datacomp_plugins.core.progress import disable as progress_disable

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
INSTALL_HINT = "pip install 'datacomp-plugins[embed]'"
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
# Model


def import_open_clip() -> Any:
    """open_clip, or a PluginError saying which extra to install."""
    try:
        import open_clip
    except ImportError as exc:
        raise PluginError(f"the embed command needs open_clip ({exc}); install it with {INSTALL_HINT}") \
            from None
    return open_clip


def register_model_config(open_clip: Any, path: str) -> None:
    """Add an open_clip architecture JSON (or a folder of them); its file name (no .json) is the name."""
    if not os.path.exists(path):
        raise PluginError(f"--model_config {path}: does not exist; expected an open_clip model config JSON "
                          f"or a folder of them")
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(path, f) for f in os.listdir(path) if f.endswith(".json"))
    if not files:
        raise PluginError(f"--model_config {path}: no .json files in this folder")
    for file in files:
        try:
            with open(file, encoding="utf-8") as handle:
                cfg = json.load(handle)
        except (OSError, ValueError) as exc:
            raise PluginError(f"--model_config {file}: not readable JSON ({exc})") from None
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(cfg, dict) or k not in cfg]
        if missing:
            raise PluginError(f"--model_config {file}: missing key(s) {', '.join(missing)}; expected an open_clip "
                              f"model config with embed_dim, vision_cfg and text_cfg")
    open_clip.add_model_config(path)


def _check_model_and_pretrained(open_clip: Any, model: str, pretrained: str | None) -> None:
    """Fail before building anything when the name or weights cannot be found."""
    if model.startswith(("hf-hub:", "local-dir:")):
        return  # open_clip resolves these itself, and ignores --pretrained for them
    name = model.replace("/", "-")
    available = open_clip.list_models()
    if name not in available:
        import difflib

        close = difflib.get_close_matches(name, available, n=5, cutoff=0.5)
        examples = close or [m for m in ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-H-14") if m in available]
        raise PluginError(f"--model {model}: unknown open_clip model; {len(available)} are available, e.g. "
                          f"{', '.join(examples)} (open_clip.list_models() lists all; --model_config adds one)")
    if not pretrained or os.path.isfile(pretrained):
        return
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained in tags:
        return
    if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise PluginError(f"--pretrained {pretrained}: checkpoint file does not exist")
    raise PluginError(f"--pretrained {pretrained}: not a checkpoint file nor a known tag for {model}; "
                      f"tags: {', '.join(tags) or '(none)'}")


HUB_PROBE_SECONDS = 3.0


def hub_reachable(url: str, timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds (one try, no retries)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "", parts.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _cached_weights(open_clip: Any, cfg: dict) -> bool:
    """Whether the weights a pretrained tag names are already on this machine (open_clip's caches)."""
    hub = cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return False
        repo, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        return any(isinstance(try_to_load_from_cache(repo, name), str) for name in names)
    url = cfg.get("url", "")
    return bool(url) and os.path.isfile(os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url)))


def _check_weights_reachable(open_clip: Any, model: str, pretrained: str | None) -> None:
    """Fail in seconds, not after minutes of download retries, when a pretrained tag's weights are not cached
    and their server cannot be reached; when they are cached and it cannot, load them offline."""
    if not pretrained or os.path.isfile(pretrained) or model.startswith(("hf-hub:", "local-dir:")):
        return
    get_cfg = getattr(open_clip, "get_pretrained_cfg", None)
    cfg = get_cfg(model.replace("/", "-"), pretrained) if get_cfg else None
    if not cfg or "file" in cfg:
        return
    hub = bool(cfg.get("hf_hub"))
    server = os.environ.get("HF_ENDPOINT", "https://huggingface.co") if hub else cfg.get("url", "")
    offline = hub and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if not offline and hub_reachable(server):
        return
    if _cached_weights(open_clip, cfg):
        if hub:  # the hub client would first ask the server for a newer file, with retries
            os.environ["HF_HUB_OFFLINE"] = "1"
            with contextlib.suppress(ImportError, AttributeError):
                import huggingface_hub.constants

                huggingface_hub.constants.HF_HUB_OFFLINE = True
        return
    where = "HF_HUB_OFFLINE is set" if offline else f"{server} cannot be reached"
    raise PluginError(f"--pretrained {pretrained}: the weights of {model} are not cached on this machine and "
                      f"{where}; download them once with network access, or pass a local checkpoint path")


def _check_weights_only(path: str) -> None:
    """For open_clip versions without ``weights_only``: refuse checkpoints that need unpickling code."""
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise PluginError(_unsafe_checkpoint(path, exc)) from None


def _unsafe_checkpoint(path: str, exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"--pretrained {path}: refusing to load, the checkpoint holds pickled Python objects besides "
            f"tensors ({first}); expected a state_dict of tensors (.pt/.pth/.bin) or .safetensors")


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when available, else cpu; an explicit cuda without a GPU is a user error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PluginError(f"--device {device}: no CUDA device is available; use --device cpu or auto")
    return device


def load_model(model: str, pretrained: str | None, device: str = "cpu", precision: str = "fp32",
               model_config: str | None = None) -> tuple[Any, Callable, Any]:
    """(model in eval mode, open_clip's validation transform, input dtype or None) for embedding.

    Checkpoints are loaded with ``weights_only=True``: a target-set embedding should never run code from a
    downloaded file.
    """
    open_clip = import_open_clip()
    if model_config:
        register_model_config(open_clip, model_config)
    _check_model_and_pretrained(open_clip, model, pretrained)
    _check_weights_reachable(open_clip, model, pretrained)
    kwargs: dict[str, Any] = {"pretrained": pretrained or None, "precision": precision, "device": device}
    local_file = bool(pretrained) and os.path.isfile(pretrained) and not pretrained.endswith(".safetensors")
    if "weights_only" in inspect.signature(open_clip.create_model_and_transforms).parameters:
        kwargs["weights_only"] = True
    elif local_file:
        _check_weights_only(pretrained)
    try:
        net, _, preprocess = open_clip.create_model_and_transforms(model, **kwargs)
    except pickle.UnpicklingError as exc:
        raise PluginError(_unsafe_checkpoint(pretrained or model, exc)) from None
    except RuntimeError as exc:
        text = str(exc)
        if "state_dict" in text:
            first = text.strip().splitlines()[0]
            raise PluginError(f"--pretrained {pretrained}: weights do not fit --model {model} ({first})") from None
        if "download" in text.lower():
            raise PluginError(f"--pretrained {pretrained}: could not fetch the weights of {model} ({text}); "
                              f"pass a local checkpoint path if this machine has no network") from None
        raise
    net.eval()
    input_dtype = open_clip.get_input_dtype(precision) if hasattr(open_clip, "get_input_dtype") else None
    return net, preprocess, input_dtype


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
