"""select/masks.datacomp_fraction_mask: DataComp's clip_score rule (apply_filter.get_threshold) against sorting
by hand: the (n+1)-th highest score is the cut-off and every eligible finite score >= it is kept; at or past
the end, every eligible finite score and no cut-off."""

from __future__ import annotations

import numpy as np
import pytest

from datacomp_plugins.select.masks import datacomp_fraction_mask


def by_sorting(values: np.ndarray, n: int, eligible: np.ndarray) -> tuple[list[bool], float | None]:
    ok = [bool(e) and bool(np.isfinite(v)) for v, e in zip(values.tolist(), eligible.tolist(), strict=True)]
    ranked = sorted((v for v, k in zip(values.tolist(), ok, strict=True) if k), reverse=True)
    if n >= len(ranked):
        return ok, None
    return [k and v >= ranked[n] for v, k in zip(values.tolist(), ok, strict=True)], ranked[n]


def test_worked_by_hand():
    """Scores 0.9 0.5 NaN 0.5 0.1 0.7 (row 5 not eligible): eligible finite ones ranked 0.9 0.5 0.5 0.1; n = 1
    -> the 2nd best, 0.5, is the cut-off and both 0.5s are kept with 0.9 (3 rows for n + 1 = 2)."""
    values = np.array([0.9, 0.5, np.nan, 0.5, 0.1, 0.7], dtype=np.float32)
    eligible = np.array([1, 1, 1, 1, 1, 0], dtype=bool)
    mask, cutoff = datacomp_fraction_mask(values, 1, eligible)
    assert mask.tolist() == [True, True, False, True, False, False] and cutoff == np.float32(0.5)
    mask, cutoff = datacomp_fraction_mask(values, 0, eligible)
    assert mask.tolist() == [True, False, False, False, False, False] and cutoff == np.float32(0.9)
    mask, cutoff = datacomp_fraction_mask(values, 3, eligible)  # the 4th best is the last: all four kept
    assert mask.tolist() == [True, True, False, True, True, False] and cutoff == np.float32(0.1)
    for past in (4, 5, 100):  # DataComp fails here; every eligible finite score is kept, and no cut-off
        mask, cutoff = datacomp_fraction_mask(values, past, eligible)
        assert mask.tolist() == [True, True, False, True, True, False] and cutoff is None


@pytest.mark.parametrize("seed", range(8))
def test_random_scores_with_ties_nan_and_ineligible_rows(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 60))
    tied = rng.choice(np.float32([0.1, 0.2, 0.2, 0.3, -1.0, np.nan, np.inf, -np.inf]), size)
    values = np.where(rng.random(size) < 0.5, tied, rng.standard_normal(size).astype(np.float32))
    eligible = rng.random(size) < 0.8
    for n in sorted({0, 1, size // 3, size // 2, size - 1, size, size + 3}):
        mask, cutoff = datacomp_fraction_mask(values, n, eligible)
        want, want_cutoff = by_sorting(values, n, eligible)
        assert mask.tolist() == want, (n, values, eligible)
        assert cutoff == want_cutoff
