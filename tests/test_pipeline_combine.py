"""Restricting the pool to other methods' uids (--given_uids) and scores (--external_scores)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_pool, random_hex_uids

from datacomp_plugins.cli import main
from datacomp_plugins.core.uids import UID_DTYPE


def as_uid(h: str) -> tuple[int, int]:
    return divmod(int(h, 16), 2**64)


def pool_with_scores(tmp_path):
    written = make_pool(str(tmp_path / "pool"), [40, 25, 35])
    hexes = [h for s in written.values() for h in s["uids"]]
    clip = np.concatenate([(s["l14_img"].astype(np.float32) * s["l14_txt"].astype(np.float32)).sum(1)
                           for s in written.values()])
    return hexes, clip


def top(indices, score, hexes, k):
    return sorted(indices, key=lambda i: (-score[i], int(hexes[i], 16)))[:k]


def datacomp_top(indices, score, k):
    """DataComp's CLIPScore rule: the (k+1)-th best score is the cut-off; every score >= it is kept."""
    cutoff = sorted((score[i] for i in indices), reverse=True)[k]
    return [i for i in indices if score[i] >= cutoff]


def run(tmp_path, *extra):
    out = tmp_path / "out.npy"
    code = main(["filter", "--no_progress", "--name", "clip_score", "--metadata_dir", str(tmp_path / "pool"),
                 "--save_path", str(out), *extra])
    return code, out


def test_given_uids_intersection_and_fraction_of_restricted_pool(tmp_path, cache_dir, capsys):
    hexes, clip = pool_with_scores(tmp_path)
    rng = np.random.default_rng(0)
    a = set(rng.choice(100, 70, replace=False).tolist())
    b = set(rng.choice(100, 80, replace=False).tolist())
    outsiders = random_hex_uids(5, seed=77)
    np.save(tmp_path / "a.npy", np.array(sorted([as_uid(hexes[i]) for i in a] + [as_uid(h) for h in outsiders]),
                                         dtype=UID_DTYPE))
    np.save(tmp_path / "b.npy", np.array(sorted(as_uid(hexes[i]) for i in b), dtype=UID_DTYPE))
    code, out = run(tmp_path, "--fraction", "0.5", "--given_uids", f"{tmp_path / 'a.npy'}::{tmp_path / 'b.npy'}")
    assert code == 0
    text = capsys.readouterr().out
    restricted = sorted(a & b)
    want = datacomp_top(restricted, clip, math.floor(len(restricted) * 0.5))
    assert np.load(out).tolist() == sorted(as_uid(hexes[i]) for i in want)
    assert f"a.npy: 75 uids, {75 - 70} not in the pool" in text
    assert "b.npy: 80 uids, 0 not in the pool" in text  # counted against the pool, not against a.npy
    assert f"of {len(restricted)} samples" in text


def test_external_scores_then_quality(tmp_path, cache_dir):
    hexes, clip = pool_with_scores(tmp_path)
    rng = np.random.default_rng(1)
    scored = rng.choice(100, 90, replace=False)  # ten pool samples have no external score
    hype = rng.standard_normal(90)
    table = pa.table({"uid": [hexes[i] for i in scored] + random_hex_uids(3, seed=5),
                      "hype": np.concatenate([hype, [9.0, 9.0, 9.0]])})
    pq.write_table(table, tmp_path / "hype.parquet")
    code, out = run(tmp_path, "--fraction", "0.5", "--external_scores", str(tmp_path / "hype.parquet"),
                    "--external_column", "hype", "--external_fraction", "0.4")
    assert code == 0
    ext = np.full(100, np.nan)
    ext[scored] = hype
    first = top([i for i in range(100) if not np.isnan(ext[i])], ext, hexes, 40)
    want = datacomp_top(first, clip, math.floor(40 * 0.5))
    assert np.load(out).tolist() == sorted(as_uid(hexes[i]) for i in want)


def test_unsorted_given_file_is_fixed_with_a_warning(tmp_path, cache_dir, capsys):
    hexes, _ = pool_with_scores(tmp_path)
    uids = np.array([as_uid(h) for h in hexes[:10]] * 2, dtype=UID_DTYPE)[::-1]
    np.save(tmp_path / "g.npy", uids)
    with pytest.warns(UserWarning, match="g.npy: uids were not sorted and unique"):
        code, out = run(tmp_path, "--fraction", "1", "--given_uids", str(tmp_path / "g.npy"))
    assert code == 0
    assert np.load(out).tolist() == sorted(as_uid(h) for h in hexes[:10])


@pytest.mark.parametrize("case", ["no column", "no uid", "wrong dtype", "partial flags", "not numeric"])
def test_bad_combination_inputs(tmp_path, cache_dir, capsys, case):
    hexes, _ = pool_with_scores(tmp_path)
    pq.write_table(pa.table({"uid": hexes, "score": np.arange(100.0), "name": ["x"] * 100}),
                   tmp_path / "s.parquet")
    pq.write_table(pa.table({"key": hexes, "score": np.arange(100.0)}), tmp_path / "nouid.parquet")
    np.save(tmp_path / "bad.npy", np.arange(5))
    extra, message = {
        "no column": (["--external_scores", str(tmp_path / "s.parquet"), "--external_column", "hype",
                       "--external_fraction", "0.5"], "no column(s) ['hype']; it has ['uid', 'score', 'name']"),
        "no uid": (["--external_scores", str(tmp_path / "nouid.parquet"), "--external_column", "score",
                    "--external_fraction", "0.5"], "no column(s) ['uid']"),
        "wrong dtype": (["--given_uids", str(tmp_path / "bad.npy")], "bad.npy: expected a 1-D uid array"),
        "partial flags": (["--external_scores", str(tmp_path / "s.parquet")], "go together"),
        "not numeric": (["--external_scores", str(tmp_path / "s.parquet"), "--external_column", "name",
                         "--external_fraction", "0.5"], "column 'name' is string, expected numbers"),
    }[case]
    code, out = run(tmp_path, "--fraction", "0.5", *extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists()
