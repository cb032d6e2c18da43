"""``filter --streaming`` (pipeline._run_streaming): the same uid file as in memory, and DataComp's clip_score
rule worked out by brute force: the (floor(N*F)+1)-th best stored value is the cut-off, every value >= it kept.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import make_pool, stored_scores_pool

from datacomp_plugins.cli import main


@pytest.mark.parametrize("selection", [["--fraction", "0.3"], ["--threshold", "0.3"]])
def test_streaming_flag_writes_the_same_file(tmp_path, cache_dir, selection):
    make_pool(str(tmp_path / "pool"), [60, 45, 80])
    files = []
    for extra in ([], ["--streaming"]):
        out = tmp_path / f"out{len(extra)}.npy"
        assert main(["filter", "--no_progress", "--name", "clip_score", "--metadata_dir", str(tmp_path / "pool"),
                     *selection, "--save_path", str(out), *extra]) == 0
        files.append(out.read_bytes())
    assert files[0] == files[1]


def datacomp_rule(hexes: list[str], values: np.ndarray, fraction: float) -> list[tuple[int, int]]:
    """DataComp's apply_filter for clip_score, by sorting: n = floor(N*F); the cut-off is the (n+1)-th highest
    value; keep every value >= it (n + 1 samples plus ties). Past the end: every sample."""
    n = math.floor(len(values) * fraction)
    ranked = sorted(values.tolist(), reverse=True)
    keep = [True] * len(values) if n + 1 > len(ranked) else [v >= ranked[n] for v in values.tolist()]
    return sorted(divmod(int(h, 16), 2**64) for h, k in zip(hexes, keep, strict=True) if k)


@pytest.mark.parametrize("fraction", ["0.1", "0.25", "0.5", "0.9", "1"])
def test_streaming_clip_score_fraction_is_datacomps_rule(tmp_path, cache_dir, fraction):
    """Distinct values in shards of different sizes: exactly floor(N*F)+1 samples, the best ones."""
    rng = np.random.default_rng(1)
    values = rng.permutation(np.arange(40, dtype=np.float32) / 64 - 0.3)  # exact in float32, all distinct
    hexes, stored = stored_scores_pool(tmp_path / "pool", [values[:7].tolist(), values[7:30].tolist(),
                                                           values[30:].tolist()])
    out = tmp_path / "out.npy"
    assert main(["filter", "--no_progress", "--name", "clip_score", "--metadata_dir", str(tmp_path / "pool"),
                 "--fraction", fraction, "--streaming", "--save_path", str(out)]) == 0
    want = datacomp_rule(hexes, stored, float(fraction))
    assert len(want) == min(40, math.floor(40 * float(fraction)) + 1)
    assert np.load(out).tolist() == want


def test_streaming_clip_score_keeps_every_tie_at_the_cut_off(tmp_path, cache_dir):
    """Worked by hand: 10 samples, F = 0.3 -> n = 3; sorted values 0.9 0.8 0.5 0.5 0.5 0.2 ...; the 4th best is
    0.5, so the three samples at 0.5 are all kept with the two above them (5 samples, not 4)."""
    hexes, stored = stored_scores_pool(tmp_path / "pool", [[0.5, 0.1, 0.9], [0.2, 0.5, 0.0, 0.8], [0.5, -0.5, 0.1]])
    out = tmp_path / "out.npy"
    assert main(["filter", "--no_progress", "--name", "clip_score", "--metadata_dir", str(tmp_path / "pool"),
                 "--fraction", "0.3", "--streaming", "--save_path", str(out)]) == 0
    kept_rows = [0, 2, 4, 6, 7]
    assert np.load(out).tolist() == sorted(divmod(int(hexes[i], 16), 2**64) for i in kept_rows)
    assert datacomp_rule(hexes, stored, 0.3) == np.load(out).tolist()
