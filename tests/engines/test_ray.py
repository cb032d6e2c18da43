"""``--engine ray`` on a small local Ray instance: same uid files as the local engine, cache hand-off, errors."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_pool, random_hex_uids, unit_rows, write_shard

from datacomp_plugins.cli import main

ray = pytest.importorskip("ray", reason="the 'ray' extra is not installed (pip install 'datacomp-plugins[ray]')")


@pytest.fixture(scope="module")
def ray_cluster():
    """One two-CPU Ray instance for the module (starting Ray takes seconds); shut down at the end."""
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
    yield
    if started:
        ray.shutdown()


def run_cli(*args: str) -> int:
    return main(["filter", "--no_progress", *args])


def negcliploss_args(pool: str, out, cache) -> list[str]:
    return ["--name", "negcliploss", "--metadata_dir", pool, "--fraction", "0.3", "--negcliploss_batch_size",
            "64", "--num_batches", "2", "--save_path", str(out), "--cache_dir", str(cache)]


def test_negcliploss_ray_is_byte_identical_to_local(tmp_path, ray_cluster, capsys):
    pool = str(tmp_path / "pool")
    make_pool(pool, [300, 200, 250, 100])
    assert run_cli(*negcliploss_args(pool, tmp_path / "local.npy", tmp_path / "c1")) == 0
    assert run_cli(*negcliploss_args(pool, tmp_path / "ray.npy", tmp_path / "c2"), "--num_workers", "2",
                   "--engine", "ray") == 0
    assert "(4 scored, 0 from cache)" in capsys.readouterr().out
    assert (tmp_path / "local.npy").read_bytes() == (tmp_path / "ray.npy").read_bytes()
    # the cache is the hand-off: a local rerun on the Ray run's cache computes nothing
    assert run_cli(*negcliploss_args(pool, tmp_path / "again.npy", tmp_path / "c2")) == 0
    assert "(0 scored, 4 from cache)" in capsys.readouterr().out
    assert (tmp_path / "again.npy").read_bytes() == (tmp_path / "ray.npy").read_bytes()


def test_normsiminf_ray_is_byte_identical_to_local(tmp_path, ray_cluster):
    pool = str(tmp_path / "pool")
    make_pool(pool, [120, 80, 50], seed=5)
    np.save(tmp_path / "target.npy", unit_rows(np.random.default_rng(1), 16, 768) * 2.0)
    outputs = []
    for engine in ("local", "ray"):
        out = tmp_path / f"{engine}.npy"
        assert run_cli("--name", "normsiminf", "--metadata_dir", pool, "--quality_score", "negcliploss",
                       "--negcliploss_batch_size", "32", "--num_batches", "2", "--fraction", "0.5",
                       "--normsim_fraction", "0.2", "--target", str(tmp_path / "target.npy"),
                       "--num_workers", "1" if engine == "local" else "2", "--engine", engine, "--save_path", str(out),
                       "--cache_dir", str(tmp_path / f"cache-{engine}")) == 0
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    assert len(np.load(tmp_path / "ray.npy")) == 50


def test_bad_shard_gives_our_message_not_a_ray_traceback(tmp_path, ray_cluster, capsys):
    pool = str(tmp_path / "pool")
    make_pool(pool, [40, 40])
    rng = np.random.default_rng(0)
    write_shard(pool, "zz-bad", random_hex_uids(10, seed=7), {"l14_img": unit_rows(rng, 10, 768)})
    out = tmp_path / "out.npy"
    assert run_cli(*negcliploss_args(pool, out, tmp_path / "cache"), "--num_workers", "2",
                   "--engine", "ray") == 2
    err = capsys.readouterr().err
    assert "zz-bad.npz: no array 'l14_txt'" in err
    assert "Traceback" not in err and "RayTaskError" not in err and "ray::" not in err
    assert not out.exists()
    assert ray.is_initialized()  # a session the caller opened is left running


def test_unreachable_ray_address_is_a_clear_error(tmp_path, capsys, monkeypatch):
    pool = str(tmp_path / "pool")
    make_pool(pool, [10])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if ray.is_initialized():  # an open session is reused whatever the address; this test needs none open
        ray.shutdown()
    out = tmp_path / "out.npy"
    assert run_cli(*negcliploss_args(pool, out, tmp_path / "cache"), "--engine", "ray",
                   "--ray_address", "127.0.0.1:1") == 2
    err = capsys.readouterr().err
    assert "--ray_address 127.0.0.1:1: no Ray cluster reachable there" in err and "Traceback" not in err
    assert not out.exists() and not ray.is_initialized()
    monkeypatch.setenv("RAY_ADDRESS", "nonexistent.invalid:6379")
    assert run_cli(*negcliploss_args(pool, out, tmp_path / "cache"), "--engine", "ray") == 2
    assert "$RAY_ADDRESS nonexistent.invalid:6379: no Ray cluster reachable there" in capsys.readouterr().err


@pytest.mark.slow  # starts and stops its own Ray instance
def test_own_local_instance_is_started_and_shut_down(tmp_path, monkeypatch):
    pool = str(tmp_path / "pool")
    make_pool(pool, [30, 20])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if ray.is_initialized():
        ray.shutdown()
    out = tmp_path / "out.npy"
    assert run_cli(*negcliploss_args(pool, out, tmp_path / "cache"), "--engine", "ray") == 0
    assert len(np.load(out)) == 15
    assert not ray.is_initialized()


def test_missing_ray_names_the_extra(tmp_path, monkeypatch):
    import sys

    from datacomp_plugins.core.errors import PluginError
    from datacomp_plugins.engines.ray import INSTALL_HINT, run_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(PluginError, match="pip install 'datacomp-plugins\\[ray\\]'") as info:
        next(run_ray(None, ["shard"], 1, 0, None))  # type: ignore[arg-type]
    assert str(info.value) == INSTALL_HINT
