"""Zero-shot evaluation of a student by DataComp's own ``eval_utils/wds_eval.py`` on ``OUT/evalsets``.

DataComp's files stay untouched: ``eval_utils`` is imported from ``DATACOMP_DIR``. One shim, in our process
only and only while a task is evaluated: clip_benchmark 1.6.2 builds the zero-shot classifier under
``torch.autocast(device)``, which on a CPU yields bfloat16 weights, while ``wds_eval`` then classifies with
``amp=False`` in float32, so the product fails with ``expected ... float != BFloat16``. The shim casts the
classifier to float32 — what it is on a GPU under DataComp — and changes nothing else.
"""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path

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
    import torch

    wds_eval = wds_eval_module(datacomp)
    records = []
    for task in tasks:
        torch.manual_seed(0)
        with float32_classifier():
            metrics = wds_eval.evaluate_webdataset(task, model_name, str(checkpoint), data_root=str(evalsets),
                                                   batch_size=batch_size, num_workers=0)
        metrics = {k: (None if v is None else float(v)) for k, v in metrics.items()}
        metrics["main_metric"] = metrics.get("acc1")
        records.append({"key": task, "dataset": task, "metrics": metrics})
    return records
