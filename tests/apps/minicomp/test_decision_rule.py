"""The decision rule's statistics against tables, closed forms, hand-worked examples and exhaustive enumeration."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from datacomp_plugins.apps.minicomp import claims, stats

# ---------------------------------------------------------------- Student's t


# one-sided critical values t_{p, df} from a printed t table (4 decimals)
T_TABLE = {
    (0.95, 1): 6.3138, (0.95, 2): 2.9200, (0.95, 4): 2.1318, (0.95, 9): 1.8331,
    (0.975, 1): 12.7062, (0.975, 2): 4.3027, (0.975, 4): 2.7764, (0.975, 9): 2.2622,
    (0.80, 2): 1.0607, (0.80, 4): 0.9410, (0.80, 9): 0.8834, (0.99, 9): 2.8214,
}


@pytest.mark.parametrize(("p", "df"), sorted(T_TABLE))
def test_t_quantile_matches_a_printed_table(p, df):
    assert stats.t_quantile(p, df) == pytest.approx(T_TABLE[(p, df)], abs=6e-5)
    assert stats.t_quantile(1 - p, df) == pytest.approx(-T_TABLE[(p, df)], abs=6e-5)


def test_t_cdf_matches_the_closed_forms_of_one_and_two_degrees_of_freedom():
    for t in (-30.0, -3.0, -0.7, 0.0, 0.2, 1.0, 2.5, 9.0, 400.0):
        assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)  # Cauchy
        assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    for p in (0.01, 0.2, 0.6, 0.9, 0.999):
        assert stats.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
        assert stats.t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)


def test_t_tends_to_the_normal_for_many_degrees_of_freedom():
    assert stats.t_quantile(0.95, 10**7) == pytest.approx(1.644854, abs=1e-5)
    assert stats.t_quantile(0.80, 10**7) == pytest.approx(0.841621, abs=1e-5)


def test_incomplete_beta_against_integer_closed_forms():
    # I_x(1, b) = 1 - (1 - x)^b and I_x(a, 1) = x^a
    for x in (0.05, 0.3, 0.5, 0.77, 0.99):
        assert stats.incomplete_beta(1, 4, x) == pytest.approx(1 - (1 - x) ** 4, abs=1e-13)
        assert stats.incomplete_beta(3, 1, x) == pytest.approx(x**3, abs=1e-13)
    with pytest.raises(ValueError, match="expected a, b > 0"):
        stats.incomplete_beta(0, 1, 0.5)


# ---------------------------------------------------------------- the paired t-test


def test_paired_t_hand_worked():
    # d = 1, 2, 3: mean 2, sd 1, SE 1/sqrt(3); t = 2 sqrt(3) = 3.4641 > 2.9200 -> rejected at 0.05
    t = stats.paired_t([1.0, 2.0, 3.0])
    assert (t.n, t.mean, t.sd) == (3, 2.0, 1.0)
    assert t.t == pytest.approx(2 * math.sqrt(3))
    assert t.lower == pytest.approx(2.0 - 2.919986 / math.sqrt(3), abs=1e-5)  # 0.3141 > 0
    # p = P(T_2 > 2 sqrt 3) = 1/2 - t / (2 sqrt(2 + t^2)) = 1/2 - 3.4641 / (2 * 3.7417) = 0.037086
    assert t.p == pytest.approx(0.5 - 2 * math.sqrt(3) / (2 * math.sqrt(14)), abs=1e-12)
    # the old rule's example that held with mean > 2 SE: d = 0.5, 2, 2.5 (mean 1.667, SE 0.601, 2 SE 1.20)
    # is rejected at 2.92 SE = 1.755 > 1.667: not held under the new rule
    old = stats.paired_t([0.5, 2.0, 2.5])
    assert old.mean > 2 * old.se and old.p > stats.ALPHA and old.lower < 0


def test_paired_t_one_seed_has_no_test_and_equal_differences_decide_by_sign():
    one = stats.paired_t([4.0])
    assert one.p is None and one.lower is None and one.mean == 4.0
    assert stats.paired_t([1.0, 1.0]).p == 0.0 and stats.paired_t([-1.0, -1.0]).p == 1.0


# ---------------------------------------------------------------- Holm


def test_holm_hand_worked():
    # m = 4 at 0.05: sorted 0.005 <= 0.0125 yes, 0.01 <= 0.0167 yes, 0.03 <= 0.025 no -> stop
    rejected, adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert rejected == [True, False, False, True]
    # adjusted: 4*0.005 = 0.02, max(0.02, 3*0.01) = 0.03, max(0.03, 2*0.03) = 0.06, max(0.06, 0.04) = 0.06
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # stepping down stops at the first failure even if a later p is small enough for its own level
    assert stats.holm([0.02, 0.03])[0] == [True, True]
    assert stats.holm([0.04, 0.03])[0] == [False, False]  # 0.03 > 0.025 stops before 0.04 <= 0.05
    assert stats.holm([]) == ([], [])


def test_holm_rejects_what_bonferroni_step_down_by_brute_force_rejects():
    rng = np.random.default_rng(3)
    for _ in range(300):
        p = list(rng.uniform(0, 0.08, size=int(rng.integers(1, 7))))
        m = len(p)
        expected = [False] * m
        for rank, i in enumerate(sorted(range(m), key=lambda j: p[j])):
            if p[i] > 0.05 / (m - rank):
                break
            expected[i] = True
        assert stats.holm(p)[0] == expected
        rejected, adjusted = stats.holm(p)
        assert [a <= 0.05 for a in adjusted] == rejected  # adjusted p <= alpha exactly when rejected


# ---------------------------------------------------------------- the paired bootstrap


def _students(per_seed_tasks):
    return [{task: np.asarray(values, dtype=bool) for task, values in tasks.items()} for tasks in per_seed_tasks]


def _exact_one_seed(diffs):
    """Every index tuple of the n images, equally likely: the exact bootstrap distribution (points)."""
    n = len(diffs)
    counts = Counter(Fraction(sum(diffs[i] for i in index), n) * 100 for index in itertools.product(range(n),
                                                                                                  repeat=n))
    return {value: Fraction(c, n**n) for value, c in counts.items()}


def _exact_two_seeds(d_seed0, d_seed1):
    """Two seeds, one task of n images: seed tuples (4) x image tuples (n^n), each equally likely."""
    n = len(d_seed0)
    rows = (d_seed0, d_seed1)
    counts = Counter()
    for seeds in itertools.product(range(2), repeat=2):
        for index in itertools.product(range(n), repeat=n):
            value = sum(Fraction(sum(rows[s][i] for i in index), n) for s in seeds) / 2
            counts[value * 100] += 1
    total = 4 * n**n
    return {value: Fraction(c, total) for value, c in counts.items()}


def _quantile(exact, q):
    """Inverted CDF of an exact discrete distribution: the smallest value whose CDF reaches q."""
    cumulative = Fraction(0)
    for value in sorted(exact):
        cumulative += exact[value]
        if cumulative >= q:
            return value
    raise AssertionError


def _check_against_exact(draws, exact, resamples):
    found = Counter(np.round(draws, 9))
    assert set(found) <= {round(float(v), 9) for v in exact}  # no value the enumeration cannot produce
    for value, probability in exact.items():
        share = found.get(round(float(value), 9), 0) / resamples
        sd = math.sqrt(float(probability) * (1 - float(probability)) / resamples)
        assert abs(share - float(probability)) <= 5 * sd + 1e-9, (value, share, float(probability))


def test_bootstrap_one_seed_matches_exhaustive_enumeration():
    a = _students([{"t": [1, 1, 0, 1]}])
    b = _students([{"t": [0, 1, 1, 0]}])  # per-image differences +1, 0, -1, +1
    exact = _exact_one_seed([1, 0, -1, 1])
    resamples = 40_000
    draws = stats.bootstrap(a, b, resamples=resamples, seed=5)
    _check_against_exact(draws, exact, resamples)
    test = stats.bootstrap_test(a, b, resamples=resamples, seed=5)
    assert test.mean == pytest.approx(25.0)
    # -50: P(<= -75) = 0.020 < 0.05 <= P(<= -50) = 0.074
    assert test.lower == pytest.approx(float(_quantile(exact, Fraction(1, 20))))
    exact_p = float(sum(p for v, p in exact.items() if v <= 0))
    assert test.p == pytest.approx(exact_p, abs=5 * math.sqrt(exact_p * (1 - exact_p) / resamples))


def test_bootstrap_two_seeds_resamples_seeds_and_shares_the_images_across_them():
    a = _students([{"t": [1, 1, 0]}, {"t": [1, 0, 0]}])
    b = _students([{"t": [0, 1, 0]}, {"t": [0, 0, 1]}])  # seed 0: +1, 0, 0; seed 1: +1, 0, -1
    exact = _exact_two_seeds([1, 0, 0], [1, 0, -1])
    resamples = 40_000
    _check_against_exact(stats.bootstrap(a, b, resamples=resamples, seed=2), exact, resamples)


def test_bootstrap_averages_tasks_unweighted():
    # one seed, two tasks of different sizes, no difference inside a task's images: the bootstrap is constant
    a = _students([{"x": [1, 1], "y": [1, 0, 0, 1]}])
    assert set(stats.bootstrap(a, resamples=50)) != {75.0}  # y's images vary: (1 + mean(y)) / 2
    constant = _students([{"x": [1, 1], "y": [0, 0, 0, 0]}])
    assert set(stats.bootstrap(constant, resamples=50)) == {50.0}
    assert stats.task_average(a[0]) == 75.0


def test_bootstrap_is_deterministic_and_depends_on_its_seed():
    rng = np.random.default_rng(0)
    a = _students([{"t": rng.random(300) < 0.6, "u": rng.random(200) < 0.4} for _ in range(3)])
    b = _students([{"t": rng.random(300) < 0.5, "u": rng.random(200) < 0.4} for _ in range(3)])
    first = stats.bootstrap(a, b, resamples=2_000)
    assert first.tobytes() == stats.bootstrap(a, b, resamples=2_000).tobytes()
    assert first.tobytes() != stats.bootstrap(a, b, resamples=2_000, seed=1).tobytes()


def test_bootstrap_refuses_mismatched_students():
    a = _students([{"t": [1, 0]}])
    with pytest.raises(ValueError, match="images"):
        stats.bootstrap(a, _students([{"t": [1, 0, 1]}]))
    with pytest.raises(ValueError, match="same tasks"):
        stats.bootstrap(a, _students([{"u": [1, 0]}]))
    with pytest.raises(ValueError, match="pair the same seeds"):
        stats.bootstrap(a, _students([{"t": [1, 0]}, {"t": [1, 0]}]))


# ---------------------------------------------------------------- power


def test_minimum_detectable_effect_hand_worked_and_seeds_needed_by_brute_force():
    # n = 3, sd = 1: (t_{0.95,2} + t_{0.80,2}) / sqrt(3) = (2.9200 + 1.0607) / 1.7321 = 2.2982
    assert stats.minimum_detectable_effect(1.0, 3) == pytest.approx((2.919986 + 1.060660) / math.sqrt(3), abs=1e-5)
    needed = stats.seeds_needed(1.0, effect=1.0)
    assert stats.minimum_detectable_effect(1.0, needed) <= 1.0 < stats.minimum_detectable_effect(1.0, needed - 1)
    assert needed == 8  # (1.8946 + 0.8960) / sqrt(8) = 0.987; n = 7: (1.9432 + 0.9057) / sqrt(7) = 1.077


def test_mde_power_by_simulation():
    """At the MDE, the one-sided paired t-test rejects in about 80% of simulated experiments."""
    rng = np.random.default_rng(11)
    n, sd = 4, 1.0
    effect = stats.minimum_detectable_effect(sd, n)
    critical = stats.t_quantile(0.95, n - 1)
    d = rng.normal(effect, sd, size=(40_000, n))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    power = float((t > critical).mean())
    # the formula adds t quantiles (not the noncentral t): it is a close, slightly conservative approximation
    assert 0.77 <= power <= 0.86


def test_eval_standard_error_hand_worked():
    # two tasks at 50% with 100 and 400 images: (1/2) sqrt(0.25/100 + 0.25/400) = 0.02795 -> 2.795 points
    assert stats.eval_standard_error({"a": 0.5, "b": 0.5}, {"a": 100, "b": 400}) == pytest.approx(
        50 * math.sqrt(0.0025 + 0.000625))


# ---------------------------------------------------------------- claims under the rule


def _planted(means: dict[str, list[float]], images: int = 400, seed: int = 0):
    """Per-image results whose task average is exactly the planted value (points) per seed, one task."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(images)
    out = {}
    for name, values in means.items():
        out[name] = {}
        for s, value in enumerate(values):
            correct = np.zeros(images, dtype=bool)
            correct[order[: round(value / 100 * images)]] = True  # nested: a higher value is a superset
            out[name][s] = {"t": correct}
    return out


