"""``minicomp run``: for each baseline, filter -> DataComp's resharder -> a student -> DataComp's evaluation.

Layout under the runs folder (default ``OUT/runs``)::

    <baseline>/uids.npy            the subset, written by the package's own filter / recipes
    <baseline>/shards/             DataComp's resharder.py output for it
    <baseline>/times.json          wall time of the filter and resharder stages
    <baseline>/seed<k>/run.json    the settings of this student (a rerun with other settings is refused)
    <baseline>/seed<k>/train/      open_clip_train's folder (checkpoints/epoch_latest.pt, out.log); its copy of
                                   the last epoch under that epoch's number is removed once training ends
    <baseline>/seed<k>/eval_per_image/<task>.npy   each eval image's top-1 correctness (the paired statistics)
    <baseline>/seed<k>/eval_results.jsonl   DataComp's results file, one line per task; written last

A (baseline, seed) pair is done when its ``eval_results.jsonl`` exists; a rerun skips it. A pair killed while
training resumes from its last finished epoch (``--resume latest``) and ends with the same checkpoint as an
uninterrupted run (see ``student.py``). Every stage writes to a temporary name and renames when complete.

Students train concurrently (``--jobs``, default one per CPU): each is a child process with one torch thread
and one dataloader worker whose checkpoint depends on its seed alone, so the results do not depend on how many
train at once (on two cores this overlaps resharding, start-up and evaluation with training; two students did
not train faster together than one alone there, docs/MINICOMP.md). Filtering and evaluation run in this
process, one at a time; a baseline's students start as soon as its shards are written, while the next baseline
is prepared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datacomp_plugins.apps.report import RESULTS_FILE
from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.fileio import atomic_open, sha256_file, write_json
from datacomp_plugins.core.progress import disable as progress_disable

# the controls of every default and quick run: the instrument's upper and lower references (claims.instrument)
CONTROLS = ("oracle_30", "anti_clip_score_30")
# the default list and seeds are fixed by the pilot's power analysis (docs/MINICOMP.md, "Step 3"): eight subsets
# x 5 seeds fit the 60-minute budget; negcliploss_normsim2_target stays available with --baselines
DEFAULT_BASELINES = (
    "no_filter",
    "random_30",
    "clip_score_30",
    "negcliploss_30",
    "negcliploss_normsiminf_target",
    "negcliploss_normsim_d",
    *CONTROLS,
)
DEFAULT_SEEDS = 5
QUICK_BASELINES = ("no_filter", "clip_score_30", "negcliploss_30", "negcliploss_normsiminf_target", *CONTROLS)

# baseline -> (recipe in baselines/, overrides of its [filter] table); None: made here (make_subset)
RECIPES: dict[str, tuple[str, dict] | None] = {
    "no_filter": None,
    "random_30": None,
    "clip_score_30": ("clipscore_30", {}),
    "negcliploss_30": ("negcliploss_30", {}),
    "negcliploss_normsiminf_target": ("negcliploss_normsiminf_target", {}),
    "negcliploss_normsim2_target": ("negcliploss_normsiminf_target", {"name": "normsim2"}),
    "negcliploss_normsim_d": ("negcliploss_normsim2d", {}),
    "oracle_30": None,
    "anti_clip_score_30": None,
}
RANDOM_FRACTION = 0.3
CONTROL_FRACTION = 0.3
CONTROL_SEED = 0  # numpy.random.default_rng seed of random_30's and oracle_30's draws
# the components whose samples carry the tasks' signal (docs/MINICOMP.md, "The controls"): a correct caption of
# an on-task scene. Read from OUT/truth/, which no filter sees.
ORACLE_COMPONENTS = ("clean", "near_duplicate")
RESHARD_SHARD_SIZE = 1024  # small output shards, so --dataset-resampled mixes many of them
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class RunSettings:
    out: Path
    runs_dir: Path
    baselines: list[str]
    seeds: list[int]
    scale_name: str
    train_num_samples: int
    subsets: dict[str, Path] = field(default_factory=dict)
    progress: bool = True
    jobs: int = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``minicomp run``."""
    parser.add_argument("out", metavar="OUT", help="the world folder written by 'minicomp build'")
    parser.add_argument("--quick", action="store_true",
                        help=f"1 seed, {len(QUICK_BASELINES)} baselines, short training (the CI run)")
    parser.add_argument("--seeds", type=int, default=None, help="students per baseline, seeds 0..N-1 (default "
                        f"{DEFAULT_SEEDS}; --quick: 1)")
    parser.add_argument("--baselines", default=None,
                        help=f"comma-separated, from {', '.join(RECIPES)} (default: {', '.join(DEFAULT_BASELINES)}; "
                             f"--quick: {', '.join(QUICK_BASELINES)}; '' with --subset: the subsets alone)")
    parser.add_argument("--subset", action="append", default=[], metavar="NAME=uids.npy",
                        help="also train and evaluate on this uid file (repeatable)")
    parser.add_argument("--samples_seen", type=int, default=None,
                        help="samples seen by every student (default: the scale config's train_num_samples)")
    parser.add_argument("--runs_dir", default=None, help="where the runs go (default: OUT/runs)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="students trained at once (default: one per CPU); results do not depend on it")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")


