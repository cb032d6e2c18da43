"""Loading open_clip models, for the target-set embeddings (``embed``) and the mini DataComp's teachers.

Both need the same guarantees: a custom architecture registered from its JSON config before the name is used,
an unknown model or tag refused with suggestions before anything is built, weights that are neither cached nor
reachable refused in seconds (not after minutes of download retries), and checkpoints loaded with
``weights_only=True`` so that a downloaded file never runs code. open_clip and torch are imported inside the
functions, so the core package works without the ``embed`` extra.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import pickle
from collections.abc import Callable
from typing import Any

from datacomp_plugins.core.errors import PluginError


def import_open_clip(who: str = "the embed command", extra: str = "embed") -> Any:
    """open_clip, or a PluginError saying which extra to install (``who`` needs it)."""
    from datacomp_plugins.core.registry import require

    return require(extra, who)


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
