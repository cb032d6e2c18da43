"""``OUT/report.md`` and ``OUT/report.png``: which filter wins on the mini world, by how much, and why.

Per baseline: subset size, each task and the average (mean ± sd over seeds); the share of each world
component it kept (from ``OUT/truth/``, which no filter reads); wall time per stage; the instrument (the
build's gates, the controls, the minimum detectable effect); the pre-registered claims judged by the rule in
``claims.py``, only when the controls are resolved. The results files are read with the ``report`` command's
own reader; the paired statistics read each student's per-image results beside them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from datacomp_plugins.apps.minicomp import claims, stats
from datacomp_plugins.apps.report import RESULTS_FILE, read_results
from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.fileio import atomic_open


def read_scores(runs_dir: Path, names: list[str], seeds: list[int]) -> dict[str, dict[int, dict[str, float]]]:
    """baseline -> seed -> task -> main metric, for the pairs whose results exist."""
    scores: dict[str, dict[int, dict[str, float]]] = {}
    for name in names:
        for seed in seeds:
            path = runs_dir / name / f"seed{seed}" / RESULTS_FILE
            if not path.is_file():
                continue
            records, _ = read_results(path)
            values = {}
            for key, record in records.items():
                value = record["metrics"].get("main_metric")
                if not isinstance(value, (int, float)):
                    raise PluginError(f"{path}: task {key} has no numeric metrics.main_metric")
                values[key] = float(value)
            scores.setdefault(name, {})[seed] = values
    return scores


def read_per_image(runs_dir: Path, names: list[str], seeds: list[int]) -> tuple[claims.Results, list[str]]:
    """subset -> seed -> task -> per-image top-1 correctness, for the pairs whose results and per-image files
    exist; and the pairs (``name/seed<k>``) whose results lack per-image files (finished before they were kept)."""
    from datacomp_plugins.apps.minicomp.evaluate import PER_IMAGE_DIR, load_per_image

    results: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    lacking = []
    for name in names:
        for seed in seeds:
            folder = runs_dir / name / f"seed{seed}"
            if not (folder / RESULTS_FILE).is_file():
                continue
            records, _ = read_results(folder / RESULTS_FILE)
            correct = load_per_image(folder / PER_IMAGE_DIR, records)
            if correct is None:
                lacking.append(f"{name}/seed{seed}")
            else:
                results.setdefault(name, {})[seed] = correct
    return results, lacking


def averages(scores: dict[str, dict[int, dict[str, float]]]) -> dict[str, dict[int, float]]:
    """baseline -> seed -> unweighted mean over tasks (percent)."""
    return {name: {seed: 100.0 * float(np.mean(list(tasks.values()))) for seed, tasks in by_seed.items()}
            for name, by_seed in scores.items()}


def component_shares(out: Path, runs_dir: Path, names: list[str]) -> tuple[list[str], dict[str, dict[str, float]],
                                                                         dict[str, int]]:
    """Components, baseline -> component -> share of the pool's samples of it kept, and the pool's counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from datacomp_plugins.core.uids import load_uid_file, to_hex

    files = sorted((out / "truth").glob("*.parquet"))
    if not files:
        return [], {}, {}
    truth = pa.concat_tables([pq.read_table(f, columns=["uid", "component"]) for f in files])
    uids = np.asarray(truth.column("uid").to_pylist(), dtype=object)
    component = np.asarray(truth.column("component").to_pylist(), dtype=object)
    order = sorted(set(component.tolist()))
    totals = {c: int((component == c).sum()) for c in order}
    shares: dict[str, dict[str, float]] = {}
    for name in names:
        path = runs_dir / name / "uids.npy"
        if not path.is_file():
            continue
        # a set, not np.isin: isin on object arrays compares every pair (minutes for a 100,000-sample pool)
        kept_hex = set(to_hex(np.asarray(load_uid_file(str(path)))).astype(str).tolist())
        kept = np.fromiter((uid in kept_hex for uid in uids), dtype=bool, count=len(uids))
        shares[name] = {c: float(kept[component == c].sum()) / totals[c] if totals[c] else 0.0 for c in order}
    return order, shares, totals


def _subset_size(runs_dir: Path, name: str) -> int | None:
    path = runs_dir / name / "uids.npy"
    if not path.is_file():
        return None
    return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])


def _pm(mean: float, sd: float | None, digits: int = 1) -> str:
    return f"{mean:.{digits}f}" if sd is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _times(runs_dir: Path, name: str, seeds: list[int]) -> dict[str, float]:
    times: dict[str, float] = {}
    path = runs_dir / name / "times.json"
    if path.is_file():
        times.update(json.loads(path.read_text()))
    for seed in seeds:
        path = runs_dir / name / f"seed{seed}" / "times.json"
        if path.is_file():
            for stage, value in json.loads(path.read_text()).items():
                times[stage] = times.get(stage, 0.0) + value
    return times


