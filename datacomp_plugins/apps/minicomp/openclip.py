"""Glue to open_clip and open_clip_train shared by the world's teachers and the student runs.

- open_clip knows a custom architecture only after ``open_clip.add_model_config`` *in the same process*;
  an unregistered name silently falls back to defaults (context length 77), so every process that builds a
  model or tokenizer calls :func:`register` first.
- DataComp's ``train.py`` cannot import against open_clip 3.x, so training calls
  ``open_clip_train.main.main(argv)`` with the argument list ``train.py`` would build (:func:`train_argv`).
- webdataset seeds its sample shuffle from the pid and the clock; :func:`_seeded_shuffle` replaces it in the
  training process so the same seed gives the same checkpoint.
- Training runs in a child process (``python -m datacomp_plugins.apps.minicomp.openclip``), so a crash, an
  ``os._exit`` or a kill inside open_clip_train cannot take the caller down, and its logs go to a file.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datacomp_plugins.core.errors import PluginError

SHUFFLE_SEED_ENV = "MINICOMP_SHUFFLE_SEED"
VOCAB_SIZE = 49408  # open_clip's SimpleTokenizer
HEAD_WIDTH = 32


def model_config(cfg: dict[str, Any], image_size: int) -> dict[str, Any]:
    """An open_clip model config (vision transformer + text transformer) from a world's teacher table."""
    return {
        "embed_dim": int(cfg["embed_dim"]),
        "vision_cfg": {"image_size": int(image_size), "layers": int(cfg["layers"]), "width": int(cfg["width"]),
                       "head_width": HEAD_WIDTH, "patch_size": int(cfg["patch_size"])},
        "text_cfg": {"context_length": int(cfg["context_length"]), "vocab_size": VOCAB_SIZE,
                     "width": int(cfg["text_width"]), "heads": int(cfg["text_width"]) // HEAD_WIDTH,
                     "layers": int(cfg["text_layers"])},
    }


def register(paths: str | Sequence[str]) -> Any:
    """Register model config JSON files (or folders of them) with open_clip in this process; returns open_clip."""
    try:
        import open_clip
    except ImportError as exc:
        raise PluginError(f"the minicomp commands need open_clip ({exc}); "
                          f"install them with pip install 'datacomp-plugins[minicomp]'") from None
    for path in [paths] if isinstance(paths, str) else paths:
        if not os.path.exists(path):
            raise PluginError(f"{path}: model config does not exist")
        open_clip.add_model_config(path)
    return open_clip


def cpu_precision() -> str:
    """``amp_bf16`` on a CPU with bf16 units (much faster there), else ``fp32``; ``amp`` is fp16 and slow on CPU."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = handle.read()
    except OSError:
        return "fp32"
    return "amp_bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32"


def train_argv(*, train_data: str, num_samples: int, model: str, logs: str, name: str, epochs: int,
               batch_size: int, lr: float, warmup: int, seed: int, workers: int = 1, precision: str = "fp32",
               resampled: bool = True, wd: float = 0.2, save_frequency: int = 0,
               extra: Sequence[str] = ()) -> list[str]:
    """The argument list DataComp's ``train.py`` passes to ``open_clip_train.main.main``.

    Dropped from train.py's list because they do nothing or fail on one CPU process: ``--ddp-static-graph``,
    ``--local-loss``, ``--gather-with-grad`` (distributed only), ``--grad-checkpointing`` (memory only), and
    ``--resume latest`` (``--resume`` is a run's own resume logic).
    """
    argv = ["--save-frequency", str(save_frequency), "--train-data", train_data, "--train-num-samples",
            str(num_samples), "--warmup", str(warmup), "--dataset-type", "webdataset", "--precision", precision,
            "--workers", str(workers), "--model", model, "--batch-size", str(batch_size), "--epochs", str(epochs),
            "--lr", str(lr), "--wd", str(wd), "--logs", logs, "--name", name, "--seed", str(seed),
            "--log-every-n-steps", "20", "--zeroshot-frequency", "0", "--val-frequency", "0"]
    if resampled:
        argv.append("--dataset-resampled")
    return argv + list(extra)


_CHILDREN: set[subprocess.Popen] = set()
_CHILDREN_LOCK = threading.Lock()


def stop_training() -> int:
    """Kill every training child of this process (a run that stops early); returns how many were running.

    They are killed, not waited for: each resumes from its last finished epoch on the next run.
    """
    with _CHILDREN_LOCK:
        running = [child for child in _CHILDREN if child.poll() is None]
    for child in running:
        child.kill()
    return len(running)


def run_child(command: list[str], env: dict, log_path: str | os.PathLike, timeout: float | None, what: str) -> None:
    """Run ``command`` with its output appended to ``log_path``; :func:`stop_training` can kill it."""
    with open(log_path, "ab") as log, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                       env=env) as child:
        with _CHILDREN_LOCK:
            _CHILDREN.add(child)
        try:
            returncode = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PluginError(f"{what} timed out after {timeout} s; see {log_path}") from None
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
            with _CHILDREN_LOCK:
                _CHILDREN.discard(child)
    if returncode != 0:
        tail = Path(log_path).read_text(errors="replace").splitlines()[-15:]
        raise PluginError(f"{what} failed (exit status {returncode}); see {log_path}:\n" + "\n".join(tail))


def run_training(argv: Sequence[str], config_paths: Sequence[str], seed: int, log_file: str,
                 timeout: float | None = None, threads: int | None = None) -> None:
    """Run open_clip_train in a child process (a fresh log); PluginError with the log's tail when it fails."""
    env = dict(os.environ)
    env[SHUFFLE_SEED_ENV] = str(seed)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "datacomp_plugins.apps.minicomp.openclip", json.dumps(list(config_paths)), *argv]
    os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
    open(log_file, "wb").close()
    run_child(cmd, env, log_file, timeout, "open_clip_train")


def _seeded_shuffle(data: Any, bufsize: int = 1000, initial: int = 100, rng: Any = None, handler: Any = None) -> Any:
    """webdataset's sample shuffle with a generator seeded by the run's seed, the worker and the pass number."""
    from webdataset.filters import _shuffle

    if rng is None:
        import torch.utils.data

        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        _seeded_shuffle.calls = getattr(_seeded_shuffle, "calls", 0) + 1
        rng = random.Random(f"{os.environ.get(SHUFFLE_SEED_ENV, '0')}-{worker}-{_seeded_shuffle.calls}")
    return _shuffle(data, bufsize, initial, rng)


def _child(argv: Sequence[str]) -> int:
    """Entry of the training child: register the configs, seed the shuffle, run open_clip_train."""
    from datacomp_plugins import runtime

    runtime.configure()  # before open_clip loads torch, as in the parent command line
    configs, rest = json.loads(argv[0]), list(argv[1:])
    register(configs)
    import webdataset
    import webdataset.filters

    # by module path, not __main__, so a spawned dataloader worker can unpickle it
    from datacomp_plugins.apps.minicomp.openclip import _seeded_shuffle as shuffle

    seeded = webdataset.filters.pipelinefilter(shuffle)
    webdataset.shuffle = seeded
    webdataset.filters.shuffle = seeded
    from open_clip_train.main import main

    result = main(rest)
    return 0 if result in (None, 0) else int(result) if isinstance(result, int) else 1


if __name__ == "__main__":
    raise SystemExit(_child(sys.argv[1:]))