def settings_from_args(args: argparse.Namespace) -> RunSettings:
    """Validate the flags against OUT before any work starts."""
    from datacomp_plugins.apps.minicomp.student import SCALE_CONFIGS

    out = Path(args.out)
    if not (out / "metadata").is_dir() or not (out / "shards").is_dir():
        raise PluginError(f"{out}: not a minicomp world (no metadata/ or shards/); build it with 'minicomp build'")
    if args.baselines is None:
        baselines = list(QUICK_BASELINES if args.quick else DEFAULT_BASELINES)
    else:
        baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
        unknown = [b for b in baselines if b not in RECIPES]
        if unknown:
            raise PluginError(f"--baselines {args.baselines}: unknown {unknown}; choose from {', '.join(RECIPES)}")
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else DEFAULT_SEEDS)
    if seeds < 1:
        raise PluginError(f"--seeds {seeds}: expected at least 1")
    scale_name = "minicomp_quick" if args.quick else "minicomp"
    samples = args.samples_seen if args.samples_seen is not None else SCALE_CONFIGS[scale_name]["train_num_samples"]
    scale = SCALE_CONFIGS[scale_name]
    if samples < scale["batch_size"] * scale["num_checkpoints"]:
        raise PluginError(f"--samples_seen {samples}: expected at least batch size x checkpoints = "
                          f"{scale['batch_size'] * scale['num_checkpoints']}")
    subsets = {}
    for item in args.subset:
        name, sep, path = item.partition("=")
        if not sep or not _NAME.match(name) or not path:
            raise PluginError(f"--subset {item}: expected NAME=path/to/uids.npy (NAME of letters, digits, _ . -)")
        if name in RECIPES or name in subsets:
            raise PluginError(f"--subset {item}: the name {name} is already taken; choose another NAME")
        subsets[name] = Path(path)
        _check_subset_file(item, Path(path))
    if not baselines and not subsets:
        raise PluginError("--baselines is empty and no --subset given: nothing to run")
    runs_dir = Path(args.runs_dir) if args.runs_dir else out / "runs"
    jobs = getattr(args, "jobs", None)
    if jobs is None:
        from datacomp_plugins.core.procs import available_cpus

        jobs = available_cpus()
    if jobs < 1:
        raise PluginError(f"--jobs {jobs}: expected at least 1")
    return RunSettings(out, runs_dir, baselines, list(range(seeds)), scale_name, samples, subsets,
                       not args.no_progress, jobs)


def _check_subset_file(flag: str, path: Path) -> np.ndarray:
    from datacomp_plugins.core.uids import load_uid_file

    try:
        uids = np.asarray(load_uid_file(str(path), fix=False))
    except PluginError as exc:
        raise PluginError(f"--subset {flag}: {exc}") from None
    if len(uids) == 0:
        raise PluginError(f"--subset {flag}: {path} holds no uids")
    return uids


def pool_uids(out: Path) -> np.ndarray:
    """Every uid of the pool's metadata, sorted and unique (DataComp's uid dtype)."""
    import pyarrow.parquet as pq

    from datacomp_plugins.core.uids import parse_hex, sorted_unique

    files = sorted((out / "metadata").glob("*.parquet"))
    if not files:
        raise PluginError(f"{out / 'metadata'}: no .parquet metadata")
    parts = [parse_hex(pq.read_table(f, columns=["uid"]).column("uid"), str(f)) for f in files]
    return sorted_unique(np.concatenate(parts))


