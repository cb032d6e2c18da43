"""NormSim_2-D attacked at its edges: drop schedules with nothing to drop or one iteration, against hand-worked
schedules and a float64 brute force of the single pass.
"""

from __future__ import annotations

import numpy as np
import pytest
from negcliploss_brute import as_uid, two_stage

from datacomp_plugins.cli import main


def test_one_normsim_d_iteration_drops_the_lowest_at_once(tmp_path, cache_dir):
    """--normsim_d_iters 1 (the smallest allowed): one pass, Σ over all survivors, keep the top share."""
    hexes, img, clip, _ = two_stage(tmp_path)
    out = tmp_path / "out.npy"
    assert main(["filter", "--no_progress", "--name", "normsim_d", "--metadata_dir", str(tmp_path / "pool"),
                 "--quality_score", "clip_score", "--fraction", "0.5", "--normsim_fraction", "0.25",
                 "--normsim_d_iters", "1", "--save_path", str(out)]) == 0
    survivors = sorted(range(40), key=lambda i: (-clip[i], int(hexes[i], 16)))[:20]
    x = img[survivors]
    sigma = x.T @ x
    scores = ((x @ sigma) * x).sum(1)
    kept = sorted(range(20), key=lambda i: (-scores[i], int(hexes[survivors[i]], 16)))[:10]
    assert np.load(out).tolist() == sorted(as_uid(hexes[survivors[i]]) for i in kept)


@pytest.mark.parametrize("start,target,iterations,want", [
    (5, 5, 3, []), (5, 6, 3, []), (5, 2, 1, [3]), (5, 2, 3, [1, 1, 1]), (7, 2, 2, [3, 2]), (4, 1, 9, [1, 1, 1])])
def test_drop_schedule_edges(start, target, iterations, want):
    from datacomp_plugins.scores.dynamic import drop_schedule

    assert drop_schedule(start, target, iterations) == want
