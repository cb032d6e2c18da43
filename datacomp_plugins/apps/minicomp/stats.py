"""The statistics of the mini DataComp's decision rule (docs/MINICOMP.md, "Pre-registration for the next runs").

Everything here is plain math on numbers the runs wrote, kept apart from the report so that each piece can be
checked against a hand-worked value or a brute-force enumeration:

- Student's t distribution (CDF and quantile, from the regularised incomplete beta function), so that the
  one-sided paired t-test needs no dependency beyond numpy;
- the one-sided paired t-test over seeds;
- a paired bootstrap over seeds and eval images, which also works with one seed (then over images alone);
- Holm's step-down procedure;
- the minimum detectable effect of a one-sided paired t-test at a given power.

Differences are in accuracy points (percent). The bootstrap is deterministic: a numpy Generator seeded with a
fixed number draws every resample, in a fixed order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05  # one-sided level of every test
POWER = 0.80  # the power at which the minimum detectable effect is stated
MIN_EFFECT = 1.0  # points of the task-average accuracy: the smallest difference worth a claim
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
_CHUNK_VALUES = 4_000_000  # resampled image values held at once by the bootstrap


# ---------------------------------------------------------------- Student's t distribution


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz), converging fast for x < (a + 1) / (a + b + 2)."""
    tiny = 1e-300

    def clamp(value: float) -> float:
        return value if abs(value) > tiny else tiny

    c = 1.0
    d = 1.0 / clamp(1.0 - (a + b) * x / (a + 1.0))
    result = d
    for m in range(1, 100_000):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 / clamp(1.0 + even * d)
        c = clamp(1.0 + even / c)
        result *= c * d
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 / clamp(1.0 + odd * d)
        c = clamp(1.0 + odd / c)
        step = c * d
        result *= step
        if abs(step - 1.0) < 1e-15:
            return result
    raise ArithmeticError(f"incomplete beta I_{x}({a}, {b}): the continued fraction did not converge")


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ValueError(f"incomplete_beta: expected a, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom: P(|T| > |t|) = I_{df/(df+t^2)}(df/2, 1/2)."""
    if df <= 0:
        raise ValueError(f"t_cdf: expected df > 0, got {df}")
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t value below which a share ``p`` of Student's t with ``df`` degrees of freedom lies (bisection)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: expected 0 < p < 1, got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, 2.0 * high
    for _ in range(200):
        middle = 0.5 * (low + high)
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low <= 1e-13 * max(1.0, high):
            break
    return 0.5 * (low + high)


# ---------------------------------------------------------------- the paired t-test over seeds


@dataclass(frozen=True)
class TTest:
    """One-sided paired t-test of "mean difference > 0" over n seeds; None where one seed leaves no spread."""

    n: int
    mean: float
    sd: float | None
    se: float | None
    t: float | None
    p: float | None
    lower: float | None  # the one-sided (1 - alpha) lower confidence bound: mean - t_{1-alpha, n-1} * SE


def paired_t(diffs: Sequence[float], alpha: float = ALPHA) -> TTest:
    """The one-sided paired t-test of the per-seed differences d_k (H1: mean > 0), with n - 1 degrees of freedom."""
    n = len(diffs)
    if n == 0:
        raise ValueError("paired_t: no differences")
    mean = math.fsum(diffs) / n
    if n < 2:
        return TTest(n, mean, None, None, None, None, None)
    sd = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    if se == 0.0:  # every seed gave the same difference: the sign decides
        t = math.inf if mean > 0 else (-math.inf if mean < 0 else 0.0)
        return TTest(n, mean, sd, se, t, 0.0 if mean > 0 else 1.0, mean)
    t = mean / se
    return TTest(n, mean, sd, se, t, 1.0 - t_cdf(t, n - 1), mean - t_quantile(1.0 - alpha, n - 1) * se)


# ---------------------------------------------------------------- the paired bootstrap over seeds and images

# A student's evaluation, image by image: one boolean array per task (True: top-1 correct), in the eval set's
# order, the same order for every student. ``Students`` lists one such dict per seed.
Students = Sequence[dict[str, np.ndarray]]


def task_average(correct: dict[str, np.ndarray]) -> float:
    """The unweighted mean over tasks of each task's top-1 accuracy, in points (the report's "average")."""
    return 100.0 * math.fsum(float(np.mean(correct[task])) for task in sorted(correct)) / len(correct)


def _as_matrix(students: Students, task: str, what: str) -> np.ndarray:
    rows = [np.asarray(s[task]) for s in students]
    sizes = {len(r) for r in rows}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"{what}: task {task} has {sorted(sizes)} images across seeds; expected one non-zero size")
    return np.stack(rows).astype(np.int16)


