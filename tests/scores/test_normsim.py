"""NormSim scores and the two-stage selection against float64 brute forces.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import two_stage_pool, unit_rows

from datacomp_plugins.cli import main
from datacomp_plugins.scores.metrics import normsim2, normsim_inf

STAGE_ERRORS = [
    (["--name", "normsiminf", "--fraction", "0.2", "--normsim_fraction", "0.3", "--target", "T"],
     "--relevance_fraction 0.3 is larger than --fraction 0.2"),
    (["--name", "normsim2", "--fraction", "0.3", "--normsim_fraction", "0.2"], "needs --target"),
    (["--name", "normsim_d", "--fraction", "0.3", "--normsim_fraction", "0.2", "--target", "T"],
     "--target: only for the baselines that read it (normsim2, normsiminf), not --name normsim_d"),
    (["--name", "negcliploss", "--fraction", "0.3", "--normsim_fraction", "0.2"],
     "only for the relevance baselines"),
    (["--name", "normsim2", "--fraction", "0.3", "--target", "T"],
     "exactly one of --relevance_fraction and --relevance_threshold"),
    (["--name", "normsim2", "--fraction", "0.3", "--normsim_fraction", "0", "--target", "T"],
     "--relevance_fraction 0.0: must be in (0, 1]"),
]


def test_normsim_scores_match_the_definition():
    rng = np.random.default_rng(0)
    image, target = unit_rows(rng, 9, 16).astype(np.float64), unit_rows(rng, 37, 16).astype(np.float64)
    sims = [[sum(image[i, k] * target[t, k] for k in range(16)) for t in range(37)] for i in range(9)]
    want2 = [math.sqrt(sum(s * s for s in row)) for row in sims]
    want_inf = [max(row) for row in sims]
    gram = torch.tensor(target.T @ target)
    np.testing.assert_allclose(normsim2(torch.tensor(image), gram).numpy(), want2, rtol=1e-12)
    for block in (1, 5, 37, 100):
        np.testing.assert_allclose(normsim_inf(torch.tensor(image), torch.tensor(target), block).numpy(),
                                   want_inf, rtol=1e-12)


def test_normsim2_cost_does_not_depend_on_target_size():
    """Same score from the Gram of a target and of the target repeated: only Σ h hᵀ matters."""
    rng = np.random.default_rng(1)
    image, target = unit_rows(rng, 5, 8).astype(np.float64), unit_rows(rng, 4, 8).astype(np.float64)
    doubled = np.concatenate([target, target])
    a = normsim2(torch.tensor(image), torch.tensor(target.T @ target)).numpy()
    b = normsim2(torch.tensor(image), torch.tensor(doubled.T @ doubled)).numpy()
    np.testing.assert_allclose(b, a * math.sqrt(2), rtol=1e-12)


@pytest.mark.parametrize("name", ["normsim2", "normsiminf"])
def test_two_stage_selection_matches_brute_force(tmp_path, cache_dir, name):
    shards, target = two_stage_pool(tmp_path)
    out = tmp_path / "out.npy"
    assert main(["filter", "--no_progress", "--name", name, "--metadata_dir", str(tmp_path / "pool"),
                 "--quality_score", "clip_score", "--fraction", "0.6", "--normsim_fraction", "0.3",
                 "--target", str(tmp_path / "target.npy"), "--save_path", str(out)]) == 0
    hexes = [h for s in shards for h in s[0]]
    img = np.concatenate([s[1] for s in shards]).astype(np.float64)
    quality = np.concatenate([s[2] for s in shards])
    n = len(hexes)
    order = sorted(range(n), key=lambda i: (-quality[i], int(hexes[i], 16)))
    survivors = order[: math.floor(n * 0.6)]
    sims = img @ target.T
    relevance = np.sqrt((sims**2).sum(1)) if name == "normsim2" else sims.max(1)
    final = sorted(survivors, key=lambda i: (-relevance[i], int(hexes[i], 16)))[: math.floor(n * 0.3)]
    assert np.load(out).tolist() == sorted(divmod(int(hexes[i], 16), 2**64) for i in final)


def test_target_change_invalidates_only_normsim(tmp_path, cache_dir, capsys):
    shards, target = two_stage_pool(tmp_path)
    args = ["filter", "--no_progress", "--name", "normsiminf", "--metadata_dir", str(tmp_path / "pool"),
            "--fraction", "0.6", "--normsim_fraction", "0.3", "--target", str(tmp_path / "target.npy"),
            "--save_path", str(tmp_path / "o.npy")]
    assert main(args) == 0
    assert "(2 scored" in capsys.readouterr().out
    np.save(tmp_path / "target.npy", target[:5])
    assert main(args) == 0
    assert "(2 scored" in capsys.readouterr().out
    assert main(args) == 0
    assert "(0 scored, 2 from cache)" in capsys.readouterr().out


@pytest.mark.parametrize("extra,message", STAGE_ERRORS)
def test_stage_flag_errors(tmp_path, cache_dir, capsys, extra, message):
    two_stage_pool(tmp_path)
    extra = [str(tmp_path / "target.npy") if a == "T" else a for a in extra]
    out = tmp_path / "out.npy"
    assert main(["filter", "--no_progress", "--metadata_dir", str(tmp_path / "pool"), "--save_path", str(out),
                 *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()
