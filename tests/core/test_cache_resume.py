"""Killed runs resume from the score cache; transient read errors are retried, then reported by shard."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import fsspec
import numpy as np
import pytest
from conftest import make_pool, random_hex_uids, unit_rows, write_shard
from fsspec.implementations.memory import MemoryFileSystem

from datacomp_plugins.cli import main
from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.pool import Pool, with_retries


def cached_scores(cache_dir: str) -> int:
    return sum(n.startswith("negcliploss") and n.endswith(".npy") for _, _, files in os.walk(cache_dir) for n in files)


@pytest.mark.slow  # kills a real run in a subprocess and runs it again
def test_sigkill_then_rerun_finishes_the_rest_and_matches(tmp_path, capsys):
    make_pool(str(tmp_path / "pool"), [1500] * 8)
    args = ["filter", "--name", "negcliploss", "--metadata_dir", str(tmp_path / "pool"), "--fraction", "0.3",
            "--no_progress", "--negcliploss_batch_size", "512", "--num_batches", "3"]
    killed_cache, clean_cache = str(tmp_path / "killed"), str(tmp_path / "clean")
    proc = subprocess.Popen([sys.executable, "-m", "datacomp_plugins", *args, "--cache_dir", killed_cache,
                             "--save_path", str(tmp_path / "resumed.npy")])
    deadline = time.time() + 120
    while time.time() < deadline and cached_scores(killed_cache) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = cached_scores(killed_cache)
    assert 2 <= done < 8, "the run should have been killed part-way"
    assert not (tmp_path / "resumed.npy").exists()
    assert main([*args, "--cache_dir", killed_cache, "--save_path", str(tmp_path / "resumed.npy")]) == 0
    assert f"({8 - done} scored, {done} from cache)" in capsys.readouterr().out
    assert main([*args, "--cache_dir", clean_cache, "--save_path", str(tmp_path / "clean.npy")]) == 0
    assert (tmp_path / "resumed.npy").read_bytes() == (tmp_path / "clean.npy").read_bytes()


class FlakyFileSystem(MemoryFileSystem):
    """A memory filesystem whose opens fail ``failures`` times (a dropped connection), then work."""

    protocol = "flaky"
    failures = 0

    @classmethod
    def _strip_protocol(cls, path):
        return MemoryFileSystem._strip_protocol(path.removeprefix("flaky://"))

    def _open(self, path, mode="rb", **kwargs):
        if "r" in mode and FlakyFileSystem.failures > 0:
            FlakyFileSystem.failures -= 1
            raise ConnectionResetError("connection reset by peer")
        return super()._open(path, mode, **kwargs)


@pytest.fixture
def flaky_pool(monkeypatch):
    import datacomp_plugins.core.pool as pool_module

    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    monkeypatch.setattr(pool_module.time, "sleep", lambda _: None)
    fs = FlakyFileSystem()
    rng = np.random.default_rng(0)
    img = unit_rows(rng, 6, 768)
    write_shard("/flaky-pool", "s0", random_hex_uids(6), {"l14_img": img, "l14_txt": img}, fs=fs)
    yield "flaky://flaky-pool"
    FlakyFileSystem.failures = 0


def test_transient_errors_are_retried(flaky_pool, tmp_path, cache_dir):
    FlakyFileSystem.failures = 2
    assert main(["filter", "--no_progress", "--name", "negcliploss", "--metadata_dir", flaky_pool,
                 "--fraction", "0.5", "--save_path", str(tmp_path / "o.npy")]) == 0
    assert len(np.load(tmp_path / "o.npy")) == 3


def test_persistent_errors_name_the_shard(flaky_pool, tmp_path, cache_dir, capsys):
    FlakyFileSystem.failures = 100
    assert main(["filter", "--no_progress", "--name", "negcliploss", "--metadata_dir", flaky_pool,
                 "--fraction", "0.5", "--save_path", str(tmp_path / "o.npy")]) == 2
    err = capsys.readouterr().err
    assert "s0.parquet: read failed after 4 attempts (connection reset by peer)" in err
    assert not (tmp_path / "o.npy").exists()


def test_with_retries_does_not_retry_bad_content():
    calls = []

    def bad():
        calls.append(1)
        raise PluginError("bad content")

    with pytest.raises(PluginError):
        with_retries(bad, "x")
    assert len(calls) == 1
    assert Pool  # the reader used by every engine
