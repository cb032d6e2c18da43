"""Compare DataComp evaluation runs the way DataComp itself summarises them.

Where the numbers come from (DataComp repository, mlfoundations/datacomp):

* ``evaluate.py`` appends one JSON object per evaluated task to ``eval_results.jsonl``:
  ``{"key": <task key from tasklist.yml>, "dataset": <task name>, "metrics": {..., "main_metric": x}}``,
  where ``main_metric`` is the metric named by the task's ``main_metric`` in ``tasklist.yml`` (``acc1``
  when unset), or ``null`` when the task has no such metric. When it re-reads the file it keeps the last
  line per task, so this module does the same with repeated lines.
* ``tasklist.yml`` lists 40 tasks. FairFace and UTKFace have no ``acc1`` (``eval_utils/fairness_eval.py``
  reports only group accuracies), so their ``main_metric`` is always ``null``; the remaining 38 are the
  "38 datasets".
* ``aggregate_scores.py`` drops rows whose ``main_metric`` is null, requires exactly 38, and reports
  ImageNet (ImageNet 1k alone), the unweighted means over its three ``DATASET_GROUPS``
  (ImageNet dist. shifts, VTAB, Retrieval) and the unweighted mean over all 38.

This module keys everything by task key rather than display name, which is equivalent for a file written
by ``evaluate.py`` and robust to a renamed task. Lines whose key is not one of DataComp's 40 tasks are
ignored, as ``evaluate.py`` ignores them. All metrics are fractions in [0, 1]; tables show percent.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from datacomp_plugins.core.errors import PluginError

# DataComp's evaluate.py writes one JSON record per task to this file in a run folder; read here and by minicomp
RESULTS_FILE = "eval_results.jsonl"

# The 38 scored tasks of tasklist.yml: task key -> name written in the "dataset" field.
SCORED_TASKS: dict[str, str] = {
    "vtab/caltech101": "Caltech-101",
    "cifar10": "CIFAR-10",
    "vtab/cifar100": "CIFAR-100",
    "vtab/clevr_count_all": "CLEVR Counts",
    "vtab/clevr_closest_object_distance": "CLEVR Distance",
    "country211": "Country211",
    "vtab/dtd": "Describable Textures",
    "vtab/eurosat": "EuroSAT",
    "fgvc_aircraft": "FGVC Aircraft",
    "food101": "Food-101",
    "gtsrb": "GTSRB",
    "imagenet1k": "ImageNet 1k",
    "imagenet_sketch": "ImageNet Sketch",
    "imagenetv2": "ImageNet v2",
    "imagenet-a": "ImageNet-A",
    "imagenet-o": "ImageNet-O",
    "imagenet-r": "ImageNet-R",
    "vtab/kitti_closest_vehicle_distance": "KITTI Vehicle Distance",
    "mnist": "MNIST",
    "objectnet": "ObjectNet",
    "vtab/flowers": "Oxford Flowers-102",
    "vtab/pets": "Oxford-IIIT Pet",
    "voc2007": "Pascal VOC 2007",
    "vtab/pcam": "PatchCamelyon",
    "renderedsst2": "Rendered SST2",
    "vtab/resisc45": "RESISC45",
    "cars": "Stanford Cars",
    "stl10": "STL-10",
    "sun397": "SUN397",
    "vtab/svhn": "SVHN",
    "retrieval/flickr_1k_test_image_text_retrieval": "Flickr",
    "retrieval/mscoco_2014_5k_test_image_text_retrieval": "MSCOCO",
    "misc/winogavil": "WinoGAViL",
    "wilds/iwildcam": "iWildCam",
    "wilds/camelyon17": "Camelyon17",
    "wilds/fmow": "FMoW",
    "fairness/dollar_street": "Dollar Street",
    "fairness/geode": "GeoDE",
}

# Evaluated by DataComp but never scored: their main_metric is always null.
UNSCORED_TASKS: dict[str, str] = {
    "fairness/fairface": "FairFace",
    "fairness/utkface": "UTKFace",
}

IMAGENET = "ImageNet"
DIST_SHIFTS = "ImageNet dist. shifts"
VTAB = "VTAB"
RETRIEVAL = "Retrieval"
AVERAGE = "Average over 38 datasets"
COLUMNS: tuple[str, ...] = (IMAGENET, DIST_SHIFTS, VTAB, RETRIEVAL, AVERAGE)

# Column -> task keys averaged into it (aggregate_scores.py's DATASET_GROUPS, by key).
GROUPS: dict[str, tuple[str, ...]] = {
    IMAGENET: ("imagenet1k",),
    DIST_SHIFTS: ("imagenet_sketch", "imagenetv2", "imagenet-a", "imagenet-o", "imagenet-r", "objectnet"),
    VTAB: (
        "vtab/caltech101",
        "vtab/cifar100",
        "vtab/clevr_count_all",
        "vtab/clevr_closest_object_distance",
        "vtab/dtd",
        "vtab/eurosat",
        "vtab/kitti_closest_vehicle_distance",
        "vtab/flowers",
        "vtab/pets",
        "vtab/pcam",
        "vtab/resisc45",
        "vtab/svhn",
        "sun397",
    ),
    RETRIEVAL: (
        "retrieval/flickr_1k_test_image_text_retrieval",
        "retrieval/mscoco_2014_5k_test_image_text_retrieval",
        "misc/winogavil",
    ),
    AVERAGE: tuple(SCORED_TASKS),
}

PAPER = "Wang et al., NeurIPS 2024"
PAPER_NOTE = (
    f"Rows marked 'paper' are the numbers reported by {PAPER} (CLIPLoss and Norm-Based Data Selection) "
    "for DataComp-medium, not results of these runs. The paper reports only ImageNet-1k top-1, VTAB and "
    "the 38-dataset average; its other cells are empty."
)

# (method, ImageNet-1k, VTAB, Avg. over 38), in percent, DataComp-medium.
_PAPER_NUMBERS: tuple[tuple[str, float, float, float], ...] = (
    ("CLIPScore 30%", 26.4, 32.6, 32.2),
    ("negCLIPLoss 30%", 27.9, 33.2, 32.9),
    ("negCLIPLoss ∩ NormSim_2-D", 29.8, 34.8, 34.1),
    ("negCLIPLoss ∩ NormSim_inf(Target)", 31.7, 36.0, 35.0),
    ("DFN", 36.0, 36.2, 35.4),
    ("DFN with ours", 36.4, 38.6, 37.6),
    ("DFN, HYPE and ours", 37.3, 38.5, 37.7),
)

_MAX_LISTED = 10


@dataclass(frozen=True)
class Row:
    """One line of the comparison: a run of ours or a reference number from the paper.

    ``values`` are percentages keyed by column; ``None`` is an empty cell.
    """

    label: str
    kind: str  # "run" or "paper"
    values: dict[str, float | None]
    source: str = ""
    tasks_present: int = 0
    missing: tuple[str, ...] = ()
    duplicates: tuple[str, ...] = ()
    other: tuple[tuple[str, float], ...] = ()  # (task key, percent) of tasks outside DataComp's 40

    @property
    def partial(self) -> bool:
        """A run scored over fewer than the 38 tasks is not comparable with complete ones."""
        return self.kind == "run" and bool(self.missing)

    @property
    def display_label(self) -> str:
        """Label shown in tables and the plot, flagging paper rows and partial runs."""
        if self.kind == "paper":
            return f"{self.label} (paper)"
        if self.partial:
            return f"{self.label} (partial: {self.tasks_present}/{len(SCORED_TASKS)} tasks)"
        return self.label


def paper_rows() -> list[Row]:
    """The paper's reported DataComp-medium numbers, as rows beside the runs."""
    return [
        Row(label=name, kind="paper", source=PAPER,
            values={IMAGENET: in1k, DIST_SHIFTS: None, VTAB: vtab, RETRIEVAL: None, AVERAGE: avg})
        for name, in1k, vtab, avg in _PAPER_NUMBERS
    ]


