"""The file system says no: read-only folders, a full disk, files where folders belong, an existing pool.

Each ends with exit status 2 and one ``error:`` line naming the path, no traceback, and nothing half-written
at the output path or in the cache.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from conftest import make_pool

from datacomp_plugins.apps.toy import write_toy_pool
from datacomp_plugins.cli import main
from datacomp_plugins.core import fileio

# /sys refuses new files even to root (sysfs; read-only in containers): a read-only folder anywhere.
READ_ONLY = "/sys"


def _refuses_writes(folder: str) -> bool:
    try:
        fd, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        return True
    os.close(fd)
    os.unlink(probe)
    return False


needs_read_only = pytest.mark.skipif(not _refuses_writes(READ_ONLY), reason=f"{READ_ONLY} accepts new files here")


def _cli(args: list[str], preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datacomp_plugins", *args], capture_output=True, text=True,
                          preexec_fn=preexec, timeout=300)


def _clean_error(result: subprocess.CompletedProcess, *names: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for name in names:
        assert name in lines[0], lines[0]


def _leftovers(*folders) -> list[str]:
    """Temporaries and partial files anywhere under the folders."""
    return [os.path.join(root, name) for folder in folders for root, _, files in os.walk(folder)
            for name in files if name.endswith(".tmp") or ".write-probe-" in name]


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("fs") / "pool")
    make_pool(folder, [2000, 1500], seed=8)
    return folder


def _filter(pool: str, save: str, cache: str) -> list[str]:
    return ["filter", "--name", "clip_score", "--metadata_dir", pool, "--fraction", "0.5", "--save_path", save,
            "--cache_dir", cache, "--no_progress"]


@needs_read_only
def test_read_only_cache_folder(pool, tmp_path):
    cache = os.path.join(READ_ONLY, "datacomp-plugins-cache")
    result = _cli(_filter(pool, str(tmp_path / "out.npy"), cache))
    _clean_error(result, "--cache_dir", cache)
    assert not (tmp_path / "out.npy").exists()


@needs_read_only
def test_read_only_output_folder_for_every_writer(pool, tmp_path):
    uids = tmp_path / "u.npy"
    np.save(uids, np.zeros(1, dtype=np.dtype("u8,u8")))
    hexes = tmp_path / "u.txt"
    hexes.write_text("0" * 32 + "\n")
    out = os.path.join(READ_ONLY, "out.npy")
    for args in (_filter(pool, out, str(tmp_path / "cache")),
                 ["toy-pool", os.path.join(READ_ONLY, "toy")],
                 ["uids", "from-hex", str(hexes), "-o", out],
                 ["uids", "union", str(uids), str(uids), "-o", out]):
        _clean_error(_cli(args), READ_ONLY)
    assert not os.path.exists(out)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_by_permissions(pool, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        _clean_error(_cli(_filter(pool, str(tmp_path / "o.npy"), str(folder / "cache"))), "--cache_dir")
        _clean_error(_cli(_filter(pool, str(folder / "o.npy"), str(tmp_path / "cache"))), "--save_path")
        _clean_error(_cli(["toy-pool", str(folder / "toy")]), str(folder))
    finally:
        folder.chmod(0o755)


def _file_size_limit(limit: int):
    """A full disk as far as this process can tell: writes past ``limit`` bytes fail (EFBIG), for root too."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_disk_full_while_writing_the_cache(pool, tmp_path):
    cache, out = str(tmp_path / "cache"), str(tmp_path / "out.npy")
    result = _cli(_filter(pool, out, cache), preexec=_file_size_limit(4096))  # a shard's uids are 32 KB
    _clean_error(result, cache)
    assert not os.path.exists(out)
    assert _leftovers(cache, tmp_path) == []
    assert _cli(_filter(pool, out, cache)).returncode == 0  # nothing left that a later run could misread


def test_disk_full_while_writing_the_output(pool, tmp_path):
    cache, out = str(tmp_path / "cache"), str(tmp_path / "out.npy")
    assert _cli(_filter(pool, str(tmp_path / "first.npy"), cache)).returncode == 0  # cache complete
    result = _cli(_filter(pool, out, cache), preexec=_file_size_limit(8192))  # output: 1750 uids, 28 KB
    _clean_error(result, out)
    assert not os.path.exists(out)
    assert _leftovers(tmp_path) == []


