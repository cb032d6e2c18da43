"""``OUT/report.md`` and ``OUT/report.png``: which filter wins on the mini world, by how much, and why.

Per baseline: subset size, each task and the average (mean ± sd over seeds); the share of each world
component it kept (from ``OUT/truth/``, which no filter reads); wall time per stage; the pre-registered claims
judged by the rule in ``claims.py``. The results files are read with the ``report`` command's own reader.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from datacomp_plugins.apps.minicomp import claims
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


def render(out: Path, runs_dir: Path, names: list[str], seeds: list[int]) -> tuple[str, dict]:
    """The report's markdown and the data of its figure."""
    scores = read_scores(runs_dir, names, seeds)
    avg = averages(scores)
    tasks = sorted({t for by_seed in scores.values() for values in by_seed.values() for t in values})
    lines = ["# Mini DataComp report", "",
             f"World: `{out}`; runs: `{runs_dir}`; seeds: {', '.join(map(str, seeds))}. "
             + ("Zero-shot top-1 accuracy in percent, one seed (no spread)." if len(seeds) == 1 else
                "Zero-shot top-1 accuracy in percent, mean ± sample standard deviation over seeds."), "",
             "## Results", "",
             "| baseline | subset size | seeds | " + " | ".join(tasks) + " | average |",
             "|---|---:|---:|" + "---:|" * len(tasks) + "---:|"]
    figure = {"names": [], "mean": [], "sd": [], "seeds": []}
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
        figure["names"].append(name)
        figure["mean"].append(mean)
        figure["sd"].append(sd or 0.0)
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
    lines += ["", "## Pre-registered claims", "",
              "A claim holds when the mean paired difference of the average over seeds exceeds twice its "
              "standard error (docs/MINICOMP.md). Differences in accuracy points.", "",
              "| claim | outcome | comparison | n | mean diff | SE | margin (mean − 2 SE) |",
              "|---|---|---|---:|---:|---:|---:|"]
    for number, text, overall, comparisons in claims.judge(avg):
        for i, c in enumerate(comparisons):
            head = f"{number}. {text} | **{overall}**" if i == 0 else " | "
            mean = "" if c.mean is None else f"{c.mean:+.2f}"
            se = "" if c.se is None else f"{c.se:.2f}"
            margin = "" if c.margin is None else f"{c.margin:+.2f}"
            status = c.status + (f" ({c.why})" if c.why else "")
            lines.append(f"| {head} | {c.better} vs {c.worse}: {status} | {c.n} | {mean} | {se} | {margin} |")
    return "\n".join(lines) + "\n", figure


def figure_title(seeds: list[int]) -> str:
    """The accuracy chart's title, true to the seeds each bar averages: a one-seed run has no spread."""
    counts = sorted(set(seeds))
    if not counts or counts == [1]:
        return "students per subset (one seed each: no spread)"
    spread = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"students per subset (mean ± sd over {spread} seeds)"


def render_png(figure: dict) -> bytes:
    """Average accuracy per baseline (mean ± sd) and the component shares kept, side by side."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), dpi=100)
    names = figure["names"]
    y = np.arange(len(names))
    axes[0].barh(y, figure["mean"], xerr=figure["sd"], color="#4c72b0", capsize=3)
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