_SEED = re.compile(r"^seed(\d+)$")


def _label(folder: Path) -> str:
    """A run folder's row label: its name, or "<baseline> seed <k>" for ``minicomp run``'s ``<baseline>/seed<k>``."""
    folder = folder.resolve()
    match = _SEED.match(folder.name)
    return f"{folder.parent.name} seed {match.group(1)}" if match else folder.name


def expand_runs(runs: Sequence[str]) -> list[str]:
    """RUN_DIR arguments as result folders: a folder without ``eval_results.jsonl`` whose sub-folders hold
    results (``minicomp run``'s runs folder ``<baseline>/seed<k>/``, or one baseline's ``seed<k>/``) stands for
    each of them, in name order (seeds by number)."""
    out: list[str] = []
    for run in runs:
        path = Path(run)
        if not path.is_dir() or (path / RESULTS_FILE).is_file():
            out.append(run)
            continue
        found = sorted(path.glob(f"*/{RESULTS_FILE}")) + sorted(path.glob(f"*/*/{RESULTS_FILE}"))

        def order(result: Path) -> tuple:
            match = _SEED.match(result.parent.name)
            return (str(result.parent.parent), int(match.group(1)) if match else -1, result.parent.name)

        out.extend(str(result.parent) for result in sorted(found, key=order)) if found else out.append(run)
    return out


