"""``minicomp run``: filter -> DataComp's resharder -> student -> DataComp's evaluation, on the quick world.

One quick run per test session (``quick_runs``); the determinism and kill-and-resume checks retrain one
subset once more. Tests that need DataComp read ``DATACOMP_DIR`` and skip only when it is unset.
"""

from __future__ import annotations

import ast
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from datacomp_plugins.apps.minicomp import claims
from datacomp_plugins.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[3]
needs_datacomp = pytest.mark.skipif(not os.environ.get("DATACOMP_DIR"), reason="DATACOMP_DIR is not set")


def _run_cli(argv: list[str]) -> int:
    return cli_main(["minicomp", "run", *argv, "--no_progress"])


# The decision rule's tests: tests/apps/minicomp/test_decision_rule.py.


# ---------------------------------------------------------------- DataComp's train.py argument list


@needs_datacomp
def test_train_argv_has_datacomp_train_py_flags_in_order(tmp_path):
    """Every flag train.py passes to open_clip's main (read from its source), in its order."""
    from datacomp_plugins.apps.minicomp import student

    source = (Path(os.environ["DATACOMP_DIR"]) / "train.py").read_text()
    flags = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "main_args" for t in node.targets):
            flags = [e.value for e in node.value.elts if isinstance(e, ast.Constant) and str(e.value).startswith("--")]
    assert len(flags) > 15
    data = tmp_path / "shards"
    data.mkdir()
    for i in range(3):
        (data / f"{i:08d}.tar").write_bytes(b"")
    scale = student.SCALE_CONFIGS["minicomp"]
    argv = student.train_argv(data, tmp_path / "logs", "train", scale, seed=7, train_num_samples=64_000)
    ours = [a for a in argv if a.startswith("--")]
    # train.py appends --dataset-resampled unconditionally; beta2 is None; --grad-checkpointing is left out
    # (the next test shows it changes no weight)
    assert ours == [f for f in flags if f != "--grad-checkpointing"] + ["--dataset-resampled"]
    value = dict(zip(argv, argv[1:], strict=False))
    assert value["--train-data"] == str(data / "{00000000..00000002}.tar")  # train.py's get_input_shards
    assert value["--train-num-samples"] == str(64_000 // scale["num_checkpoints"])
    assert value["--epochs"] == str(scale["num_checkpoints"]) and value["--seed"] == "7"
    assert value["--batch-size"] == str(scale["batch_size"]) and value["--resume"] == "latest"


def test_gradient_checkpointing_changes_no_weight_of_the_student(tmp_path):
    """Why the student may leave out train.py's --grad-checkpointing: the same steps give the same bits."""
    import copy

    import torch
    from open_clip.loss import ClipLoss

    from datacomp_plugins.apps.minicomp import openclip, student

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        open_clip = openclip.register([str(student.write_model_config(tmp_path))])
        torch.manual_seed(0)
        model = open_clip.create_model(student.STUDENT_MODEL, pretrained=None, output_dict=True)
        tokens = open_clip.get_tokenizer(student.STUDENT_MODEL)([f"{i} red circles" for i in range(16)])
        images = torch.randn(16, 3, 32, 32)

        def trained(checkpointing: bool) -> torch.Tensor:
            m = copy.deepcopy(model)
            m.set_grad_checkpointing(checkpointing)
            opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.2)
            for _ in range(3):
                opt.zero_grad(set_to_none=True)
                out = m(images, tokens)
                ClipLoss()(out["image_features"], out["text_features"], out["logit_scale"]).backward()
                opt.step()
            return torch.cat([p.detach().flatten() for p in m.parameters()])

        before = torch.cat([p.detach().flatten() for p in model.parameters()])
        with_checkpoints, without = trained(True), trained(False)
        assert not torch.equal(with_checkpoints, before)  # the steps did train
        assert torch.equal(with_checkpoints, without)
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- training children