def test_comparison_needs_both_tests_and_reports_both_bounds():
    results = _planted({"a": [50.0, 52.0, 54.0], "b": [49.0, 50.0, 51.0]})
    c = claims.compare(results, "a", "b")
    assert c.n == 3 and c.mean == pytest.approx(2.0) and c.t.p == pytest.approx(0.037086, abs=1e-5)
    # nested correct sets: every resampled image agrees in sign, so the bootstrap p is tiny; the t-test decides
    assert c.boot.p < 0.01 and c.p == c.t.p and c.status == "held"
    assert c.lower == pytest.approx(c.t.lower) and c.exceeds_min_effect is False  # 0.31 < 1 point
    spread = _planted({"a": [51.0, 49.0, 53.0], "b": [50.0, 50.0, 50.0]})
    assert claims.compare(spread, "a", "b").status == "not held"
    one = claims.compare(_planted({"a": [60.0], "b": [50.0]}), "a", "b")
    assert one.status == "not judged" and one.why.startswith("one seed") and one.mean == pytest.approx(10.0)
    assert claims.compare(_planted({"a": [60.0], "b": [50.0]}), "a", "b", one_seed=True).status == "held"
    assert claims.compare(results, "a", "zzz").why == "not run: zzz"


def test_claims_use_holm_over_claims_and_claim_four_needs_every_comparison():
    base = {"no_filter": [40.0, 41.0, 42.5], "random_30": [40.0, 41.0, 42.5]}
    means = dict(base)
    for i, name in enumerate(claims.FILTERS):
        means[name] = [50.0 + 2 * i, 52.0 + 2 * i, 53.0 + 2 * i]
    verdicts = {v.number: v for v in claims.judge(_planted(means))}
    assert verdicts[4].overall == "held"
    assert verdicts[4].p == max(c.p for c in verdicts[4].comparisons)
    # claims 1-3: differences of exactly 2 points on every seed: p = 0 -> held after Holm too
    assert all(verdicts[k].overall == "held" for k in (1, 2, 3))
    means["negcliploss_normsim_d"] = [40.0, 41.0, 42.0]  # no better than no_filter
    verdicts = {v.number: v for v in claims.judge(_planted(means))}
    assert verdicts[4].overall == "not held" and verdicts[3].overall == "not held"