def resolve_results(run: str) -> tuple[Path, str]:
    """Map a RUN_DIR (or the jsonl itself) to the results file and the row label (the run dir name, or
    "<baseline> seed <k>" for a ``minicomp run`` student's folder)."""
    path = Path(run)
    if path.is_dir():
        results = path / RESULTS_FILE
        if not results.is_file():
            raise PluginError(
                f"{run}: no {RESULTS_FILE} in this folder or its sub-folders; "
                "expected the --output_dir of DataComp's evaluate.py, or a runs folder of minicomp run"
            )
        return results, _label(path)
    if path.is_file():
        return path, _label(path.parent)
    raise PluginError(f"{run}: no such folder or file; expected a run folder holding {RESULTS_FILE}")


def read_results(path: Path) -> tuple[dict[str, dict], list[str]]:
    """Last record per task key, plus the keys that appeared more than once.

    DataComp appends to the file, so when a task was evaluated twice the later line is the newer one.
    """
    records: dict[str, dict] = {}
    repeated: list[str] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PluginError(f"{path}: cannot read ({exc})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PluginError(
                f"{path}:{lineno}: not valid JSON ({exc.msg}, column {exc.colno}); "
                "expected one JSON object per line as written by DataComp's evaluate.py"
            ) from None
        except RecursionError:
            raise PluginError(f"{path}:{lineno}: JSON nested too deeply to read; expected one flat JSON object "
                              "per line as written by DataComp's evaluate.py") from None
        except ValueError as exc:  # e.g. an integer literal longer than Python converts
            raise PluginError(f"{path}:{lineno}: unreadable JSON value ({str(exc)[:120]}); expected one JSON "
                              "object per line as written by DataComp's evaluate.py") from None
        if not isinstance(record, dict):
            raise PluginError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        key = record.get("key")
        if not isinstance(key, str):
            raise PluginError(f"{path}:{lineno}: missing the \"key\" field (the task key of tasklist.yml)")
        if not isinstance(record.get("metrics"), dict):
            raise PluginError(f"{path}:{lineno}: task {key}: missing the \"metrics\" object")
        if key in records and key not in repeated:
            repeated.append(key)
        record["_line"] = lineno
        records[key] = record
    return records, repeated


