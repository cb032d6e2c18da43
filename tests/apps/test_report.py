"""``datacomp-plugins report`` against hand-written eval_results.jsonl files with hand-computed averages.

The task keys, names and groups below are typed in from DataComp's tasklist.yml and aggregate_scores.py,
independently of the module under test, so a wrong table in the module makes these tests fail.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from datacomp_plugins import cli

# tasklist.yml: key -> name, all 40 tasks in file order.
TASKS = {
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
    "fairness/fairface": "FairFace",
    "fairness/utkface": "UTKFace",
}
NO_MAIN_METRIC = {"fairness/fairface", "fairness/utkface"}
SCORED = [k for k in TASKS if k not in NO_MAIN_METRIC]
DIST_SHIFTS = ["imagenet_sketch", "imagenetv2", "imagenet-a", "imagenet-o", "imagenet-r", "objectnet"]
VTAB = [k for k in TASKS if k.startswith("vtab/")] + ["sun397"]
RETRIEVAL = [
    "retrieval/flickr_1k_test_image_text_retrieval",
    "retrieval/mscoco_2014_5k_test_image_text_retrieval",
    "misc/winogavil",
]
COLUMNS = ["ImageNet", "ImageNet dist. shifts", "VTAB", "Retrieval", "Average over 38 datasets"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def line(key: str, value: float | None) -> str:
    """One line as DataComp's evaluate.py writes it."""
    metrics = {"acc1": value, "acc5": value, "main_metric": value}
    if key in NO_MAIN_METRIC:
        metrics = {"acc_race_avg": 0.4, "main_metric": None}
    return json.dumps({"key": key, "dataset": TASKS[key], "metrics": metrics})


