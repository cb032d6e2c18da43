"""The controls of ``minicomp run`` (oracle_30, anti_clip_score_30) and the report's instrument section, on small
worlds written here (no build, no training): subsets against brute force, byte-identical reruns, the report's
verdict when the controls are resolved and when they are sabotaged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import random_hex_uids, unit_rows, write_shard

from datacomp_plugins.apps.minicomp import run, runreport
from datacomp_plugins.apps.minicomp.evaluate import PER_IMAGE_DIR, save_per_image
from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.uids import load_uid_file, to_hex

COMPONENTS = ("clean", "mismatched", "generic_caption", "off_task", "near_duplicate")


def _world(out: Path, sizes=(300, 200), seed: int = 0, shares=(0.4, 0.2, 0.1, 0.2, 0.1), scores=None) -> dict:
    """metadata/<stem>.parquet + .npz and truth/<stem>.parquet; returns uid hex -> (component, clip score)."""
    rng = np.random.default_rng(seed)
    uids = random_hex_uids(sum(sizes), seed)
    truth = {}
    start = 0
    for index, n in enumerate(sizes):
        stem = f"{index:08d}"
        part = uids[start:start + n]
        img = unit_rows(rng, n, 768)
        txt = unit_rows(rng, n, 768)
        extra = None
        if scores is not None:
            extra = {"clip_l14_similarity_score": scores[start:start + n]}
        write_shard(str(out / "metadata"), stem, part, {"l14_img": img.astype(np.float16),
                                                         "l14_txt": txt.astype(np.float16)}, extra_columns=extra)
        component = rng.choice(COMPONENTS, size=n, p=shares)
        (out / "truth").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"uid": part, "component": component.tolist()}), out / "truth" / f"{stem}.parquet")
        column = pq.read_table(out / "metadata" / f"{stem}.parquet")["clip_l14_similarity_score"].to_numpy()
        for u, c, v in zip(part, component, column, strict=True):
            truth[u] = (str(c), float(v))
        start += n
    return truth


def _hex(uids: np.ndarray) -> list[str]:
    return [u.decode() if isinstance(u, bytes) else str(u) for u in to_hex(np.asarray(uids))]


def test_the_controls_are_in_every_default_and_quick_run():
    for name in run.CONTROLS:
        assert name in run.DEFAULT_BASELINES and name in run.QUICK_BASELINES and run.RECIPES[name] is None


def test_oracle_draws_from_the_signal_components_only(tmp_path):
    truth = _world(tmp_path)
    uids = _hex(run.oracle_uids(tmp_path))
    assert len(uids) == math.floor(0.3 * 500) == len(set(uids)) and uids == sorted(uids)
    assert {truth[u][0] for u in uids} <= set(run.ORACLE_COMPONENTS)
    assert {truth[u][0] for u in uids} == {"clean", "near_duplicate"}  # a uniform draw reaches both
    again = _hex(run.oracle_uids(tmp_path))
    assert again == uids and _hex(run.oracle_uids(tmp_path, seed=1)) != uids


def test_oracle_refuses_a_world_with_too_few_signal_samples(tmp_path):
    _world(tmp_path, shares=(0.1, 0.4, 0.2, 0.25, 0.05))  # about 15% signal < 30%
    with pytest.raises(PluginError, match=r"truth: \d+ samples of components clean, near_duplicate, fewer than "
                                          r"the 150"):
        run.oracle_uids(tmp_path)
    empty = tmp_path / "bare"
    (empty / "truth").mkdir(parents=True)
    with pytest.raises(PluginError, match="no .parquet files; the oracle_30 control needs the world's truth"):
        run.oracle_uids(empty)


def test_anti_clip_score_is_the_bottom_thirty_percent_by_brute_force(tmp_path):
    rng = np.random.default_rng(4)
    scores = np.round(rng.uniform(0.1, 0.5, 500), 2)  # two decimals: many ties, some at the cut
    scores[[3, 40, 77]] = np.nan  # never kept
    truth = _world(tmp_path, scores=scores)
    kept = _hex(run.anti_clip_score_uids(tmp_path))
    finite = sorted((v, u) for u, (_, v) in truth.items() if not math.isnan(v))
    expected = sorted(u for _, u in finite[: math.floor(0.3 * 500)])  # lowest first; ties to the smaller uid
    assert kept == expected
    cut = finite[149][0]
    assert sum(v == cut for v, _ in finite) > 1  # the cut falls inside a tie: the tie-break is exercised


def test_anti_clip_score_reads_the_l14_teachers_similarity(tmp_path):
    # the l14 column is the dot product of the l14 rows (conftest.write_shard); the b32 column is all zeros, so a
    # control that read it would keep the 150 smallest uids instead
    truth = _world(tmp_path)
    kept = set(_hex(run.anti_clip_score_uids(tmp_path)))
    assert len(kept) == 150
    assert max(truth[u][1] for u in kept) <= min(truth[u][1] for u in truth if u not in kept)


def test_control_uid_files_are_byte_identical_across_runs(tmp_path):
    _world(tmp_path / "world")
    settings = run.RunSettings(tmp_path / "world", tmp_path / "runs", list(run.CONTROLS), [0], "minicomp_quick", 256)
    for name in run.CONTROLS:
        first, second = tmp_path / f"{name}-1.npy", tmp_path / f"{name}-2.npy"
        assert run.make_subset(settings, name, first) == f"{name}: kept 150 samples"
        run.make_subset(settings, name, second)
        assert first.read_bytes() == second.read_bytes()
        assert len(load_uid_file(str(first), fix=False)) == 150


# ---------------------------------------------------------------- the report's instrument section


def _write_runs(out: Path, runs: Path, accuracy: dict[str, list[float]], images: int = 300) -> None:
    """One task of ``images`` images; subset -> per-seed accuracy (points), nested correct sets."""
    order = np.random.default_rng(0).permutation(images)
    for name, values in accuracy.items():
        for seed, value in enumerate(values):
            folder = runs / name / f"seed{seed}"
            folder.mkdir(parents=True)
            correct = np.zeros(images, dtype=bool)
            correct[order[: round(value / 100 * images)]] = True
            save_per_image(folder / PER_IMAGE_DIR, {"shapes": correct})
            record = {"key": "shapes", "dataset": "shapes", "metrics": {"acc1": float(correct.mean()),
                                                                        "main_metric": float(correct.mean())}}
            (folder / "eval_results.jsonl").write_text(json.dumps(record) + "\n")
    gates = [{"name": "teacher_accuracy_l14", "value": 0.9, "op": ">=", "threshold": 0.8, "passed": True,
              "detail": "shapes 0.9"},
             {"name": "clipscore_keeps", "value": 0.2, "op": ">=", "threshold": 0.5, "passed": False, "detail": ""}]
    (out / "MANIFEST.json").write_text(json.dumps({"gates": gates}))


CONTROLLED = {"oracle_30": [60.0, 62.0, 61.0], "random_30": [50.0, 51.0, 50.5],
              "anti_clip_score_30": [30.0, 31.0, 29.0], "no_filter": [50.0, 52.0, 51.0],
              "negcliploss_30": [53.0, 54.0, 55.0], "clip_score_30": [50.0, 51.0, 50.0]}


def test_report_judges_the_claims_when_the_controls_are_resolved(tmp_path):
    _write_runs(tmp_path, tmp_path / "runs", CONTROLLED)
    text, figure = runreport.render(tmp_path, tmp_path / "runs", list(CONTROLLED), [0, 1, 2])
    assert "| teacher_accuracy_l14 | 0.900 | >= 0.8 | pass |" in text
    assert "| clipscore_keeps | 0.200 | >= 0.5 | **FAIL**" in text
    assert "1 of 2 gates pass." in text
    assert "**Resolved**: oracle_30 > random_30 > anti_clip_score_30 resolved over 3 seeds and eval images." in text
    assert "**The instrument failed**" not in text
    row = next(line for line in text.splitlines() if line.startswith("| 1. negcliploss_30 beats clip_score_30 |"))
    assert "| **held** |" in row  # d = 3, 3, 5 points
    # claim 4: clip_score_30 does not beat no_filter, so it is not held although five filters were not run
    assert "| 4. every filter beats no_filter and random_30 | **not held** |" in text
    assert "| 2. negcliploss ∩ normsiminf(target) beats negcliploss_30 | **not judged** |" in text
    assert "Minimum detectable effect" in text and "points**; seeds for an MDE" in text
    # the figure's intervals: t over the three seeds, around the mean
    i = figure["names"].index("oracle_30")
    half = 4.302653 * 1.0 / math.sqrt(3)  # sd of 60, 62, 61 is 1
    assert figure["low"][i] == pytest.approx(61.0 - half, abs=1e-4) and figure["high"][i] == pytest.approx(61 + half,
                                                                                                            abs=1e-4)
    assert runreport.render_png(figure)[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("sabotage", ["swapped", "flat"])
def test_report_judges_no_claim_when_the_controls_are_not_resolved(tmp_path, sabotage):
    accuracy = dict(CONTROLLED)
    if sabotage == "swapped":  # the oracle's and the anti-control's students exchanged
        accuracy["oracle_30"], accuracy["anti_clip_score_30"] = accuracy["anti_clip_score_30"], accuracy["oracle_30"]
    else:  # the oracle no better than random
        accuracy["oracle_30"] = [50.0, 51.0, 50.5]
    _write_runs(tmp_path, tmp_path / "runs", accuracy)
    text, _ = runreport.render(tmp_path, tmp_path / "runs", list(accuracy), [0, 1, 2])
    assert "**The instrument failed**: oracle_30 > random_30 not held" in text
    assert "No claim is judged." in text and "Not judged: the instrument failed" in text
    assert "| 1. negcliploss_30 beats clip_score_30 |" not in text


def test_report_with_one_seed_uses_the_bootstrap_over_images(tmp_path):
    one = {name: values[:1] for name, values in CONTROLLED.items() if name != "random_30"}
    _write_runs(tmp_path, tmp_path / "runs", one)
    text, figure = runreport.render(tmp_path, tmp_path / "runs", list(one), [0])
    assert "oracle_30 > anti_clip_score_30 resolved over eval images only (one seed)" in text
    assert "One seed: no spread over seeds" in text
    assert "| 1. negcliploss_30 beats clip_score_30 | **not judged** |" in text  # claims need two seeds
    i = figure["names"].index("oracle_30")
    assert figure["low"][i] < 60.0 < figure["high"][i]  # the image bootstrap's interval around the one value


def test_report_names_pairs_without_per_image_results(tmp_path):
    _write_runs(tmp_path, tmp_path / "runs", CONTROLLED)
    import shutil

    shutil.rmtree(tmp_path / "runs" / "oracle_30" / "seed1" / PER_IMAGE_DIR)
    text, _ = runreport.render(tmp_path, tmp_path / "runs", list(CONTROLLED), [0, 1, 2])
    assert "No per-image results for oracle_30/seed1" in text


def test_per_image_results_that_disagree_with_acc1_are_refused(tmp_path):
    _write_runs(tmp_path, tmp_path / "runs", {"oracle_30": [60.0]})
    path = tmp_path / "runs" / "oracle_30" / "seed0" / PER_IMAGE_DIR / "shapes.npy"
    np.save(path, np.zeros(300, dtype=bool))
    with pytest.raises(PluginError, match=r"shapes.npy: 0.0000 of the images correct, but acc1 = 0.6000"):
        runreport.render(tmp_path, tmp_path / "runs", ["oracle_30"], [0])


def test_per_image_files_are_deterministic_complete_and_checked(tmp_path):
    from datacomp_plugins.apps.minicomp.evaluate import load_per_image

    correct = {"shapes": np.array([True, False, True]), "colors": np.array([False, False, True, True])}
    save_per_image(tmp_path / "a", correct)
    save_per_image(tmp_path / "b", correct)
    for task in correct:
        assert (tmp_path / "a" / f"{task}.npy").read_bytes() == (tmp_path / "b" / f"{task}.npy").read_bytes()
    save_per_image(tmp_path / "a", {"shapes": correct["shapes"]})  # a second evaluation replaces the folder whole
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["shapes.npy"]
    assert not list(tmp_path.glob("*.tmp"))
    records = {"shapes": {"metrics": {"acc1": 2 / 3}}, "colors": {"metrics": {"acc1": 0.5}}}
    loaded = load_per_image(tmp_path / "b", records)
    assert {t: v.tolist() for t, v in loaded.items()} == {t: v.tolist() for t, v in correct.items()}
    assert load_per_image(tmp_path / "missing", records) is None
    np.save(tmp_path / "b" / "colors.npy", np.array([0, 0, 1, 1]))
    with pytest.raises(PluginError, match=r"colors.npy: expected a non-empty 1-D bool array, got int64"):
        load_per_image(tmp_path / "b", records)
    (tmp_path / "b" / "colors.npy").unlink()
    with pytest.raises(PluginError, match="cannot read the per-image results of task colors"):
        load_per_image(tmp_path / "b", records)


def test_a_pair_finished_without_per_image_results_is_evaluated_again_for_them(tmp_path, monkeypatch):
    """Only the per-image files are written; without a checkpoint nothing is done (the report names the pair)."""
    from datacomp_plugins.apps.minicomp import evaluate, student

    calls = []

    def fake(datacomp, model, checkpoint, evalsets, tasks, batch_size=256):
        calls.append((model, checkpoint, tuple(tasks)))
        return [], {"shapes": np.array([True, False])}

    monkeypatch.setattr(evaluate, "evaluate_per_image", fake)
    monkeypatch.setattr(evaluate, "list_tasks", lambda evalsets: ["shapes"])
    monkeypatch.setattr(student, "register_model", lambda path: None)
    settings = run.RunSettings(tmp_path / "world", tmp_path / "runs", [], [0], "minicomp_quick", 256)
    folder = tmp_path / "runs" / "no_filter" / "seed0"
    folder.mkdir(parents=True)
    run._evaluate_again(settings, tmp_path, folder, "minicomp-student", None)
    assert calls == [] and not (folder / PER_IMAGE_DIR).exists()
    checkpoint = folder / "train" / "checkpoints" / "epoch_latest.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    run._evaluate_again(settings, tmp_path, folder, "minicomp-student", None)
    assert calls == [("minicomp-student", checkpoint, ("shapes",))]
    assert np.load(folder / PER_IMAGE_DIR / "shapes.npy").tolist() == [True, False]
