"""Rough edges of the command line: outputs that would replace an input, tracebacks where one line belongs,
silent no-ops and silent acceptance. Each case checks the exit status, the one-line message and that the
inputs are untouched (their bytes compared with a copy taken before the command)."""

from __future__ import annotations

import hashlib
import os

import numpy as np
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


# ------------------------------------------------------------------------------ one line, not a traceback


def test_recipe_on_a_binary_file_is_one_line(tmp_path, pool, cache_dir, capsys):
    recipe = tmp_path / "x.toml"
    recipe.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary")
    out = tmp_path / "out.npy"
    expect_exit_2(capsys, ["recipe", str(recipe), "--metadata_dir", str(pool), "--save_path", str(out)], out,
                  str(recipe), "not a text file")


@pytest.mark.parametrize("sidecar, fragment", [
    ('{"format": "datacomp-plugins provenance 1", "x": ' + "[" * 200_000 + "]" * 200_000 + "}", "nested too deeply"),
    ('{"format": "datacomp-plugins provenance 1", "parameters": [1]}', "'parameters' is a list"),
    ('{"format": "datacomp-plugins provenance 1", "stages": [3]}', "'stages'[0] is a int"),
    ('{"format": "datacomp-plugins provenance 1", "pool": {"shards": 5}}', "wrong shape"),
    ('{"format": "datacomp-plugins provenance 1", "command_line": 7}', "'command_line' is a int"),
])
def test_uids_info_with_a_malformed_sidecar_is_one_line(tmp_path, capsys, sidecar, fragment):
    uid_file = tmp_path / "a.npy"
    np.save(uid_file, np.zeros(2, dtype=np.dtype("u8,u8")))
    (tmp_path / "a.npy.json").write_text(sidecar)
    expect_exit_2(capsys, ["uids", "info", str(uid_file)], None, "a.npy.json", fragment)


@pytest.mark.parametrize("flag, value, fragment", [("--page_seed", "-1", "--page_seed -1: must be an integer in"),
                                                   ("--page_seed", str(1 << 40), "--page_seed"),
                                                   ("--per_group", "0", "--per_group 0: must be")])
def test_inspect_numbers_are_range_checked(tmp_path, pool, cache_dir, capsys, flag, value, fragment):
    uid_file = _uid_file(tmp_path, pool, cache_dir)
    out = tmp_path / "page.html"
    expect_exit_2(capsys, ["inspect", uid_file, "--no_progress", "--metadata_dir", str(pool), "--out", str(out),
                           flag, value], out, fragment)


def test_inspect_with_a_corrupt_truth_parquet_is_one_line(tmp_path, pool, cache_dir, capsys):
    uid_file = _uid_file(tmp_path, pool, cache_dir)
    truth = tmp_path / "truth"
    truth.mkdir()
    (truth / "00000000.parquet").write_bytes(b"PAR1" + b"\x00garbage" * 10 + b"PAR1")
    out = tmp_path / "page.html"
    expect_exit_2(capsys, ["inspect", uid_file, "--no_progress", "--metadata_dir", str(pool), "--out", str(out),
                           "--truth", str(truth)], out, str(truth / "00000000.parquet"), "unreadable parquet")


