"""Selection against brute-force sorting, including ties, NaN and duplicate uids."""

from __future__ import annotations

import math

import numpy as np
import pytest

from datacomp_plugins.core.uids import UID_DTYPE
from datacomp_plugins.select.masks import first_occurrence, threshold_mask, top_k_mask


def brute_top_k(scores, uids, k):
    order = sorted((i for i in range(len(scores)) if math.isfinite(scores[i])),
                   key=lambda i: (-scores[i], int(uids[i][0]), int(uids[i][1])))
    return set(order[:k])


@pytest.mark.parametrize("seed", range(5))
def test_top_k_with_many_ties_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 200
    scores = rng.integers(0, 6, n).astype(np.float32)  # heavy ties
    scores[rng.integers(0, n, 10)] = np.nan
    uids = np.zeros(n, dtype=UID_DTYPE)
    uids["f0"] = rng.integers(0, 3, n)
    uids["f1"] = rng.permutation(n)
    for k in (0, 1, 37, 100, 189, 190, 250):
        got = set(np.flatnonzero(top_k_mask(scores, uids, k)).tolist())
        assert got == brute_top_k(scores, uids, k)


def test_top_k_respects_eligibility_and_threshold_ignores_nan():
    scores = np.array([5, 4, 3, np.nan, 1], dtype=np.float32)
    uids = np.array([(0, i) for i in range(5)], dtype=UID_DTYPE)
    eligible = np.array([False, True, True, True, True])
    assert top_k_mask(scores, uids, 2, eligible).tolist() == [False, True, True, False, False]
    assert threshold_mask(scores, 3.0).tolist() == [True, True, True, False, False]


def test_first_occurrence_keeps_first_copy():
    uids = np.array([(1, 1), (2, 2), (1, 1), (3, 3), (2, 2), (1, 1)], dtype=UID_DTYPE)
    assert first_occurrence(uids).tolist() == [True, True, False, True, False, False]
    assert first_occurrence(uids[:2]).tolist() == [True, True]


def test_first_occurrence_verifies_key_collisions_exactly():
    """Two different uids built to share the 64-bit sort key are both kept; true repeats are not."""
    mix, mask = 0x9E3779B97F4A7C15, 2**64 - 1
    lo1, lo2, hi1 = 12345, 67890, 2**63 + 7
    hi2 = hi1 ^ ((lo1 * mix) & mask) ^ ((lo2 * mix) & mask)
    uids = np.array([(hi1, lo1), (hi2, lo2), (5, 5), (hi2, lo2), (hi1, lo1)], dtype=UID_DTYPE)
    assert first_occurrence(uids).tolist() == [True, True, True, False, False]
    rng = np.random.default_rng(0)
    big = np.zeros(5000, dtype=UID_DTYPE)
    big["f0"], big["f1"] = rng.integers(0, 40, 5000), rng.integers(0, 40, 5000)
    seen, want = set(), []
    for row in big.tolist():
        want.append(row not in seen)
        seen.add(row)
    assert first_occurrence(big).tolist() == want
