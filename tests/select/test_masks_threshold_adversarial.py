"""threshold_mask and top_k_mask attacked with ties, NaN, -inf, k = 0 and k past the end, worked by hand.
"""

from __future__ import annotations

import numpy as np

from datacomp_plugins.core.uids import UID_DTYPE


def test_threshold_keeps_a_score_equal_to_it_and_never_nan():
    from datacomp_plugins.select.masks import threshold_mask, top_k_mask

    scores = np.array([0.5, np.nan, 0.25, 0.5, -np.inf, 0.75], dtype=np.float32)
    assert threshold_mask(scores, 0.5).tolist() == [True, False, False, True, False, True]
    assert threshold_mask(scores, 0.75, np.array([1, 1, 1, 1, 1, 0], bool)).tolist() == [False] * 6
    uids = np.array([(0, i) for i in (5, 4, 3, 2, 1, 0)], dtype=UID_DTYPE)
    # k = 2 of the finite scores: 0.75, then the tie at 0.5 goes to the smaller uid (row 3)
    assert top_k_mask(scores, uids, 2).tolist() == [False, False, False, True, False, True]
    assert top_k_mask(scores, uids, 0).tolist() == [False] * 6
    assert top_k_mask(scores, uids, 99).tolist() == [True, False, True, True, False, True]
