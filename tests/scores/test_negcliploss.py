"""scores/negcliploss.py's batching, against its contract worked by hand: ceil(n/B) batches (one when n <= B),
sizes differing by at most one, every row exactly once; and the score of a shard of at most B rows is that of
one whole batch, whatever the seed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import unit_rows
from negcliploss_brute import brute_negcliploss

from datacomp_plugins.scores.negcliploss import NegCLIPLossScore, partition


@pytest.mark.parametrize(("n", "batch_size", "sizes"), [
    (5, 16, [5]), (16, 16, [16]), (1, 1, [1]), (0, 4, [0]),  # at most B rows: one batch (an empty one for n = 0)
    (17, 16, [9, 8]), (50, 16, [13, 13, 12, 12]), (7, 2, [2, 2, 2, 1]), (3, 1, [1, 1, 1]),
])
def test_partition_sizes_worked_by_hand(n, batch_size, sizes):
    parts = partition(n, batch_size, np.random.default_rng(0))
    assert sorted((len(p) for p in parts), reverse=True) == sizes
    assert len(parts) == max(1, math.ceil(n / batch_size))
    assert sorted(np.concatenate(parts).tolist()) == list(range(n))


@pytest.mark.parametrize("seed", range(5))
def test_partition_is_a_random_partition_of_every_row(seed):
    rng = np.random.default_rng(seed)
    n, batch_size = int(rng.integers(1, 300)), int(rng.integers(1, 40))
    parts = partition(n, batch_size, rng)
    sizes = [len(p) for p in parts]
    assert len(parts) == max(1, -(-n // batch_size)) and max(sizes) - min(sizes) <= 1 and max(sizes) <= batch_size
    assert sorted(np.concatenate(parts).tolist()) == list(range(n))


class _Stem:
    stem = "00000007"


@pytest.mark.parametrize("n", [2, 9, 16])
def test_a_shard_of_at_most_b_rows_is_one_batch_whatever_the_seed(n):
    """No randomness at all: the same bits for every seed (the rows in their stored order), and the value of
    one whole batch."""
    rng = np.random.default_rng(n)
    img = unit_rows(rng, n, 64)
    txt = unit_rows(rng, n, 64)
    want = brute_negcliploss(img, txt, [[np.arange(n)]], 0.05, 16)
    got = [NegCLIPLossScore(num_batches=3, batch_size=16, temperature=0.05, seed=seed).compute(
        _Stem(), {}, {"l14_img": img, "l14_txt": txt}) for seed in (0, 1, 12345)]
    assert all(g.tobytes() == got[0].tobytes() for g in got)
    assert np.abs(got[0].astype(np.float64) - want).max() < 2e-5


class _Shard:
    fingerprint = "a shard's identity"


def test_cache_key_follows_the_values_not_the_block_size():
    """The block size changes memory and speed, never a bit, so the cache is shared across it; every setting
    that changes the values changes the key."""
    base = NegCLIPLossScore()
    assert NegCLIPLossScore(block_rows=256).key(_Shard()) == base.key(_Shard())
    for changed in (dict(num_batches=9), dict(batch_size=1024), dict(temperature=0.02), dict(seed=1),
                    dict(precision="bf16"), dict(arch="b32")):
        assert NegCLIPLossScore(**changed).key(_Shard()) != base.key(_Shard()), changed