def bootstrap(better: Students, worse: Students | None = None, resamples: int = BOOTSTRAP_RESAMPLES,
              seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Bootstrap distribution of the task average (``worse`` None) or of the paired difference, in points.

    Each resample draws n seeds with replacement from the n seed indices (none drawn with one seed: all of
    them), and, per task, as many images with replacement as the task has; the same images for every seed and
    both subsets (they are one eval set), and seed k of ``better`` is paired with seed k of ``worse`` (same
    initialisation and data order). The statistic is the mean over the drawn seeds of the task average of the
    drawn images. Deterministic: one ``numpy.random.default_rng(seed)`` draws everything in a fixed order.
    """
    if not better:
        raise ValueError("bootstrap: no seed")
    if worse is not None and len(worse) != len(better):
        raise ValueError(f"bootstrap: {len(better)} seeds against {len(worse)}; pair the same seeds")
    tasks = sorted(better[0])
    for students in (better, worse or ()):
        for s in students:
            if sorted(s) != tasks:
                raise ValueError(f"bootstrap: tasks {sorted(s)} against {tasks}; every student needs the same tasks")
    matrices = []
    for task in tasks:
        values = _as_matrix(better, task, "bootstrap")
        if worse is not None:
            other = _as_matrix(worse, task, "bootstrap")
            if other.shape != values.shape:
                raise ValueError(f"bootstrap: task {task} has {values.shape[1]} images against {other.shape[1]}")
            values = values - other
        matrices.append(values)
    n_seeds = len(better)
    largest = max(m.shape[1] for m in matrices)
    chunk = max(1, min(resamples, _CHUNK_VALUES // (n_seeds * largest)))
    rng = np.random.default_rng(seed)
    out = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        if n_seeds > 1:
            drawn = rng.integers(0, n_seeds, size=(size, n_seeds))
            weights = np.stack([np.bincount(row, minlength=n_seeds) for row in drawn]).astype(np.float64)
        else:
            weights = np.ones((size, 1))
        per_seed = np.zeros((size, n_seeds))
        for values in matrices:
            images = values.shape[1]
            index = rng.integers(0, images, size=(size, images))
            # integer sums (exact), then one division: the same value whatever the summation order
            sums = values[:, index].sum(axis=2, dtype=np.int64)  # (seeds, size)
            per_seed += sums.T / images
        per_seed /= len(matrices)
        out[start:start + size] = 100.0 * (per_seed * weights).sum(axis=1) / n_seeds
    return out


@dataclass(frozen=True)
class BootstrapTest:
    """The observed difference, the bootstrap's one-sided lower bound, p-value and standard error."""

    n: int
    mean: float
    lower: float  # the alpha quantile of the bootstrap distribution (inverted empirical CDF)
    p: float  # (1 + #{resamples <= 0}) / (1 + resamples): one-sided, H1: difference > 0
    se: float  # sd of the bootstrap distribution


def bootstrap_test(better: Students, worse: Students, alpha: float = ALPHA,
                   resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> BootstrapTest:
    """The paired bootstrap as a one-sided test of "better's task average exceeds worse's"."""
    observed = math.fsum(task_average(b) - task_average(w) for b, w in zip(better, worse, strict=True)) / len(better)
    draws = bootstrap(better, worse, resamples, seed)
    lower = float(np.quantile(draws, alpha, method="inverted_cdf"))
    p = (1 + int(np.count_nonzero(draws <= 0.0))) / (1 + resamples)
    return BootstrapTest(len(better), observed, lower, p, float(np.std(draws, ddof=1)))


def percentile_interval(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The two-sided percentile interval of a bootstrap distribution."""
    tail = (1.0 - level) / 2.0
    return (float(np.quantile(draws, tail, method="inverted_cdf")),
            float(np.quantile(draws, 1.0 - tail, method="inverted_cdf")))


# ---------------------------------------------------------------- multiplicity and power


def holm(pvalues: Sequence[float], alpha: float = ALPHA) -> tuple[list[bool], list[float]]:
    """Holm's step-down procedure: which hypotheses are rejected at familywise level ``alpha``, and the
    adjusted p-values (max over the steps so far of (m - rank) * p, capped at 1), in the input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: (pvalues[i], i))
    rejected = [False] * m
    adjusted = [1.0] * m
    running = 0.0
    stopped = False
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
        if not stopped and pvalues[i] <= alpha / (m - rank):
            rejected[i] = True
        else:
            stopped = True
    return rejected, adjusted


def minimum_detectable_effect(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true mean difference that a one-sided paired t-test at ``alpha`` over n seeds detects with
    probability ``power``, for a paired spread ``sd``: (t_{1-alpha, n-1} + t_{power, n-1}) * sd / sqrt(n)."""
    if n < 2:
        raise ValueError(f"minimum_detectable_effect: n = {n}; a paired t-test needs at least 2 seeds")
    return (t_quantile(1.0 - alpha, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)


def seeds_needed(sd: float, effect: float = MIN_EFFECT, alpha: float = ALPHA, power: float = POWER,
                 most: int = 200) -> int | None:
    """The fewest seeds whose minimum detectable effect is at most ``effect`` (None: more than ``most``)."""
    for n in range(2, most + 1):
        if minimum_detectable_effect(sd, n, alpha, power) <= effect:
            return n
    return None


def eval_standard_error(accuracies: dict[str, float], images: dict[str, int]) -> float:
    """The binomial standard error, in points, of one student's task average from the eval sets' sizes:
    (1 / T) * sqrt(sum over tasks of p_t (1 - p_t) / n_t)."""
    tasks = sorted(accuracies)
    variance = math.fsum(accuracies[t] * (1.0 - accuracies[t]) / images[t] for t in tasks)
    return 100.0 * math.sqrt(variance) / len(tasks)