def _main_metric(path: Path, key: str, record: Mapping) -> float:
    """The task's main metric as a fraction, refusing what DataComp would not have written."""
    where = f"{path}:{record['_line']}: task {key} ({SCORED_TASKS.get(key, record.get('dataset', key))})"
    metrics = record["metrics"]
    if "main_metric" not in metrics or metrics["main_metric"] is None:
        raise PluginError(
            f"{where}: no metrics.main_metric; expected a number in [0, 1] "
            "(remove the line and rerun evaluate.py for this task)"
        )
    value = metrics["main_metric"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
        raise PluginError(f"{where}: metrics.main_metric is {value!r}; expected a number in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise PluginError(
            f"{where}: metrics.main_metric is {value}; expected a fraction in [0, 1], not a percentage"
        )
    return float(value)


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float's range
        return False


def score_run(run: str, allow_partial: bool = False) -> Row:
    """Group one run's results into the five DataComp columns (percent).

    A run missing any of the 38 tasks is refused unless ``allow_partial``: its averages would silently
    differ from DataComp's.
    """
    path, label = resolve_results(run)
    records, repeated = read_results(path)
    scores = {key: _main_metric(path, key, records[key]) for key in SCORED_TASKS if key in records}
    missing = tuple(key for key in SCORED_TASKS if key not in scores)
    if missing and not allow_partial:
        listed = ", ".join(missing[:_MAX_LISTED])
        more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        raise PluginError(
            f"{run}: {len(missing)} of {len(SCORED_TASKS)} DataComp tasks missing from {path.name}: "
            f"{listed}{more}; finish the evaluation or pass --partial"
        )
    values: dict[str, float | None] = {}
    for column, keys in GROUPS.items():
        present = [scores[key] for key in keys if key in scores]
        values[column] = 100.0 * sum(present) / len(present) if present else None
    # a run with none of DataComp's tasks (the mini DataComp's own evaluation sets) shows its tasks in columns
    # of their own instead of an empty row; beside DataComp's tasks, unknown lines are ignored as DataComp does
    other = () if scores else tuple((key, 100.0 * _main_metric(path, key, records[key])) for key in sorted(records)
                                    if key not in UNSCORED_TASKS)
    return Row(label=label, kind="run", values=values, source=str(path), tasks_present=len(scores),
               missing=missing, duplicates=tuple(k for k in repeated if k in SCORED_TASKS), other=other)


def build_rows(runs: Sequence[str], allow_partial: bool = False, with_paper: bool = True) -> list[Row]:
    """All rows of the report: the runs in the given order, then the paper's reference rows."""
    rows = [score_run(run, allow_partial) for run in expand_runs(runs)]
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        seen[row.label] = seen.get(row.label, 0) + 1
        if seen[row.label] > 1:  # two runs with the same folder name must stay distinguishable
            rows[i] = replace(row, label=f"{row.label} #{seen[row.label]}")
    return rows + (paper_rows() if with_paper else [])


def other_columns(rows: Sequence[Row]) -> list[str]:
    """Task keys outside DataComp's 40 that some run reports (each its own column, main metric in percent)."""
    return sorted({key for row in rows for key, _ in row.other})


def _cell(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def render_markdown(rows: Sequence[Row]) -> str:
    """Markdown table (percent, one decimal) followed by notes on partial runs, repeats and sources."""
    extra = other_columns(rows)
    header = ["Run", *COLUMNS, *extra]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) + len(extra))) + "|",
    ]
    for row in rows:
        others = dict(row.other)
        cells = [row.display_label.replace("|", "\\|")] + [_cell(row.values[c], 1) for c in COLUMNS]
        cells += [_cell(others.get(key), 1) for key in extra]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "Scores in percent: main metric of each task, grouped and averaged as in DataComp's "
        "aggregate_scores.py (ImageNet = ImageNet 1k alone).",
    ]
    for row in rows:
        if row.kind != "run":
            continue
        notes.append(f"{row.label}: {row.source}")
        if row.partial:
            missing = ", ".join(row.missing[:_MAX_LISTED])
            more = f" and {len(row.missing) - _MAX_LISTED} more" if len(row.missing) > _MAX_LISTED else ""
            notes.append(
                f"{row.label} is partial: averages over the {row.tasks_present} tasks present; "
                f"missing {missing}{more}."
            )
        if row.duplicates:
            notes.append(
                f"{row.label}: repeated results for {', '.join(row.duplicates)}; "
                "the last line of each was used."
            )
    if any(row.kind == "paper" for row in rows):
        notes.append(PAPER_NOTE)
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"


