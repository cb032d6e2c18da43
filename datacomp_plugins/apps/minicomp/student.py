"""The student CLIP of a mini DataComp run, trained the way DataComp's ``train.py`` trains.

DataComp's ``train.py`` imports ``training.main`` (open_clip before 2.x) and so cannot run against open_clip
3.x; this module builds the same argument list from a scale config of our own and calls
``open_clip_train.main.main`` with it, in a child process so that a crash or a kill is contained.

Two things make the child's checkpoint a function of the seed alone, also across a kill and a resume
(``--resume latest`` restarts at the last finished epoch):

* the sample shuffle buffer (``webdataset.shuffle``, which seeds itself from the pid and the clock) is
  replaced by one seeded from the run's seed and the epoch;
* the dataloader worker's torch generator (random crops) is reseeded at the start of every epoch, so epoch
  k does not depend on how many epochs the worker already served.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from datacomp_plugins.core.errors import PluginError

STUDENT_MODEL = "minicomp-student"

# The student: a small ViT-CLIP at 32 px, ~550 samples/s on 2 idle CPU cores. Fixed before any result.
STUDENT_CONFIG: dict = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 4},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

# Scale configs in the form of DataComp's scale_configs.py. Fixed before any result, except the default's
# train_num_samples: 64,000 in the first default run, lowered to 40,960 for the 60-minute budget before the
# second (docs/MINICOMP.md, "Second pre-registration").
SCALE_CONFIGS: dict[str, dict] = {
    "minicomp": {
        "batch_size": 128,
        "learning_rate": 1e-3,
        "train_num_samples": 40_960,
        "warmup": 50,
        "model": STUDENT_MODEL,
        "beta2": None,
        "num_checkpoints": 5,
    },
    "minicomp_quick": {
        "batch_size": 128,
        "learning_rate": 1e-3,
        "train_num_samples": 5_120,
        "warmup": 10,
        "model": STUDENT_MODEL,
        "beta2": None,
        "num_checkpoints": 2,
    },
}

# train.py's defaults for the flags it forwards, with the values we use on one CPU process.
TRAIN_DEFAULTS = {
    "precision": "fp32",  # train.py's default "amp" is fp16 autocast on a CPU: ~5x slower, same result class
    "workers": 1,  # one dataloader worker beats two on 2 cores
    "accum_freq": 1,
    "log_every_n_steps": 10,
    "save_frequency": 0,
    "resume": "latest",
}


def datacomp_dir() -> Path:
    """DataComp's checkout from ``DATACOMP_DIR``, checked for the files the runs need."""
    value = os.environ.get("DATACOMP_DIR")
    if not value:
        raise PluginError(
            "DATACOMP_DIR is not set: minicomp run needs DataComp's source (resharder.py, eval_utils/); "
            "export DATACOMP_DIR=/path/to/datacomp (a clone of github.com/mlfoundations/datacomp)")
    folder = Path(value)
    for needed in ("resharder.py", "train.py", "eval_utils/wds_eval.py"):
        if not (folder / needed).is_file():
            raise PluginError(f"DATACOMP_DIR={value}: no {needed} there; expected a DataComp checkout")
    return folder


def write_model_config(folder: Path) -> Path:
    """The student's open_clip config as ``<folder>/minicomp-student.json`` (open_clip's registry reads files)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{STUDENT_MODEL}.json"
    text = json.dumps(STUDENT_CONFIG, indent=2, sort_keys=True) + "\n"
    if not path.is_file() or path.read_text() != text:
        from datacomp_plugins.core.fileio import atomic_open

        with atomic_open(str(path), "w") as handle:  # a temporary name of its own: concurrent writers may race
            handle.write(text)
    return path


def register_model(config_path: Path) -> None:
    """Register the student config; needed in every process that creates the model or its tokenizer."""
    import open_clip

    if STUDENT_MODEL not in open_clip.list_models():
        open_clip.add_model_config(str(config_path))


def input_shards(data_dir: Path) -> str:
    """The ``--train-data`` string, by DataComp train.py's own ``get_input_shards``."""
    module = _datacomp_train_module()
    data_str, _ = module.get_input_shards(Path(data_dir), None)
    if not data_str:
        raise PluginError(f"{data_dir}: no .tar shards to train on")
    return data_str


