"""The student CLIP of a mini DataComp run, trained the way DataComp's ``train.py`` trains.

DataComp's ``train.py`` imports ``training.main`` (open_clip before 2.x) and so cannot run against open_clip
3.x; this module builds the same argument list from a scale config of our own and calls
``open_clip_train.main.main`` with it, in a child process so that a crash or a kill is contained.

The child's checkpoint is a function of the seed alone, also across a kill and a resume (``--resume
latest`` restarts at the last finished epoch): ``openclip.seed_data_pipeline`` keys the sample shuffle and
the worker's random crops on (seed, epoch).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from datacomp_plugins.core.errors import PluginError

STUDENT_MODEL = "minicomp-student"

# The student: a small CLIP at 32 px with open_clip's modified ResNet (stem width 16, one block per stage) as
# its image tower. Until the gated worlds' pilot it was a ViT (2 layers, width 64, patch 4), which learned
# colours completely and shapes not at all (at chance for every subset, the oracle's included), so no filter's
# effect on shapes could show; the ResNet reads shapes from the same 40,960 samples. Chosen from a pilot of the
# controls and no_filter only (docs/MINICOMP.md, "Step 2b"), before any filter under test trained on the world.
STUDENT_CONFIG: dict = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16},
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
    # train.py passes --grad-checkpointing; it changes no bit (test_run.py) and costs time on a CPU (the ResNet
    # image tower ignores it; the text transformer would recompute its activations)
    "grad_checkpointing": False,
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
    from datacomp_plugins.apps.minicomp.openclip import register

    register(str(config_path))


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
    from datacomp_plugins.apps.minicomp.openclip import train_argv as openclip_argv

    d = TRAIN_DEFAULTS
    num_checkpoints = scale["num_checkpoints"]
    samples = scale["train_num_samples"] if train_num_samples is None else train_num_samples
    return openclip_argv(train_data=input_shards(data_dir), num_samples=samples // num_checkpoints,
                         epochs=num_checkpoints, batch_size=scale["batch_size"], lr=scale["learning_rate"],
                         warmup=scale["warmup"], model=scale["model"], logs=str(output_dir), name=exp_name,
                         seed=seed, precision=d["precision"], workers=d["workers"], accum_freq=d["accum_freq"],
                         log_every=d["log_every_n_steps"], save_frequency=d["save_frequency"], resampled=True,
                         resume=d["resume"], save_most_recent=True, beta2=scale.get("beta2"),
                         grad_checkpointing=d["grad_checkpointing"])


def train(argv: list[str], config_path: Path, seed: int, log_path: Path, timeout: float | None = None) -> None:
    """Run open_clip_train in a child process (same Python); its output goes to ``log_path``."""
    from datacomp_plugins.apps.minicomp import openclip

    openclip.train(argv, [str(config_path)], seed, log_path, timeout)