def _external(tmp_path, uids: list[str], values: list[float]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "ext.parquet"
    pq.write_table(pa.table({"uid": pa.array(uids, pa.string()), "s": pa.array(values, pa.float64())}), path)
    return str(path)


def _pool_uids(pool) -> list[str]:
    import pyarrow.parquet as pq

    return [u for f in sorted(pool.glob("*.parquet")) for u in pq.read_table(f)["uid"].to_pylist()]


def test_external_scores_with_no_rows_score_no_sample(tmp_path, pool, cache_dir, capsys):
    ext = _external(tmp_path, [], [])
    out = tmp_path / "out.npy"
    argv = ["filter", "--no_progress", "--name", "clip_score", "--metadata_dir", str(pool), "--fraction", "1.0",
            "--external_scores", ext, "--external_column", "s", "--external_fraction", "0.5", "--allow_empty",
            "--save_path", str(out)]
    assert main(argv) == 0
    assert len(np.load(out)) == 0  # every sample unscored, dropped by --missing_score drop
    expect_exit_2(capsys, [*argv[:-1], str(tmp_path / "e.npy"), "--missing_score", "error"], tmp_path / "e.npy",
                  "no score for 70 of 70 pool samples")


def test_external_scores_with_conflicting_duplicates_are_refused(tmp_path, pool, cache_dir, capsys):
    uids = _pool_uids(pool)
    values = [float(i) for i in range(len(uids))]
    ext = _external(tmp_path, uids + [uids[5], uids[9]], values + [values[5], 123.0])
    out = tmp_path / "out.npy"
    expect_exit_2(capsys, ["filter", "--no_progress", "--name", "clip_score", "--metadata_dir", str(pool),
                           "--fraction", "1.0", "--external_scores", ext, "--external_column", "s",
                           "--external_fraction", "0.5", "--save_path", str(out)], out,
                  f"uid {uids[9]} is listed more than once", "rows 9 and 71", "1 such pairs")
    # the same uid repeated with the same score is one score: accepted, and counted once
    ext = _external(tmp_path, uids + [uids[5]], values + [values[5]])
    assert main(["filter", "--no_progress", "--name", "clip_score", "--metadata_dir", str(pool), "--fraction",
                 "1.0", "--external_scores", ext, "--external_column", "s", "--external_fraction", "0.5",
                 "--save_path", str(out)]) == 0
    from datacomp_plugins.core.uids import parse_hex, sorted_unique

    top = [u for _, u in sorted(zip(values, uids, strict=True), reverse=True)[:35]]
    assert np.array_equal(np.load(out), sorted_unique(parse_hex(top)))


def test_missing_score_error_without_external_scores_is_refused(tmp_path, pool, cache_dir, capsys):
    out = tmp_path / "out.npy"
    expect_exit_2(capsys, ["filter", "--no_progress", "--name", "clip_score", "--metadata_dir", str(pool),
                           "--fraction", "0.5", "--missing_score", "error", "--save_path", str(out)], out,
                  "--missing_score error: only with --external_scores")


BAD_PLUGIN = '''
from dataclasses import dataclass, field

import numpy as np

from datacomp_plugins.scores.base import Score, ScoreSpec


@dataclass(frozen=True)
class Bad(Score):
    name: str = field(init=False, default="bad_score")

    @property
    def parquet_columns(self):
        return ("text",)

    def compute(self, shard, columns, embeddings):
        if MODE == "short":
            return np.zeros(len(columns["text"]) - 1, dtype=np.float32)
        raise KeyError("the model file is missing")


class BadSpec(ScoreSpec):
    def shard_score(self, params, run):
        return Bad()


SPEC = BadSpec("bad_score", "quality", "a broken example")
'''


@pytest.mark.parametrize("mode, fragment", [("short", "compute returned shape (39,), expected (40,)"),
                                            ("raises", "compute raised KeyError: 'the model file is missing'")])
def test_a_plugin_score_that_fails_is_one_line_naming_it(tmp_path, cache_dir, monkeypatch, mode, fragment):
    import subprocess
    import sys

    site = tmp_path / "site"
    info = site / "bad_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "bad_plugin.py").write_text(f"MODE = {mode!r}\n" + BAD_PLUGIN)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[datacomp_plugins.scores]\nbad_score = bad_plugin:SPEC\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]))
    make_pool(str(tmp_path / "pool"), [40])
    out = tmp_path / "out.npy"
    result = subprocess.run([sys.executable, "-m", "datacomp_plugins", "filter", "--name", "bad_score",
                             "--metadata_dir", str(tmp_path / "pool"), "--fraction", "0.5", "--save_path", str(out),
                             "--no_progress"], capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for part in ("score bad_score", "entry point bad_score = bad_plugin:SPEC", fragment, "shard 00000000"):
        assert part in lines[0], (part, lines[0])
    assert not out.exists()
    assert not [p for p in (tmp_path / "cache").rglob("bad_score-*.npy")]


# ------------------------------------------------------------------------------------- silent no-ops


def test_uids_info_on_a_parquet_names_what_it_is(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"uid": ["0" * 32], "component": ["clean"]}), labels)
    err = expect_exit_2(capsys, ["uids", "info", str(labels)], None, str(labels), "it is a parquet file",
                        "not a readable .npy uid file", "u8,u8", "uids from-hex")
    assert "pickled" not in err