def test_enospc_in_process_names_the_file(pool, tmp_path, monkeypatch, capsys):
    """ENOSPC itself (injected at the flush), through the command line in this process."""
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    cache = str(tmp_path / "cache")
    assert main(_filter(pool, str(tmp_path / "first.npy"), cache)) == 0
    monkeypatch.setattr(fileio.os, "fsync", full)
    capsys.readouterr()
    assert main(_filter(pool, str(tmp_path / "out.npy"), cache)) == 2
    err = capsys.readouterr().err
    assert "out.npy" in err and "No space left" in err
    assert not (tmp_path / "out.npy").exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_cache_dir_that_is_a_file(pool, tmp_path, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    cache = str(blocker if where == "file" else blocker / "sub")
    result = _cli(_filter(pool, str(tmp_path / "out.npy"), cache))
    _clean_error(result, "--cache_dir", str(blocker))
    assert blocker.read_text() == "not a folder"
    assert not (tmp_path / "out.npy").exists()


@pytest.mark.parametrize("case", ["folder", "missing_parent", "parent_is_file"])
def test_bad_save_path_for_filter_and_recipe(pool, tmp_path, case):
    (tmp_path / "afile").write_text("x")
    save = {"folder": str(tmp_path), "missing_parent": str(tmp_path / "nope" / "out.npy"),
            "parent_is_file": str(tmp_path / "afile" / "out.npy")}[case]
    for args in (_filter(pool, save, str(tmp_path / "cache")),
                 ["recipe", "clipscore_30", "--metadata_dir", pool, "--save_path", save, "--cache_dir",
                  str(tmp_path / "cache"), "--no_progress"]):
        result = _cli(args)
        _clean_error(result, save)
    assert not (tmp_path / "cache").exists() or _leftovers(tmp_path / "cache") == []


@pytest.mark.slow  # runs the command in subprocesses, three times
def test_toy_pool_refuses_to_overwrite(tmp_path):
    out = tmp_path / "toy"
    write_toy_pool(str(out), shards=3, rows=200)
    before = {p.name: p.read_bytes() for p in (out / "metadata").iterdir()}
    result = _cli(["toy-pool", str(out), "--shards", "2", "--rows", "100", "--seed", "1"])
    _clean_error(result, str(out), "--overwrite")
    assert {p.name: p.read_bytes() for p in (out / "metadata").iterdir()} == before
    # with --overwrite the old pool is replaced whole: no third shard of the old pool stays behind
    assert _cli(["toy-pool", str(out), "--shards", "2", "--rows", "100", "--seed", "1", "--overwrite"]).returncode == 0
    assert sorted(p.name for p in (out / "metadata").iterdir()) == [
        "00000000.npz", "00000000.parquet", "00000001.npz", "00000001.parquet"]
    fresh = tmp_path / "fresh"
    write_toy_pool(str(fresh), shards=2, rows=100, seed=1)
    for name in ("00000000.parquet", "00000001.npz"):
        assert (out / "metadata" / name).read_bytes() == (fresh / "metadata" / name).read_bytes()


@pytest.mark.parametrize(("flag", "value"), [("--shards", "0"), ("--shards", "-2"), ("--rows", "0"),
                                             ("--rows", "-5"), ("--rows", "1000000000"), ("--seed", "-1")])
def test_toy_pool_validates_sizes(tmp_path, flag, value):
    out = tmp_path / "toy"
    result = _cli(["toy-pool", str(out), flag, value])
    _clean_error(result, flag, value)
    assert not out.exists()


def test_toy_pool_into_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    _clean_error(_cli(["toy-pool", str(tmp_path / "afile")]), "afile")
    assert (tmp_path / "afile").read_text() == "x"


def test_no_room_for_the_normsim_d_spill(pool, tmp_path):
    """The spill is reserved before it is mapped: no room is one error line, not a SIGBUS or a traceback."""
    cache, out = str(tmp_path / "cache"), str(tmp_path / "d.npy")
    args = ["filter", "--name", "normsim_d", "--quality_score", "clip_score", "--metadata_dir", pool,
            "--fraction", "0.9", "--normsim_fraction", "0.5", "--normsim_d_iters", "3", "--save_path", out,
            "--cache_dir", cache, "--no_progress"]
    result = _cli(args, preexec=_file_size_limit(200_000))  # cache files fit; the 4.8 MB spill does not
    _clean_error(result, "normsim_d spill", "_spill")
    assert not os.path.exists(out)
    assert [n for _, _, files in os.walk(cache) for n in files if n.endswith(".f16")] == []
    assert _leftovers(cache, tmp_path) == []
