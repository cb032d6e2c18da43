"""Zero-shot evaluation of a student by DataComp's own ``eval_utils/wds_eval.py`` on ``OUT/evalsets``.

DataComp's files stay untouched: ``eval_utils`` is imported from ``DATACOMP_DIR``. One shim, in our process
only and only while a task is evaluated: clip_benchmark 1.6.2 builds the zero-shot classifier under
``torch.autocast(device)``, which on a CPU yields bfloat16 weights, while ``wds_eval`` then classifies with
``amp=False`` in float32, so the product fails with ``expected ... float != BFloat16``. The shim casts the
classifier to float32 — what it is on a GPU under DataComp — and changes nothing else.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path

import numpy as np

from datacomp_plugins.core.errors import PluginError

_TASK_DIR = re.compile(r"^wds_(.+)_test$")


def list_tasks(evalsets: Path) -> list[str]:
    """Task names of ``evalsets/wds_<task>_test/`` folders, sorted."""
    if not evalsets.is_dir():
        raise PluginError(f"{evalsets}: no eval sets folder; expected wds_<task>_test/ folders from minicomp build")
    tasks = sorted(m.group(1) for p in evalsets.iterdir() if p.is_dir() and (m := _TASK_DIR.match(p.name)))
    if not tasks:
        raise PluginError(f"{evalsets}: no wds_<task>_test/ folder")
    return tasks


def wds_eval_module(datacomp: Path):
    """DataComp's ``eval_utils.wds_eval``, imported from the checkout."""
    if str(datacomp) not in sys.path:
        sys.path.insert(0, str(datacomp))
    from eval_utils import wds_eval

    return wds_eval


@contextlib.contextmanager
def float32_classifier():
    """While active, clip_benchmark's zero-shot classifier comes back in float32 (see the module docstring)."""
    from clip_benchmark.metrics import zeroshot_classification as zsc

    original = zsc.zero_shot_classifier

    def classifier(*args, **kwargs):
        return original(*args, **kwargs).float()

    zsc.zero_shot_classifier = classifier
    try:
        yield
    finally:
        zsc.zero_shot_classifier = original


def evaluate_checkpoint(datacomp: Path, model_name: str, checkpoint: Path, evalsets: Path,
                        tasks: list[str], batch_size: int = 256) -> list[dict]:
    """One DataComp ``eval_results.jsonl`` record per task: ``key``, ``dataset``, ``metrics`` with ``main_metric``.

    The metrics are ``wds_eval.evaluate_webdataset``'s; ``main_metric`` is ``acc1``, as DataComp's
    ``evaluate.py`` sets it for a classification task without another ``main_metric`` in tasklist.yml.
    """
    return evaluate_per_image(datacomp, model_name, checkpoint, evalsets, tasks, batch_size)[0]


def evaluate_per_image(datacomp: Path, model_name: str, checkpoint: Path, evalsets: Path, tasks: list[str],
                       batch_size: int = 256) -> tuple[list[dict], dict[str, np.ndarray]]:
    """The records of :func:`evaluate_checkpoint` and, per task, each image's top-1 correctness (bool, in the
    eval set's order: DataComp's loader reads the test tars in order, unshuffled).

    ``evaluate_webdataset(..., return_preds=True, return_topk=1)`` hands back the top-1 predictions and the
    labels beside the same metrics, so the paired statistics need no second pass over the images.
    """
    import torch

    wds_eval = wds_eval_module(datacomp)
    records = []
    correct = {}
    for task in tasks:
        torch.manual_seed(0)
        with float32_classifier():
            metrics, top1, target = wds_eval.evaluate_webdataset(
                task, model_name, str(checkpoint), data_root=str(evalsets), batch_size=batch_size, num_workers=0,
                return_preds=True, return_topk=1)
        correct[task] = (np.asarray(top1)[:, 0] == np.asarray(target)).astype(bool)
        metrics = {k: (None if v is None else float(v)) for k, v in metrics.items()}
        metrics["main_metric"] = metrics.get("acc1")
        records.append({"key": task, "dataset": task, "metrics": metrics})
    return records, correct


PER_IMAGE_DIR = "eval_per_image"  # beside eval_results.jsonl: <task>.npy per task


def save_per_image(folder: Path, correct: dict[str, np.ndarray]) -> None:
    """``folder/<task>.npy`` per task (bool, one entry per eval image): written into a temporary folder that is
    renamed when every task is in it, so the folder is either complete or absent."""
    import shutil

    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for task, values in sorted(correct.items()):
        with open(tmp / f"{task}.npy", "wb") as handle:
            np.save(handle, np.ascontiguousarray(values, dtype=bool), allow_pickle=False)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def load_per_image(folder: Path, records: dict[str, dict]) -> dict[str, np.ndarray] | None:
    """The per-image correctness beside one student's results, checked against its ``acc1`` per task.

    None when the folder is missing (a run from before per-image results were kept); a file that is missing,
    not a 1-D bool array, or whose mean is not the recorded ``acc1`` (one float tie of the top-1 may flip) is
    an error naming it.
    """
    if not folder.is_dir():
        return None
    correct = {}
    for task, record in sorted(records.items()):
        path = folder / f"{task}.npy"
        try:
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise PluginError(f"{path}: cannot read the per-image results of task {task} ({exc})") from None
        if values.dtype != bool or values.ndim != 1 or len(values) == 0:
            raise PluginError(f"{path}: expected a non-empty 1-D bool array, got {values.dtype} {values.shape}")
        acc1 = record.get("metrics", {}).get("acc1")
        if isinstance(acc1, (int, float)) and abs(float(values.mean()) - acc1) > 1.0 / len(values) + 1e-9:
            raise PluginError(f"{path}: {values.mean():.4f} of the images correct, but acc1 = {acc1:.4f} in "
                              "eval_results.jsonl; the two come from different evaluations")
        correct[task] = values
    return correct