def _interval(name: str, by_seed_avg: dict[int, float], per_image: claims.Results) -> tuple[float, float] | None:
    """The 95% interval of a subset's average: t over seeds (n >= 2), else the bootstrap over eval images."""
    values = [by_seed_avg[s] for s in sorted(by_seed_avg)]
    mean, sd = claims.mean_sd(values)
    if sd is not None:
        half = stats.t_quantile(0.975, len(values) - 1) * sd / np.sqrt(len(values))
        return mean - half, mean + half
    if name in per_image and per_image[name]:
        students = [per_image[name][s] for s in sorted(per_image[name])]
        return stats.percentile_interval(stats.bootstrap(students))
    return None


def _num(value: float | None, fmt: str = "+.2f") -> str:
    return "" if value is None else format(value, fmt)


def _p(value: float | None) -> str:
    return "" if value is None else ("< 0.0001" if value < 1e-4 else f"{value:.4f}")


def _comparison_cells(c: claims.Comparison) -> str:
    t_lower = c.t.lower if c.t else None
    t_p = c.t.p if c.t else None
    b_lower = c.boot.lower if c.boot else None
    b_p = c.boot.p if c.boot else None
    status = c.status + (f" ({c.why})" if c.why else "")
    exceeds = "" if c.exceeds_min_effect is None else ("yes" if c.exceeds_min_effect else "no")
    return (f"{c.better} vs {c.worse} | {c.n} | {_num(c.mean)} | {_num(t_lower)} | {_p(t_p)} | {_num(b_lower)} | "
            f"{_p(b_p)} | {status} | {exceeds}")


COMPARISON_HEAD = ("comparison | n | mean diff | 95% lower (t) | p (t) | 95% lower (bootstrap) | p (bootstrap) | "
                   f"at α = {stats.ALPHA} | lower > {stats.MIN_EFFECT:g}")


def gate_lines(out: Path) -> list[str]:
    """The build's gate table (``MANIFEST.json["gates"]``) as markdown."""
    path = out / "MANIFEST.json"
    try:
        gates = json.loads(path.read_text()).get("gates")
    except (OSError, ValueError, AttributeError):
        gates = None
    if not isinstance(gates, list) or not gates:
        return [f"`{path}` lists no gates."]
    lines = ["| gate | value | threshold | result | detail |", "|---|---:|---|---|---|"]
    failed = 0
    for g in gates:
        try:
            value = g["value"]
            cell = f"{value:.3f}" if isinstance(value, float) else str(value)
            passed = bool(g["passed"])
            lines.append(f"| {g['name']} | {cell} | {g['op']} {g['threshold']} | {'pass' if passed else '**FAIL**'} "
                         f"| {str(g.get('detail', '')).replace('|', '/')} |")
        except (KeyError, TypeError):
            raise PluginError(f"{path}: a gate without name, value, op, threshold and passed: {g!r:.120}") from None
        failed += not passed
    lines += ["", f"{len(gates) - failed} of {len(gates)} gates pass."]
    return lines


