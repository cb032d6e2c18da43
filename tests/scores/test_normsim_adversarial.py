"""NormSim attacked with shards larger than their blocks, non-finite rows, all-zero target rows and a pickled
target matrix; values against float64 brute force.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from conftest import make_pool, unit_rows

from datacomp_plugins.cli import main
from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.scores import metrics


def test_normsim_inf_shard_larger_than_its_blocks_and_a_non_finite_row(tmp_path):
    from datacomp_plugins.scores import targets
    from datacomp_plugins.scores.normsim import NormSimScore

    rng = np.random.default_rng(4)
    image = unit_rows(rng, 37, 768).astype(np.float16)
    image[9, 7] = np.nan
    target = unit_rows(rng, 11, 768)
    key, target_path, gram_path = targets.materialise(target, str(tmp_path / "t"))
    for p in ("inf", "2"):
        score = NormSimScore(p=p, target=key, target_path=target_path, gram_path=gram_path, block_rows=8)
        got = score.compute(None, {}, {"l14_img": image})
        sims = image.astype(np.float64) @ target.astype(np.float64).T
        want = sims.max(1) if p == "inf" else np.sqrt((sims**2).sum(1))
        assert np.isnan(got[9]) and np.isfinite(np.delete(got, 9)).all()
        assert np.abs(np.delete(got - want, 9)).max() < 1e-5
    # the target itself in blocks smaller than it, including a last partial block
    tgt = torch.from_numpy(target)
    for block in (1, 4, 10, 11, 12):
        got = metrics.normsim_inf(torch.from_numpy(image[:9].astype(np.float32)), tgt, block=block).numpy()
        assert np.abs(got - (image[:9].astype(np.float64) @ target.T).max(1)).max() < 1e-5


def test_target_with_a_row_of_zeros_is_refused(tmp_path, cache_dir, capsys):
    make_pool(str(tmp_path / "pool"), [10])
    target = unit_rows(np.random.default_rng(6), 5, 768)
    target[3] = 0
    np.save(tmp_path / "target.npy", target)
    out = tmp_path / "out.npy"
    code = main(["filter", "--no_progress", "--name", "normsim2", "--metadata_dir", str(tmp_path / "pool"),
                 "--quality_score", "clip_score", "--fraction", "0.5", "--normsim_fraction", "0.2",
                 "--target", str(tmp_path / "target.npy"), "--save_path", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "target.npy: row 3 is all zeros" in err and "Traceback" not in err
    assert not out.exists()


def test_a_pickled_target_matrix_is_never_loaded(tmp_path, monkeypatch):
    from datacomp_plugins.scores.normsim import NormSimScore, _matrix

    np.save(tmp_path / "target.npy", np.array([{"not": "numbers"}], dtype=object), allow_pickle=True)
    score = NormSimScore(p="inf", target="x", target_path=str(tmp_path / "target.npy"), gram_path="")
    image = unit_rows(np.random.default_rng(15), 3, 768)
    _matrix.cache_clear()
    unpickled = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: unpickled.append(a))
    with pytest.raises(PluginError, match="materialised target"):  # read with allow_pickle=False: refused
        score.compute(None, {}, {"l14_img": image})
    assert unpickled == []
