"""The pre-registered claims of docs/MINICOMP.md and their decision rule.

A claim "A beats B" holds when the mean over seeds of d_k = avg_A(seed k) - avg_B(seed k) exceeds twice its
standard error, SE = sd(d) / sqrt(n) with the sample standard deviation (n - 1). Seed k trains both students
from the same initialisation and data-order seed, so the difference is paired. With one seed there is no SE
and the claim is not judged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

FILTERS = ("clip_score_30", "negcliploss_30", "negcliploss_normsiminf_target", "negcliploss_normsim2_target",
           "negcliploss_normsim_d")

# (claim number, text, list of (A, B) comparisons that must all hold)
CLAIMS: tuple[tuple[int, str, tuple[tuple[str, str], ...]], ...] = (
    (1, "negcliploss_30 beats clip_score_30", (("negcliploss_30", "clip_score_30"),)),
    (2, "negcliploss ∩ normsiminf(target) beats negcliploss_30",
     (("negcliploss_normsiminf_target", "negcliploss_30"),)),
    (3, "negcliploss ∩ normsim_d beats negcliploss_30", (("negcliploss_normsim_d", "negcliploss_30"),)),
    (4, "every filter beats no_filter and random_30",
     tuple((f, base) for f in FILTERS for base in ("no_filter", "random_30"))),
)


@dataclass
class Comparison:
    better: str
    worse: str
    n: int
    mean: float | None = None
    se: float | None = None
    status: str = "not judged"  # "held", "not held", "not judged"
    why: str = ""

    @property
    def margin(self) -> float | None:
        """mean - 2 SE: positive when the comparison holds."""
        return None if self.mean is None or self.se is None else self.mean - 2.0 * self.se


def compare(averages: Mapping[str, Mapping[int, float]], better: str, worse: str) -> Comparison:
    """Judge "better beats worse" on the seeds both have."""
    if better not in averages or worse not in averages:
        missing = [b for b in (better, worse) if b not in averages]
        return Comparison(better, worse, 0, why=f"not run: {', '.join(missing)}")
    seeds = sorted(set(averages[better]) & set(averages[worse]))
    diffs = [averages[better][s] - averages[worse][s] for s in seeds]
    n = len(diffs)
    if n == 0:
        return Comparison(better, worse, 0, why="no common seed")
    mean = math.fsum(diffs) / n
    if n < 2:
        return Comparison(better, worse, n, mean, None, why="one seed: no standard error")
    sd = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    status = "held" if mean > 2.0 * se else "not held"
    return Comparison(better, worse, n, mean, se, status)


def judge(averages: Mapping[str, Mapping[int, float]]) -> list[tuple[int, str, str, list[Comparison]]]:
    """Each claim: (number, text, overall status, its comparisons). A claim holds when all comparisons hold."""
    verdicts = []
    for number, text, pairs in CLAIMS:
        comparisons = [compare(averages, a, b) for a, b in pairs]
        statuses = {c.status for c in comparisons}
        if "not held" in statuses:
            overall = "not held"
        elif statuses == {"held"}:
            overall = "held"
        else:
            overall = "not judged"
        verdicts.append((number, text, overall, comparisons))
    return verdicts


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
