"""The pre-registered claims of docs/MINICOMP.md, the controls that calibrate the instrument, and the decision rule.

Decision rule (docs/MINICOMP.md, "Pre-registration for the next runs"). A comparison "A beats B" is judged on
the task average of each student (the unweighted mean of the tasks' top-1 accuracies), paired by seed: seed k
trains both students from the same initialisation and data order, and every student is evaluated on the same
images. Two one-sided tests at alpha = 0.05 (``stats.ALPHA``), each with its 95% lower confidence bound:

- the paired t-test over seeds, t critical value for n - 1 degrees of freedom (needs n >= 2 seeds);
- the paired bootstrap over seeds and eval images (``stats.bootstrap``), which with one seed resamples images
  alone.

The comparison's p-value is the larger of the two (it holds only when both tests reject: the t-test measures
the seed-to-seed spread, the bootstrap also the finite eval sets), or the bootstrap's alone with one seed,
where it is used only for the controls. Whether the difference exceeds the minimum effect of interest
(``stats.MIN_EFFECT`` points) is a separate flag: both lower bounds above it.

Multiplicity: a claim with several comparisons (claim 4) holds only when every one holds, an
intersection-union test, whose p-value is the largest of its comparisons' and which needs no correction of its
own; the four claims are then judged together by Holm's procedure at familywise level alpha. The controls are
judged first, at level alpha (they gate the claims: when they are not resolved, no claim is judged), so the
familywise level over controls and claims together stays alpha.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from datacomp_plugins.apps.minicomp import stats

FILTERS = ("clip_score_30", "negcliploss_30", "negcliploss_normsiminf_target", "negcliploss_normsim2_target",
           "negcliploss_normsim_d")
ORACLE, RANDOM, ANTI = "oracle_30", "random_30", "anti_clip_score_30"

# (claim number, text, list of (A, B) comparisons that must all hold)
CLAIMS: tuple[tuple[int, str, tuple[tuple[str, str], ...]], ...] = (
    (1, "negcliploss_30 beats clip_score_30", (("negcliploss_30", "clip_score_30"),)),
    (2, "negcliploss ∩ normsiminf(target) beats negcliploss_30",
     (("negcliploss_normsiminf_target", "negcliploss_30"),)),
    (3, "negcliploss ∩ normsim_d beats negcliploss_30", (("negcliploss_normsim_d", "negcliploss_30"),)),
    (4, "every filter beats no_filter and random_30",
     tuple((f, base) for f in FILTERS for base in ("no_filter", "random_30"))),
)

# subset -> seed -> task -> per-image top-1 correctness (the eval set's order)
Results = Mapping[str, Mapping[int, Mapping[str, np.ndarray]]]


@dataclass
class Comparison:
    """One "better beats worse" comparison under the decision rule."""

    better: str
    worse: str
    n: int
    mean: float | None = None
    t: stats.TTest | None = None
    boot: stats.BootstrapTest | None = None
    status: str = "not judged"  # "held", "not held", "not judged"
    why: str = ""

    @property
    def p(self) -> float | None:
        """The comparison's one-sided p-value: the larger of the t-test's and the bootstrap's (the bootstrap's
        alone with one seed)."""
        if self.boot is None:
            return None
        if self.t is None or self.t.p is None:
            return self.boot.p
        return max(self.t.p, self.boot.p)

    @property
    def lower(self) -> float | None:
        """The smaller of the two one-sided 95% lower bounds (the bootstrap's alone with one seed)."""
        bounds = [b for b in (self.t.lower if self.t else None, self.boot.lower if self.boot else None)
                  if b is not None]
        return min(bounds) if bounds else None

    @property
    def exceeds_min_effect(self) -> bool | None:
        """Whether the difference is shown to exceed the minimum effect of interest: the lower bound above it."""
        return None if self.lower is None else self.lower > stats.MIN_EFFECT


def compare(results: Results, better: str, worse: str, one_seed: bool = False) -> Comparison:
    """Judge "better beats worse" on the seeds both have, at level alpha (no multiplicity correction here).

    With one seed the comparison is judged (by the bootstrap over eval images) only when ``one_seed``.
    """
    missing = [b for b in (better, worse) if b not in results]
    if missing:
        return Comparison(better, worse, 0, why=f"not run: {', '.join(missing)}")
    seeds = sorted(set(results[better]) & set(results[worse]))
    if not seeds:
        return Comparison(better, worse, 0, why="no common seed")
    a = [results[better][s] for s in seeds]
    b = [results[worse][s] for s in seeds]
    diffs = [stats.task_average(x) - stats.task_average(y) for x, y in zip(a, b, strict=True)]
    t = stats.paired_t(diffs)
    comparison = Comparison(better, worse, len(seeds), t.mean, t if len(seeds) > 1 else None)
    if len(seeds) < 2 and not one_seed:
        comparison.why = "one seed: no spread over seeds"
        return comparison
    comparison.boot = stats.bootstrap_test(a, b)
    comparison.status = "held" if comparison.p <= stats.ALPHA else "not held"
    return comparison


@dataclass
class Instrument:
    """The controls: whether oracle_30 > random_30 > anti_clip_score_30 is resolved under the decision rule."""

    comparisons: list[Comparison]
    resolved: bool
    why: str


def instrument(results: Results) -> Instrument:
    """Judge the controls' chain; without random_30 in the run (the quick run) the chain is oracle > anti.

    Resolved when every link holds at level alpha (with one seed: by the bootstrap over eval images alone).
    """
    if ORACLE not in results or ANTI not in results:
        missing = [n for n in (ORACLE, ANTI) if n not in results]
        return Instrument([], False, f"the controls were not run ({', '.join(missing)})")
    links = ((ORACLE, RANDOM), (RANDOM, ANTI)) if RANDOM in results else ((ORACLE, ANTI),)
    comparisons = [compare(results, a, b, one_seed=True) for a, b in links]
    failed = [c for c in comparisons if c.status != "held"]
    if failed:
        why = "; ".join(f"{c.better} > {c.worse} {c.status}" + (f" ({c.why})" if c.why else "") for c in failed)
        return Instrument(comparisons, False, why)
    chain = " > ".join([links[0][0]] + [b for _, b in links])
    seeds = min(c.n for c in comparisons)
    how = "over eval images only (one seed)" if seeds < 2 else f"over {seeds} seeds and eval images"
    return Instrument(comparisons, True, f"{chain} resolved {how}")


@dataclass
class Verdict:
    """One claim: its comparisons, its p-value (the largest of its comparisons'), Holm's adjusted p-value."""

    number: int
    text: str
    overall: str  # "held", "not held", "not judged"
    comparisons: list[Comparison]
    p: float | None = None
    p_holm: float | None = None


def judge(results: Results) -> list[Verdict]:
    """Each claim, with Holm's procedure over the claims that can be judged (every comparison run, >= 2 seeds).

    A claim holds when Holm rejects its null hypothesis; its p-value is the largest of its comparisons'
    (the intersection-union test: every comparison must hold). A claim with a comparison not run is judged
    all the same when another of its comparisons already fails at alpha (it cannot hold whatever the rest
    gives): it enters Holm's family with the largest p-value it has, which only makes the others' levels
    stricter.
    """
    verdicts = []
    for number, text, pairs in CLAIMS:
        comparisons = [compare(results, a, b) for a, b in pairs]
        known = [c.p for c in comparisons if c.p is not None]
        complete = len(known) == len(comparisons)
        p = max(known) if known and (complete or max(known) > stats.ALPHA) else None
        verdicts.append(Verdict(number, text, "not judged", comparisons, p))
    tested = [v for v in verdicts if v.p is not None]
    rejected, adjusted = stats.holm([v.p for v in tested])
    for verdict, held, p_holm in zip(tested, rejected, adjusted, strict=True):
        verdict.overall = "held" if held else "not held"
        verdict.p_holm = p_holm
    return verdicts


def pooled_paired_sd(results: Results) -> tuple[float | None, int]:
    """The paired spread over seeds, pooled over every pair of subsets run: sqrt(mean of the pairs' variances of
    d_k), with the pairs' seeds in common; and the number of pairs pooled (None with fewer than 2 seeds)."""
    names = sorted(results)
    variances = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            seeds = sorted(set(results[a]) & set(results[b]))
            if len(seeds) < 2:
                continue
            diffs = [stats.task_average(results[a][s]) - stats.task_average(results[b][s]) for s in seeds]
            sd = stats.paired_t(diffs).sd
            variances.append(sd * sd)
    if not variances:
        return None, 0
    return math.sqrt(math.fsum(variances) / len(variances)), len(variances)


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
