"""What a filter run says about itself: each stage's quantiles and cut-off (pipeline.describe_stage, worked by
hand), the streaming summary's quantiles over every value of a small pool, the run's wall time in its
sidecar, and a cache that lost its uids after scoring named as such."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from conftest import make_pool, stored_scores_pool

from datacomp_plugins.cli import main
from datacomp_plugins.core.cache import ScoreCache
from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.pool import Pool
from datacomp_plugins.pipeline import describe_stage, gather
from datacomp_plugins.provenance import sidecar_path

VALUES = np.array([0.4, np.nan, 0.1, 0.3, 0.2], dtype=np.float32)


def test_quantiles_and_the_lowest_kept_worked_by_hand():
    # finite values 0.1 0.2 0.3 0.4: quartiles by linear interpolation 0.175, 0.25, 0.325
    keep = np.array([True, False, False, True, False])
    assert describe_stage("s", VALUES, None, keep, None) == \
        "s scores min/25%/50%/75%/max 0.1/0.175/0.25/0.325/0.4; cut-off 0.3 (lowest kept)"
    eligible = np.array([True, True, True, True, False])  # 0.2 not eligible: 0.1 0.3 0.4
    assert describe_stage("s", VALUES, eligible, keep, None) == \
        "s scores min/25%/50%/75%/max 0.1/0.2/0.3/0.35/0.4; cut-off 0.3 (lowest kept)"


def test_cut_off_words_for_a_threshold_nothing_kept_and_no_scores():
    assert describe_stage("s", VALUES, None, None, 0.25).endswith("; cut-off 0.25 (--threshold)")
    assert describe_stage("s", VALUES, None, None, None, sampled=True) == \
        "s scores (sampled) min/25%/50%/75%/max 0.1/0.175/0.25/0.325/0.4; cut-off: none (nothing kept)"
    assert describe_stage("s", VALUES, None, np.zeros(5, bool), None).endswith("; cut-off: none (nothing kept)")
    assert describe_stage("s", np.full(3, np.nan, np.float32), None, None, None) == "s: no finite scores"


def test_streaming_summary_quantiles_use_every_value_of_a_small_pool(tmp_path, cache_dir, capsys):
    values = (np.arange(30, dtype=np.float32) * 7 % 30) / 32  # 0 .. 29/32 shuffled, exact in float32
    stored_scores_pool(tmp_path / "pool", [values[:11].tolist(), values[11:].tolist()])
    assert main(["filter", "--no_progress", "--name", "clip_score", "--metadata_dir", str(tmp_path / "pool"),
                 "--fraction", "0.5", "--streaming", "--save_path", str(tmp_path / "o.npy")]) == 0
    # all 30 values 0/32 .. 29/32: quartiles at positions 7.25, 14.5, 21.75 of the sorted list
    q = "/".join(f"{v:.4g}" for v in (0.0, 7.25 / 32, 14.5 / 32, 21.75 / 32, 29 / 32))
    assert f"clip_score scores (sampled) min/25%/50%/75%/max {q};" in capsys.readouterr().out


@pytest.mark.parametrize("streaming", [[], ["--streaming"]])
def test_the_sidecar_records_the_runs_wall_time(tmp_path, cache_dir, streaming):
    make_pool(str(tmp_path / "pool"), [20, 20])
    out = tmp_path / "o.npy"
    started = time.perf_counter()
    assert main(["filter", "--no_progress", "--name", "clip_score", "--metadata_dir", str(tmp_path / "pool"),
                 "--fraction", "0.5", "--save_path", str(out), *streaming]) == 0
    elapsed = time.perf_counter() - started
    with open(sidecar_path(str(out))) as handle:
        recorded = json.load(handle)["wall_seconds"]
    assert 0 < recorded <= elapsed + 0.01  # streaming wrote 0 here: its sidecar was saved before the clock


def test_gather_names_a_cache_that_lost_its_uids(tmp_path):
    make_pool(str(tmp_path / "pool"), [5])
    pool = Pool(str(tmp_path / "pool"))
    cache = ScoreCache(str(tmp_path / "cache"), pool)
    with pytest.raises(PluginError, match="uids missing after scoring"):
        gather(pool, cache, ())
