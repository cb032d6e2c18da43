"""The log-sum-exp guards of scores/metrics.py attacked with logits at the overflow bound, underflowing rows
and columns, and a row that overflows while no column does; every value against float64 brute force, and
the number of exact (slow) passes counted so a guard that fires too often fails too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import unit_rows
from negcliploss_brute import Calls, brute_r, one_batch_terms

from datacomp_plugins.scores import metrics


@pytest.mark.parametrize("n,norm", [(3, 1.0), (300, 1.0), (40, 3.0)])
def test_every_logit_at_the_bound_overflows_cleanly(monkeypatch, n, norm):
    """All logits equal M/τ (identical rows): exp of the bound overflows float32, so exactly one shifted redo."""
    u = unit_rows(np.random.default_rng(0), 1, 768)[0] * norm
    img = np.tile(u, (n, 1)).astype(np.float32)
    tau = 0.01
    calls = Calls(monkeypatch)
    got = one_batch_terms(img, img.copy(), tau)
    row, col = brute_r(img, img, tau)
    want = tau / 2 * (row + col)
    assert np.isfinite(got).all()
    assert np.abs(got - want).max() < 1e-6 * max(1.0, np.abs(want).max())
    assert calls.exp_sums == 2  # plain sums overflowed, one redo with the shift
    assert calls.exact == []  # nothing underflowed


def test_a_column_that_underflows_while_its_rows_do_not():
    """Column j's logits are all -1/τ = -200 (exp underflows float32 to 0) while every row holds +40s."""
    rng = np.random.default_rng(1)
    u = unit_rows(rng, 1, 768)[0]
    n, j, tau = 6, 2, 0.005
    img = np.tile(u, (n, 1)).astype(np.float32)
    other = unit_rows(rng, n, 768)
    other -= (other @ u)[:, None] * u  # orthogonal to u
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    txt = (0.2 * u + math.sqrt(1 - 0.04) * other).astype(np.float32)
    txt[j] = -u
    row, col = brute_r(img, txt, tau)
    assert col[j] < -190 and (row > 35).all()
    got = one_batch_terms(img, txt, tau)
    want = tau / 2 * (row + col)
    assert np.isfinite(got).all()
    assert np.abs(got - want).max() < 1e-5


def test_only_the_underflowing_column_takes_the_exact_path(monkeypatch):
    rng = np.random.default_rng(1)
    u = unit_rows(rng, 1, 768)[0]
    n, j, tau = 6, 4, 0.005
    img = np.tile(u, (n, 1)).astype(np.float32)
    other = unit_rows(rng, n, 768)
    other -= (other @ u)[:, None] * u
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    txt = (0.2 * u + math.sqrt(1 - 0.04) * other).astype(np.float32)
    txt[j] = -u
    calls = Calls(monkeypatch)
    one_batch_terms(img, txt, tau)
    assert calls.exp_sums == 1  # no overflow: no shifted redo
    assert calls.exact == [0]  # one exact column pass (reducing over rows), no row pass


@pytest.mark.parametrize("n,block_rows", [(64, 0), (700, 256)])
def test_finite_sums_are_not_recomputed(monkeypatch, n, block_rows):
    """Real-looking batches (τ = 0.01, so exp of the bound would overflow) stay on the fast path."""
    rng = np.random.default_rng(2)
    img = unit_rows(rng, n, 768)
    txt = img * 0.5 + unit_rows(rng, n, 768)
    txt = (txt / np.linalg.norm(txt, axis=1, keepdims=True)).astype(np.float32)
    tau = 0.01
    assert 1 / tau + math.log(n) >= metrics._EXP_CEILING  # the plain sums are a gamble here, and they win
    calls = Calls(monkeypatch)
    got = one_batch_terms(img, txt, tau, block_rows)
    row, col = brute_r(img, txt, tau)
    assert np.abs(got - tau / 2 * (row + col)).max() < 1e-6
    assert calls.exp_sums == 1
    assert calls.exact == []


def test_rows_below_the_guard_are_recomputed_but_not_the_rest(monkeypatch):
    """Row i's logits all ~-1/τ: only that row goes through the exact path (and is right)."""
    rng = np.random.default_rng(3)
    u = unit_rows(rng, 1, 768)[0]
    n, i, tau = 5, 1, 0.005
    txt = np.tile(u, (n, 1)).astype(np.float32)
    other = unit_rows(rng, n, 768)
    other -= (other @ u)[:, None] * u
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    img = (0.2 * u + math.sqrt(1 - 0.04) * other).astype(np.float32)
    img[i] = -u
    calls = Calls(monkeypatch)
    got = one_batch_terms(img, txt, tau)
    row, col = brute_r(img, txt, tau)
    assert np.abs(got - tau / 2 * (row + col)).max() < 1e-5
    assert calls.exact == [1]


def test_normsim_inf_of_rows_all_below_zero():
    """The running maximum must start below every similarity (a 0 start would clip negative maxima)."""
    rng = np.random.default_rng(5)
    target = unit_rows(rng, 6, 768)
    image = -target.sum(0) + 0.01 * unit_rows(rng, 3, 768)  # negative against every target row
    image = (image / np.linalg.norm(image, axis=1, keepdims=True)).astype(np.float32)
    want = (image.astype(np.float64) @ target.T).max(1)
    assert (want < 0).all()
    got = metrics.normsim_inf(torch.from_numpy(image), torch.from_numpy(target), block=4).numpy()
    assert np.abs(got - want).max() < 1e-6


@pytest.mark.parametrize("transpose", [False, True])
def test_a_row_that_overflows_while_no_column_does(monkeypatch, transpose):
    """Row 0's logits are all 87: each term fits float32, their sum of 10 does not; every column sum fits.
    One non-finite side is enough to redo the batch with the shift (and the transpose: a column alone)."""
    rng = np.random.default_rng(16)
    u = unit_rows(rng, 1, 768)[0]
    n, tau = 10, 0.01

    def orthogonal(rows: int) -> np.ndarray:
        v = unit_rows(rng, rows, 768)
        v -= (v @ u)[:, None] * u
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    img = orthogonal(n)
    img[0] = u
    txt = 0.87 * u + math.sqrt(1 - 0.87**2) * orthogonal(n)
    img, txt = img.astype(np.float32), txt.astype(np.float32)
    if transpose:
        img, txt = txt, img
    row, col = brute_r(img, txt, tau)
    side = col if transpose else row
    assert side[0] > math.log(np.finfo(np.float32).max) and (np.delete(side, 0) < 80).all()
    assert ((row if transpose else col) < 88).all()
    calls = Calls(monkeypatch)
    got = one_batch_terms(img, txt, tau)
    assert np.isfinite(got).all() and np.abs(got - tau / 2 * (row + col)).max() < 1e-5
    assert calls.exp_sums == 2
