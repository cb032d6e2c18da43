"""Comparing uid files: sizes, pairwise overlap and, with the pool, what each keeps that the other drops.

Two filters of the same size can keep very different samples; the overlap says how different, and the score
distributions of A∖B and B∖A say in which direction (e.g. negCLIPLoss drops generic captions CLIPScore keeps).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from datacomp_plugins.select import uidtools
from datacomp_plugins.select.masks import first_occurrence, isin


def load_all(paths: Sequence[str], warn: Callable[[str], None]) -> list[np.ndarray]:
    """Every file read (and checked) before any work; unsorted files are fixed with a warning."""
    from datacomp_plugins.core.uids import read_uid_file

    stored = [read_uid_file(path) for path in paths]
    return [uidtools.ensure_sorted(path, uids, warn) for path, uids in zip(paths, stored, strict=True)]


def compare(paths: Sequence[str], arrays: Sequence[np.ndarray], pool_scores=None) -> dict[str, Any]:
    """Sizes, pairwise intersection and Jaccard; with ``pool_scores`` (a PoolScores) the score quantiles
    of A∖B and B∖A over the pool's samples (first occurrence of each uid)."""
    from datacomp_plugins.apps.pool_scores import quantiles

    result: dict[str, Any] = {"files": [{"path": p, "count": len(a)} for p, a in zip(paths, arrays, strict=True)],
                              "pairs": []}
    pool = None
    if pool_scores is not None:
        uids, columns, _ = pool_scores.gather()
        first = first_occurrence(uids)
        members = [isin(uids, np.asarray(a)) & first for a in arrays]
        pool = {"metadata_dir": pool_scores.settings.metadata_dir, "samples": int(first.sum()),
                "scores": list(pool_scores.names)}
        for entry, inside in zip(result["files"], members, strict=True):
            entry["in_pool"] = int(inside.sum())
        result["pool"] = pool
    for i in range(len(arrays)):
        for j in range(i + 1, len(arrays)):
            a, b = arrays[i], arrays[j]
            both = len(uidtools.intersect([a, b]))
            either = len(a) + len(b) - both
            pair: dict[str, Any] = {"a": paths[i], "b": paths[j], "intersection": both, "union": either,
                                    "a_only": len(a) - both, "b_only": len(b) - both,
                                    "jaccard": both / either if either else 1.0}
            if pool is not None:
                a_only = members[i] & ~members[j]
                b_only = members[j] & ~members[i]
                pair["a_only_scores"] = {n: quantiles(columns[n][a_only]) for n in pool["scores"]}
                pair["b_only_scores"] = {n: quantiles(columns[n][b_only]) for n in pool["scores"]}
            result["pairs"].append(pair)
    return result


def format_text(result: dict[str, Any]) -> list[str]:
    """The comparison as aligned text lines."""
    lines = []
    pool = result.get("pool")
    for entry in result["files"]:
        extra = f" ({entry['in_pool']:,} in the pool)" if "in_pool" in entry else ""
        lines.append(f"{entry['path']}: {entry['count']:,} uids{extra}")
    if pool:
        lines.append(f"pool: {pool['metadata_dir']} ({pool['samples']:,} samples)")
    for pair in result["pairs"]:
        lines.append(f"{pair['a']} vs {pair['b']}: intersection {pair['intersection']:,}, union "
                     f"{pair['union']:,}, Jaccard {pair['jaccard']:.4f}; only A {pair['a_only']:,}, "
                     f"only B {pair['b_only']:,}")
        for side, label in (("a_only_scores", "A∖B"), ("b_only_scores", "B∖A")):
            for name, stats in pair.get(side, {}).items():
                if "mean" not in stats:
                    lines.append(f"  {label} {name}: {stats['count']:,} samples, none scorable")
                    continue
                qs = " ".join(f"{k}={v:.4f}" for k, v in stats.items() if k.startswith("q"))
                lines.append(f"  {label} {name}: n={stats['count']:,} mean={stats['mean']:.4f} {qs}")
    return lines