def instrument_lines(out: Path, per_image: claims.Results, lacking: list[str],
                     scores: dict[str, dict[int, dict[str, float]]]) -> tuple[list[str], claims.Instrument]:
    """The instrument section: gates, the controls' chain under the decision rule, the resolution (MDE)."""
    verdict = claims.instrument(per_image)
    lines = ["## Instrument", "", "### The build's gates", "", *gate_lines(out), "",
             "### The controls", "",
             f"`{claims.ORACLE}` (30% drawn from the components that carry the tasks' signal, read from `truth/`) "
             f"above `{claims.RANDOM}` above `{claims.ANTI}` (the bottom 30% by CLIPScore), each link a one-sided "
             f"test at α = {stats.ALPHA} (docs/MINICOMP.md, \"Pre-registration for the next runs\"). Differences "
             "of the task average in points.", ""]
    if lacking:
        lines += [f"No per-image results for {', '.join(lacking)} (finished before they were kept; rerun "
                  "`minicomp run` to evaluate those students again): they are left out of the paired tests.", ""]
    if verdict.comparisons:
        lines += ["| " + COMPARISON_HEAD + " |", "|---|---:|---:|---:|---:|---:|---:|---|---|"]
        lines += [f"| {_comparison_cells(c)} |" for c in verdict.comparisons]
        lines.append("")
    if verdict.resolved:
        lines.append(f"**Resolved**: {verdict.why}.")
    else:
        lines.append(f"**The instrument failed**: {verdict.why}. No claim is judged.")
    lines += ["", "### Resolution", ""]
    sd, pairs = claims.pooled_paired_sd(per_image)
    seeds = max((len(by_seed) for by_seed in per_image.values()), default=0)
    if sd is None:
        lines.append("One seed: no spread over seeds, so no minimum detectable effect over seeds.")
    else:
        mde = stats.minimum_detectable_effect(sd, seeds)
        needed = stats.seeds_needed(sd)
        lines.append(
            f"Paired spread over seeds, pooled over {pairs} pairs of subsets: s = {sd:.2f} points. Minimum "
            f"detectable effect of the one-sided paired t-test at α = {stats.ALPHA} and {stats.POWER:.0%} power "
            f"with n = {seeds} seeds, (t_{{1−α, n−1}} + t_{{power, n−1}}) · s / √n: **{mde:.2f} points**; seeds for "
            f"an MDE of at most the minimum effect ({stats.MIN_EFFECT:g} point): "
            + (f"{needed}." if needed else "more than 200."))
    images = _eval_sizes(per_image)
    if images and "no_filter" in scores:
        accs = {t: float(np.mean([v[t] for v in scores["no_filter"].values()])) for t in images}
        se = stats.eval_standard_error(accs, images)
        lines += ["", f"Eval sets: {', '.join(f'{t} {n}' for t, n in sorted(images.items()))} images; the binomial "
                  f"SE of one student's task average at no_filter's accuracies is {se:.2f} points."]
    return lines, verdict


def _eval_sizes(per_image: claims.Results) -> dict[str, int]:
    for by_seed in per_image.values():
        for correct in by_seed.values():
            return {t: len(v) for t, v in correct.items()}
    return {}