def test_stop_training_kills_running_children_and_their_callers_see_why(tmp_path):
    """A run that stops early kills its students at once (they resume later) instead of waiting for them."""
    import threading

    from datacomp_plugins.apps.minicomp import openclip as student
    from datacomp_plugins.core.errors import PluginError

    errors: list[BaseException] = []

    def one(k: int) -> None:
        command = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(120)"]
        try:
            student.run_child(command, dict(os.environ), tmp_path / f"{k}.log", None, "training")
        except PluginError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(2)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    while len(student._CHILDREN) < 2 and time.monotonic() - start < 60:
        time.sleep(0.05)
    assert student.stop_training() == 2
    for thread in threads:
        thread.join(timeout=30)
    assert time.monotonic() - start < 60 and not any(t.is_alive() for t in threads)
    assert len(errors) == 2 and all(f"exit status {-signal.SIGKILL}" in str(e) for e in errors)
    assert not student._CHILDREN and student.stop_training() == 0


def test_model_config_written_by_many_threads_at_once(tmp_path):
    """Students starting together each write the config: every writer succeeds and no temporary is left."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from datacomp_plugins.apps.minicomp import student

    for round_ in range(40):  # each round a fresh folder, eight writers released together
        folder = tmp_path / str(round_)
        gate = threading.Barrier(8)

        def write(_, folder=folder, gate=gate):
            gate.wait()
            return student.write_model_config(folder)

        with ThreadPoolExecutor(8) as pool:
            paths = list(pool.map(write, range(8)))
        assert set(paths) == {folder / f"{student.STUDENT_MODEL}.json"}
        assert json.loads(paths[0].read_text()) == student.STUDENT_CONFIG
        assert [p.name for p in folder.iterdir()] == [paths[0].name]


def test_a_child_over_its_time_limit_is_killed_with_a_clear_error(tmp_path):
    from datacomp_plugins.apps.minicomp import openclip as student
    from datacomp_plugins.core.errors import PluginError

    with pytest.raises(PluginError, match=r"training timed out after 0.5 s; see .*slow.log"):
        student.run_child([sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ),
                          tmp_path / "slow.log", 0.5, "training")
    assert not student._CHILDREN


# ---------------------------------------------------------------- errors


def test_missing_datacomp_dir_is_a_clear_error(quick_world, monkeypatch, capsys):
    monkeypatch.delenv("DATACOMP_DIR", raising=False)
    assert _run_cli([str(quick_world), "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: DATACOMP_DIR is not set") and "Traceback" not in err


@pytest.mark.parametrize("case", ["missing", "floats", "syntax", "taken", "empty"])
def test_bad_subset_is_a_clear_error(quick_world, tmp_path, capsys, case):
    path = tmp_path / "mine.npy"
    if case == "floats":
        np.save(path, np.arange(5, dtype=np.float64))
    elif case == "empty":
        np.save(path, np.zeros(0, dtype=np.dtype("u8,u8")))
    item = {"missing": f"mine={tmp_path / 'nope.npy'}", "floats": f"mine={path}", "syntax": str(path),
            "taken": f"negcliploss_30={path}", "empty": f"mine={path}"}[case]
    assert _run_cli([str(quick_world), "--quick", "--subset", item, "--runs_dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --subset") and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # refused before any work


def test_bad_jobs_is_a_clear_error(quick_world, tmp_path, capsys):
    assert _run_cli([str(quick_world), "--quick", "--jobs", "0", "--runs_dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --jobs 0: expected at least 1") and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- the quick run


@pytest.fixture(scope="session")
def quick_runs(quick_world):
    if not os.environ.get("DATACOMP_DIR"):
        pytest.skip("DATACOMP_DIR is not set")
    assert _run_cli([str(quick_world), "--quick", "--jobs", "2"]) == 0
    return Path(quick_world)


def _tasks(out: Path) -> list[str]:
    return sorted(p.name[len("wds_"):-len("_test")] for p in (out / "evalsets").iterdir() if p.name.startswith("wds_"))


@needs_datacomp
def test_negcliploss_filters_of_a_run_use_the_teachers_tau_and_batch(quick_runs):
    """The paper takes tau and B from the teacher's training: every negCLIPLoss filter of the run (alone or as
    the quality stage) ran with MANIFEST.json's values, not the recipes' OpenAI ones (0.01, 32768)."""
    manifest = json.loads((quick_runs / "MANIFEST.json").read_text())
    teacher = manifest["teachers"]["l14"]
    assert teacher["batch_size"] == 128 and math.isclose(teacher["temperature"], math.exp(-teacher["logit_scale"]),
                                                         rel_tol=1e-4)
    checked = 0
    for baseline in ("negcliploss_30", "negcliploss_normsiminf_target"):
        sidecar = json.loads((quick_runs / "runs" / baseline / "uids.npy.json").read_text())
        params = sidecar["parameters"]
        assert params["temperature"] == teacher["temperature"] and params["temperature"] != 0.01
        assert params["negcliploss_batch_size"] == teacher["batch_size"]
        checked += 1
    clip = json.loads((quick_runs / "runs" / "clip_score_30" / "uids.npy.json").read_text())["parameters"]
    assert clip["temperature"] == 0.01  # CLIPScore has no temperature: left at the recipe's value
    assert checked == 2


@needs_datacomp
def test_every_run_folder_holds_a_valid_eval_results_file(quick_runs):
    from datacomp_plugins.apps.minicomp.run import QUICK_BASELINES

    tasks = _tasks(quick_runs)
    assert len(tasks) >= 2
    for baseline in QUICK_BASELINES:
        path = quick_runs / "runs" / baseline / "seed0" / "eval_results.jsonl"
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert sorted(r["key"] for r in lines) == tasks
        for record in lines:
            assert record["dataset"] == record["key"]
            metrics = record["metrics"]
            assert 0.0 <= metrics["acc1"] <= 1.0 and metrics["main_metric"] == metrics["acc1"]
            assert 0.0 <= metrics["mean_per_class_recall"] <= 1.0


@needs_datacomp
def test_subset_sizes_and_reshard_are_exact(quick_runs):
    """Subset sizes are the recipes' floor(N*F) (clip_score: DataComp's count); DataComp's resharder wrote
    exactly the subset's samples."""
    from datacomp_plugins.apps.minicomp.run import pool_uids
    from datacomp_plugins.core.uids import load_uid_file, to_hex

    n = len(pool_uids(quick_runs))
    column = np.concatenate([pq.read_table(path)["clip_l14_similarity_score"].to_numpy()
                             for path in sorted((quick_runs / "metadata").glob("*.parquet"))])
    cut = np.sort(column)[::-1][math.floor(0.3 * n)]  # clip_score: DataComp's rule, score >= the (floor(N*F)+1)-th
    expected = {"no_filter": n, "clip_score_30": int((column >= cut).sum()), "negcliploss_30": math.floor(0.3 * n),
                "negcliploss_normsiminf_target": math.floor(0.2 * n)}
    for baseline, size in expected.items():
        assert len(load_uid_file(str(quick_runs / "runs" / baseline / "uids.npy"))) == size
    folder = quick_runs / "runs" / "negcliploss_30"
    wanted = set(to_hex(np.asarray(load_uid_file(str(folder / "uids.npy")))).astype(str))
    seen = []
    for tar_path in sorted((folder / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    seen.append(json.loads(tar.extractfile(member).read())["uid"])
    assert len(seen) == len(set(seen)) and set(seen) == wanted


@needs_datacomp
def test_the_controls_are_resolved_and_the_check_fails_on_sabotaged_subsets(quick_runs):
    """The CI's instrument check: oracle_30 beats anti_clip_score_30 by the one-seed paired bootstrap over eval
    images. Sabotaged (the two subsets' students swapped, or one compared with itself) the same check fails."""
    from datacomp_plugins.apps.minicomp.run import QUICK_BASELINES
    from datacomp_plugins.apps.minicomp.runreport import read_per_image

    results, lacking = read_per_image(quick_runs / "runs", list(QUICK_BASELINES), [0])
    assert not lacking and set(results) == set(QUICK_BASELINES)
    verdict = claims.instrument(results)
    assert verdict.resolved, verdict.why
    [link] = verdict.comparisons  # no random_30 in the quick run: the chain is oracle > anti
    assert (link.better, link.worse, link.n, link.status) == ("oracle_30", "anti_clip_score_30", 1, "held")
    assert link.boot.p <= 0.05 and link.boot.lower > 0
    swapped = {**results, "oracle_30": results["anti_clip_score_30"], "anti_clip_score_30": results["oracle_30"]}
    assert not claims.instrument(swapped).resolved
    same = {**results, "anti_clip_score_30": results["oracle_30"]}
    assert not claims.instrument(same).resolved
    text = (quick_runs / "report.md").read_text()
    assert "## Instrument" in text and "**Resolved**: oracle_30 > anti_clip_score_30 resolved" in text
    # the per-image files are the evaluation the results file reports
    for name in QUICK_BASELINES:
        lines = (quick_runs / "runs" / name / "seed0" / "eval_results.jsonl").read_text().splitlines()
        for record in map(json.loads, lines):
            correct = results[name][0][record["key"]]
            assert abs(correct.mean() - record["metrics"]["acc1"]) <= 1.0 / len(correct) + 1e-12


@needs_datacomp
def test_report_command_reads_the_results(quick_runs, tmp_path):
    from datacomp_plugins.apps.minicomp.run import QUICK_BASELINES

    runs = [str(p) for p in sorted((quick_runs / "runs").glob("*/seed0"))]
    assert len(runs) == len(QUICK_BASELINES) == 6
    assert cli_main(["report", *runs, "--partial", "--out", str(tmp_path)]) == 0


@needs_datacomp
def test_report_md_tables_match_the_results_and_truth(quick_runs):
    """report.md's averages are the mean of the jsonl lines; component shares are recounted from truth/."""
    import pyarrow.parquet as pq

    from datacomp_plugins.core.uids import load_uid_file, to_hex

    text = (quick_runs / "report.md").read_text()
    assert (quick_runs / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path = quick_runs / "runs" / "negcliploss_30" / "seed0" / "eval_results.jsonl"
    accs = [json.loads(line)["metrics"]["acc1"] for line in path.read_text().splitlines()]
    row = next(line for line in text.splitlines() if line.startswith("| negcliploss_30 |"))
    assert row.split("|")[-2].strip() == f"{100 * sum(accs) / len(accs):.1f}"
    truth = pq.read_table(quick_runs / "truth").to_pandas() if (quick_runs / "truth").is_dir() else None
    kept = set(to_hex(np.asarray(load_uid_file(str(quick_runs / "runs" / "negcliploss_30" / "uids.npy")))).astype(str))
    components = sorted(truth["component"].unique())
    rows = [line for line in text.splitlines() if line.startswith("| negcliploss_30 |")]
    share_row = rows[1].split("|")[2:-1]
    for component, cell in zip(components, share_row, strict=True):
        members = truth["uid"][truth["component"] == component]
        assert cell.strip() == f"{100 * sum(u in kept for u in members) / len(members):.1f}"


def test_the_last_epochs_second_copy_is_dropped_only_when_latest_holds_that_epoch(tmp_path):
    """A finished student keeps one checkpoint; a killed one (latest = an earlier epoch) keeps both files."""
    import torch

    from datacomp_plugins.apps.minicomp.run import drop_final_epoch_copy

    def save(name: str, epoch: int) -> None:
        torch.save({"epoch": epoch, "state_dict": {"w": torch.full((2,), float(epoch))}}, tmp_path / name)

    save("epoch_3.pt", 3)
    assert not drop_final_epoch_copy(tmp_path, 3)  # no epoch_latest.pt: nothing to fall back on
    save("epoch_latest.pt", 2)
    assert not drop_final_epoch_copy(tmp_path, 3)  # latest is an earlier epoch: epoch_3.pt is not a copy of it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_3.pt", "epoch_latest.pt"]
    save("epoch_latest.pt", 3)
    assert drop_final_epoch_copy(tmp_path, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["epoch_latest.pt"]


@needs_datacomp
def test_a_finished_student_keeps_one_checkpoint_of_its_last_epoch(quick_runs):
    import torch

    from datacomp_plugins.apps.minicomp import student

    epochs = student.SCALE_CONFIGS["minicomp_quick"]["num_checkpoints"]
    folders = sorted((quick_runs / "runs").glob("*/seed*/train/checkpoints"))
    assert folders
    for folder in folders:
        assert [p.name for p in folder.iterdir()] == ["epoch_latest.pt"], folder
        assert torch.load(folder / "epoch_latest.pt", map_location="cpu", weights_only=True)["epoch"] == epochs


@needs_datacomp
def test_reshard_takes_paths_relative_to_the_callers_folder(quick_runs, tmp_path, monkeypatch):
    """The resharder child runs in DataComp's folder; relative paths are the caller's (``make minicomp``)."""
    from datacomp_plugins.apps.minicomp.run import reshard
    from datacomp_plugins.core.uids import load_uid_file

    monkeypatch.chdir(tmp_path)
    uids = quick_runs / "runs" / "negcliploss_30" / "uids.npy"
    datacomp = Path(os.path.relpath(os.environ["DATACOMP_DIR"], tmp_path))
    written = reshard(datacomp, Path(os.path.relpath(quick_runs / "shards", tmp_path)),
                      Path(os.path.relpath(uids, tmp_path)), Path("out"), Path("resharder.log"))
    assert written == len(load_uid_file(str(uids))) > 0
    assert (tmp_path / "out").is_dir() and not (tmp_path / "out.tmp").exists()


@needs_datacomp
def test_student_loads_in_datacomp_create_model_and_matches_a_direct_evaluation(quick_runs):
    """DataComp's create_model loads the student; a plain zero-shot computation gives wds_eval's acc1."""
    import torch

    from datacomp_plugins.apps.minicomp import evaluate, student

    runs = quick_runs / "runs"
    student.register_model(runs / "model_configs" / f"{student.STUDENT_MODEL}.json")
    wds_eval = evaluate.wds_eval_module(Path(os.environ["DATACOMP_DIR"]))
    checkpoint = runs / "negcliploss_30" / "seed0" / "train" / "checkpoints" / "epoch_latest.pt"
    model, transform, device = wds_eval.create_model(student.STUDENT_MODEL, checkpoint)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name].to(tensor.dtype)), name
    # brute force: one task, float64 similarity of each image to each class's mean template embedding
    import open_clip
    from PIL import Image

    task = _tasks(quick_runs)[0]
    folder = quick_runs / "evalsets" / f"wds_{task}_test"
    classes = (folder / "classnames.txt").read_text().splitlines()
    templates = (folder / "zeroshot_classification_templates.txt").read_text().splitlines()
    tokenizer = open_clip.get_tokenizer(student.STUDENT_MODEL)
    with torch.no_grad():
        weights = []
        for name in classes:
            text = model.encode_text(tokenizer([t.replace("{c}", name) for t in templates]))
            text = torch.nn.functional.normalize(text, dim=-1).mean(0)
            weights.append(text / text.norm())
        weights = torch.stack(weights).double()
        correct = total = 0
        for shard in sorted((folder / "test").glob("*.tar")):
            with tarfile.open(shard) as tar:
                members = {m.name: m for m in tar.getmembers()}
                for name in sorted(members):
                    if not name.endswith(".cls"):
                        continue
                    stem = name[:-4]
                    image_name = next(f"{stem}.{e}" for e in ("jpg", "png", "webp") if f"{stem}.{e}" in members)
                    image = Image.open(tar.extractfile(members[image_name])).convert("RGB")
                    feature = model.encode_image(transform(image)[None])
                    feature = torch.nn.functional.normalize(feature, dim=-1).double()
                    correct += int((feature @ weights.T).argmax().item() == int(tar.extractfile(members[name]).read()))
                    total += 1
    results = [json.loads(line) for line in (checkpoint.parents[2] / "eval_results.jsonl").read_text().splitlines()]
    acc1 = next(r for r in results if r["key"] == task)["metrics"]["acc1"]
    assert abs(acc1 - correct / total) <= 1.0 / total + 1e-9  # at most one float tie flips


@needs_datacomp
def test_seeded_rerun_after_a_kill_gives_identical_results(quick_runs, tmp_path):
    """Retrain negcliploss_30's subset under another name, alone: killed after its first checkpoint, resumed.

    Its eval_results.jsonl must equal the uninterrupted quick run's byte for byte: the same seed gives the same
    student, a kill + resume gives what an uninterrupted run gives, and a student trained alone (``--jobs 1``)
    gives what one trained beside others gives (the quick run trains ``--jobs 2`` at once).
    """
    uids = quick_runs / "runs" / "negcliploss_30" / "uids.npy"
    runs = tmp_path / "runs"
    argv = [sys.executable, "-m", "datacomp_plugins", "minicomp", "run", str(quick_runs), "--quick",
            "--baselines", "", "--subset", f"again={uids}", "--runs_dir", str(runs), "--no_progress", "--jobs", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    checkpoint = runs / "again" / "seed0" / "train" / "checkpoints" / "epoch_latest.pt"
    process = subprocess.Popen(argv, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert checkpoint.exists(), "no checkpoint appeared"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    results = runs / "again" / "seed0" / "eval_results.jsonl"
    assert not results.exists(), "the kill came after the run finished"
    assert _run_cli([str(quick_runs), "--quick", "--baselines", "", "--subset", f"again={uids}",
                     "--runs_dir", str(runs)]) == 0
    log = (runs / "again" / "seed0" / "train" / "out.log").read_text()
    assert "resuming checkpoint" in log
    reference = quick_runs / "runs" / "negcliploss_30" / "seed0" / "eval_results.jsonl"
    assert results.read_bytes() == reference.read_bytes()
    # a rerun skips the finished pair
    mtime = results.stat().st_mtime_ns
    assert _run_cli([str(quick_runs), "--quick", "--baselines", "", "--subset", f"again={uids}",
                     "--runs_dir", str(runs)]) == 0
    assert results.stat().st_mtime_ns == mtime


def test_a_one_seed_figure_does_not_claim_a_spread_over_seeds():
    from datacomp_plugins.apps.minicomp.runreport import figure_title

    assert "over seeds" not in figure_title([1, 1, 1]) and "eval images" in figure_title([1, 1])
    assert figure_title([3, 3]) == "students per subset (mean and 95% t interval over 3 seeds)"
    assert figure_title([2, 3]) == "students per subset (mean and 95% t interval over 2–3 seeds)"


def test_children_of_minicomp_run_draw_no_progress_bars(tmp_path):
    """A child started during the run writes its log without tqdm's carriage returns and escape codes."""
    import subprocess
    import sys

    from datacomp_plugins.apps.minicomp.run import quiet_children

    code = "from tqdm import tqdm\nfor _ in tqdm(range(50), mininterval=0): pass\nprint('done')\n"
    log = tmp_path / "child.log"
    with quiet_children(), open(log, "wb") as handle:
        subprocess.run([sys.executable, "-c", code], stdout=handle, stderr=subprocess.STDOUT, check=True)
    assert log.read_bytes() == b"done\n"
    with open(log, "wb") as handle:  # outside, the same child draws its bar: the check can fail
        subprocess.run([sys.executable, "-c", code], stdout=handle, stderr=subprocess.STDOUT, check=True)
    assert b"\r" in log.read_bytes()
