"""Glue to open_clip and open_clip_train shared by the world's teachers and the student runs.

- open_clip knows a custom architecture only after ``open_clip.add_model_config`` *in the same process*;
  an unregistered name silently falls back to defaults (context length 77), so every process that builds a
  model or tokenizer calls :func:`register` first.
- DataComp's ``train.py`` cannot import against open_clip 3.x, so training calls
  ``open_clip_train.main.main(argv)`` with the argument list ``train.py`` would build (:func:`train_argv`).
- webdataset seeds its sample shuffle from the pid and the clock; :func:`seed_data_pipeline` replaces it in
  the training process with one keyed on (seed, epoch), so the same seed gives the same checkpoint, also
  across a kill and a resume.
- Training runs in a child process (:func:`train`, entry :func:`_child`), so a crash, an ``os._exit`` or a
  kill inside open_clip_train cannot take the caller down, and its logs go to a file.

Teachers and students both go through these functions: one argument list, one child entry, one seeded
shuffle, one registration.
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

VOCAB_SIZE = 49408  # open_clip's SimpleTokenizer
HEAD_WIDTH = 32


def model_config(cfg: dict[str, Any], image_size: int) -> dict[str, Any]:
    """An open_clip model config from a world's teacher table: a vision transformer (``vision = "vit"``) or
    open_clip's modified ResNet (``vision = "resnet"``: ``layers`` blocks in each of its four stages, stem
    ``width``), and a text transformer."""
    if cfg.get("vision", "vit") == "resnet":
        vision = {"image_size": int(image_size), "layers": [int(cfg["layers"])] * 4, "width": int(cfg["width"])}
    else:
        vision = {"image_size": int(image_size), "layers": int(cfg["layers"]), "width": int(cfg["width"]),
                  "head_width": HEAD_WIDTH, "patch_size": int(cfg["patch_size"])}
    return {
        "embed_dim": int(cfg["embed_dim"]),
        "vision_cfg": vision,
        "text_cfg": {"context_length": int(cfg["context_length"]), "vocab_size": VOCAB_SIZE,
                     "width": int(cfg["text_width"]), "heads": int(cfg["text_width"]) // HEAD_WIDTH,
                     "layers": int(cfg["text_layers"])},
    }


def register(paths: str | Sequence[str]) -> Any:
    """Register model config JSON files (or folders of them) with open_clip in this process; returns open_clip."""
    try:
        import open_clip
    except ImportError as exc:
        from datacomp_plugins.core.registry import EXTRAS

        raise PluginError(f"the minicomp commands: {EXTRAS.hint('minicomp')} ({exc})") from None
    for path in [paths] if isinstance(paths, str) else paths:
        if not os.path.exists(path):
            raise PluginError(f"{path}: model config does not exist")
        open_clip.add_model_config(path)
    return open_clip


def train_argv(*, train_data: str, num_samples: int, epochs: int, batch_size: int, lr: float, warmup: int,
               model: str, logs: str, name: str, seed: int, precision: str = "fp32", workers: int = 1,
               accum_freq: int = 1, log_every: int = 10, save_frequency: int = 0, resampled: bool = True,
               resume: str | None = None, save_most_recent: bool = False, beta2: float | None = None,
               distributed_flags: bool = True, extra: Sequence[str] = ()) -> list[str]:
    """The argument list DataComp's ``train.py`` passes to ``open_clip_train.main.main``, in its order.

    The student passes exactly train.py's flags (``distributed_flags``: ``--ddp-static-graph``,
    ``--local-loss``, ``--gather-with-grad``, ``--grad-checkpointing``, which change nothing on one process).
    The teachers leave those out (gradient checkpointing recomputes the forward pass: time, not results) and
    pass their own extras (weight decay, no resampling: a teacher sees its corpus in whole passes).
    """
    argv = ["--save-frequency", str(save_frequency)]
    if distributed_flags:
        argv += ["--ddp-static-graph", "--local-loss", "--gather-with-grad", "--grad-checkpointing"]
    argv += ["--train-data", train_data, "--train-num-samples", str(num_samples), "--warmup", str(warmup),
             "--dataset-type", "webdataset", "--precision", precision, "--workers", str(workers),
             "--model", model, "--batch-size", str(batch_size // accum_freq), "--epochs", str(epochs),
             "--lr", str(lr), "--logs", logs, "--name", name, "--seed", str(seed), "--accum-freq", str(accum_freq),
             "--log-every-n-steps", str(log_every)]
    if save_most_recent:
        argv.append("--save-most-recent")
    if resume is not None:
        argv += ["--resume", resume]
    if resampled:
        argv.append("--dataset-resampled")
    if beta2 is not None:
        argv += ["--beta2", str(beta2)]
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


def train(argv: Sequence[str], config_paths: Sequence[str], seed: int, log_path: str | os.PathLike,
          timeout: float | None = None, threads: int = 1, fresh_log: bool = False, what: str = "training") -> None:
    """Run open_clip_train in a child process (this package's own entry point, below); its output goes to
    ``log_path``. PluginError with the log's tail when it fails.

    One torch thread beside the one dataloader worker: on 2 cores (more so on a shared machine) two threads
    measured 3-8x slower than one, and a fixed count keeps float sums in one order.
    """
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    # the child imports this very package, wherever it is (an editable install or a checkout on PYTHONPATH)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[3]),
                                         *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "datacomp_plugins.apps.minicomp.openclip", json.dumps([str(p) for p in config_paths]),
           str(seed), *argv]
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    if fresh_log:
        open(log_path, "wb").close()
    run_child(cmd, env, log_path, timeout, what)


def seed_data_pipeline(seed: int) -> None:
    """Make open_clip_train's sample shuffle and the loader worker's augmentations a function of (seed, epoch).

    webdataset's ``shuffle`` seeds itself from the pid and the clock. Its replacement here draws from a
    generator seeded by the run's seed and the epoch (read from the pipeline's ``SharedEpoch``), and reseeds
    the worker's torch generator (random crops) at the start of every epoch. An epoch therefore does not
    depend on how many epochs the process served before it, so a run resumed at epoch k (``--resume``) ends
    with the checkpoint of an uninterrupted one.
    """
    import open_clip_train.data as data
    import torch
    import webdataset as wds
    from webdataset.filters import _shuffle

    epochs: list = []

    class RecordedEpoch(data.SharedEpoch):
        def __init__(self, epoch: int = 0):
            super().__init__(epoch)
            epochs.append(self)

    class SeededShuffle(wds.PipelineStage):
        def __init__(self, bufsize: int, initial: int, epoch: Any) -> None:
            self.bufsize, self.initial, self.epoch = bufsize, initial, epoch

        def run(self, src: Any) -> Any:
            epoch = self.epoch.get_value()
            torch.manual_seed(seed * 1_000_003 + epoch)  # this worker's random crops for this epoch
            return _shuffle(src, self.bufsize, self.initial, random.Random(seed * 1_000_003 + epoch))

    def shuffle(bufsize: int = 1000, initial: int = 100, **_: Any) -> SeededShuffle:
        return SeededShuffle(bufsize, initial, epochs[-1])

    data.SharedEpoch = RecordedEpoch
    data.wds.shuffle = shuffle


def _child(argv: Sequence[str]) -> int:
    """Entry of a training child: register the model configs, seed the data pipeline, run open_clip_train."""
    from datacomp_plugins import runtime

    runtime.configure()  # before open_clip loads torch, as in the parent command line
    configs, seed, rest = json.loads(argv[0]), int(argv[1]), list(argv[2:])
    register(configs)
    seed_data_pipeline(seed)
    from open_clip_train.main import main

    result = main(rest)  # None when done; -1 (or another int) when open_clip_train gives up
    return 0 if result is None else (1 if result == -1 else int(result)) if isinstance(result, int) else 1


if __name__ == "__main__":
    raise SystemExit(_child(sys.argv[1:]))
