"""``minicomp build``: render a world into DataComp's exact layout, train its teachers, embed the pool.

A small stage runner (datatrove's executor model): each stage declares its outputs, and a finished stage
leaves a completion marker ``OUT/.stages/<name>.json`` holding its result. A resumed build skips a stage whose
marker and outputs exist, and reruns it (and every later stage) otherwise; inside a stage, an output written
atomically is an output done, so a rerun stage redoes only what is missing.

1. ``render``: the teacher corpus, the pool shards (+ truth) and the tasks' splits, in worker processes;
2. ``teacher_l14``, ``teacher_b32``: train the teachers with open_clip_train (child processes); the result
   is each one's temperature (1/exp(logit_scale), as open_clip stores it) and training batch size;
3. ``embed_pool``: every pool shard with both teachers -> ``metadata/<stem>.parquet`` + ``<stem>.npz``;
4. ``tasks``: zero-shot accuracy of the teachers on every task; targets (embeddings of the train splits);
5. ``stats``: counts and mean CLIPScore per component;
6. ``gates``: the world's measured properties (gates.py);
7. ``MANIFEST.json`` with all of the above and the sha256 of every file (no clock: two builds of one world
   give the same bytes); the stages' wall times go to ``build_times.json``.

An OUT that holds another world (or anything else) is refused: a build never mixes two worlds.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from datacomp_plugins.apps.minicomp import render
from datacomp_plugins.apps.minicomp.world import COMPONENTS, World, class_name, component_counts, load_world
from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.fileio import atomic_open, atomic_save_npy, sha256_file, write_json

STATE_FILE = ".minicomp-build.json"
STAGES_DIR = ".stages"
EVAL_SHARD = 10000
SPLITS = {"train": 0, "test": 1}


# ---------------------------------------------------------------------------------------------------------
# Small writers


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed npz with fixed zip timestamps (``np.savez`` stamps the clock, so bytes would differ)."""
    with atomic_open(path, "wb") as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as zf:
        for key, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(value), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())


