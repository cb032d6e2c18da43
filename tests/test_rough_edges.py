"""Rough edges of the command line: outputs that would replace an input, tracebacks where one line belongs,
silent no-ops and silent acceptance. Each case checks the exit status, the one-line message and that the
inputs are untouched (their bytes compared with a copy taken before the command)."""

from __future__ import annotations

import hashlib
import os

import pytest
from conftest import expect_exit_2, make_pool

from datacomp_plugins.cli import main


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def pool(tmp_path):
    folder = tmp_path / "pool"
    make_pool(str(folder), [40, 30], seed=1)
    return folder


def _uid_file(tmp_path, pool, cache_dir, name="a.npy") -> str:
    out = str(tmp_path / name)
    assert main(["filter", "--no_progress", "--name", "clip_score", "--metadata_dir", str(pool),
                 "--fraction", "0.5", "--save_path", out]) == 0
    return out


# ---------------------------------------------------------------------------------- outputs onto inputs


def test_scores_out_onto_a_pool_shard_is_refused(pool, cache_dir, capsys):
    shard = pool / "00000000.parquet"
    before = _digest(shard)
    expect_exit_2(capsys, ["scores", "--no_progress", "--metadata_dir", str(pool), "--out", str(shard)], None,
                  "--out", str(shard), "shard file of --metadata_dir")
    assert _digest(shard) == before


def test_scores_out_into_the_score_cache_is_refused(pool, cache_dir, capsys):
    out = os.path.join(cache_dir, "scores.parquet")
    expect_exit_2(capsys, ["scores", "--no_progress", "--metadata_dir", str(pool), "--out", out], out,
                  "--out", "--cache_dir")


def test_inspect_out_onto_its_uid_file_is_refused(tmp_path, pool, cache_dir, capsys):
    uid_file = _uid_file(tmp_path, pool, cache_dir)
    before = _digest(uid_file)
    link = tmp_path / "link.html"
    link.symlink_to(uid_file)
    for out in (uid_file, str(link)):
        expect_exit_2(capsys, ["inspect", uid_file, "--no_progress", "--metadata_dir", str(pool), "--out", out],
                      None, "--out", out, "uid file input")
        assert _digest(uid_file) == before


def test_filter_save_path_inside_the_cache_dir_is_refused(tmp_path, pool, capsys):
    cache = tmp_path / "cache"
    argv = ["filter", "--no_progress", "--name", "negcliploss", "--metadata_dir", str(pool), "--fraction", "0.5",
            "--cache_dir", str(cache)]
    assert main([*argv, "--save_path", str(tmp_path / "first.npy")]) == 0
    cached = sorted(p for p in cache.rglob("*.npy"))
    assert cached
    victim = cached[-1]
    before = _digest(victim)
    expect_exit_2(capsys, [*argv, "--save_path", str(victim)], None, "--save_path", "--cache_dir")
    assert _digest(victim) == before


def test_uids_set_operation_output_onto_an_input_is_refused(tmp_path, pool, cache_dir, capsys):
    a = _uid_file(tmp_path, pool, cache_dir)
    before = _digest(a)
    expect_exit_2(capsys, ["uids", "union", a, a, "-o", a], None, "-o", "uid file input")
    expect_exit_2(capsys, ["uids", "to-hex", a, "-o", a], None, "-o", "uid file input")
    assert _digest(a) == before


def test_one_shared_check_refuses_every_writer_alike():
    """The commands call one function; its own cases, independent of any command."""
    from datacomp_plugins.core.errors import PluginError
    from datacomp_plugins.core.fileio import refuse_input_as_output

    refuse_input_as_output("/x/out.npy", "--out", [("--a", "/x/in.npy")], [("--metadata_dir", "/x/pool")])
    refuse_input_as_output("/x/pool/out.npy", "--out", [], [("--metadata_dir", "/x/pool")])
    for out, inputs, pools in (("/x/in.npy", [("--a", "/x/in.npy")], []),
                               ("/x/pool/s.npz", [], [("--metadata_dir", "/x/pool")]),
                               ("/x/pool/s.parquet", [], [("--metadata_dir", "/x/pool/")])):
        with pytest.raises(PluginError):
            refuse_input_as_output(out, "--out", inputs, pools)


def test_a_folder_input_refuses_outputs_inside_it(tmp_path):
    from datacomp_plugins.core.errors import PluginError
    from datacomp_plugins.core.fileio import refuse_input_as_output

    (tmp_path / "cache" / "v5").mkdir(parents=True)
    with pytest.raises(PluginError, match="lies inside the --cache_dir input"):
        refuse_input_as_output(str(tmp_path / "cache" / "v5" / "s.npy"), "--out",
                               [("--cache_dir", str(tmp_path / "cache"))])
    refuse_input_as_output(str(tmp_path / "cache2.npy"), "--out", [("--cache_dir", str(tmp_path / "cache"))])