def test_holm_can_turn_a_comparison_that_holds_alone_into_a_claim_not_held():
    # claim 1's comparison holds alone (d = 1, 2, 3: p_t = 0.037 <= 0.05); claim 2 is judged too and fails, claims
    # 3 and 4 cannot be judged (not run): Holm over two claims tests the smaller p, claim 1's, at 0.05 / 2 -> not held
    means = {"negcliploss_30": [51.0, 52.0, 53.0], "clip_score_30": [50.0, 50.0, 50.0],
             "negcliploss_normsiminf_target": [52.0, 51.0, 53.0]}  # claim 2: d = 1, -1, 0: not held
    verdicts = {v.number: v for v in claims.judge(_planted(means))}
    assert verdicts[1].comparisons[0].status == "held"
    assert verdicts[1].overall == "not held" and verdicts[1].p_holm == pytest.approx(2 * verdicts[1].p)
    assert verdicts[3].overall == "not judged" and verdicts[4].overall == "not judged"


def test_pooled_paired_sd_hand_worked():
    # a - b: 1, 2, 3 (var 1); a - c: 0, 0, 0 (var 0); b - c: -1, -2, -3 (var 1) -> sqrt(2/3)
    results = _planted({"a": [50.0, 52.0, 54.0], "b": [49.0, 50.0, 51.0], "c": [50.0, 52.0, 54.0]})
    sd, pairs = claims.pooled_paired_sd(results)
    assert pairs == 3 and sd == pytest.approx(math.sqrt(2 / 3))
    assert claims.pooled_paired_sd(_planted({"a": [50.0], "b": [40.0]})) == (None, 0)


def test_a_claim_with_a_failed_comparison_is_not_held_even_when_others_were_not_run():
    means = {"no_filter": [50.0, 51.0, 52.0], "random_30": [40.0, 41.0, 42.0],
             "clip_score_30": [45.0, 46.0, 47.0]}  # beats random_30, not no_filter; four filters not run
    verdicts = {v.number: v for v in claims.judge(_planted(means))}
    assert verdicts[4].overall == "not held" and verdicts[4].p > stats.ALPHA
    del means["no_filter"]  # only a comparison that holds is left: the claim cannot be judged yet
    verdicts = {v.number: v for v in claims.judge(_planted(means))}
    assert verdicts[4].overall == "not judged" and verdicts[4].p is None
