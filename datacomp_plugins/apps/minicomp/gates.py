"""The build's gates: properties of a world, measured when it is built, before any student trains on it.

A world is an instrument for the paper's claims only if the mechanism the paper describes exists in it, so
every build measures (``MANIFEST.json["gates"]``, a table at the end of ``minicomp build``; ``--strict`` exits
non-zero when one fails):

- ``teacher_accuracy``: each teacher reads every task (zero-shot top-1); a teacher that cannot see an
  attribute cannot judge a caption's quality on it;
- ``clipscore_keeps``: each hub component (generic captions, crowded images, text in images) is at least
  half as common in CLIPScore's top 30% (L/14) as in the pool: the hubs pass the score the paper corrects;
- ``negcliploss_removes``: negCLIPLoss, at the L/14 teacher's own temperature and batch size, keeps at most
  half as many of each hub component as CLIPScore keeps: its batch term removes them;
- ``normsim_work``: off-task content is over-represented in CLIPScore's top 30%, so a target has work to do;
- ``corpus_disjoint``: no image of the teachers' corpus is in the pool, the eval sets or the targets' splits.

The thresholds are fixed here (the quick world's are weaker: its teachers are deliberately small) and named
in docs/MINICOMP.md. They are about the world; no student result enters them.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

HUBS = ("generic_caption", "crowded_image", "text_in_image")
FRACTION = 0.3
NUM_BATCHES = 10

# (default world, quick world)
THRESHOLDS: dict[str, tuple[float, float]] = {
    "teacher_accuracy_l14": (0.80, 0.35),
    "teacher_accuracy_b32": (0.70, 0.30),
    "clipscore_keeps": (0.5, 0.5),
    "negcliploss_removes": (0.5, 0.7),
    "normsim_work": (1.0, 1.0),
    "corpus_disjoint": (0, 0),
}


@dataclass(frozen=True)
class Gate:
    """One measured property: ``value`` compared with ``threshold`` by ``op`` (``>=``, ``<=``, ``>``, ``==``)."""

    name: str
    value: float
    op: str
    threshold: float
    detail: str = ""

    @property
    def passed(self) -> bool:
        v, t = self.value, self.threshold
        return {">=": v >= t, "<=": v <= t, ">": v > t, "==": v == t}[self.op]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": round(float(self.value), 4), "op": self.op, "threshold": self.threshold,
                "passed": bool(self.passed), "detail": self.detail}


def threshold(name: str, quick: bool) -> float:
    return THRESHOLDS[name][1 if quick else 0]


def accuracy_gates(accuracy: dict[str, dict[str, float]], quick: bool) -> list[Gate]:
    gates = []
    for arch in sorted(accuracy):
        limit = threshold(f"teacher_accuracy_{arch}", quick)
        for task, value in sorted(accuracy[arch].items()):
            gates.append(Gate(f"teacher_accuracy.{arch}.{task}", value, ">=", limit, "zero-shot top-1"))
    return gates


def selection_gates(components: np.ndarray, clip_kept: np.ndarray, neg_kept: np.ndarray, quick: bool) -> list[Gate]:
    """The hub and NormSim gates from the pool's components (truth) and two boolean masks of kept samples."""
    gates = []
    n_clip = max(1, int(clip_kept.sum()))
    present = set(components.tolist())
    for hub in HUBS:
        if hub not in present:
            continue
        is_hub = components == hub
        pool_share = is_hub.mean()
        clip_count, neg_count = int((is_hub & clip_kept).sum()), int((is_hub & neg_kept).sum())
        clip_share = clip_count / n_clip
        gates.append(Gate(f"clipscore_keeps.{hub}", clip_share / pool_share, ">=", threshold("clipscore_keeps", quick),
                          f"{100 * clip_share:.1f}% of CLIPScore's top 30% against {100 * pool_share:.1f}% of "
                          f"the pool ({clip_count} of {int(is_hub.sum())})"))
        ratio = neg_count / clip_count if clip_count else (0.0 if neg_count == 0 else float("inf"))
        gates.append(Gate(f"negcliploss_removes.{hub}", ratio, "<=", threshold("negcliploss_removes", quick),
                          f"negCLIPLoss keeps {neg_count}, CLIPScore {clip_count}"))
    if "off_task" in present:
        off = components == "off_task"
        share = int((off & clip_kept).sum()) / n_clip
        gates.append(Gate("normsim_work.off_task", share / off.mean(), ">", threshold("normsim_work", quick),
                          f"{100 * share:.1f}% of CLIPScore's top 30% against {100 * off.mean():.1f}% of the pool"))
    return gates