def test_uids_from_hex_reads_a_dictionary_encoded_column(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from conftest import random_hex_uids

    hexes = random_hex_uids(7, seed=4)
    column = pa.array(hexes + hexes[:2], pa.string()).dictionary_encode()
    assert pa.types.is_dictionary(column.type)
    source = tmp_path / "uids.parquet"
    pq.write_table(pa.table({"uid": column}), source)
    assert pa.types.is_dictionary(pq.ParquetFile(source).schema_arrow.field("uid").type)
    out = tmp_path / "out.npy"
    assert main(["uids", "from-hex", str(source), "-o", str(out)]) == 0
    assert np.load(out).tolist() == sorted(divmod(int(h, 16), 2**64) for h in hexes)


class _FullDisk:
    """A file whose every write fails as on a full disk (ENOSPC), including the flush when it is closed."""

    def __init__(self, fd: int) -> None:
        import io

        class Raw(io.RawIOBase):
            def writable(self) -> bool:
                return True

            def write(self, data) -> int:
                raise OSError(28, "No space left on device")

        os.close(fd)
        self.handle = io.BufferedWriter(Raw(), buffer_size=1 << 16)


def test_toy_pool_on_a_full_disk_names_the_file_and_leaves_no_folders(tmp_path, capsys, monkeypatch):
    from datacomp_plugins.core import fileio

    monkeypatch.setattr(fileio.os, "fdopen", lambda fd, mode="wb": _FullDisk(fd).handle)
    out = tmp_path / "toy"
    err = expect_exit_2(capsys, ["toy-pool", str(out)], None,
                        str(out / "metadata" / "00000000.parquet"), "No space left on device")
    assert "a file" not in err
    assert not out.exists()  # no empty metadata/ and targets/ left behind
    assert os.listdir(tmp_path) == []  # nor a temporary file


def test_toy_pool_into_an_existing_folder_keeps_that_folder(tmp_path, capsys, monkeypatch):
    from datacomp_plugins.core import fileio

    out = tmp_path / "toy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    monkeypatch.setattr(fileio.os, "fdopen", lambda fd, mode="wb": _FullDisk(fd).handle)
    expect_exit_2(capsys, ["toy-pool", str(out)], None, "No space left on device")
    assert sorted(os.listdir(out)) == ["notes.txt"]


def test_demo_checks_its_flags_before_building_the_pool(tmp_path, capsys):
    out = tmp_path / "demo"
    expect_exit_2(capsys, ["demo", str(out), "--fraction", "0.2", "--normsim_fraction", "0.3"], out,
                  "--normsim_fraction 0.3 is larger than --fraction 0.2")


# ----------------------------------------------------------------------- the demo's outputs fit the commands


def test_a_target_folder_with_both_archs_takes_the_right_dimension(tmp_path, capsys):
    from datacomp_plugins.scores.targets import load_target

    rng = np.random.default_rng(2)
    folder = tmp_path / "targets"
    folder.mkdir()
    b32, l14 = rng.standard_normal((5, 512)), rng.standard_normal((7, 768))
    np.save(folder / "target_b32.npy", b32.astype(np.float32))
    np.save(folder / "target_l14.npy", l14.astype(np.float32))
    for arch, dim, rows in (("b32", 512, b32), ("l14", 768, l14)):
        got = load_target(str(folder), arch, dim)
        expected = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        assert got.shape == rows.shape and np.allclose(got, expected, atol=1e-6)
        err = capsys.readouterr().err
        other = "target_l14.npy (768-d)" if arch == "b32" else "target_b32.npy (512-d)"
        assert other in err
    # a folder with no file of the right dimension is still refused, naming the file
    np.save(folder / "target_l14.npy", rng.standard_normal((3, 100)).astype(np.float32))
    from datacomp_plugins.core.errors import PluginError

    with pytest.raises(PluginError, match="does not match --arch l14"):
        load_target(str(folder), "l14", 768)


def test_the_demo_outputs_work_as_target_and_truth(tmp_path, capsys):
    """``--target OUT/targets`` and ``--truth OUT/labels.parquet`` as the toy pool writes them."""
    from datacomp_plugins.apps.toy import write_toy_pool

    toy = tmp_path / "toy"
    write_toy_pool(str(toy), shards=2, rows=200)
    cache = str(tmp_path / "cache")
    out = tmp_path / "n.npy"
    for arch in ("l14", "b32"):
        assert main(["filter", "--no_progress", "--name", "normsiminf", "--arch", arch, "--metadata_dir",
                     str(toy / "metadata"), "--fraction", "0.5", "--normsim_fraction", "0.2", "--target",
                     str(toy / "targets"), "--cache_dir", cache, "--save_path", str(out)]) == 0, \
            capsys.readouterr().err
    page = tmp_path / "p.html"
    assert main(["inspect", str(out), "--no_progress", "--metadata_dir", str(toy / "metadata"), "--truth",
                 str(toy / "labels.parquet"), "--cache_dir", cache, "--out", str(page)]) == 0
    assert "Share of each component kept" in page.read_text()


# ------------------------------------------------------------------------------------------ progress bars


class _Terminal:
    """A stderr that says it is a terminal and keeps what was written."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True

    def text(self) -> str:
        return "".join(self.parts)


def test_progress_bars_are_silent_when_stderr_is_not_a_terminal(tmp_path, pool, cache_dir, capsys):
    out = tmp_path / "a.npy"
    assert main(["filter", "--name", "negcliploss", "--metadata_dir", str(pool), "--fraction", "0.5",
                 "--save_path", str(out)]) == 0
    err = capsys.readouterr().err
    assert "scoring" not in err and "\r" not in err and "it/s" not in err and "shard/s" not in err


def test_no_scoring_bar_when_every_shard_is_cached(tmp_path, pool, cache_dir, monkeypatch, capsys):
    import sys

    argv = ["uids", "compare", _uid_file(tmp_path, pool, cache_dir), _uid_file(tmp_path, pool, cache_dir, "b.npy"),
            "--metadata_dir", str(pool), "--scores", "clip_score,negcliploss"]
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["scores", "--metadata_dir", str(pool), "--scores", "clip_score,negcliploss",
                 "--out", str(tmp_path / "s.parquet")]) == 0
    assert "scoring" in terminal.text()  # a terminal shows the bar while shards are scored ...
    terminal.parts.clear()
    assert main(argv) == 0  # ... and none once every shard is in the cache (the runs above filled it)
    assert "scoring" not in terminal.text(), terminal.text()
    assert main(["inspect", argv[2], "--metadata_dir", str(pool), "--out", str(tmp_path / "p.html")]) == 0
    assert "scoring" not in terminal.text(), terminal.text()