def render_csv(rows: Sequence[Row]) -> str:
    """CSV with one line per row; values in percent (two decimals), empty where not reported."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    extra = other_columns(rows)
    writer.writerow(["label", "kind", "partial", "tasks_present", *COLUMNS, *extra, "source"])
    for row in rows:
        others = dict(row.other)
        writer.writerow([
            row.label,
            row.kind,
            ("yes" if row.partial else "no") if row.kind == "run" else "",
            row.tasks_present if row.kind == "run" else "",
            *(_cell(row.values[c], 2) for c in COLUMNS),
            *(_cell(others.get(key), 2) for key in extra),
            row.source,
        ])
    return buffer.getvalue()


def render_png(rows: Sequence[Row]) -> bytes:
    """Grouped bar chart (one group per column, one bar per row) as PNG bytes; Agg, no display needed."""
    try:
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        from datacomp_plugins.core.registry import EXTRAS

        raise PluginError(f"--out: report.png {EXTRAS.hint('report')}") from None
    n = max(len(rows), 1)
    width = 0.8 / n
    fig = Figure(figsize=(min(16.0, 8.0 + 0.6 * n), 5.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    palette = colormaps["tab10" if n <= 10 else "tab20"]
    for i, row in enumerate(rows):
        xs = [j - 0.4 + width * (i + 0.5) for j, c in enumerate(COLUMNS) if row.values[c] is not None]
        ys = [row.values[c] for c in COLUMNS if row.values[c] is not None]
        paper = row.kind == "paper"
        ax.bar(xs, ys, width=width, label=row.display_label, color=palette(i % palette.N),
               hatch="//" if paper else None, edgecolor="black" if paper else None, linewidth=0.5)
    ax.set_xticks(range(len(COLUMNS)))
    ax.set_xticklabels([c.replace(" over ", "\nover ") for c in COLUMNS])
    ax.set_ylabel("score (%)")
    ax.set_title("DataComp evaluation" + (" (hatched: paper's reported numbers)"
                                          if any(r.kind == "paper" for r in rows) else ""))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def write_report(rows: Sequence[Row], out_dir: str) -> list[str]:
    """Write report.md, report.csv and report.png in ``out_dir``; everything is rendered before writing."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise PluginError(f"--out {out_dir}: exists and is not a folder")
    contents = {
        "report.md": render_markdown(rows).encode("utf-8"),
        "report.csv": render_csv(rows).encode("utf-8"),
        "report.png": render_png(rows),
    }
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise PluginError(f"--out {out_dir}: cannot create the folder ({exc.strerror})") from None
    # All three files or none: each is written under a temporary name first and renamed only when every one
    # is complete, so a failure (full disk, permissions) never leaves half a report beside an older one.
    staged: list[tuple[str, str]] = []
    try:
        for name, data in contents.items():
            target = os.path.join(out_dir, name)
            fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
            staged.append((tmp, target))
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
        blocked = [target for _, target in staged if os.path.isdir(target)]
        if blocked:  # a rename onto a folder fails: find out before the first one lands
            raise IsADirectoryError(21, f"{blocked[0]} is a folder")
        for tmp, target in staged:
            os.replace(tmp, target)
    except OSError as exc:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise PluginError(f"--out {out_dir}: cannot write the report ({exc.strerror or exc}); nothing written") \
            from None
    written = [target for _, target in staged]
    return written
