"""The CUDA path agrees with the CPU path (skipped cleanly where no GPU is visible)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_pool

from datacomp_plugins.cli import main
from datacomp_plugins.scores.metrics import negcliploss, normsim_inf

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_scores_on_cuda_match_cpu():
    rng = np.random.default_rng(0)
    img = torch.nn.functional.normalize(torch.tensor(rng.standard_normal((512, 768)), dtype=torch.float32), dim=1)
    txt = torch.nn.functional.normalize(img + 0.5 * torch.randn(512, 768), dim=1)
    rounds = [[torch.arange(256), torch.arange(256, 512)]]
    cpu = negcliploss(img, txt, rounds, 0.01, 256, 128)
    gpu = negcliploss(img.cuda(), txt.cuda(), [[b.cuda() for b in rounds[0]]], 0.01, 256, 128).cpu()
    torch.testing.assert_close(gpu, cpu, atol=2e-5, rtol=0)
    target = torch.nn.functional.normalize(torch.randn(3000, 768), dim=1)
    torch.testing.assert_close(normsim_inf(img.cuda(), target.cuda()).cpu(), normsim_inf(img, target),
                               atol=1e-5, rtol=0)


def test_filter_on_one_gpu_selects_like_cpu(tmp_path, cache_dir):
    make_pool(str(tmp_path / "pool"), [600, 400])
    kept = {}
    for gpus in ("0", "1"):
        out = tmp_path / f"g{gpus}.npy"
        assert main(["filter", "--no_progress", "--name", "negcliploss", "--metadata_dir", str(tmp_path / "pool"),
                     "--fraction", "0.3", "--num_gpus", gpus, "--negcliploss_batch_size", "256",
                     "--save_path", str(out)]) == 0
        kept[gpus] = set(map(tuple, np.load(out).tolist()))
    assert len(kept["0"] & kept["1"]) >= 0.99 * len(kept["0"])