def write_run(run_dir: Path, values: dict[str, float], extra: list[str] | None = None,
              skip: tuple[str, ...] = ()) -> Path:
    """eval_results.jsonl with every task (0.5 unless given), the unscored ones null, plus ``extra`` lines."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [line(key, values.get(key, 0.5)) for key in TASKS if key not in skip]
    path = run_dir / "eval_results.jsonl"
    path.write_text("\n".join(lines + (extra or [])) + "\n")
    return path


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    return {row["label"]: row for row in csv.DictReader(io.StringIO(path.read_text()))}


def assert_no_outputs(out: Path) -> None:
    assert not out.exists() or list(out.iterdir()) == []


def test_hand_computed_averages_all_half_imagenet_high(tmp_path, capsys):
    write_run(tmp_path / "runA", {"imagenet1k": 0.8})
    out = tmp_path / "out"
    assert cli.main(["report", str(tmp_path / "runA"), "--out", str(out), "--no-paper"]) == 0
    row = read_csv(out / "report.csv")["runA"]
    # ImageNet is IN-1k alone; the other groups are all 0.5; the average is (37 * 0.5 + 0.8) / 38.
    assert row["ImageNet"] == "80.00"
    assert row["ImageNet dist. shifts"] == "50.00"
    assert row["VTAB"] == "50.00"
    assert row["Retrieval"] == "50.00"
    assert row["Average over 38 datasets"] == "50.79"
    assert row["partial"] == "no"
    assert row["tasks_present"] == "38"
    printed = capsys.readouterr().out
    assert "| runA | 80.0 | 50.0 | 50.0 | 50.0 | 50.8 |" in printed
    assert "(paper)" not in printed


def test_groups_follow_datacomp_membership(tmp_path):
    values = {key: 0.1 for key in SCORED}
    values["imagenet1k"] = 0.7
    values.update({key: 0.3 for key in DIST_SHIFTS})
    values.update({key: 0.6 for key in VTAB})
    values["sun397"] = 0.9  # SUN397 belongs to VTAB although its key has no vtab/ prefix
    values.update(zip(RETRIEVAL, [0.2, 0.4, 0.9], strict=True))  # WinoGAViL counts as retrieval
    write_run(tmp_path / "runB", values)
    out = tmp_path / "out"
    assert cli.main(["report", str(tmp_path / "runB"), "--out", str(out)]) == 0
    row = read_csv(out / "report.csv")["runB"]
    assert row["ImageNet"] == "70.00"
    assert row["ImageNet dist. shifts"] == "30.00"
    assert row["VTAB"] == "62.31"  # (12 * 0.6 + 0.9) / 13
    assert row["Retrieval"] == "50.00"  # (0.2 + 0.4 + 0.9) / 3
    # 0.7 + 6 * 0.3 + 8.1 + 1.5 + 15 * 0.1 = 13.6 over 38 tasks; FairFace/UTKFace not counted.
    assert row["Average over 38 datasets"] == "35.79"


def test_last_line_wins_and_unknown_or_unscored_lines_are_ignored(tmp_path, capsys):
    stale = line("imagenet1k", 0.1)
    unknown = json.dumps({"key": "not/a_task", "dataset": "X", "metrics": {"main_metric": 0.0}})
    path = write_run(tmp_path / "runC", {"imagenet1k": 0.8}, extra=[unknown])
    # Put the stale ImageNet result first, as an earlier evaluation appended before the newer one.
    path.write_text(stale + "\n" + path.read_text())
    out = tmp_path / "out"
    assert cli.main(["report", str(path), "--out", str(out), "--no-paper"]) == 0
    row = read_csv(out / "report.csv")["runC"]  # a path to the jsonl is labelled by its folder
    assert row["ImageNet"] == "80.00"
    assert row["Average over 38 datasets"] == "50.79"
    md = (out / "report.md").read_text()
    assert "imagenet1k" in md and "last line" in md


def test_outputs_and_paper_rows(tmp_path, capsys):
    write_run(tmp_path / "runA", {"imagenet1k": 0.8})
    write_run(tmp_path / "runB", {})
    out = tmp_path / "new" / "out"
    assert cli.main(["report", str(tmp_path / "runA"), str(tmp_path / "runB"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.csv", "report.md", "report.png"]
    png = (out / "report.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 1000

    with (out / "report.csv").open() as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames[4:9] == COLUMNS
        rows = list(reader)
    assert [r["label"] for r in rows[:2]] == ["runA", "runB"]
    assert rows[1]["Average over 38 datasets"] == "50.00"
    paper = {r["label"]: r for r in rows if r["kind"] == "paper"}
    assert len(paper) == 7
    assert [paper["CLIPScore 30%"][c] for c in COLUMNS] == ["26.40", "", "32.60", "", "32.20"]
    assert [paper["negCLIPLoss ∩ NormSim_inf(Target)"][c] for c in COLUMNS] == ["31.70", "", "36.00", "",
                                                                                 "35.00"]
    assert [paper["DFN, HYPE and ours"][c] for c in COLUMNS] == ["37.30", "", "38.50", "", "37.70"]

    md = (out / "report.md").read_text()
    assert "| Run | ImageNet | ImageNet dist. shifts | VTAB | Retrieval | Average over 38 datasets |" in md
    assert "| negCLIPLoss 30% (paper) | 27.9 |  | 33.2 |  | 32.9 |" in md
    assert "reported by Wang et al." in md
    assert capsys.readouterr().out == md


def test_missing_tasks_refused_without_partial(tmp_path, capsys):
    skip = tuple(SCORED[:12])
    write_run(tmp_path / "runP", {}, skip=skip)
    out = tmp_path / "out"
    assert cli.main(["report", str(tmp_path / "runP"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "runP" in err and "12 of 38" in err and "--partial" in err
    assert all(key in err for key in skip[:10]) and skip[11] not in err and "2 more" in err
    assert_no_outputs(out)


def test_partial_averages_over_present_tasks(tmp_path, capsys):
    # No retrieval at all, ImageNet-O missing; ImageNet-A at 0.2 so the shift mean changes visibly.
    write_run(tmp_path / "runP", {"imagenet-a": 0.2}, skip=(*RETRIEVAL, "imagenet-o"))
    out = tmp_path / "out"
    assert cli.main(["report", str(tmp_path / "runP"), "--out", str(out), "--partial", "--no-paper"]) == 0
    row = read_csv(out / "report.csv")["runP"]
    assert row["partial"] == "yes" and row["tasks_present"] == "34"
    assert row["ImageNet dist. shifts"] == "44.00"  # (4 * 0.5 + 0.2) / 5
    assert row["Retrieval"] == ""
    assert row["Average over 38 datasets"] == "49.12"  # (33 * 0.5 + 0.2) / 34
    printed = capsys.readouterr().out
    assert "runP (partial: 34/38 tasks)" in printed and "misc/winogavil" in printed


def test_run_dir_without_results(tmp_path, capsys):
    good = tmp_path / "good"
    write_run(good, {})
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    assert cli.main(["report", str(good), str(empty), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(empty) in err and "eval_results.jsonl" in err and "Traceback" not in err
    assert_no_outputs(out)
    assert cli.main(["report", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_malformed_json_line_names_file_and_line(tmp_path, capsys):
    path = write_run(tmp_path / "runM", {})
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:-5]
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert cli.main(["report", str(tmp_path / "runM"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3:" in err and "JSON" in err and "Traceback" not in err
    assert_no_outputs(out)


@pytest.mark.parametrize("metrics", [{"acc1": 0.5}, {"acc1": 0.5, "main_metric": None},
                                     {"main_metric": "0.5"}, {"main_metric": 55.0}])
def test_result_without_usable_main_metric(tmp_path, capsys, metrics):
    bad = json.dumps({"key": "vtab/dtd", "dataset": "Describable Textures", "metrics": metrics})
    path = write_run(tmp_path / "runN", {}, skip=("vtab/dtd",), extra=[bad])
    out = tmp_path / "out"
    assert cli.main(["report", str(tmp_path / "runN"), "--out", str(out), "--partial"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:40:" in err and "vtab/dtd" in err and "main_metric" in err and "Traceback" not in err
    assert_no_outputs(out)


def test_record_without_key_or_metrics(tmp_path, capsys):
    path = write_run(tmp_path / "runK", {}, extra=[json.dumps({"dataset": "X", "metrics": {}})])
    assert cli.main(["report", str(path)]) == 2
    assert f"{path}:41:" in capsys.readouterr().err
    path = write_run(tmp_path / "runK", {}, extra=[json.dumps(["not", "an", "object"])])
    assert cli.main(["report", str(path)]) == 2
    assert f"{path}:41:" in capsys.readouterr().err


def test_out_is_a_file(tmp_path, capsys):
    write_run(tmp_path / "runA", {})
    out = tmp_path / "out"
    out.write_text("keep me")
    assert cli.main(["report", str(tmp_path / "runA"), "--out", str(out)]) == 2
    assert "--out" in capsys.readouterr().err
    assert out.read_text() == "keep me"


def _minicomp_runs(root: Path) -> dict[tuple[str, int], dict[str, float]]:
    """``minicomp run``'s layout: runs/<baseline>/seed<k>/eval_results.jsonl with the world's own tasks."""
    values = {}
    for b, baseline in enumerate(("no_filter", "negcliploss_30")):
        for seed in (0, 1, 10):
            acc = {"shapes": 0.1 * (b + 1) + 0.01 * seed, "colors": 0.2 + 0.001 * seed}
            folder = root / baseline / f"seed{seed}"
            folder.mkdir(parents=True)
            (folder / "eval_results.jsonl").write_text("".join(
                json.dumps({"key": k, "dataset": k, "metrics": {"acc1": v, "main_metric": v}}) + "\n"
                for k, v in acc.items()))
            values[(baseline, seed)] = acc
    return values


def test_report_reads_a_runs_folder_by_baseline_and_seed(tmp_path, capsys):
    values = _minicomp_runs(tmp_path / "runs")
    out = tmp_path / "out"
    assert cli.main(["report", str(tmp_path / "runs"), "--partial", "--no-paper", "--out", str(out)]) == 0
    rows = read_csv(out / "report.csv")
    expected = {f"{b} seed {s}": v for (b, s), v in values.items()}
    assert set(rows) == set(expected)
    for label, acc in expected.items():  # rows hold the tasks' numbers, not empty cells
        assert rows[label]["shapes"] == f"{100 * acc['shapes']:.2f}"
        assert rows[label]["colors"] == f"{100 * acc['colors']:.2f}"
    labels = list(rows)
    assert labels.index("no_filter seed 1") < labels.index("no_filter seed 10")  # seeds by number
    # one student's folder is named by its baseline and seed too
    assert cli.main(["report", str(tmp_path / "runs" / "no_filter" / "seed0"), "--partial", "--no-paper"]) == 0
    assert "| no_filter seed 0 (partial" in capsys.readouterr().out


def test_no_paper_help_says_what_it_does():
    import contextlib

    with contextlib.redirect_stdout(io.StringIO()) as text, pytest.raises(SystemExit):
        cli.main(["report", "--help"])
    flat = " ".join(text.getvalue().split())
    assert "--no-paper leave out the paper's reference rows (they are shown unless this is given)" in flat
    assert "(default: True)" not in flat