def _tar_image_hashes(path: str) -> set[str]:
    out = set()
    with tarfile.open(path) as tar:
        for member in tar:
            if member.name.endswith((".jpg", ".png", ".webp")):
                out.add(hashlib.sha256(tar.extractfile(member).read()).hexdigest())
    return out


def _tars(folder: str) -> list[str]:
    found = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, n) for n in sorted(names) if n.endswith(".tar")]
    return found


def disjoint_gate(out: str, quick: bool) -> Gate:
    """Images (sha256 of the bytes) the teachers' corpus shares with the pool, the eval sets or their train
    splits (the targets); must be none."""
    corpus: set[str] = set()
    for path in _tars(os.path.join(out, "teacher", "corpus")):
        corpus |= _tar_image_hashes(path)
    import pyarrow.parquet as pq

    others: set[str] = set()
    for path in sorted(os.listdir(os.path.join(out, "metadata"))):  # the pool's image hashes are in its metadata
        if path.endswith(".parquet"):
            others |= set(pq.read_table(os.path.join(out, "metadata", path), columns=["sha256"])["sha256"].to_pylist())
    for path in _tars(os.path.join(out, "evalsets")):
        others |= _tar_image_hashes(path)
    shared = len(corpus & others)
    return Gate("corpus_disjoint", shared, "==", threshold("corpus_disjoint", quick),
                f"{len(corpus)} corpus images against {len(others)} pool, eval and target images")


def kept_masks(out: str, uids_hex: np.ndarray, temperature: float, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Which pool samples (in ``uids_hex`` order) CLIPScore's and negCLIPLoss's top 30% keep (L/14), computed
    by this package's own filter, negCLIPLoss at the given teacher temperature and batch size."""
    from datacomp_plugins.config import FilterConfig
    from datacomp_plugins.core.uids import load_uid_file, to_hex
    from datacomp_plugins.pipeline import run_filter

    masks = []
    with tempfile.TemporaryDirectory(prefix=".gates-", dir=out) as scratch:
        for name, extra in (("clip_score", {}), ("negcliploss", {"temperature": temperature,
                                                                 "negcliploss_batch_size": batch_size,
                                                                 "num_batches": NUM_BATCHES})):
            save = os.path.join(scratch, f"{name}.npy")
            run_filter(FilterConfig(name=name, metadata_dir=os.path.join(out, "metadata"), save_path=save,
                                    arch="l14", fraction=FRACTION, cache_dir=os.path.join(scratch, "cache"),
                                    progress=False, **extra))
            kept = {u.decode() if isinstance(u, bytes) else str(u) for u in to_hex(np.asarray(load_uid_file(save)))}
            masks.append(np.fromiter((u in kept for u in uids_hex), bool, len(uids_hex)))
    return masks[0], masks[1]


def table(gates: list[dict[str, Any]]) -> str:
    """The gates as a plain-text table (the end of ``minicomp build``)."""
    rows = [("gate", "value", "threshold", "result", "detail")]
    rows += [(g["name"], f"{g['value']:.3f}" if isinstance(g["value"], float) else str(g["value"]),
              f"{g['op']} {g['threshold']}", "pass" if g["passed"] else "FAIL", g["detail"]) for g in gates]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
    return "\n".join(lines)
