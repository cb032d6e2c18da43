"""Inputs that were read wrongly or ended in a traceback: uid columns, score columns, targets, and an
output path that is one of the run's inputs. Each case: exit status 2, a message naming the file/column/row
and what was expected, no traceback, no output left behind (or, for a documented policy, the policy checked
against an independent computation)."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import expect_exit_2, make_pool, random_hex_uids, unit_rows, write_shard

from datacomp_plugins.cli import main

GOOD = random_hex_uids(4, seed=3)


BAD_UID_COLUMNS = {
    "int": ([7, 8, 9, 10], "int64"),
    "float": ([1.5, 2.5, 3.5, 4.5], "double"),
    "list": ([[1], [2], [3], [4]], "list<"),
    "struct": ([{"a": 1}, {"a": 2}, {"a": 3}, {"a": 4}], "struct<"),
    "binary": ([h.encode() for h in GOOD], "binary"),
    "short": ([GOOD[0], GOOD[1][:31], GOOD[2], GOOD[3]], "row 1"),
    "long": ([GOOD[0], GOOD[1], GOOD[2] + "0", GOOD[3]], "row 2"),
    "dropped zeros": ([GOOD[0], "1f", GOOD[2], GOOD[3]], "row 1"),
    "non-hex": ([GOOD[0], GOOD[1], GOOD[2], "g" * 32], "row 3"),
    "null": ([GOOD[0], None, GOOD[2], GOOD[3]], "row 1"),
}


def _pool_with_clip_column(tmp_path, values) -> str:
    rng = np.random.default_rng(1)
    n = len(values)
    write_shard(str(tmp_path / "pool"), "s", random_hex_uids(n, seed=4),
                {"l14_img": unit_rows(rng, n, 768), "l14_txt": unit_rows(rng, n, 768)},
                extra_columns={"clip_l14_similarity_score": values})
    return str(tmp_path / "pool")


def _target(tmp_path, array, name="target.npy"):
    path = tmp_path / name
    np.save(path, array)
    return path


def _normsim(tmp_path, target, out):
    return ["filter", "--no_progress", "--name", "normsiminf", "--metadata_dir", str(tmp_path / "pool"),
            "--fraction", "1.0", "--normsim_fraction", "0.25", "--target", str(target), "--save_path", str(out)]


def _inputs(tmp_path):
    written = make_pool(str(tmp_path / "pool"), [10])
    hexes = written["00000000"]["uids"]
    given = tmp_path / "given.npy"
    np.save(given, np.array(sorted(divmod(int(h, 16), 2**64) for h in hexes[:6]), dtype="u8,u8"))
    pq.write_table(pa.table({"uid": hexes, "s": np.arange(10.0)}), tmp_path / "ext.parquet")
    target = _target(tmp_path, unit_rows(np.random.default_rng(7), 3, 768))
    return given, tmp_path / "ext.parquet", target


@pytest.mark.parametrize("case", sorted(BAD_UID_COLUMNS))
def test_uid_column_that_is_not_32_hex_characters_is_refused(tmp_path, cache_dir, capsys, case):
    values, fragment = BAD_UID_COLUMNS[case]
    rng = np.random.default_rng(0)
    write_shard(str(tmp_path / "pool"), "s", values, {"l14_img": unit_rows(rng, 4, 768),
                                                      "l14_txt": unit_rows(rng, 4, 768)})
    out = tmp_path / "out.npy"
    expect_exit_2(capsys, ["filter", "--no_progress", "--name", "negcliploss", "--metadata_dir",
                           str(tmp_path / "pool"), "--fraction", "0.5", "--save_path", str(out)],
                  out, str(tmp_path / "pool" / "s.parquet"), "column 'uid'", fragment,
                  "32-character hex string")


@pytest.mark.parametrize("name", ["clip_score", "normsim2"])
def test_non_numeric_clip_score_column_is_refused(tmp_path, cache_dir, capsys, name):
    pool = _pool_with_clip_column(tmp_path, ["0.3", "high", "0.1", "0.2"])
    out = tmp_path / "out.npy"
    extra = [] if name == "clip_score" else ["--quality_score", "clip_score", "--normsim_fraction", "0.25",
                                             "--target", str(_target(tmp_path, unit_rows(np.random.default_rng(2),
                                                                                          3, 768)))]
    expect_exit_2(capsys, ["filter", "--no_progress", "--name", name, "--metadata_dir", pool, "--fraction", "0.5",
                           "--save_path", str(out), *extra],
                  out, os.path.join(pool, "s.parquet"), "'clip_l14_similarity_score'", "expected numbers")


def test_null_clip_score_is_not_scorable_and_counted(tmp_path, cache_dir, capsys):
    """Policy: a null CLIP score is not scorable (never kept, counted in the summary)."""
    values = pa.array([0.5, None, 0.4, 0.3, None, 0.2], type=pa.float64())
    pool = _pool_with_clip_column(tmp_path, values)
    out = tmp_path / "out.npy"
    assert main(["filter", "--no_progress", "--name", "clip_score", "--metadata_dir", pool, "--threshold", "0.0",
                 "--save_path", str(out)]) == 0
    assert "2 not scorable" in capsys.readouterr().out
    hexes = random_hex_uids(6, seed=4)
    assert np.load(out).tolist() == sorted(divmod(int(hexes[i], 16), 2**64) for i in (0, 2, 3, 5))


@pytest.mark.parametrize("bad,shown", [(np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf"), (None, "null")])
def test_external_scores_that_are_not_finite_are_refused(tmp_path, cache_dir, capsys, bad, shown):
    make_pool(str(tmp_path / "pool"), [12])
    hexes = random_hex_uids(12, seed=0)  # make_pool's uids
    scores = [float(i) for i in range(12)]
    scores[5] = bad
    pq.write_table(pa.table({"uid": hexes, "hype": pa.array(scores, type=pa.float64())}), tmp_path / "hype.parquet")
    out = tmp_path / "out.npy"
    err = expect_exit_2(capsys, ["filter", "--no_progress", "--name", "clip_score", "--metadata_dir",
                                 str(tmp_path / "pool"), "--fraction", "0.5", "--save_path", str(out),
                                 "--external_scores", str(tmp_path / "hype.parquet"), "--external_column", "hype",
                                 "--external_fraction", "0.5"],
                        out, str(tmp_path / "hype.parquet"), "'hype'", "row 5", "expected a finite number")
    assert (shown == "null" and "null" in err) or shown in err


@pytest.mark.parametrize("scale", [1e200, 1e-200])
def test_float64_target_of_any_magnitude_selects_as_its_direction(tmp_path, cache_dir, capsys, scale):
    """Policy: only directions matter, so a float64 target scaled by 1e200 (its squares overflow) or 1e-200
    (its squares underflow) selects exactly what the unit-norm target selects, checked by brute force."""
    written = make_pool(str(tmp_path / "pool"), [16])
    rng = np.random.default_rng(5)
    unit = unit_rows(rng, 3, 768).astype(np.float64)
    assert main(_normsim(tmp_path, _target(tmp_path, unit * scale, "scaled.npy"), tmp_path / "scaled.npy.out")) == 0
    # brute force: NormSim_inf = max over target rows of the image's dot product, top 4 of 16
    image = written["00000000"]["l14_img"].astype(np.float64)  # as stored (DataComp's are unit rows)
    best = np.argsort(-(image @ unit.T).max(axis=1), kind="stable")[:4]
    hexes = written["00000000"]["uids"]
    want = sorted(divmod(int(hexes[i], 16), 2**64) for i in best)
    assert np.load(tmp_path / "scaled.npy.out").tolist() == want


def test_empty_target_file_in_a_folder_is_refused(tmp_path, cache_dir, capsys):
    make_pool(str(tmp_path / "pool"), [8])
    folder = tmp_path / "targets"
    folder.mkdir()
    np.save(folder / "a.npy", unit_rows(np.random.default_rng(6), 3, 768))
    np.save(folder / "b.npy", np.zeros((0, 768), np.float32))
    out = tmp_path / "out.npy"
    expect_exit_2(capsys, _normsim(tmp_path, folder, out), out, str(folder / "b.npy"), "0 rows",
                  "at least one image embedding")


@pytest.mark.parametrize("which", ["parquet", "npz", "given", "external", "target", "target via symlink"])
def test_save_path_that_is_an_input_is_refused_before_reading(tmp_path, cache_dir, capsys, which):
    given, external, target = _inputs(tmp_path)
    pool = tmp_path / "pool"
    save = {"parquet": pool / "00000000.parquet", "npz": pool / "00000000.npz", "given": given,
            "external": external, "target": target, "target via symlink": tmp_path / "link.npy"}[which]
    if which == "target via symlink":
        os.symlink(target, save)
    before = {p: p.read_bytes() for p in (pool / "00000000.parquet", pool / "00000000.npz", given, external, target)}
    argv = ["filter", "--no_progress", "--name", "normsiminf", "--metadata_dir", str(pool), "--fraction", "0.8",
            "--normsim_fraction", "0.5", "--target", str(target), "--given_uids", str(given),
            "--external_scores", str(external), "--external_column", "s", "--external_fraction", "0.9",
            "--save_path", str(save)]
    expect_exit_2(capsys, argv, None, f"--save_path {save}", "choose another output path")
    assert {p: p.read_bytes() for p in before} == before
    assert not os.path.exists(cache_dir)  # refused before anything was read or scored
