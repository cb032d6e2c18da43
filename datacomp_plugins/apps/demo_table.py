"""The demo's table: run several baselines on the example pool and count what each kept of every planted kind.

(``uids compare``, in apps/subsets.py, is the other comparison: of any uid files, without labels.)

This is the demo and the baseline comparison CI runs: on the toy pool the labels are known, so the table
shows *why* a method differs (negCLIPLoss drops generic captions that CLIPScore keeps; NormSim with the
target keeps the target-relevant concepts), not just that it does.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from datacomp_plugins.apps.toy import KINDS, write_toy_pool
from datacomp_plugins.config import FilterConfig
from datacomp_plugins.core.uids import parse_hex
from datacomp_plugins.pipeline import run_filter


@dataclass(frozen=True)
class Entry:
    """One row of the comparison: a label and the filter settings (beyond pool, output and cache)."""

    label: str
    settings: dict


def default_entries(out: str, fraction: float = 0.3, normsim_fraction: float = 0.2) -> list[Entry]:
    """The baselines the demo compares: quality alone at ``fraction``, then quality ∩ NormSim."""
    target = os.path.join(out, "targets", "target_l14.npy")
    stage = {"fraction": fraction, "normsim_fraction": normsim_fraction}
    both = f"{fraction:.0%} -> {normsim_fraction:.0%}"
    return [
        Entry(f"clip_score {fraction:.0%}", {"name": "clip_score", "fraction": fraction}),
        Entry(f"negcliploss {fraction:.0%}", {"name": "negcliploss", "fraction": fraction}),
        Entry(f"normsiminf {both}", {"name": "normsiminf", "target": target, **stage}),
        Entry(f"normsim2 {both}", {"name": "normsim2", "target": target, **stage}),
        Entry(f"normsim_d {both}", {"name": "normsim_d", **stage}),
    ]


@dataclass
class Row:
    label: str
    kept: int
    by_kind: dict[str, int]
    target_relevant: int
    seconds: float


def kept_by_kind(out: str, entries: list[Entry], rebuild: bool = False) -> tuple[list[Row], dict[str, int], int]:
    """Build the toy pool under ``out`` (unless present), run every entry, count kept samples per label.

    Each run gets a fresh score cache so the times are real computation times.
    """
    metadata = os.path.join(out, "metadata")
    if rebuild or not os.path.isdir(metadata):
        print(write_toy_pool(out, overwrite=True))
    labels = pq.read_table(os.path.join(out, "labels.parquet"))
    uids = parse_hex(labels.column("uid")).view("V16")
    kinds = labels.column("component").to_numpy(zero_copy_only=False)
    relevant = labels.column("target_relevant").to_numpy()
    totals = {kind: int((kinds == kind).sum()) for kind in KINDS}
    rows = []
    for entry in entries:
        with tempfile.TemporaryDirectory() as cache:
            save = os.path.join(out, f"{entry.label.split()[0]}.npy")
            summary = run_filter(FilterConfig(metadata_dir=metadata, save_path=save, cache_dir=cache,
                                              progress=False, **entry.settings))
        kept = np.isin(uids, np.load(save).view("V16"))
        rows.append(Row(entry.label, summary.kept, {k: int((kept & (kinds == k)).sum()) for k in KINDS},
                        int((kept & relevant).sum()), summary.seconds))
    return rows, totals, int(relevant.sum())


def render(rows: list[Row], totals: dict[str, int], relevant_total: int) -> str:
    """A Markdown table: per baseline, kept samples of each planted kind and the time taken."""
    head = ["baseline", "kept", *[f"{k} (of {totals[k]})" for k in KINDS],
            f"target-relevant (of {relevant_total})", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.label, str(row.kept), *[str(row.by_kind[k]) for k in KINDS], str(row.target_relevant),
                 f"{row.seconds:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
