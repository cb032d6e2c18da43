"""The filter command end to end: selection exactness, cache, workers, bad input and atomic output."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import make_pool, random_hex_uids, unit_rows, write_shard

from datacomp_plugins.cli import main
from datacomp_plugins.core.uids import UID_DTYPE, parse_hex


def run_cli(*args: str) -> int:
    return main(["filter", "--no_progress", *args])


def hex_to_uid_list(hexes):
    return sorted(divmod(int(h, 16), 2**64) for h in hexes)


def test_clip_score_fraction_is_exact_and_sorted(tmp_path, cache_dir):
    written = make_pool(str(tmp_path / "pool"), [50, 37, 13])
    out = tmp_path / "out.npy"
    assert run_cli("--name", "clip_score", "--metadata_dir", str(tmp_path / "pool"),
                   "--save_path", str(out), "--fraction", "0.25") == 0
    uids = [u for s in written.values() for u in s["uids"]]
    scores = np.concatenate([(s["l14_img"].astype(np.float32) * s["l14_txt"].astype(np.float32)).sum(1)
                             for s in written.values()])
    # DataComp's CLIPScore rule: the cut-off is the (floor(N*F)+1)-th best score, and every score >= it is kept
    cutoff = sorted(scores, reverse=True)[math.floor(100 * 0.25)]
    want = hex_to_uid_list([u for u, v in zip(uids, scores, strict=True) if v >= cutoff])
    assert len(want) == math.floor(100 * 0.25) + 1  # no ties among random scores
    saved = np.load(out)
    assert saved.dtype == UID_DTYPE
    assert saved.tolist() == want


def test_negcliploss_fraction_and_threshold_match_brute_force_on_cached_scores(tmp_path, cache_dir):
    make_pool(str(tmp_path / "pool"), [40, 40])
    common = ["--name", "negcliploss", "--metadata_dir", str(tmp_path / "pool"),
              "--negcliploss_batch_size", "16", "--num_batches", "3", "--temperature", "0.07"]
    assert run_cli(*common, "--save_path", str(tmp_path / "f.npy"), "--fraction", "0.5") == 0
    from datacomp_plugins.config import FilterConfig
    from datacomp_plugins.core.cache import ScoreCache
    from datacomp_plugins.core.pool import Pool
    from datacomp_plugins.pipeline import gather, shard_score
    pool = Pool(str(tmp_path / "pool"))
    config = FilterConfig("negcliploss", str(tmp_path / "pool"), "x", negcliploss_batch_size=16,
                          num_batches=3, temperature=0.07)
    uids, (scores,) = gather(pool, ScoreCache(cache_dir, pool), (shard_score(config, "negcliploss"),))
    keyed = sorted(range(80), key=lambda i: (-float(scores[i]), int(uids[i][0]), int(uids[i][1])))
    assert np.load(tmp_path / "f.npy").tolist() == sorted(tuple(uids[i].tolist()) for i in keyed[:40])
    threshold = float(scores[keyed[39]])
    assert run_cli(*common, "--save_path", str(tmp_path / "t.npy"), "--threshold", repr(threshold)) == 0
    want = sorted(tuple(uids[i].tolist()) for i in range(80) if scores[i] >= np.float32(threshold))
    assert np.load(tmp_path / "t.npy").tolist() == want


def test_cache_is_reused_and_invalidated(tmp_path, cache_dir, capsys):
    make_pool(str(tmp_path / "pool"), [30, 30])
    args = ["--name", "negcliploss", "--metadata_dir", str(tmp_path / "pool"), "--fraction", "0.3",
            "--save_path", str(tmp_path / "a.npy")]
    run_cli(*args)
    assert "(2 scored, 0 from cache)" in capsys.readouterr().out
    run_cli(*args[:-1], str(tmp_path / "b.npy"))
    assert "(0 scored, 2 from cache)" in capsys.readouterr().out
    assert np.load(tmp_path / "a.npy").tolist() == np.load(tmp_path / "b.npy").tolist()
    run_cli(*args, "--temperature", "0.02")
    assert "(2 scored, 0 from cache)" in capsys.readouterr().out
    # a truncated cache file is detected and recomputed
    folder = os.path.join(cache_dir, os.listdir(cache_dir)[0], "00000000")
    for name in os.listdir(folder):
        if name.startswith("negcliploss") and name.endswith(".npy"):
            with open(os.path.join(folder, name), "r+b") as handle:
                handle.truncate(100)
    run_cli(*args)
    assert "(1 scored, 1 from cache)" in capsys.readouterr().out
    assert np.load(tmp_path / "a.npy").tolist() == np.load(tmp_path / "b.npy").tolist()
    # corruption that keeps the length (the scores of shard 1 overwritten in place) is caught by the CRC
    folder = os.path.join(cache_dir, os.listdir(cache_dir)[0], "00000001")
    for name in os.listdir(folder):
        if name.startswith("negcliploss") and name.endswith(".npy"):
            values = np.load(os.path.join(folder, name))
            np.save(os.path.join(folder, name), -values)  # same dtype, same length, reversed ranking
    run_cli(*args)
    assert "(1 scored, 1 from cache)" in capsys.readouterr().out
    assert np.load(tmp_path / "a.npy").tolist() == np.load(tmp_path / "b.npy").tolist()


@pytest.mark.slow  # starts a pool of worker processes
def test_workers_give_byte_identical_files(tmp_path, cache_dir):
    make_pool(str(tmp_path / "pool"), [300, 200, 250, 100])
    outputs = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}.npy"
        assert run_cli("--name", "negcliploss", "--metadata_dir", str(tmp_path / "pool"), "--fraction", "0.3",
                       "--negcliploss_batch_size", "64", "--num_batches", "2", "--num_workers", workers,
                       "--save_path", str(out), "--cache_dir", str(tmp_path / f"cache{workers}")) == 0
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


def test_non_finite_never_selected_and_duplicates_once(tmp_path, cache_dir, capsys):
    rng = np.random.default_rng(0)
    uids = random_hex_uids(20)
    img, txt = unit_rows(rng, 20, 768), unit_rows(rng, 20, 768)
    txt[:10] = img[:10]  # ten perfect pairs: the best scores
    img[0, 3] = np.nan
    txt[1, 0] = np.inf
    write_shard(str(tmp_path / "pool"), "a", uids, {"l14_img": img, "l14_txt": txt})
    # shard b repeats two uids of shard a (one of them a perfect pair)
    write_shard(str(tmp_path / "pool"), "b", [uids[2], uids[15], *random_hex_uids(3, seed=9)],
                {"l14_img": unit_rows(rng, 5, 768), "l14_txt": unit_rows(rng, 5, 768)})
    out = tmp_path / "out.npy"
    assert run_cli("--name", "negcliploss", "--metadata_dir", str(tmp_path / "pool"), "--fraction", "0.5",
                   "--save_path", str(out)) == 0
    line = capsys.readouterr().out
    assert "kept 11 of 23 samples" in line and "2 not scorable" in line and "2 duplicate uids" in line
    kept = set(map(tuple, np.load(out).tolist()))
    nonfinite = set(hex_to_uid_list(uids[:2]))
    assert not kept & nonfinite
    assert set(hex_to_uid_list(uids[2:10])) <= kept  # the remaining perfect pairs are the best
    assert len(np.load(out)) == 11


BAD_INPUTS = [
    (["--fraction", "0"], "--fraction 0.0: must be in (0, 1]"),
    (["--fraction", "1.5"], "--fraction 1.5: must be in (0, 1]"),
    (["--fraction", "0.3", "--threshold", "0.1"], "exactly one of --fraction and --threshold"),
    ([], "exactly one of --fraction and --threshold"),
    (["--fraction", "0.3", "--save_path", "/nonexistent-dir/out.npy"], "folder /nonexistent-dir does not exist"),
]


@pytest.mark.parametrize("extra,message", BAD_INPUTS)
def test_bad_flags(tmp_path, cache_dir, capsys, extra, message):
    make_pool(str(tmp_path / "pool"), [10])
    out = tmp_path / "out.npy"
    args = ["--name", "negcliploss", "--metadata_dir", str(tmp_path / "pool")]
    if "--save_path" not in extra:
        args += ["--save_path", str(out)]
    assert run_cli(*args, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()
    assert not os.path.exists(cache_dir)  # flags fail before any heavy work


def test_unwritable_save_path_fails_first(tmp_path, cache_dir, capsys):
    if os.geteuid() == 0:
        target = tmp_path / "adir"
        target.mkdir()
        save = str(target)  # a directory is unwritable as a file, even for root
        message = "is a directory"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        save = str(locked / "out.npy")
        message = "cannot write"
    make_pool(str(tmp_path / "pool"), [10])
    assert run_cli("--name", "negcliploss", "--metadata_dir", str(tmp_path / "pool"), "--fraction", "0.3",
                   "--save_path", save) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(cache_dir)


def bad_pool_cases(tmp_path):
    rng = np.random.default_rng(0)
    good = {"l14_img": unit_rows(rng, 4, 768), "l14_txt": unit_rows(rng, 4, 768)}
    cases = {}
    cases["missing dir"] = (str(tmp_path / "nope"), "no such directory")
    (tmp_path / "empty").mkdir()
    cases["empty dir"] = (str(tmp_path / "empty"), "no .parquet files")
    write_shard(str(tmp_path / "nonpz"), "s", random_hex_uids(4), good)
    (tmp_path / "nonpz" / "s.npz").unlink()
    cases["parquet without npz"] = (str(tmp_path / "nonpz"), "s.parquet: no matching s.npz")
    write_shard(str(tmp_path / "nokey"), "s", random_hex_uids(4), {"b32_img": good["l14_img"][:, :512]})
    cases["npz lacks key"] = (str(tmp_path / "nokey"), "s.npz: no array 'l14_img'; it has ['b32_img']")
    write_shard(str(tmp_path / "rows"), "s", random_hex_uids(5), good)
    cases["row mismatch"] = (str(tmp_path / "rows"), "has 4 rows but")
    write_shard(str(tmp_path / "baduid"), "s", ["zz", *random_hex_uids(3)], good)
    cases["malformed uid"] = (str(tmp_path / "baduid"), "s.parquet: malformed uid 'zz' at row 0")
    write_shard(str(tmp_path / "dim"), "s", random_hex_uids(4),
                {"l14_img": good["l14_img"][:, :500], "l14_txt": good["l14_txt"][:, :500]})
    cases["wrong dim"] = (str(tmp_path / "dim"), "has dimension 500, expected 768")
    return cases


def test_bad_pools(tmp_path, cache_dir, capsys):
    for name, (folder, message) in bad_pool_cases(tmp_path).items():
        out = tmp_path / "out.npy"
        assert run_cli("--name", "negcliploss", "--metadata_dir", folder, "--fraction", "0.5",
                       "--save_path", str(out)) == 2, name
        err = capsys.readouterr().err
        assert message in err, (name, err)
        assert "Traceback" not in err
        assert not out.exists(), name


def test_memory_url_end_to_end(tmp_path, cache_dir):
    import fsspec
    fs = fsspec.filesystem("memory")
    rng = np.random.default_rng(1)
    hexes = random_hex_uids(12)
    img = unit_rows(rng, 12, 768)
    write_shard("/mempool", "s0", hexes, {"l14_img": img, "l14_txt": img}, fs=fs)
    out = tmp_path / "out.npy"
    assert run_cli("--name", "negcliploss", "--metadata_dir", "memory://mempool", "--fraction", "1",
                   "--save_path", str(out)) == 0
    assert np.load(out).tolist() == hex_to_uid_list(hexes)


@pytest.mark.slow  # interrupts a real run in a subprocess
def test_interrupted_run_leaves_no_uid_file(tmp_path, cache_dir):
    make_pool(str(tmp_path / "pool"), [3000] * 6)
    out = tmp_path / "out.npy"
    proc = subprocess.Popen([sys.executable, "-m", "datacomp_plugins", "filter", "--name", "negcliploss",
                             "--metadata_dir", str(tmp_path / "pool"), "--fraction", "0.3", "--save_path",
                             str(out), "--no_progress"], env={**os.environ, "DATACOMP_PLUGINS_CACHE": cache_dir})
    deadline = time.time() + 60
    while time.time() < deadline and not any(
            n.startswith("negcliploss") and n.endswith(".npy") for _, _, files in os.walk(cache_dir) for n in files):
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert not out.exists()
    assert [n for n in os.listdir(tmp_path) if "out" in n] == []


def test_toy_pool_negcliploss_keeps_fewer_generic_captions(tmp_path, cache_dir):
    assert main(["toy-pool", str(tmp_path / "toy"), "--shards", "3", "--rows", "3000"]) == 0
    labels = pq.read_table(tmp_path / "toy" / "labels.parquet")
    uids = parse_hex(labels["uid"])
    generic = labels["component"].to_numpy(zero_copy_only=False) == "generic"
    kept = {}
    for name in ("clip_score", "negcliploss"):
        out = tmp_path / f"{name}.npy"
        assert run_cli("--name", name, "--metadata_dir", str(tmp_path / "toy" / "metadata"),
                       "--fraction", "0.3", "--save_path", str(out)) == 0
        selected = np.isin(uids.view("V16"), np.load(out).view("V16"))
        kept[name] = int((selected & generic).sum())
    assert kept["negcliploss"] < 0.75 * kept["clip_score"]