def claim_lines(per_image: claims.Results, verdict: claims.Instrument) -> list[str]:
    """The pre-registered claims under the decision rule, or why none is judged."""
    lines = ["## Pre-registered claims", ""]
    if not verdict.resolved:
        return lines + ["Not judged: the instrument failed (the controls are not resolved), so an unresolved "
                        "claim could not be told from a broken benchmark."]
    lines += [f"Each comparison: one-sided paired t-test over seeds and paired bootstrap over seeds and eval images "
              f"(p = the larger of the two), at α = {stats.ALPHA}; a claim's p is the largest of its comparisons'; "
              f"Holm over the claims; minimum effect of interest {stats.MIN_EFFECT:g} point (docs/MINICOMP.md). "
              "Differences in points.", "",
              "| claim | outcome | claim p | Holm p | " + COMPARISON_HEAD + " |",
              "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for v in claims.judge(per_image):
        for i, c in enumerate(v.comparisons):
            head = (f"{v.number}. {v.text} | **{v.overall}** | {_p(v.p)} | {_p(v.p_holm)}" if i == 0
                    else " |  |  | ")
            lines.append(f"| {head} | {_comparison_cells(c)} |")
    return lines


def render(out: Path, runs_dir: Path, names: list[str], seeds: list[int]) -> tuple[str, dict]:
    """The report's markdown and the data of its figure."""
    scores = read_scores(runs_dir, names, seeds)
    per_image, lacking = read_per_image(runs_dir, names, seeds)
    avg = averages(scores)
    tasks = sorted({t for by_seed in scores.values() for values in by_seed.values() for t in values})
    lines = ["# Mini DataComp report", "",
             f"World: `{out}`; runs: `{runs_dir}`; seeds: {', '.join(map(str, seeds))}. "
             + ("Zero-shot top-1 accuracy in percent, one seed (no spread)." if len(seeds) == 1 else
                "Zero-shot top-1 accuracy in percent, mean ± sample standard deviation over seeds."), "",
             "## Results", "",
             "| baseline | subset size | seeds | " + " | ".join(tasks) + " | average |",
             "|---|---:|---:|" + "---:|" * len(tasks) + "---:|"]
    figure: dict = {"names": [], "mean": [], "low": [], "high": [], "seeds": []}
    for name in names:
        if name not in scores:
            lines.append(f"| {name} | {_subset_size(runs_dir, name) or ''} | 0 | " + " | " * len(tasks) + " |")
            continue
        by_seed = scores[name]
        cells = []
        for task in tasks:
            values = [100.0 * v[task] for v in by_seed.values() if task in v]
            cells.append(_pm(*claims.mean_sd(values)) if values else "")
        mean, sd = claims.mean_sd(list(avg[name].values()))
        interval = _interval(name, avg[name], per_image)
        figure["names"].append(name)
        figure["mean"].append(mean)
        figure["low"].append(mean if interval is None else min(mean, interval[0]))
        figure["high"].append(mean if interval is None else max(mean, interval[1]))
        figure["seeds"].append(len(by_seed))
        lines.append(f"| {name} | {_subset_size(runs_dir, name)} | {len(by_seed)} | " + " | ".join(cells)
                     + f" | {_pm(mean, sd)} |")
    order, shares, totals = component_shares(out, runs_dir, names)
    figure["components"], figure["shares"] = order, shares
    lines += ["", "## Share of each world component kept", ""]
    if order:
        lines += ["Share (percent) of the pool's samples of each component (from `truth/`) that the subset kept.",
                  "", "| baseline | " + " | ".join(order) + " |", "|---|" + "---:|" * len(order),
                  "| *pool count* | " + " | ".join(str(totals[c]) for c in order) + " |"]
        for name in names:
            if name in shares:
                lines.append(f"| {name} | " + " | ".join(f"{100.0 * shares[name][c]:.1f}" for c in order) + " |")
    else:
        lines.append(f"No `{out / 'truth'}` parquet files: component shares not available.")
    stages = ("filter", "reshard", "train", "eval")
    lines += ["", "## Wall time per stage (seconds; train and eval summed over seeds)", "",
              "| baseline | " + " | ".join(stages) + " |", "|---|" + "---:|" * len(stages)]
    for name in names:
        times = _times(runs_dir, name, seeds)
        lines.append(f"| {name} | " + " | ".join(f"{times[s]:.0f}" if s in times else "" for s in stages) + " |")
    section, verdict = instrument_lines(out, per_image, lacking, scores)
    lines += ["", *section, "", *claim_lines(per_image, verdict)]
    return "\n".join(lines) + "\n", figure


def figure_title(seeds: list[int]) -> str:
    """The accuracy chart's title, true to what each bar's interval measures: the spread over seeds (t interval)
    with two seeds or more, the eval images alone (bootstrap) with one."""
    counts = sorted(set(seeds))
    if not counts or counts == [1]:
        return "students per subset (one seed: 95% bootstrap interval over eval images)"
    if counts[0] == 1:
        return "students per subset (mean, 95% interval: t over seeds, or eval images for one seed)"
    spread = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"students per subset (mean and 95% t interval over {spread} seeds)"


def render_png(figure: dict) -> bytes:
    """Average accuracy per baseline (mean and 95% interval) and the component shares kept, side by side."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), dpi=100)
    names = figure["names"]
    y = np.arange(len(names))
    mean = np.asarray(figure["mean"], dtype=float)
    error = np.vstack([mean - np.asarray(figure["low"], dtype=float), np.asarray(figure["high"], dtype=float) - mean])
    axes[0].barh(y, mean, xerr=error if len(names) else None, color="#4c72b0", capsize=3)
    axes[0].set_yticks(y, names)
    axes[0].invert_yaxis()
    axes[0].set_xlabel("average zero-shot top-1 (%)")
    axes[0].set_title(figure_title(figure.get("seeds", [])))
    order, shares = figure["components"], figure["shares"]
    rows = [n for n in names if n in shares] or list(shares)
    if order and rows:
        matrix = np.array([[100.0 * shares[n][c] for c in order] for n in rows])
        image = axes[1].imshow(matrix, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        axes[1].set_xticks(np.arange(len(order)), order, rotation=30, ha="right")
        axes[1].set_yticks(np.arange(len(rows)), rows)
        for (i, j), value in np.ndenumerate(matrix):
            axes[1].text(j, i, f"{value:.0f}", ha="center", va="center", color="w" if value < 60 else "k", fontsize=8)
        fig.colorbar(image, ax=axes[1], label="% of component kept")
        axes[1].set_title("share of each world component kept")
    else:
        axes[1].axis("off")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def write_report(out: Path, runs_dir: Path, names: list[str], seeds: list[int],
                 report_dir: Path | None = None) -> list[str]:
    """Write ``report.md`` and ``report.png`` (in OUT unless ``report_dir``); returns their paths."""
    text, figure = render(out, runs_dir, names, seeds)
    folder = out if report_dir is None else report_dir
    md, png = folder / "report.md", folder / "report.png"
    text = text.replace("## Results", "![results](report.png)\n\n## Results", 1)
    with atomic_open(str(png), "wb") as handle:
        handle.write(render_png(figure))
    with atomic_open(str(md), "w") as handle:
        handle.write(text)
    return [str(md), str(png)]
