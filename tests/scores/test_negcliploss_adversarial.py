"""negCLIPLoss attacked with shards larger and smaller than B, non-finite rows, B = 1 and long rows, against
an independent float64 brute force over the documented seeded batches (negcliploss_brute.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import unit_rows
from negcliploss_brute import (
    NEG,
    TOLERANCE,
    adversarial_pool,
    as_uid,
    cached_negcliploss,
    negcliploss_flags,
    score_arrays,
    shard_scores,
)

from datacomp_plugins.cli import main


def test_negcliploss_of_real_shards_equals_brute_force_over_the_seeded_batches(tmp_path, cache_dir):
    pool = str(tmp_path / "pool")
    written = adversarial_pool(pool)
    out = tmp_path / "out.npy"
    assert main([*negcliploss_flags(pool), "--save_path", str(out), "--fraction", "0.5"]) == 0
    cached = cached_negcliploss(pool, cache_dir)
    for stem, arrays in written.items():
        want = shard_scores(arrays, stem, NEG["seed"], NEG["batch"], NEG["rounds"], NEG["tau"])
        got = cached[stem]
        assert np.array_equal(np.isnan(got), np.isnan(want)), stem
        assert np.nanmax(np.abs(got - want)) < TOLERANCE, stem
        if len(arrays["uids"]) > NEG["batch"]:
            # The check can tell the documented batches from a whole-shard batch and from other seeding.
            whole = shard_scores(arrays, stem, NEG["seed"], 10**9, 1, NEG["tau"])
            other_seed = shard_scores(arrays, stem, NEG["seed"] + 1, NEG["batch"], NEG["rounds"], NEG["tau"])
            other_stem = shard_scores(arrays, stem + "x", NEG["seed"], NEG["batch"], NEG["rounds"], NEG["tau"])
            for wrong in (whole, other_seed, other_stem):
                assert np.nanmax(np.abs(wrong - want)) > 50 * TOLERANCE
    # The uid file is the brute force's top half (ties by uid), unscorable rows never counted as kept.
    hexes = [h for a in written.values() for h in a["uids"]]
    scores = np.concatenate([shard_scores(a, s, NEG["seed"], NEG["batch"], NEG["rounds"], NEG["tau"])
                             for s, a in written.items()])
    order = sorted(np.flatnonzero(np.isfinite(scores)), key=lambda i: (-scores[i], int(hexes[i], 16)))
    k = math.floor(len(hexes) * 0.5)
    assert scores[order[k - 1]] - scores[order[k]] > 2 * TOLERANCE  # the cut is decidable at this tolerance
    assert np.load(out).tolist() == sorted(as_uid(hexes[i]) for i in order[:k])


def test_seed_changes_scores_of_shards_larger_than_b_only(tmp_path, cache_dir):
    """Shards of at most B rows are one batch (no randomness), larger ones follow the seed."""
    pool = str(tmp_path / "pool")
    written = adversarial_pool(pool)
    flags = negcliploss_flags(pool)
    flags[flags.index("--seed") + 1] = "4"
    assert main([*flags, "--save_path", str(tmp_path / "o.npy"), "--fraction", "0.5"]) == 0
    from datacomp_plugins.config import FilterConfig
    from datacomp_plugins.core.cache import ScoreCache
    from datacomp_plugins.core.pool import Pool
    from datacomp_plugins.pipeline import shard_score

    pool_obj = Pool(pool)
    cache = ScoreCache(cache_dir, pool_obj)
    config = FilterConfig("negcliploss", pool, "x", negcliploss_batch_size=NEG["batch"],
                          num_batches=NEG["rounds"], temperature=NEG["tau"], seed=4)
    score = shard_score(config, "negcliploss")
    for shard in pool_obj.shards:
        arrays = written[shard.stem]
        got = np.asarray(cache.load_score(shard, score, len(arrays["uids"])), dtype=np.float64)
        want = shard_scores(arrays, shard.stem, 4, NEG["batch"], NEG["rounds"], NEG["tau"])
        assert np.nanmax(np.abs(got - want)) < TOLERANCE


def test_rows_longer_than_one_use_their_real_norms_for_the_bound():
    """|f| = 3 (e.g. unnormalised embeddings): logits reach 300 at τ = 0.01, beyond a unit-norm bound."""
    rng = np.random.default_rng(12)
    img = (unit_rows(rng, 40, 768) * 3.0).astype(np.float16)
    txt = unit_rows(rng, 40, 768)
    txt[:5] = img[:5].astype(np.float32) / 3.0  # some pairs at the top logit
    txt = txt.astype(np.float16)
    txt[7, 0] = np.nan  # and one row left out, so the scored rows are a subset
    got = score_arrays(img, txt, "s", batch_size=16, num_batches=2, temperature=0.01, seed=1)
    want = shard_scores({"l14_img": img, "l14_txt": txt}, "s", 1, 16, 2, 0.01)
    assert np.isnan(got[7]) and np.isfinite(np.delete(got, 7)).all()
    assert np.nanmax(np.abs(got - want)) < 1e-4 * np.nanmax(np.abs(want))


@pytest.mark.parametrize("finite_rows", [0, 1, 2])
def test_shards_with_at_most_two_scorable_rows(finite_rows):
    rng = np.random.default_rng(13)
    img = unit_rows(rng, 4, 768).astype(np.float16)
    txt = unit_rows(rng, 4, 768).astype(np.float16)
    img[finite_rows:, 0] = np.nan
    got = score_arrays(img, txt, "t", batch_size=1, num_batches=3, temperature=0.07, seed=0)
    want = shard_scores({"l14_img": img, "l14_txt": txt}, "t", 0, 1, 3, 0.07)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[finite_rows:]).all()
    if finite_rows:
        # B = 1: every batch is one sample, R(i) = f_i·g_i, so the score is 0 up to rounding.
        assert np.abs(got[:finite_rows]).max() < 1e-5 and np.abs(got - want)[:finite_rows].max() < 1e-5


def test_score_defaults_are_the_command_line_defaults():
    """Library defaults of the Score objects equal the flags' defaults: same cache keys either way."""
    from datacomp_plugins.config import FilterConfig
    from datacomp_plugins.pipeline import shard_score
    from datacomp_plugins.scores.clip_score import ParquetScore
    from datacomp_plugins.scores.negcliploss import NegCLIPLossScore

    config = FilterConfig("negcliploss", "pool", "out.npy")
    assert shard_score(config, "negcliploss") == NegCLIPLossScore()
    assert shard_score(config, "clip_score") == ParquetScore()
    assert (NegCLIPLossScore().num_batches, NegCLIPLossScore().batch_size, NegCLIPLossScore().temperature,
            NegCLIPLossScore().seed) == (10, 32768, 0.01, 0)  # DESIGN.md section 3: K = 10, B = 32768, τ = 0.01
