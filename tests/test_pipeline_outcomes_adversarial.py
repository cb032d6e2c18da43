"""Outcomes that were silent: samples without an external score, a threshold that keeps nothing (or all).
The summary now counts and shows them, and keeping nothing is an error unless --allow_empty."""

from __future__ import annotations

import math
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import expect_exit_2, make_pool, random_hex_uids

from datacomp_plugins.cli import build_parser, main


def _clip_scores(pool) -> np.ndarray:
    """The pool's CLIP score column read straight from the parquet files (float64), in shard order."""
    return np.concatenate([pq.read_table(p, columns=["clip_l14_similarity_score"]).column(0).to_numpy()
                           for p in sorted(pool.glob("*.parquet"))]).astype(np.float64)


def _quantiles(line: str) -> list[float]:
    match = re.search(r"min/25%/50%/75%/max ([^;]+);", line)
    assert match, line
    return [float(v) for v in match.group(1).split("/")]


def _filter(tmp_path, *extra):
    return ["filter", "--no_progress", "--metadata_dir", str(tmp_path / "pool"), "--save_path",
            str(tmp_path / "out.npy"), *extra]


# ---------------------------------------------------------------------------------- missing external scores

def _external(tmp_path, missing: int) -> str:
    hexes = random_hex_uids(30, seed=0)  # make_pool's uids
    scored = hexes[missing:]
    pq.write_table(pa.table({"uid": scored, "s": np.arange(len(scored), dtype=np.float64)}), tmp_path / "ext.parquet")
    return str(tmp_path / "ext.parquet")


def test_missing_external_scores_are_counted_and_dropped(tmp_path, cache_dir, capsys):
    make_pool(str(tmp_path / "pool"), [30])
    ext = _external(tmp_path, 7)
    assert main(_filter(tmp_path, "--name", "clip_score", "--fraction", "1.0", "--external_scores", ext,
                        "--external_column", "s", "--external_fraction", "1.0")) == 0
    out = capsys.readouterr().out
    assert f"{ext}: no score for 7 pool samples (dropped)" in out
    # the 23 scored samples are the whole selection (fraction 1 of each stage)
    hexes = random_hex_uids(30, seed=0)
    assert np.load(tmp_path / "out.npy").tolist() == sorted(divmod(int(h, 16), 2**64) for h in hexes[7:])


def test_missing_score_error_refuses_with_the_first_missing_uid(tmp_path, cache_dir, capsys):
    make_pool(str(tmp_path / "pool"), [30])
    ext = _external(tmp_path, 4)
    hexes = random_hex_uids(30, seed=0)
    expect_exit_2(capsys, _filter(tmp_path, "--name", "clip_score", "--fraction", "0.5", "--external_scores", ext,
                                  "--external_column", "s", "--external_fraction", "0.5", "--missing_score", "error"),
                  tmp_path / "out.npy", f"--external_scores {ext}: no score for 4 of 30 pool samples",
                  f"first: uid {hexes[0]}", "--missing_score")


def test_missing_score_default_is_in_help():
    parser = build_parser()
    help_text = parser._subparsers._group_actions[0].choices["filter"].format_help()
    flat = " ".join(help_text.split())
    entry = flat.rsplit("--missing_score {drop,error}", 1)[1]  # the option's own entry, after the usage line
    assert "(default: drop)" in entry.split("--allow_empty")[0]
    assert "--allow_empty" in flat


# ------------------------------------------------------------------------------------ thresholds and summaries

@pytest.mark.parametrize("extra", [["--threshold", "5"], ["--threshold", "0.99"]])
def test_threshold_keeping_nothing_is_an_error_with_quantiles(tmp_path, cache_dir, capsys, extra):
    make_pool(str(tmp_path / "pool"), [25, 15])
    err = expect_exit_2(capsys, _filter(tmp_path, "--name", "clip_score", *extra), tmp_path / "out.npy",
                        "no sample of the 40 kept", f"cut-off {float(extra[1]):.6g} (--threshold)", "--allow_empty")
    scores = _clip_scores(tmp_path / "pool")
    want = np.quantile(scores, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(_quantiles(err), want, rtol=1e-3)


def test_allow_empty_writes_an_empty_uid_file(tmp_path, cache_dir, capsys):
    make_pool(str(tmp_path / "pool"), [20])
    assert main(_filter(tmp_path, "--name", "clip_score", "--threshold", "5", "--allow_empty")) == 0
    saved = np.load(tmp_path / "out.npy")
    assert saved.dtype == np.dtype("u8,u8") and len(saved) == 0
    assert "kept 0 of 20" in capsys.readouterr().out


def test_normsim_threshold_keeping_nothing_is_an_error(tmp_path, cache_dir, capsys):
    make_pool(str(tmp_path / "pool"), [20])
    np.save(tmp_path / "t.npy", np.eye(2, 768, dtype=np.float32))
    expect_exit_2(capsys, _filter(tmp_path, "--name", "normsiminf", "--fraction", "0.5", "--normsim_threshold", "2",
                                  "--target", str(tmp_path / "t.npy")), tmp_path / "out.npy",
                  "no sample of the 20 kept", "normsiminf scores", "cut-off 2 (--relevance_threshold)")


@pytest.mark.parametrize("name,extra", [
    ("clip_score", ["--fraction", "0.3"]),
    ("clip_score", ["--threshold", "-5"]),  # keeps everything: the quantiles show the cut-off is below all
    ("negcliploss", ["--fraction", "0.5", "--negcliploss_batch_size", "8"]),
    ("clip_score", ["--fraction", "0.3", "--streaming"]),
])
def test_every_summary_prints_quantiles_and_cut_off(tmp_path, cache_dir, capsys, name, extra):
    make_pool(str(tmp_path / "pool"), [30, 20])
    assert main(_filter(tmp_path, "--name", name, *extra)) == 0
    line = capsys.readouterr().out.splitlines()[0]
    quantiles = _quantiles(line)
    assert "cut-off" in line
    if name == "clip_score":
        scores = _clip_scores(tmp_path / "pool")
        if "--streaming" in extra:  # from a strided sample: bounded by the true range
            assert scores.min() - 1e-3 <= quantiles[0] <= quantiles[-1] <= scores.max() + 1e-3
        else:
            np.testing.assert_allclose(quantiles, np.quantile(scores, [0, 0.25, 0.5, 0.75, 1]), rtol=1e-3)
        if "--threshold" in extra:
            assert "cut-off -5 (--threshold)" in line and quantiles[0] > -5 and "kept 50 of 50" in line
        else:  # DataComp's rule: the cut-off is the (floor(N*F)+1)-th best score
            cutoff = np.sort(scores)[::-1][math.floor(50 * 0.3)]
            assert f"cut-off {cutoff:.6g}" in line
