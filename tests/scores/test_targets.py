"""Target sets: file formats, checks, refusal of pickles, and DataComp's in1k assets with sha256."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import fake_assets, make_pool

from datacomp_plugins.cli import main
from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.scores import targets


def rows(n=6, d=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_formats_load_and_normalise(tmp_path):
    x = rows()
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "b.npz", feats=x[:2])
    torch.save({"image_features": torch.tensor(x[:3])}, tmp_path / "c.pt")
    torch.save(torch.tensor(x[:1]), tmp_path / "d.pt")
    want = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(targets.load_target(str(tmp_path / "a.npy"), "t", 8), want, rtol=1e-6)
    np.testing.assert_allclose(targets.load_target(str(tmp_path / "b.npz"), "t", 8), want[:2], rtol=1e-6)
    np.testing.assert_allclose(targets.load_target(str(tmp_path / "c.pt"), "t", 8), want[:3], rtol=1e-6)
    folder = targets.load_target(str(tmp_path), "t", 8)  # a.npy, b.npz, c.pt, d.pt in name order
    np.testing.assert_allclose(folder, np.concatenate([want, want[:2], want[:3], want[:1]]), rtol=1e-6)


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-target",))


BAD_TARGETS = {
    "missing": (lambda p: str(p / "nope.npy"), "file not found"),
    "empty": (lambda p: (np.save(p / "e.npy", np.zeros((0, 8), np.float32)), str(p / "e.npy"))[1],
              "no target rows"),
    "wrong dim": (lambda p: (np.save(p / "w.npy", rows(d=5)), str(p / "w.npy"))[1], "dimension 5 does not match"),
    "non-finite": (lambda p: (np.save(p / "n.npy", np.where(np.arange(8) == 3, np.nan, rows())),
                              str(p / "n.npy"))[1], "row 0 is not finite"),
    "pickle": (lambda p: (torch.save({"image_features": Exploit()}, p / "x.pt"), str(p / "x.pt"))[1],
               "refused to load: not a plain tensor file"),
    "npz keys": (lambda p: (np.savez(p / "k.npz", a=rows(), b=rows()), str(p / "k.npz"))[1],
                 "several arrays ['a', 'b']; choose one with --target_key"),
}


@pytest.mark.parametrize("case", sorted(BAD_TARGETS))
def test_bad_targets_through_the_cli(tmp_path, cache_dir, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    make_pool(str(tmp_path / "pool"), [20], dim=8)
    spec, message = BAD_TARGETS[case]
    target = spec(tmp_path)
    out = tmp_path / "out.npy"
    from datacomp_plugins.core import pool as pool_module  # a pool of 8-d "l14" embeddings keeps the test small

    monkeypatch.setitem(pool_module.ARCH_DIMS, "l14", 8)
    code = main(["filter", "--no_progress", "--name", "normsiminf", "--metadata_dir", str(tmp_path / "pool"),
                 "--fraction", "0.5", "--normsim_fraction", "0.2", "--target", target, "--save_path", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert not out.exists()
    assert not (tmp_path / "pwned-by-target").exists()


def test_in1k_downloads_verifies_and_reuses(tmp_path, monkeypatch):
    served = fake_assets(tmp_path, monkeypatch)
    first = targets.load_target("in1k", "l14", 768)
    assert first.shape == (15, 768)
    for f in served.iterdir():  # the cached copies are reused: the source may go away
        f.unlink()
    np.testing.assert_array_equal(targets.load_target("in1k", "l14", 768), first)
    with pytest.raises(PluginError, match="in1k: DataComp's ImageNet-1k features are L/14"):
        targets.load_target("in1k", "b32", 512)


def test_in1k_checksum_mismatch_redownloads_once_then_fails(tmp_path, monkeypatch):
    name = sorted(targets.IN1K_SHA256)[2]
    fake_assets(tmp_path, monkeypatch)
    cache = tmp_path / "datacomp-cache"
    cache.mkdir()
    (cache / f"{name}.pt").write_bytes(b"stale")  # a bad cached copy is replaced by a fresh download
    assert targets.load_target("in1k", "l14", 768).shape == (15, 768)
    fake_assets(tmp_path, monkeypatch, corrupt={name})
    (cache / f"{name}.pt").write_bytes(b"stale")
    with pytest.raises(PluginError, match=f"{name}.pt does not match its sha256 .* even after a fresh download"):
        targets.load_target("in1k", "l14", 768)