def write_parquet(path: str, columns: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_open(path, "wb") as handle:
        pq.write_table(pa.table(columns), handle)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(type(value))


def world_toml(data: dict[str, Any]) -> str:
    """The merged world as TOML (no [quick]): ``--world OUT/world.toml`` rebuilds exactly this world."""
    lines: list[str] = []

    def table(prefix: str, tbl: dict[str, Any]) -> None:
        scalars = {k: v for k, v in tbl.items() if not isinstance(v, dict)}
        if prefix:
            lines.append(f"\n[{prefix}]")
        lines.extend(f"{json.dumps(k) if not k.isidentifier() else k} = {_toml_value(v)}" for k, v in scalars.items())
        for key, value in tbl.items():
            if isinstance(value, dict):
                table(f"{prefix}.{key}" if prefix else key, value)

    table("", {k: v for k, v in data.items() if k != "tasks"})
    for task in data["tasks"]:
        lines.append("\n[[tasks]]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in task.items())
    return "\n".join(lines).lstrip() + "\n"


# ---------------------------------------------------------------------------------------------------------
# Rendering jobs (run in worker processes; each writes its files atomically, the tar last)


def stream_components(world: World, stream: int, shares: dict[str, float], total: int) -> np.ndarray:
    """Component index per sample: exact counts per share, in a seeded random order."""
    counts = component_counts(shares, total)
    comps = np.repeat(np.arange(len(COMPONENTS), dtype=np.int8), [counts[c] for c in COMPONENTS])
    return comps[np.random.default_rng([world.seed, stream, 0xC0]).permutation(total)]


def _key(shard: int, index: int, width: int) -> str:
    return f"{shard:05d}{index:0{width}d}"


def _render_samples(job: dict[str, Any]) -> tuple[str, int]:
    world, stream, shard, start, end = job["world"], job["stream"], job["shard"], job["start"], job["end"]
    comps = job["components"]
    clean_idx = np.flatnonzero(comps == COMPONENTS.index("clean"))
    width = max(4, len(str(job["shard_size"] - 1)))
    size = world["world"]["image_size"]
    members, uids, truth = [], [], []
    for i in range(start, end):
        spec = render.make_spec(world, stream, i, comps, clean_idx)
        uid = render.sample_uid(world, stream, i)
        data = render.jpeg(render.draw(world, spec), spec["quality"])
        members += render.pool_member_files(_key(shard, i - start, width), uid, spec, data, size)
        uids.append(uid)
        truth.append(spec["component"])
    folder, stem = job["folder"], f"{shard:08d}"
    if job.get("truth"):
        write_parquet(os.path.join(job["truth"], f"{stem}.parquet"), {"uid": uids, "component": truth})
    write_json(os.path.join(folder, f"{stem}_stats.json"),
               {"count": end - start, "successes": end - start, "failed_to_download": 0, "failed_to_resize": 0})
    render.write_tar(os.path.join(folder, f"{stem}.tar"), members)
    return job["name"], end - start


def _render_task(job: dict[str, Any]) -> tuple[str, int]:
    world, t, split = job["world"], job["task"], job["split"]
    task = world["tasks"][t]
    n_cls = len(task["classes"])
    members = []
    for i in range(job["start"], job["end"]):
        label = i % n_cls
        spec = render.task_spec(world, t, SPLITS[split], i, label)
        data = render.jpeg(render.draw(world, spec), spec["quality"])
        members += [(f"s{i:07d}.jpg", data), (f"s{i:07d}.cls", str(label).encode())]
    render.write_tar(job["path"], members)
    return job["name"], job["end"] - job["start"]


def _run_job(job: dict[str, Any]) -> tuple[str, int]:
    return _render_task(job) if job["kind"] == "task" else _render_samples(job)


# ---------------------------------------------------------------------------------------------------------
# The build


class Builder:
    """One build of one world into one OUT folder."""

    def __init__(self, out: str, world: World, workers: int, progress: bool = True) -> None:
        self.out, self.world, self.workers, self.progress = out, world, max(1, workers), progress
        self.times: dict[str, float] = {}
        self.pool_size = world["pool"]["size"]
        self.shard_size = world["pool"]["shard_size"]
        self.n_shards = -(-self.pool_size // self.shard_size)
        corpus = world["teacher_corpus"]
        self.corpus_shard = min(self.shard_size, 5000)
        self.n_corpus = -(-corpus["size"] // self.corpus_shard)

    def path(self, *parts: str) -> str:
        return os.path.join(self.out, *parts)

    # -- OUT and the state file -----------------------------------------------------------------------

    def prepare(self) -> bool:
        """Create OUT, or resume it when it holds this world; refuse anything else. True when resuming."""
        fingerprint = self.world.fingerprint()
        state_path = self.path(STATE_FILE)
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise PluginError(f"OUT {self.out}: is a file; expected a new or empty folder")
        if os.path.isdir(self.out) and os.listdir(self.out):
            if not os.path.exists(state_path):
                raise PluginError(f"OUT {self.out}: not empty and not a minicomp build; choose an empty or new folder")
            with open(state_path, encoding="utf-8") as handle:
                state = json.load(handle)
            if state.get("fingerprint") != fingerprint:
                raise PluginError(f"OUT {self.out}: holds a build of another world or seed (world fingerprint "
                                  f"{state.get('fingerprint', '?')[:12]}, this one {fingerprint[:12]}); a build never "
                                  f"mixes two worlds: choose another folder or delete this one")
            return True
        for sub in ("shards", "metadata", "truth", "evalsets", "targets", "teacher/corpus"):
            os.makedirs(self.path(sub), exist_ok=True)
        with atomic_open(self.path("world.toml"), "w") as handle:
            handle.write(world_toml(self.world.data))
        write_json(state_path, {"fingerprint": fingerprint, "seed": self.world.seed, "quick": self.world.quick})
        return False

    # -- stage 1: render ------------------------------------------------------------------------------

    def render_jobs(self) -> list[dict[str, Any]]:
        w = self.world
        jobs: list[dict[str, Any]] = []
        corpus = w["teacher_corpus"]
        corpus_comps = stream_components(w, render.STREAM_TEACHER, corpus["components"], corpus["size"])
        for s in range(self.n_corpus):
            start, end = s * self.corpus_shard, min(corpus["size"], (s + 1) * self.corpus_shard)
            jobs.append({"kind": "samples", "name": f"teacher/corpus/{s:08d}.tar", "stream": render.STREAM_TEACHER,
                         "shard": s, "start": start, "end": end, "components": corpus_comps,
                         "shard_size": self.corpus_shard, "folder": self.path("teacher", "corpus"),
                         "world": w.corpus_view()})
        pool_comps = stream_components(w, render.STREAM_POOL, w["components"], self.pool_size)
        for s in range(self.n_shards):
            start, end = s * self.shard_size, min(self.pool_size, (s + 1) * self.shard_size)
            jobs.append({"kind": "samples", "name": f"shards/{s:08d}.tar", "stream": render.STREAM_POOL, "shard": s,
                         "start": start, "end": end, "components": pool_comps, "shard_size": self.shard_size,
                         "folder": self.path("shards"), "truth": self.path("truth")})
        ev = w["evalsets"]
        for t, task in enumerate(w["tasks"]):
            for split in SPLITS:
                total = ev[f"{split}_per_class"] * len(task["classes"])
                folder = self.path("evalsets", f"wds_{task['name']}_test", split)
                os.makedirs(folder, exist_ok=True)
                for k, start in enumerate(range(0, total, EVAL_SHARD)):
                    jobs.append({"kind": "task", "name": f"evalsets/wds_{task['name']}_test/{split}/{k}.tar",
                                 "task": t, "split": split, "start": start, "end": min(total, start + EVAL_SHARD),
                                 "path": os.path.join(folder, f"{k}.tar")})
        for job in jobs:
            job.setdefault("world", w)
        return jobs

    def write_task_metadata(self) -> None:
        ev = self.world["evalsets"]
        for task in self.world["tasks"]:
            root = self.path("evalsets", f"wds_{task['name']}_test")
            with atomic_open(os.path.join(root, "classnames.txt"), "w") as handle:
                handle.write("".join(class_name(task["attribute"], c) + "\n" for c in task["classes"]))
            with atomic_open(os.path.join(root, "zeroshot_classification_templates.txt"), "w") as handle:
                handle.write("".join(t + "\n" for t in task["templates"]))
            for split in SPLITS:
                total = ev[f"{split}_per_class"] * len(task["classes"])
                with atomic_open(os.path.join(root, split, "nshards.txt"), "w") as handle:
                    handle.write(f"{-(-total // EVAL_SHARD)}\n")

    def render(self) -> None:
        from tqdm import tqdm

        jobs = [j for j in self.render_jobs() if not os.path.exists(self.path(j["name"]))]
        total = sum(j["end"] - j["start"] for j in jobs)
        bar = tqdm(total=total, unit="img", desc="render", disable=not self.progress, file=sys.stderr)
        if self.workers > 1 and len(jobs) > 1:
            # forkserver: safe even when this process has already run torch (OpenMP does not survive fork)
            ctx = multiprocessing.get_context("forkserver")
            with ctx.Pool(self.workers) as pool:
                for _, n in pool.imap_unordered(_run_job, jobs):
                    bar.update(n)
        else:
            for job in jobs:
                bar.update(_run_job(job)[1])
        bar.close()
        sizes = {f"{s:08d}.tar": min(self.shard_size, self.pool_size - s * self.shard_size)
                 for s in range(self.n_shards)}
        write_json(self.path("shards", "sizes.json"), sizes)
        self.write_task_metadata()

    # -- stage 2: teachers ----------------------------------------------------------------------------

    def teacher(self, arch: str) -> None:
        """Train one teacher unless its checkpoint exists (a teacher is never trained twice)."""
        from datacomp_plugins.apps.minicomp import teacher

        if os.path.exists(teacher.checkpoint_path(self.out, arch)):
            return
        shards = [self.path("teacher", "corpus", f"{s:08d}.tar") for s in range(self.n_corpus)]
        if self.progress:
            print(f"training teacher {arch} with open_clip_train "
                  f"({self.world['teachers'][arch]['epochs']} epochs of {self.world['teacher_corpus']['size']})",
                  file=sys.stderr)
        teacher.train(self.out, self.world, arch, shards, self.world["teacher_corpus"]["size"])

    # -- stage 3: metadata ----------------------------------------------------------------------------

    def metadata(self, teachers: dict[str, Any]) -> None:
        import tarfile

        from tqdm import tqdm

        bar = tqdm(total=self.n_shards, unit="shard", desc="embed pool", disable=not self.progress, file=sys.stderr)
        for s in range(self.n_shards):
            stem = f"{s:08d}"
            parquet, npz = self.path("metadata", f"{stem}.parquet"), self.path("metadata", f"{stem}.npz")
            if os.path.exists(parquet) and os.path.exists(npz):
                bar.update(1)
                continue
            tar_path = self.path("shards", f"{stem}.tar")
            metas = []
            with tarfile.open(tar_path) as tar:
                for member in tar:
                    if member.name.endswith(".json"):
                        metas.append(json.loads(tar.extractfile(member).read()))
            texts = [m["caption"] for m in metas]
            arrays, sims = {}, {}
            for arch, model in teachers.items():
                img = render_unit16(model.encode_tars([tar_path]))
                txt = render_unit16(model.encode_texts(texts))
                if len(img) != len(metas) or len(txt) != len(metas):
                    raise RuntimeError(f"{tar_path}: {len(metas)} samples but {len(img)} image embeddings")
                arrays[f"{arch}_img"], arrays[f"{arch}_txt"] = img, txt
                sims[arch] = (img.astype(np.float32) * txt.astype(np.float32)).sum(1)
            write_npz(npz, {k: arrays[k] for k in ("l14_img", "l14_txt", "b32_img", "b32_txt")})
            write_parquet(parquet, {
                "uid": [m["uid"] for m in metas], "url": [m["url"] for m in metas], "text": texts,
                "original_width": np.array([m["original_width"] for m in metas], np.int64),
                "original_height": np.array([m["original_height"] for m in metas], np.int64),
                "clip_b32_similarity_score": sims["b32"].astype(np.float32),
                "clip_l14_similarity_score": sims["l14"].astype(np.float32),
                "sha256": [m["sha256"] for m in metas],
            })
            bar.update(1)
        bar.close()

    # -- stage 4: zero-shot accuracy and targets ------------------------------------------------------

    def tasks(self, teachers: dict[str, Any]) -> dict[str, Any]:
        w = self.world
        accuracy: dict[str, dict[str, float]] = {arch: {} for arch in teachers}
        targets = []
        union: dict[str, list[np.ndarray]] = {arch: [] for arch in teachers}
        for task in w["tasks"]:
            root = self.path("evalsets", f"wds_{task['name']}_test")
            names = [class_name(task["attribute"], c) for c in task["classes"]]
            for arch, model in teachers.items():
                tars = [os.path.join(root, "test", f) for f in sorted(os.listdir(os.path.join(root, "test")),
                                                                      key=_tar_order) if f.endswith(".tar")]
                emb = model.encode_tars(tars)
                labels = np.arange(len(emb)) % len(names)
                from datacomp_plugins.apps.minicomp.teacher import zero_shot_accuracy

                accuracy[arch][task["name"]] = round(zero_shot_accuracy(emb, labels, model.classifier(
                    names, task["templates"])), 6)
                target = self.path("targets", f"{task['name']}_{arch}.npy")
                if not os.path.exists(target):
                    train = [os.path.join(root, "train", f) for f in sorted(os.listdir(os.path.join(root, "train")),
                                                                            key=_tar_order) if f.endswith(".tar")]
                    atomic_save_npy(target, model.encode_tars(train).astype(np.float32))
                union[arch].append(np.load(target, allow_pickle=False))
                targets.append({"file": f"targets/{task['name']}_{arch}.npy", "arch": arch, "task": task["name"],
                                "imagenet_like": task["name"] == w["evalsets"]["imagenet_like"]})
        for arch in teachers:
            path = self.path("targets", f"all_tasks_{arch}.npy")
            atomic_save_npy(path, np.concatenate(union[arch]))
            targets.append({"file": f"targets/all_tasks_{arch}.npy", "arch": arch, "task": "all",
                            "imagenet_like": False})
        return {"accuracy": accuracy, "targets": targets}

    # -- stage 5: manifest ----------------------------------------------------------------------------

    def component_stats(self) -> dict[str, Any]:
        """Counts per component and the teachers' mean CLIPScore per component (read from the outputs)."""
        import pyarrow.parquet as pq

        comps, scores = [], {"l14": [], "b32": []}
        for s in range(self.n_shards):
            stem = f"{s:08d}"
            truth = pq.read_table(self.path("truth", f"{stem}.parquet"), columns=["component"])
            comps += truth["component"].to_pylist()
            meta = pq.read_table(self.path("metadata", f"{stem}.parquet"))
            for arch in scores:
                scores[arch].append(meta[f"clip_{arch}_similarity_score"].to_numpy())
        comps_arr = np.array(comps)
        out: dict[str, Any] = {"pool": {c: int((comps_arr == c).sum()) for c in COMPONENTS},
                               "teacher_corpus": component_counts(self.world["teacher_corpus"]["components"],
                                                                  self.world["teacher_corpus"]["size"]),
                               "mean_clip_score": {}}
        for arch, parts in scores.items():
            values = np.concatenate(parts)
            out["mean_clip_score"][arch] = {c: round(float(values[comps_arr == c].mean()), 4)
                                            for c in COMPONENTS if (comps_arr == c).any()}
        return out

    def manifest(self, tasks: dict[str, Any], summary: dict[str, Any], settings: dict[str, dict[str, Any]],
                 gates: list[dict[str, Any]]) -> dict[str, Any]:
        from datacomp_plugins.apps.minicomp import teacher

        files = {"world.toml": sha256_file(self.path("world.toml"))}
        for top in ("shards", "metadata", "truth", "evalsets", "targets", "teacher"):  # not runs/ of later runs
            for root, dirs, names in os.walk(self.path(top)):
                logs = root == self.path("teacher")
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (logs and d == "logs"))
                for name in sorted(names):
                    if not name.startswith("."):
                        full = os.path.join(root, name)
                        files[os.path.relpath(full, self.out)] = sha256_file(full)
        manifest = {
            "world": {"source": self.world.source, "quick": self.world.quick, "seed": self.world.seed,
                      "fingerprint": self.world.fingerprint()},
            "counts": summary["counts"],
            "mean_clip_score": summary["mean_clip_score"],
            "teachers": {arch: {"model": teacher.model_name(arch), "config": f"teacher/{teacher.model_name(arch)}.json",
                                "checkpoint": f"teacher/{teacher.model_name(arch)}.pt",
                                "zero_shot_accuracy": tasks["accuracy"][arch], **settings[arch]}
                         for arch in teacher.ARCHES},
            "tasks": [{"name": t["name"], "attribute": t["attribute"], "classes": len(t["classes"]),
                       "evalset": f"evalsets/wds_{t['name']}_test"} for t in self.world["tasks"]],
            "imagenet_like": self.world["evalsets"]["imagenet_like"],
            "targets": tasks["targets"],
            "gates": gates,
            "sha256": files,
        }
        write_json(self.path("MANIFEST.json"), manifest)
        return manifest

    # -- stage: teacher settings, stats and gates --------------------------------------------------------

    def teacher_settings(self, arch: str) -> dict[str, Any]:
        """The settings negCLIPLoss takes from a teacher (the paper: tau = 1/exp(logit_scale), B = its batch)."""
        import torch

        from datacomp_plugins.apps.minicomp import teacher

        state = torch.load(teacher.checkpoint_path(self.out, arch), map_location="cpu", weights_only=True)
        logit_scale = float(state["logit_scale"])
        return {"logit_scale": round(logit_scale, 6), "temperature": round(float(np.exp(-logit_scale)), 6),
                "batch_size": int(self.world["teachers"][arch]["batch_size"])}

    def gates(self, accuracy: dict[str, dict[str, float]], l14: dict[str, Any]) -> list[dict[str, Any]]:
        import pyarrow.parquet as pq

        from datacomp_plugins.apps.minicomp import gates

        uids, comps = [], []
        for s in range(self.n_shards):
            stem = f"{s:08d}"
            truth = pq.read_table(self.path("truth", f"{stem}.parquet")).to_pydict()
            uids += truth["uid"]
            comps += truth["component"]
        clip_kept, neg_kept = gates.kept_masks(self.out, np.array(uids), l14["temperature"], l14["batch_size"])
        quick = self.world.quick
        found = (gates.accuracy_gates(accuracy, quick)
                 + gates.selection_gates(np.array(comps), clip_kept, neg_kept, quick)
                 + [gates.disjoint_gate(self.out, quick)])
        return [g.as_dict() for g in found]

    # -- the stages -------------------------------------------------------------------------------------

    def stages(self) -> list[Stage]:
        from datacomp_plugins.apps.minicomp import teacher

        def render_outputs() -> list[str]:
            return [j["name"] for j in self.render_jobs()] + ["shards/sizes.json"]

        def metadata_outputs() -> list[str]:
            return [f"metadata/{s:08d}.{ext}" for s in range(self.n_shards) for ext in ("parquet", "npz")]

        def target_outputs() -> list[str]:
            return ([f"targets/{t['name']}_{a}.npy" for t in self.world["tasks"] for a in teacher.ARCHES]
                    + [f"targets/all_tasks_{a}.npy" for a in teacher.ARCHES])

        def train_teacher(arch: str) -> dict[str, Any]:
            self.teacher(arch)
            return self.teacher_settings(arch)

        return [
            Stage("render", lambda _: self.render() or {}, render_outputs),
            *[Stage(f"teacher_{arch}", lambda _, a=arch: train_teacher(a),
                    lambda a=arch: [os.path.relpath(teacher.checkpoint_path(self.out, a), self.out)])
              for arch in teacher.ARCHES],
            Stage("embed_pool", lambda _: self.with_teachers(self.metadata) or {}, metadata_outputs),
            Stage("tasks", lambda _: self.with_teachers(self.tasks), target_outputs),
            Stage("stats", lambda _: self.component_stats(), lambda: []),
            Stage("gates", lambda r: {"gates": self.gates(r["tasks"]["accuracy"], r["teacher_l14"])}, lambda: []),
        ]

    def with_teachers(self, fn: Callable[[dict[str, Any]], Any]) -> Any:
        """``fn(teachers)`` with both teachers loaded and one torch thread.

        One thread: the embeddings then do not depend on the core count, and on a shared 2-core machine two
        spinning OpenMP threads ran a forward pass ~10x slower than one (measured under load).
        """
        import torch

        from datacomp_plugins.apps.minicomp import teacher

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn({arch: teacher.Teacher(self.out, arch) for arch in teacher.ARCHES})
        finally:
            torch.set_num_threads(threads)

    def run(self) -> dict[str, Any]:
        start = time.monotonic()
        resumed = self.prepare()
        results = StageRunner(self.out, self.progress).run(self.stages(), self.times)
        summary = {"counts": {"pool": results["stats"]["pool"], "teacher_corpus": results["stats"]["teacher_corpus"]},
                   "mean_clip_score": results["stats"]["mean_clip_score"]}
        settings = {arch: results[f"teacher_{arch}"] for arch in ("l14", "b32")}
        manifest = self.manifest(results["tasks"], summary, settings, results["gates"]["gates"])
        self.times["total"] = time.monotonic() - start
        write_json(self.path("build_times.json"), {k: round(v, 1) for k, v in self.times.items()})
        return {**manifest, "seconds": {k: round(v, 1) for k, v in self.times.items()}, "resumed": resumed}


@dataclass(frozen=True)
class Stage:
    """A build stage: ``run(results so far)`` returns its JSON result; ``outputs()`` lists its files (OUT-relative)."""

    name: str
    run: Callable[[dict[str, Any]], Any]
    outputs: Callable[[], list[str]]


class StageRunner:
    """Runs stages in order; a stage with a completion marker and all its outputs is skipped (its result read
    back from the marker), and once one stage runs, every later one runs too (its inputs may have changed)."""

    def __init__(self, out: str, progress: bool = True) -> None:
        self.folder, self.out, self.progress = os.path.join(out, STAGES_DIR), out, progress

    def marker(self, name: str) -> str:
        return os.path.join(self.folder, f"{name}.json")

    def run(self, stages: list[Stage], times: dict[str, float]) -> dict[str, Any]:
        os.makedirs(self.folder, exist_ok=True)
        results: dict[str, Any] = {}
        rerun = False
        for stage in stages:
            marker = self.marker(stage.name)
            if not rerun and os.path.exists(marker) and all(os.path.exists(os.path.join(self.out, o))
                                                            for o in stage.outputs()):
                with open(marker, encoding="utf-8") as handle:
                    results[stage.name] = json.load(handle)["result"]
                continue
            rerun = True
            if self.progress:
                print(f"stage {stage.name}", file=sys.stderr)
            if os.path.exists(marker):
                os.unlink(marker)  # not done until it finishes again
            t0 = time.monotonic()
            results[stage.name] = json.loads(json.dumps(stage.run(results)))
            times[stage.name] = time.monotonic() - t0
            write_json(marker, {"result": results[stage.name], "seconds": round(times[stage.name], 1)})
        return results


def render_unit16(rows: np.ndarray) -> np.ndarray:
    from datacomp_plugins.apps.minicomp.teacher import unit_float16

    return unit_float16(rows)


def _tar_order(name: str) -> tuple[int, str]:
    stem = name.split(".")[0]
    return (int(stem), name) if stem.isdigit() else (1 << 30, name)


def build(out: str, world_path: str | None = None, quick: bool = False, seed: int | None = None,
          workers: int | None = None, progress: bool = True) -> dict[str, Any]:
    """The ``minicomp build`` command; returns the manifest and prints a summary."""
    world = load_world(world_path, quick=quick, seed=seed)
    if workers is None:
        from datacomp_plugins.core.procs import available_cpus

        workers = available_cpus()
    builder = Builder(out, world, workers, progress)
    manifest = builder.run()
    counts = manifest["counts"]["pool"]
    acc = manifest["teachers"]
    print(f"built {'quick ' if quick else ''}world (seed {world.seed}) in {manifest['seconds']['total']:.0f} s "
          f"-> {out}")
    print(f"  pool: {sum(counts.values())} samples in {builder.n_shards} shards; "
          + ", ".join(f"{c} {n}" for c, n in counts.items()))
    for arch in acc:
        scores = acc[arch]["zero_shot_accuracy"].items()
        print(f"  teacher {arch} zero-shot: " + ", ".join(f"{t} {a:.3f}" for t, a in scores))
    for arch in acc:
        print(f"  teacher {arch}: temperature {acc[arch]['temperature']:.4f} (logit_scale "
              f"{acc[arch]['logit_scale']:.3f}), batch size {acc[arch]['batch_size']}")
    print("  seconds: " + ", ".join(f"{k} {v}" for k, v in manifest["seconds"].items()))
    from datacomp_plugins.apps.minicomp.gates import table

    failed = sum(not g["passed"] for g in manifest["gates"])
    print(f"gates ({'quick world thresholds' if quick else 'default thresholds'}): "
          f"{len(manifest['gates']) - failed} passed, {failed} failed")
    print(table(manifest["gates"]))
    return manifest
