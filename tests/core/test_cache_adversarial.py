"""Caches that could lie: corrupt materialised targets, moved pools, shards replaced under the same name."""

from __future__ import annotations

import io
import os
import shutil
import zipfile

import numpy as np
import pytest
from conftest import make_pool, unit_rows

from datacomp_plugins.cli import main
from datacomp_plugins.core.pool import Pool


def _target(tmp_path) -> str:
    path = str(tmp_path / "target.npy")
    np.save(path, unit_rows(np.random.default_rng(11), 40, 768))
    return path


def _materialised(cache: str, kind: str) -> str:
    found = [os.path.join(root, name) for root, _, files in os.walk(cache) for name in files
             if name.startswith(f"{kind}-") and name.endswith(".npy")]
    assert len(found) == 1, found
    return found[0]


def _corrupt_npy(path: str) -> None:
    """Rewrite a valid .npy of the same shape and dtype with other values (in place, as a bad disk or a
    careless script would): only a checksum can tell."""
    array = np.load(path)
    np.save(path, np.random.default_rng(0).standard_normal(array.shape).astype(array.dtype))


@pytest.mark.parametrize(("name", "artefact"), [("normsiminf", "target"), ("normsim2", "gram")])
def test_corrupt_materialised_target_is_recomputed_with_one_warning(tmp_path, capsys, name, artefact):
    pool = str(tmp_path / "pool")
    make_pool(pool, [300, 250, 200], seed=2)
    target = _target(tmp_path)
    cache, fresh = str(tmp_path / "cache"), str(tmp_path / "fresh")
    args = ["filter", "--name", name, "--quality_score", "clip_score", "--metadata_dir", pool, "--fraction", "0.6",
            "--normsim_fraction", "0.3", "--target", target, "--no_progress"]
    assert main([*args, "--cache_dir", cache, "--save_path", str(tmp_path / "a.npy")]) == 0
    _corrupt_npy(_materialised(cache, artefact))
    make_pool(str(tmp_path / "more"), [300, 250, 200, 280], seed=2)  # the pool grows by one shard
    shutil.copy(tmp_path / "more" / "00000003.parquet", pool)
    shutil.copy(tmp_path / "more" / "00000003.npz", pool)
    capsys.readouterr()
    assert main([*args, "--cache_dir", cache, "--save_path", str(tmp_path / "b.npy")]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and artefact in warnings[0] and "checksum" in warnings[0], err
    assert main([*args, "--cache_dir", fresh, "--save_path", str(tmp_path / "clean.npy")]) == 0
    assert (tmp_path / "b.npy").read_bytes() == (tmp_path / "clean.npy").read_bytes()
    capsys.readouterr()  # the repaired files are used without a word on the next run
    assert main([*args, "--cache_dir", cache, "--save_path", str(tmp_path / "c.npy")]) == 0
    assert "warning" not in capsys.readouterr().err


def _run(pool: str, cache: str, save: str, capsys) -> str:
    assert main(["filter", "--name", "negcliploss", "--metadata_dir", pool, "--save_path", save, "--fraction",
                 "0.4", "--negcliploss_batch_size", "128", "--num_batches", "2", "--cache_dir", cache,
                 "--no_progress"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("how", ["rename", "copy"])
def test_moved_or_copied_pool_reuses_its_cache(tmp_path, capsys, how):
    pool = str(tmp_path / "pool")
    make_pool(pool, [300, 200, 250], seed=4)
    cache = str(tmp_path / "cache")
    assert "(3 scored, 0 from cache)" in _run(pool, cache, str(tmp_path / "a.npy"), capsys)
    moved = str(tmp_path / "elsewhere" / "renamed")
    os.makedirs(os.path.dirname(moved))
    if how == "rename":
        os.rename(pool, moved)
    else:  # contents only: new modification times, new inodes
        shutil.copytree(pool, moved, copy_function=shutil.copyfile)
    assert "(0 scored, 3 from cache)" in _run(moved, cache, str(tmp_path / "b.npy"), capsys)
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()


def _swap_rows_keep_size_and_mtime(npz_path: str) -> None:
    """Same name, same size, same modification time, other content (two rows of every array swapped)."""
    stat = os.stat(npz_path)
    with np.load(npz_path) as npz:
        arrays = {k: npz[k].copy() for k in npz.files}
    for array in arrays.values():
        array[[0, 5]] = array[[5, 0]]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    assert len(buffer.getvalue()) == stat.st_size
    with open(npz_path, "wb") as handle:
        handle.write(buffer.getvalue())
    os.utime(npz_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_replaced_shard_is_not_read_from_the_cache(tmp_path, capsys):
    pool = str(tmp_path / "pool")
    make_pool(pool, [300, 200, 250], seed=6)
    cache = str(tmp_path / "cache")
    _run(pool, cache, str(tmp_path / "a.npy"), capsys)
    _swap_rows_keep_size_and_mtime(os.path.join(pool, "00000000.npz"))
    assert "(1 scored, 2 from cache)" in _run(pool, cache, str(tmp_path / "b.npy"), capsys)
    _run(pool, str(tmp_path / "fresh"), str(tmp_path / "clean.npy"), capsys)
    assert (tmp_path / "b.npy").read_bytes() == (tmp_path / "clean.npy").read_bytes()


def test_shard_identity_is_content_not_place(tmp_path):
    """Unit view of the same property: the fingerprint follows the two files' bytes, not their path or time."""
    make_pool(str(tmp_path / "a"), [50, 60], seed=1)
    shutil.copytree(tmp_path / "a", tmp_path / "b", copy_function=shutil.copyfile)
    first, second = Pool(str(tmp_path / "a")), Pool(str(tmp_path / "b"))
    assert [s.fingerprint for s in first.shards] == [s.fingerprint for s in second.shards]
    assert first.shards[0].fingerprint != first.shards[1].fingerprint
    _swap_rows_keep_size_and_mtime(str(tmp_path / "b" / "00000001.npz"))
    assert Pool(str(tmp_path / "b")).shards[1].fingerprint != first.shards[1].fingerprint
    with zipfile.ZipFile(tmp_path / "b" / "00000001.npz") as archive:  # the CRCs it relies on are real
        assert all(info.CRC for info in archive.infolist())


def test_identity_on_an_fsspec_store_without_etags(tmp_path):
    """A store whose listing has no content hash (memory://) falls back to footers: a copy keeps its identity."""
    import fsspec

    make_pool(str(tmp_path / "a"), [40, 30], seed=12)
    fs = fsspec.filesystem("memory")
    for name in os.listdir(tmp_path / "a"):
        data = (tmp_path / "a" / name).read_bytes()
        fs.pipe(f"/ident-a/{name}", data)
        fs.pipe(f"/ident-b/sub/{name}", data)
    here, there = Pool("memory://ident-a"), Pool("memory://ident-b/sub")
    assert [s.fingerprint for s in here.shards] == [s.fingerprint for s in there.shards]
    assert [s.fingerprint for s in here.shards] == [s.fingerprint for s in Pool(str(tmp_path / "a")).shards]
    fs.rm("/ident-a", recursive=True)
    fs.rm("/ident-b", recursive=True)
