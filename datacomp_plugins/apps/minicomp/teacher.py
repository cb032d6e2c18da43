"""The world's two teacher CLIP models: training through open_clip_train, loading, and encoding.

The teachers play OpenAI's CLIP ViT-L/14 and ViT-B/32 in DataComp: they are trained on their own corpus
(drawn from the world, never from the pool) and then embed the pool, so the pool's similarity columns and
npz cache come from models that learned the world imperfectly, as CLIP did the web.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

import numpy as np

from datacomp_plugins.apps.minicomp import openclip
from datacomp_plugins.apps.minicomp.world import World
from datacomp_plugins.core.fileio import atomic_open, write_json

ARCHES = ("l14", "b32")


def model_name(arch: str) -> str:
    """The open_clip name of a teacher; its config is ``teacher/<name>.json``."""
    return f"minicomp-{arch}"


def config_path(out: str, arch: str) -> str:
    return os.path.join(out, "teacher", f"{model_name(arch)}.json")


def checkpoint_path(out: str, arch: str) -> str:
    return os.path.join(out, "teacher", f"{model_name(arch)}.pt")


def write_config(out: str, world: World, arch: str) -> str:
    path = config_path(out, arch)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cfg = openclip.model_config(world["teachers"][arch], world["world"]["image_size"])
    write_json(path, cfg)
    return path


def train(out: str, world: World, arch: str, corpus_shards: Sequence[str], corpus_size: int) -> str:
    """Train one teacher with open_clip_train on the corpus shards; keep only its state_dict (weights only)."""
    import torch

    cfg = world["teachers"][arch]
    config = write_config(out, world, arch)
    logs = os.path.join(out, "teacher", "logs")
    name = f"{model_name(arch)}-seed{world.seed}"
    shutil.rmtree(os.path.join(logs, name), ignore_errors=True)  # a killed earlier attempt
    first, last = os.path.basename(corpus_shards[0])[:-4], os.path.basename(corpus_shards[-1])[:-4]
    folder = os.path.dirname(corpus_shards[0])
    data = os.path.join(folder, f"{{{first}..{last}}}.tar") if len(corpus_shards) > 1 else corpus_shards[0]
    argv = openclip.train_argv(train_data=data, num_samples=corpus_size, epochs=cfg["epochs"],
                               batch_size=cfg["batch_size"], lr=cfg["lr"], warmup=cfg["warmup"],
                               model=model_name(arch), logs=logs, name=name, seed=world.seed, log_every=20,
                               resampled=False, distributed_flags=False,
                               extra=["--wd", "0.1", "--zeroshot-frequency", "0", "--val-frequency", "0"])
    openclip.train(argv, [config], world.seed, os.path.join(logs, f"{name}.log"), fresh_log=True,
                   what="open_clip_train")
    ckpt = os.path.join(logs, name, "checkpoints", f"epoch_{cfg['epochs']}.pt")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    target = checkpoint_path(out, arch)
    with atomic_open(target, "wb") as handle:
        torch.save(state, handle)
    shutil.rmtree(os.path.join(logs, name), ignore_errors=True)  # optimizer state: large and not needed
    return target


class Teacher:
    """A loaded teacher: encode images (tar shards, through the package's ``embed`` code) and texts."""

    def __init__(self, out: str, arch: str) -> None:
        from datacomp_plugins.apps.models import load_model

        self.arch = arch
        open_clip = openclip.register(config_path(out, arch))
        self.model, self.preprocess, _ = load_model(model_name(arch), checkpoint_path(out, arch), "cpu", "fp32",
                                                    model_config=config_path(out, arch))
        self.tokenizer = open_clip.get_tokenizer(model_name(arch))

    def encode_tars(self, tars: Sequence[str], progress: bool = False) -> np.ndarray:
        """Unit-norm float32 rows, one per sample, in tar order (the pool's parquet order)."""
        from datacomp_plugins.apps.embed import Unit, embed_units

        result = embed_units([Unit("tar", (t,)) for t in tars], self.model, self.preprocess, batch_size=256,
                             num_workers=0, progress=progress)
        if result.skipped:
            raise RuntimeError(f"unreadable images in {tars}: {result.skipped[:3]}")
        return result.embeddings

    def encode_texts(self, texts: Sequence[str], batch_size: int = 512) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        rows = []
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                tokens = self.tokenizer(list(texts[i:i + batch_size]))
                rows.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1).numpy())
        return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)

    def classifier(self, classnames: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        """Zero-shot weights as clip_benchmark builds them: mean of normalised prompts, normalised again."""
        weights = []
        for name in classnames:
            emb = self.encode_texts([t.replace("{c}", name) for t in templates])
            mean = emb.mean(0)
            weights.append(mean / np.linalg.norm(mean))
        return np.stack(weights)


def zero_shot_accuracy(image_emb: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    pred = (image_emb @ weights.T).argmax(1)
    return float((pred == labels).mean())


def unit_float16(rows: np.ndarray) -> np.ndarray:
    """Unit-norm float16, as DataComp's npz cache stores embeddings."""
    rows = rows.astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows.astype(np.float16)
