"""The score math against an independent float64 brute force on tiny shards."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from datacomp_plugins.scores.metrics import clip_score, negcliploss, normalisation_term
from datacomp_plugins.scores.negcliploss import partition


def brute_r(img: np.ndarray, txt: np.ndarray, batch: np.ndarray, tau: float, reference: int) -> dict[int, float]:
    """R_B(i) straight from the formula, float64, Python sums (log-mean-exp scaled to ``reference``)."""
    out = {}
    for i in batch:
        row = sum(math.exp(float(img[i] @ txt[j]) / tau) for j in batch)
        col = sum(math.exp(float(img[j] @ txt[i]) / tau) for j in batch)
        scale = reference / len(batch)
        out[int(i)] = tau / 2 * (math.log(row * scale) + math.log(col * scale))
    return out


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("block_rows", [1, 3, 64])
def test_whole_shard_batch_matches_brute_force(block_rows):
    rng = np.random.default_rng(1)
    img, txt = unit(rng, 13, 8), unit(rng, 13, 8)
    txt[:5] = img[:5]  # similarity 1.0 at tau=0.01: exp(100) would overflow float32
    tau = 0.01
    got = negcliploss(torch.tensor(img, dtype=torch.float32), torch.tensor(txt, dtype=torch.float32),
                      [[torch.arange(13)]], tau, 13, block_rows).numpy()
    brute = brute_r(img, txt, np.arange(13), tau, 13)
    want = np.array([float(img[i] @ txt[i]) - brute[i] for i in range(13)])
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_random_batches_match_brute_force_over_the_same_batches():
    rng = np.random.default_rng(2)
    n, d, tau, size = 23, 6, 0.07, 8
    img, txt = unit(rng, n, d), unit(rng, n, d)
    rounds = [partition(n, size, np.random.default_rng(seed)) for seed in range(4)]
    got = negcliploss(torch.tensor(img, dtype=torch.float64), torch.tensor(txt, dtype=torch.float64),
                      [[torch.from_numpy(b) for b in r] for r in rounds], tau, size, 5).numpy()
    total = np.zeros(n)
    for batches in rounds:
        for batch in batches:
            for i, r in brute_r(img, txt, batch, tau, size).items():
                total[i] += r
    want = (img * txt).sum(1) - total / len(rounds)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


def test_column_far_below_the_block_maximum_is_exact():
    """A text that matches nothing, next to a perfect pair: its column sum would underflow a shared shift."""
    d = 4
    img = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]])
    txt = np.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0], [0, 0, 0, 1.0]])
    tau = 0.01
    got = normalisation_term(torch.tensor(img, dtype=torch.float32), torch.tensor(txt, dtype=torch.float32),
                             [torch.arange(3)], tau, 3, block_rows=3).numpy()
    brute = brute_r(img, txt, np.arange(3), tau, 3)
    np.testing.assert_allclose(got, [brute[i] for i in range(3)], rtol=1e-6)
    assert d == img.shape[1]


def test_clip_score_is_the_dot_product():
    rng = np.random.default_rng(3)
    img, txt = unit(rng, 5, 7), unit(rng, 5, 7)
    got = clip_score(torch.tensor(img), torch.tensor(txt)).numpy()
    np.testing.assert_allclose(got, [sum(img[i, k] * txt[i, k] for k in range(7)) for i in range(5)])


@pytest.mark.parametrize("n,size", [(10, 3), (10, 10), (10, 64), (33, 8), (1, 5)])
def test_partition_is_a_partition_into_near_equal_batches(n, size):
    batches = partition(n, size, np.random.default_rng(0))
    joined = np.concatenate(batches)
    assert sorted(joined.tolist()) == list(range(n))
    sizes = [len(b) for b in batches]
    assert max(sizes) <= max(size, 1) or len(batches) == 1
    assert max(sizes) - min(sizes) <= 1
    assert len(batches) == max(1, math.ceil(n / size))


def test_short_batches_are_not_biased_towards_smaller_penalties():
    """Rescaled log-mean-exp: the mean R over batches of size b is close to that of size B (same data)."""
    rng = np.random.default_rng(4)
    n, d, tau = 4096, 32, 0.07
    img, txt = unit(rng, n, d), unit(rng, n, d)
    f, g = torch.tensor(img, dtype=torch.float64), torch.tensor(txt, dtype=torch.float64)
    full = normalisation_term(f, g, [torch.arange(i, i + 1024) for i in range(0, n, 1024)], tau, 1024)
    short = normalisation_term(f, g, [torch.arange(i, i + 683) for i in range(0, 683 * 5, 683)], tau, 1024)
    plain_short = normalisation_term(f, g, [torch.arange(i, i + 683) for i in range(0, 683 * 5, 683)], tau, 683)
    bias = float(full.nanmean() - short.nanmean())
    uncorrected = float(full.nanmean() - plain_short.nanmean())
    assert abs(bias) < 0.1 * abs(uncorrected)
    assert uncorrected == pytest.approx(tau * math.log(1024 / 683), rel=0.05)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_products_stay_close_to_float64(dtype):
    """Only the product is rounded (sims to ~2^-9 for bf16): scores move by a few 1e-3 at τ=0.01."""
    rng = np.random.default_rng(7)
    n, d, tau = 96, 64, 0.01
    img = unit(rng, n, d)
    weight = rng.uniform(0.1, 0.9, (n, 1))  # pair similarities spread over ~0.1-0.9
    noise = unit(rng, n, d)
    noise -= (noise * img).sum(1, keepdims=True) * img
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    txt = weight * img + np.sqrt(1 - weight**2) * noise
    txt[:3] = img[:3]  # similarity 1.0: no overflow in any precision
    exact = np.array([float(img[i] @ txt[i]) for i in range(n)])
    brute = brute_r(img, txt, np.arange(n), tau, n)
    exact -= np.array([brute[i] for i in range(n)])
    got = negcliploss(torch.tensor(img, dtype=torch.float32), torch.tensor(txt, dtype=torch.float32),
                      [[torch.arange(n)]], tau, n, 32, dtype).numpy()
    assert np.isfinite(got).all()
    assert np.abs(got - exact).max() < (5e-3 if dtype == torch.bfloat16 else 1e-3)


def test_rows_and_columns_that_underflow_the_shift_are_exact():
    """Similarities of -1 at τ=0.01 sit ~114 below the constant shift: their exps underflow to 0."""
    img = np.array([[-1.0, 0.0], [0.6, 0.8], [0.8, 0.6]])
    txt = np.array([[1.0, 0.0], [1.0, 0.0], [-0.6, -0.8]])  # image 0 matches nothing; so does text 2
    tau = 0.01
    got = normalisation_term(torch.tensor(img, dtype=torch.float32), torch.tensor(txt, dtype=torch.float32),
                             [torch.arange(3)], tau, 3, block_rows=256).numpy()
    brute = brute_r(img, txt, np.arange(3), tau, 3)
    np.testing.assert_allclose(got, [brute[i] for i in range(3)], rtol=1e-6)


def test_block_size_changes_no_bit():
    rng = np.random.default_rng(8)
    img = torch.tensor(unit(rng, 700, 16), dtype=torch.float32)
    txt = torch.tensor(unit(rng, 700, 16), dtype=torch.float32)
    results = [normalisation_term(img, txt, [torch.arange(700)], 0.01, 700, rows) for rows in (256, 512, 1024)]
    assert all(torch.equal(results[0], r) for r in results[1:])


@pytest.mark.parametrize("n", [60, 300, 1100])
@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16])
def test_thread_count_changes_no_bit(n, dtype):
    """Workers split the cores: a score must not depend on how many threads computed it."""
    rng = np.random.default_rng(n)
    img = torch.tensor(unit(rng, n, 768), dtype=torch.float32)
    txt = torch.tensor(unit(rng, n, 768), dtype=torch.float32)
    halves = [torch.from_numpy(b) for b in partition(n, n // 2 + 1, rng)]  # gathered batches too
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(torch.stack([negcliploss(img, txt, [[torch.arange(n)], halves], 0.01, n, 512, dtype),
                                        negcliploss(img, txt, [halves], 0.01, n // 2, 0, dtype)]))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16])
def test_block_size_changes_no_bit_in_any_precision(dtype):
    """Several blocks per batch (with a short last block), one block, and the automatic size: same bits."""
    rng = np.random.default_rng(7)
    n, d, tau = 1100, 32, 0.01
    img = torch.tensor(unit(rng, n, d), dtype=torch.float32)
    txt = torch.tensor(unit(rng, n, d), dtype=torch.float32)
    batches = [[torch.arange(n)]]
    results = [negcliploss(img, txt, batches, tau, n, rows, dtype) for rows in (256, 512, 768, 4096, 0)]
    for other in results[1:]:
        assert torch.equal(results[0], other)
    if dtype is None:  # and they are right: float64 on the same batch
        f, g = img.double(), txt.double()
        logits = f @ g.T / tau
        want = (f * g).sum(1) - tau / 2 * (torch.logsumexp(logits, 1) + torch.logsumexp(logits, 0))
        torch.testing.assert_close(results[0].double(), want, rtol=0, atol=5e-6)


def test_chunked_clip_score_is_the_same_bits():
    rng = np.random.default_rng(11)
    img, txt = unit(rng, 10, 768), unit(rng, 10, 768)
    f, g = torch.tensor(img, dtype=torch.float32), torch.tensor(txt, dtype=torch.float32)
    chunked = clip_score(f, g, chunk=3)  # 3 + 3 + 3 + 1 rows
    assert torch.equal(chunked, clip_score(f, g))
    np.testing.assert_allclose(chunked.numpy(), (img * txt).sum(1), atol=1e-6)