def _datacomp_train_module():
    """DataComp's train.py as a module, its open_clip-2 imports pointed at open_clip_train (main is not run)."""
    import importlib.util
    import types

    if "datacomp_train" in sys.modules:
        return sys.modules["datacomp_train"]
    import open_clip_train
    import open_clip_train.distributed
    import open_clip_train.main

    aliases = {"training": open_clip_train, "training.main": open_clip_train.main,
               "training.distributed": open_clip_train.distributed}
    saved = {name: sys.modules.get(name) for name in aliases}
    sys.modules.update(aliases)
    try:
        path = datacomp_dir() / "train.py"
        spec = importlib.util.spec_from_file_location("datacomp_train", path)
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.parent))  # train.py imports scale_configs from its folder
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(path.parent))
    finally:
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value
    assert isinstance(module, types.ModuleType)
    sys.modules["datacomp_train"] = module
    return module


def train_argv(data_dir: Path, output_dir: Path, exp_name: str, scale: dict, seed: int,
               train_num_samples: int | None = None) -> list[str]:
    """DataComp train.py's ``main_args`` for one CPU process (world size 1), in train.py's order."""
    d = TRAIN_DEFAULTS
    num_checkpoints = scale["num_checkpoints"]
    samples = scale["train_num_samples"] if train_num_samples is None else train_num_samples
    argv = [
        "--save-frequency", f"{d['save_frequency']}",
        "--ddp-static-graph",
        "--local-loss",
        "--gather-with-grad",
        "--grad-checkpointing",
        "--train-data", input_shards(data_dir),
        "--train-num-samples", f"{samples // num_checkpoints}",
        "--warmup", f"{scale['warmup']}",
        "--dataset-type", "webdataset",
        "--precision", f"{d['precision']}",
        "--workers", f"{d['workers']}",
        "--model", f"{scale['model']}",
        "--batch-size", f"{scale['batch_size'] // d['accum_freq']}",
        "--epochs", f"{num_checkpoints}",
        "--lr", f"{scale['learning_rate']}",
        "--logs", f"{output_dir}",
        "--name", f"{exp_name}",
        "--seed", f"{seed}",
        "--accum-freq", f"{d['accum_freq']}",
        "--log-every-n-steps", f"{d['log_every_n_steps']}",
        "--save-most-recent",
        "--resume", f"{d['resume']}",
        "--dataset-resampled",
    ]
    if scale.get("beta2") is not None:
        argv += ["--beta2", f"{scale['beta2']}"]
    return argv


def train(argv: list[str], config_path: Path, seed: int, log_path: Path, timeout: float | None = None) -> None:
    """Run open_clip_train in a child process (same Python); its output goes to ``log_path``."""
    command = [sys.executable, "-m", "datacomp_plugins.apps.minicomp.student", str(config_path), str(seed), *argv]
    env = dict(os.environ)
    # one torch thread beside the one dataloader worker: on 2 cores (and more so on a shared machine) two
    # threads measured 3-8x slower than one; a fixed count also keeps float sums in the same order
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[3]),
                                         *filter(None, [env.get("PYTHONPATH")])])
    from datacomp_plugins.apps.minicomp.openclip import run_child

    run_child(command, env, log_path, timeout, "training")


def _seed_data_pipeline(seed: int) -> None:
    """Make open_clip_train's sample shuffle and the worker's augmentations a function of (seed, epoch)."""
    import random

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
        def __init__(self, bufsize: int, initial: int, epoch) -> None:
            self.bufsize, self.initial, self.epoch = bufsize, initial, epoch

        def run(self, src):
            epoch = self.epoch.get_value()
            torch.manual_seed(seed * 1_000_003 + epoch)  # this worker's random crops for this epoch
            return _shuffle(src, self.bufsize, self.initial, random.Random(seed * 1_000_003 + epoch))

    def shuffle(bufsize: int = 1000, initial: int = 100, **_) -> SeededShuffle:
        return SeededShuffle(bufsize, initial, epochs[-1])

    data.SharedEpoch = RecordedEpoch
    data.wds.shuffle = shuffle


def _child(argv: list[str]) -> int:
    config_path, seed, train_args = Path(argv[0]), int(argv[1]), argv[2:]
    register_model(config_path)
    _seed_data_pipeline(seed)
    from open_clip_train.main import main

    status = main(train_args)
    return 1 if status == -1 else 0


if __name__ == "__main__":
    raise SystemExit(_child(sys.argv[1:]))
