"""select/streaming.py: streaming selection equals the in-memory selection (exact top-k with uid tie-breaks).

The ``filter --streaming`` runs are in tests/test_pipeline_streaming.py."""

from __future__ import annotations

import numpy as np
import pytest

from datacomp_plugins.core.uids import UID_DTYPE, sorted_unique
from datacomp_plugins.select.masks import top_k_mask
from datacomp_plugins.select.streaming import order_key, top_k_streaming


def test_order_key_preserves_float_order():
    values = np.array([-np.inf, -3.5, -1e-30, -0.0, 0.0, 1e-30, 0.25, 7.0, np.inf], dtype=np.float32)
    keys = order_key(values)
    assert (np.diff(keys.astype(np.int64)) >= 0).all()
    assert keys[3] == keys[4]  # -0.0 == 0.0 as floats, so as keys too


@pytest.mark.parametrize("seed", range(4))
def test_streaming_top_k_matches_in_memory_with_ties(seed):
    rng = np.random.default_rng(seed)
    shards = []
    for n in (50, 0, 73, 31):
        uids = np.zeros(n, dtype=UID_DTYPE)
        uids["f0"], uids["f1"] = rng.integers(0, 4, n), rng.integers(0, 2**62, n)
        scores = rng.choice(np.float32([0.1, 0.2, 0.2, 0.3, -1.0, np.nan]), n)  # heavy ties, NaN
        shards.append((uids, scores))
    all_uids = np.concatenate([u for u, _ in shards])
    all_scores = np.concatenate([s for _, s in shards])
    for k in (1, 17, 60, 140, 500):
        want = sorted_unique(all_uids[top_k_mask(all_scores, all_uids, k)])
        got = sorted_unique(top_k_streaming(lambda: iter(shards), k))
        assert got.tolist() == want.tolist()