def nested_target(out: Path, runs_dir: Path) -> Path:
    """The NormSim target: the L/14 teacher's embeddings of every task's train split (the paper's "Target").

    ``MANIFEST.json``'s ``targets`` lists ``{"file", "arch", "task", ...}``; the entry of task ``all`` is that
    union. Without one, the per-task l14 files are concatenated into ``<runs>/target_l14.npy``.
    """
    manifest_path = out / "MANIFEST.json"
    try:
        entries = json.loads(manifest_path.read_text())["targets"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PluginError(f"{manifest_path}: cannot read its \"targets\" list ({exc})") from None
    l14 = [e for e in entries if isinstance(e, dict) and e.get("arch") == "l14" and e.get("file")]
    union = [e for e in l14 if e.get("task") == "all"]
    chosen = [out / e["file"] for e in (union[:1] or l14)]
    for path in chosen:
        if not path.is_file():
            raise PluginError(f"{manifest_path}: target {path} is listed but missing")
    if not chosen:
        raise PluginError(f"{manifest_path}: no l14 entry under \"targets\" (the NormSim baselines need one)")
    if len(chosen) == 1:
        return chosen[0]
    from datacomp_plugins.core.fileio import atomic_save_npy

    path = runs_dir / "target_l14.npy"
    atomic_save_npy(str(path), np.concatenate([np.load(p, allow_pickle=False).astype(np.float32) for p in chosen]))
    return path


def uses_negcliploss(settings: dict) -> bool:
    """Whether a filter's settings score with negCLIPLoss (as the baseline, or as the quality stage before a
    relevance score; ``quality_score`` defaults to negcliploss)."""
    name = settings.get("name")
    if name == "negcliploss":
        return True
    return name != "clip_score" and settings.get("quality_score", "negcliploss") == "negcliploss" \
        and settings.get("fraction") not in (None, 1)


def make_subset(settings: RunSettings, baseline: str, save_path: Path) -> str:
    """Write the baseline's uid file with the package's own filter / recipes; returns the summary line."""
    from datacomp_plugins import recipes
    from datacomp_plugins.core.uids import save_uid_file

    out = settings.out
    if baseline in settings.subsets:
        uids = _check_subset_file(f"{baseline}={settings.subsets[baseline]}", settings.subsets[baseline])
        count = save_uid_file(str(save_path), uids)
        return f"{baseline}: {count} uids from {settings.subsets[baseline]}"
    spec = RECIPES[baseline]
    if spec is None:
        if baseline == "oracle_30":
            uids = oracle_uids(out)
        elif baseline == "anti_clip_score_30":
            uids = anti_clip_score_uids(out)
        else:
            uids = pool_uids(out)
            if baseline == "random_30":
                keep = int(np.floor(len(uids) * RANDOM_FRACTION))
                uids = uids[np.sort(np.random.default_rng(CONTROL_SEED).choice(len(uids), keep, replace=False))]
        count = save_uid_file(str(save_path), uids)
        return f"{baseline}: kept {count} samples"
    name, overrides = spec
    recipe = recipes.load(name)
    values = {}
    if uses_negcliploss({**recipe.filter, **overrides}):
        # the paper's tau and B are the teacher's own (MANIFEST.json), not OpenAI's in the recipe
        values["manifest"] = str(out / "MANIFEST.json")
        overrides = {**overrides, **{key: recipes.FROM_MANIFEST for key in recipes.MANIFEST_SETTINGS}}
    if "target" in recipe.placeholders():
        values["target"] = str(nested_target(out, settings.runs_dir))
    overrides = {**overrides, "cache_dir": str(settings.runs_dir / ".score-cache"), "progress": False}
    return recipes.run(recipe, str(out / "metadata"), str(save_path), values, overrides)


def oracle_uids(out: Path, fraction: float = CONTROL_FRACTION, seed: int = CONTROL_SEED) -> np.ndarray:
    """The upper control: floor(fraction * pool size) uids drawn uniformly without replacement (seeded) from the
    samples whose component (``OUT/truth/``) is one of ``ORACLE_COMPONENTS``; sorted.

    No filter can make this subset, since it reads the world's truth. Too few such samples for the fraction is
    an error naming ``truth/`` and the counts.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from datacomp_plugins.core.uids import parse_hex, sorted_unique

    folder = out / "truth"
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise PluginError(f"{folder}: no .parquet files; the oracle_30 control needs the world's truth "
                          "(uid, component), written by 'minicomp build'")
    parts = []
    for path in files:
        try:
            table = pq.read_table(path, columns=["uid", "component"])
        except (OSError, pa.ArrowInvalid, KeyError) as exc:
            raise PluginError(f"{path}: cannot read columns uid and component ({exc})") from None
        chosen = pc.is_in(table.column("component"), value_set=pa.array(ORACLE_COMPONENTS)).to_numpy(
            zero_copy_only=False)
        parts.append(parse_hex(table.column("uid"), str(path), "uid")[np.asarray(chosen, dtype=bool)])
    candidates = sorted_unique(np.concatenate(parts))
    pool = pool_uids(out)
    keep = int(np.floor(len(pool) * fraction))
    if len(candidates) < keep:
        raise PluginError(f"{folder}: {len(candidates)} samples of components {', '.join(ORACLE_COMPONENTS)}, "
                          f"fewer than the {keep} (= floor({fraction} x {len(pool)})) oracle_30 draws")
    return candidates[np.sort(np.random.default_rng(seed).choice(len(candidates), keep, replace=False))]


def anti_clip_score_uids(out: Path, fraction: float = CONTROL_FRACTION) -> np.ndarray:
    """The lower control: the floor(fraction * pool size) samples of lowest CLIPScore, read by the package's
    clip_score score (``clip_l14_similarity_score``: the L/14 teacher's image-text cosine similarity, the same
    values clip_score_30 cuts from the top). Unscorable (NaN) samples are never kept; ties at the cut go to
    smaller uids, so the file is the same whatever order the shards are read in. Sorted."""
    from datacomp_plugins import scores
    from datacomp_plugins.core.pool import Pool
    from datacomp_plugins.core.uids import sorted_unique
    from datacomp_plugins.scores.base import RunContext
    from datacomp_plugins.select.masks import first_occurrence, top_k_mask

    pool = Pool(str(out / "metadata"))
    spec = scores.get("clip_score")
    params, run = spec.params_of({}), RunContext(arch="l14", pool=pool)
    uids, values = [], []
    for shard in pool.shards:
        uids.append(pool.read_uids(shard))
        values.append(np.asarray(spec.exact_values(params, run, shard), dtype=np.float64))
    all_uids, all_values = np.concatenate(uids), np.concatenate(values)
    unique = first_occurrence(all_uids)
    keep = int(np.floor(int(unique.sum()) * fraction))
    return sorted_unique(all_uids[top_k_mask(-all_values, all_uids, keep, unique)])


def reshard(datacomp: Path, shards: Path, uids: Path, output: Path, log_path: Path) -> int:
    """DataComp's resharder.py, untouched, in a child process; returns the number of samples written.

    The child runs in DataComp's folder, so every path it gets is made absolute first (``minicomp run OUT`` with
    a relative OUT, as ``make minicomp`` gives it)."""
    datacomp, shards, uids, output = (p.absolute() for p in (datacomp, shards, uids, output))
    if output.is_dir():
        return _resharded_count(output)
    tmp = output.with_name(output.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    command = [sys.executable, str(datacomp / "resharder.py"), "-i", str(shards), "-o", str(tmp), "-s", str(uids),
               "-j", "1", "--shard-size", str(RESHARD_SHARD_SIZE)]
    with open(log_path, "wb") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=str(datacomp))
    if result.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise PluginError(f"DataComp's resharder.py failed (exit status {result.returncode}); see {log_path}:\n"
                          + "\n".join(tail))
    os.replace(tmp, output)
    return _resharded_count(output)


def _resharded_count(folder: Path) -> int:
    total = 0
    for stats in sorted(folder.glob("*_stats.json")):
        total += int(json.loads(stats.read_text()).get("successes", 0))
    return total


def run_pair(settings: RunSettings, datacomp: Path, baseline: str, seed: int, data_dir: Path,
             uids_sha: str, in_process: threading.Lock | None = None) -> dict:
    """Train and evaluate one student; returns its stage times. Skipped (times read back) when done.

    ``in_process`` is held while the student is evaluated in this process (training is a child process).
    """
    from datacomp_plugins.apps.minicomp import evaluate, student

    folder = settings.runs_dir / baseline / f"seed{seed}"
    results = folder / RESULTS_FILE
    times_path = folder / "times.json"
    scale = dict(student.SCALE_CONFIGS[settings.scale_name])
    wanted = {"baseline": baseline, "seed": seed, "scale": settings.scale_name, "scale_config": scale,
              "train_num_samples": settings.train_num_samples, "student": student.STUDENT_CONFIG,
              "uids_sha256": uids_sha, "train_defaults": student.TRAIN_DEFAULTS}
    run_json = folder / "run.json"
    if run_json.is_file():
        recorded = json.loads(run_json.read_text())
        if recorded != json.loads(json.dumps(wanted)):
            raise PluginError(f"{folder}: was run with other settings ({run_json}); remove the folder or rerun "
                              "with the same flags")
    per_image = folder / evaluate.PER_IMAGE_DIR
    if results.is_file():
        if not per_image.is_dir():
            _evaluate_again(settings, datacomp, folder, scale["model"], in_process)
        return json.loads(times_path.read_text()) if times_path.is_file() else {}
    folder.mkdir(parents=True, exist_ok=True)
    write_json(str(run_json), wanted)
    config_path = student.write_model_config(settings.runs_dir / "model_configs")
    times: dict = json.loads(times_path.read_text()) if times_path.is_file() else {}
    start = time.perf_counter()
    argv = student.train_argv(data_dir, folder, "train", scale, seed, settings.train_num_samples)
    student.train(argv, config_path, seed, folder / "train.log")
    drop_final_epoch_copy(folder / CHECKPOINTS, scale["num_checkpoints"])
    times["train"] = times.get("train", 0.0) + time.perf_counter() - start
    write_json(str(times_path), times)
    with in_process or contextlib.nullcontext():
        start = time.perf_counter()
        student.register_model(config_path)
        checkpoint = folder / CHECKPOINTS / LATEST_CHECKPOINT
        tasks = evaluate.list_tasks(settings.out / "evalsets")
        records, correct = evaluate.evaluate_per_image(datacomp, scale["model"], checkpoint,
                                                       settings.out / "evalsets", tasks)
        evaluate.save_per_image(per_image, correct)
        times["eval"] = time.perf_counter() - start
    write_json(str(times_path), times)
    with atomic_open(str(results), "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return times


# open_clip_train's checkpoints of one student, under its seed folder (``--logs`` seed folder, ``--name train``)
CHECKPOINTS = Path("train") / "checkpoints"
LATEST_CHECKPOINT = "epoch_latest.pt"


def drop_final_epoch_copy(checkpoints: Path, epochs: int) -> bool:
    """Remove ``epoch_<epochs>.pt`` when ``epoch_latest.pt`` holds the same finished epoch; True if removed.

    open_clip_train writes the last epoch twice (under its number, and as ``epoch_latest.pt`` for ``--resume``):
    a run of 40 students would keep ~2 GB of copies. Only the latest one is read later (evaluation).
    """
    import torch

    final, latest = checkpoints / f"epoch_{epochs}.pt", checkpoints / LATEST_CHECKPOINT
    if not (final.is_file() and latest.is_file()):
        return False
    # mmap: only the small "epoch" entry is read, not the weights and optimizer state
    if torch.load(latest, map_location="cpu", weights_only=True, mmap=True).get("epoch") != epochs:
        return False
    final.unlink()
    return True


def _evaluate_again(settings: RunSettings, datacomp: Path, folder: Path, model: str,
                    in_process: threading.Lock | None) -> None:
    """A pair finished before per-image results were kept: evaluate its checkpoint again for them (the paired
    statistics need them); its ``eval_results.jsonl`` stays as it is. Without the checkpoint nothing is done
    and the report says the pair has no per-image results."""
    from datacomp_plugins.apps.minicomp import evaluate, student

    checkpoint = folder / CHECKPOINTS / LATEST_CHECKPOINT
    if not checkpoint.is_file():
        return
    with in_process or contextlib.nullcontext():
        student.register_model(settings.runs_dir / "model_configs" / f"{student.STUDENT_MODEL}.json")
        tasks = evaluate.list_tasks(settings.out / "evalsets")
        _, correct = evaluate.evaluate_per_image(datacomp, model, checkpoint, settings.out / "evalsets", tasks)
        evaluate.save_per_image(folder / evaluate.PER_IMAGE_DIR, correct)


def prepare(settings: RunSettings, datacomp: Path, baseline: str,
            in_process: threading.Lock | None = None) -> tuple[Path, str, str | None]:
    """The baseline's uid file and DataComp-resharded shards (kept when present): (shards, uids sha256, summary).

    ``in_process`` is held while filtering (in this process), not while DataComp's resharder (a child) runs.
    """
    folder = settings.runs_dir / baseline
    folder.mkdir(parents=True, exist_ok=True)
    times_path = folder / "times.json"
    times = json.loads(times_path.read_text()) if times_path.is_file() else {}
    uids_path = folder / "uids.npy"
    line = None
    if not uids_path.is_file():
        with in_process or contextlib.nullcontext():
            start = time.perf_counter()
            line = make_subset(settings, baseline, uids_path)
            times["filter"] = time.perf_counter() - start
        write_json(str(times_path), times)
    if not (folder / "shards").is_dir():
        start = time.perf_counter()
        reshard(datacomp, settings.out / "shards", uids_path, folder / "shards", folder / "resharder.log")
        times["reshard"] = time.perf_counter() - start
        write_json(str(times_path), times)
    return folder / "shards", sha256_file(str(uids_path)), line


@contextlib.contextmanager
def quiet_children() -> Iterator[None]:
    """Children started meanwhile (open_clip_train, the resharder) write their logs to files: their tqdm bars
    would fill those logs with carriage returns and escape codes, so they get ``TQDM_DISABLE=1``, tqdm's own
    switch, read by each child's tqdm at import. This process's bars are unaffected."""
    before = os.environ.get(QUIET_ENV)
    os.environ[QUIET_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(QUIET_ENV, None)
        else:
            os.environ[QUIET_ENV] = before


QUIET_ENV = "TQDM_DISABLE"


def run_all(settings: RunSettings) -> list[str]:
    """Every (baseline, seed) pair, ``settings.jobs`` students at a time, then the report; returns the summary."""
    from tqdm import tqdm

    from datacomp_plugins.apps.minicomp import runreport, student
    from datacomp_plugins.apps.minicomp.openclip import stop_training

    datacomp = student.datacomp_dir()
    names = settings.baselines + list(settings.subsets)
    settings.runs_dir.mkdir(parents=True, exist_ok=True)
    student.write_model_config(settings.runs_dir / "model_configs")  # once, before students start at once
    lines = []
    pairs = [(b, s) for b in names for s in settings.seeds]
    bar = tqdm(total=len(pairs), desc="minicomp run", unit="student",
               disable=progress_disable(settings.progress))
    in_process = threading.Lock()  # filtering and evaluation share this process's torch and open_clip state
    futures: list[Future] = []
    with quiet_children(), ThreadPoolExecutor(max_workers=settings.jobs, thread_name_prefix="student") as pool:
        try:
            for baseline in names:
                bar.set_postfix_str(f"{baseline}: filter + reshard")
                shards, uids_sha, line = prepare(settings, datacomp, baseline, in_process)
                if line:
                    lines.append(line)
                for seed in settings.seeds:
                    future = pool.submit(run_pair, settings, datacomp, baseline, seed, shards, uids_sha, in_process)
                    future.add_done_callback(lambda _: bar.update(1))
                    futures.append(future)
                _raise_first_failure(futures)
            bar.set_postfix_str("training")
            for future in futures:
                future.result()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            stop_training()  # the others resume from their last finished epoch on the next run
            raise
    bar.close()
    # the world's report for its default runs folder; a report of another runs folder stays in that folder
    report_dir = settings.out if settings.runs_dir.resolve() == (settings.out / "runs").resolve() else settings.runs_dir
    written = runreport.write_report(settings.out, settings.runs_dir, names, settings.seeds, report_dir)
    lines.append(f"{len(pairs)} students ({len(names)} subsets x {len(settings.seeds)} seeds, {settings.jobs} at "
                 "a time); report: " + ", ".join(written))
    return lines


def _raise_first_failure(futures: list[Future]) -> None:
    for future in futures:
        if future.done() and future.exception() is not None:
            raise future.exception()


def run_command(args: argparse.Namespace) -> int:
    """Handler of ``minicomp run``."""
    from datacomp_plugins.apps.minicomp.student import datacomp_dir

    settings = settings_from_args(args)
    datacomp_dir()  # a missing DATACOMP_DIR fails before any work
    start = time.perf_counter()
    for line in run_all(settings):
        print(line)
    print(f"minicomp run: done in {time.perf_counter() - start:.0f} s")
    return 0
