"""The mini DataComp world: layout contract, DataComp's own scripts on it, world-file errors, resume/refuse.

The built world comes from the session fixture ``quick_world`` (``minicomp build OUT --quick --seed 0``).
Expected values are computed here independently (float64 dot products, shares times pool size by hand,
sha256 of the files, uid sets from the tars), never copied from an earlier output.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from datacomp_plugins.cli import main

STEMS = ("00000000", "00000001", "00000002")
DIMS = {"l14": 768, "b32": 512}
COLUMNS = ("uid", "url", "text", "original_width", "original_height", "clip_b32_similarity_score",
           "clip_l14_similarity_score", "sha256")


def tar_samples(path) -> list[dict]:
    """Samples of a webdataset tar in tar order: key -> {ext: bytes}."""
    samples: dict[str, dict] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return [dict(v, __key__=k) for k, v in samples.items()]


def manifest(out) -> dict:
    return json.loads((out / "MANIFEST.json").read_text())


# ---------------------------------------------------------------------------------------------------------
# Layout contract


def test_metadata_columns_npz_and_norms(quick_world):
    for stem in STEMS:
        table = pq.read_table(quick_world / "metadata" / f"{stem}.parquet")
        for column in COLUMNS:
            assert column in table.column_names, column
        n = table.num_rows
        assert n == 1000
        with np.load(quick_world / "metadata" / f"{stem}.npz", allow_pickle=False) as npz:
            assert sorted(npz.files) == ["b32_img", "b32_txt", "l14_img", "l14_txt"]
            for arch, dim in DIMS.items():
                img, txt = npz[f"{arch}_img"], npz[f"{arch}_txt"]
                assert img.shape == txt.shape == (n, dim)
                assert img.dtype == txt.dtype == np.float16
                img64, txt64 = img.astype(np.float64), txt.astype(np.float64)
                np.testing.assert_allclose(np.linalg.norm(img64, axis=1), 1.0, atol=2e-3)
                np.testing.assert_allclose(np.linalg.norm(txt64, axis=1), 1.0, atol=2e-3)
                score = table[f"clip_{arch}_similarity_score"].to_numpy().astype(np.float64)
                np.testing.assert_allclose(score, (img64 * txt64).sum(1), atol=1e-4)
                assert np.ptp(score) > 0.05  # the teachers do tell pairs apart


def test_tars_match_metadata_and_truth_row_for_row(quick_world):
    sizes = json.loads((quick_world / "shards" / "sizes.json").read_text())
    for stem in STEMS:
        samples = tar_samples(quick_world / "shards" / f"{stem}.tar")
        table = pq.read_table(quick_world / "metadata" / f"{stem}.parquet").to_pydict()
        truth = pq.read_table(quick_world / "truth" / f"{stem}.parquet")
        assert truth.column_names == ["uid", "component"]
        stats = json.loads((quick_world / "shards" / f"{stem}_stats.json").read_text())
        assert stats["successes"] == sizes[f"{stem}.tar"] == len(samples) == len(table["uid"])
        metas = [json.loads(s["json"]) for s in samples]
        assert [m["uid"] for m in metas] == table["uid"] == truth["uid"].to_pylist()
        assert all(len(u) == 32 and int(u, 16) >= 0 for u in table["uid"])
        for sample, meta, text, digest in zip(samples, metas, table["text"], table["sha256"], strict=True):
            assert sorted(k for k in sample if k != "__key__") == ["jpg", "json", "txt"]
            assert sample["txt"].decode() == meta["caption"] == text
            assert hashlib.sha256(sample["jpg"]).hexdigest() == digest
            assert sample["jpg"][:2] == b"\xff\xd8"  # a JPEG
    all_uids = [u for s in STEMS for u in pq.read_table(quick_world / "metadata" / f"{s}.parquet")["uid"].to_pylist()]
    assert len(set(all_uids)) == len(all_uids) == 3000


def test_component_counts_follow_the_world_shares(quick_world):
    # quick world: 3000 samples; shares .38 .14 .10 .06 .06 .16 .10 of the default world, each exact
    expected = {"clean": 1140, "mismatched": 420, "generic_caption": 300, "crowded_image": 180, "text_in_image": 180,
                "off_task": 480, "near_duplicate": 300}
    truth = [c for s in STEMS for c in pq.read_table(quick_world / "truth" / f"{s}.parquet")["component"].to_pylist()]
    assert {c: truth.count(c) for c in expected} == expected
    assert manifest(quick_world)["counts"]["pool"] == expected


def test_captions_of_clean_and_mismatched_and_generic_pairs(quick_world):
    """Clean captions are the sample's own; generic ones are the world's templates filled with words of the
    world (never a shape word: they are unspecific); the teacher agrees that clean pairs fit."""
    import re

    from datacomp_plugins.apps.minicomp.world import load_world

    world = load_world(str(quick_world / "world.toml"))
    patterns = [re.compile("^(.+ )?" + re.escape(t).replace(r"\{", "{").replace(r"\}", "}")
                           .replace("{color}", "[a-z]+").replace("{background}", "[a-z]+") + "( .+)?$")
                for t in world["captions"]["generic"]]
    truth = pq.read_table(quick_world / "truth" / "00000000.parquet").to_pydict()
    meta = pq.read_table(quick_world / "metadata" / "00000000.parquet").to_pydict()
    comp = np.array(truth["component"])
    texts = np.array(meta["text"])
    shapes = set(world["objects"]["shapes"])
    for text in texts[comp == "generic_caption"]:
        assert any(p.match(text) for p in patterns), text
        assert not shapes & set(text.split()), text
    # the L/14 teacher scores clean pairs above mismatched ones on average (a teacher that learnt something)
    score = np.array(meta["clip_l14_similarity_score"])
    assert score[comp == "clean"].mean() > score[comp == "mismatched"].mean() + 0.05


def test_manifest_hashes_every_file_and_lists_targets(quick_world):
    data = manifest(quick_world)
    files = data["sha256"]
    for rel in ("shards/00000000.tar", "metadata/00000002.npz", "truth/00000001.parquet", "world.toml",
                "teacher/minicomp-l14.pt", "teacher/minicomp-b32.json", "evalsets/wds_shapes_test/test/0.tar"):
        assert files[rel] == hashlib.sha256((quick_world / rel).read_bytes()).hexdigest(), rel
    assert len(data["targets"]) == 6
    for entry in data["targets"]:
        array = np.load(quick_world / entry["file"], allow_pickle=False)
        assert array.dtype == np.float32 and array.shape[1] == DIMS[entry["arch"]]
        np.testing.assert_allclose(np.linalg.norm(array, axis=1), 1.0, atol=1e-4)
    [in1k] = [t for t in data["targets"] if t["imagenet_like"] and t["arch"] == "l14"]
    assert in1k["task"] == data["imagenet_like"] == "shapes"
    assert np.load(quick_world / in1k["file"]).shape[0] == 6 * 20  # 6 classes x train_per_class
    for arch in DIMS:
        for task, acc in data["teachers"][arch]["zero_shot_accuracy"].items():
            assert 0.0 <= acc <= 1.0, (arch, task)


def test_npz_bytes_do_not_carry_a_clock(quick_world):
    """np.savez stamps the current time into the zip; ours must not, or rebuilds differ."""
    with zipfile.ZipFile(quick_world / "metadata" / "00000000.npz") as zf:
        assert {info.date_time for info in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


# ---------------------------------------------------------------------------------------------------------
# The package's baselines and DataComp's scripts on the world


@pytest.mark.parametrize("name,extra", [
    ("clip_score", []),
    ("negcliploss", []),
    ("normsim2", ["--normsim_fraction", "0.2", "--target", "targets/shapes_l14.npy"]),
    ("normsiminf", ["--normsim_fraction", "0.2", "--target", "targets/all_tasks_l14.npy"]),
    ("normsim_d", ["--normsim_fraction", "0.2", "--normsim_d_iters", "20"]),
])
def test_every_baseline_filters_the_world(quick_world, tmp_path, cache_dir, name, extra):
    from datacomp_plugins.core.uids import load_uid_file

    extra = [str(quick_world / e) if e.startswith("targets/") else e for e in extra]
    out = tmp_path / "uids.npy"
    assert main(["filter", "--name", name, "--metadata_dir", str(quick_world / "metadata"), "--arch", "l14",
                 "--fraction", "0.3", "--save_path", str(out), *extra]) == 0
    kept = load_uid_file(str(out), fix=False)
    if name == "clip_score":  # DataComp's rule: every score >= the (floor(N*F)+1)-th best
        column = np.concatenate([pq.read_table(quick_world / "metadata" / f"{s}.parquet")
                                 ["clip_l14_similarity_score"].to_numpy() for s in STEMS])
        cut = np.sort(column)[::-1][900]
        assert len(kept) == int((column >= cut).sum()) >= 901
    else:
        assert len(kept) == (600 if extra else 900)  # floor(3000 * 0.2) or floor(3000 * 0.3)


def _datacomp() -> str:
    path = os.environ.get("DATACOMP_DIR")
    if not path:
        pytest.skip("DATACOMP_DIR is not set")
    return path


def test_datacomp_resharder_writes_exactly_the_selected_samples(quick_world, tmp_path):
    from datacomp_plugins.core.uids import parse_hex, save_uid_file

    datacomp = _datacomp()
    all_uids = [u for s in STEMS for u in pq.read_table(quick_world / "metadata" / f"{s}.parquet")["uid"].to_pylist()]
    chosen = sorted(all_uids[::7])
    subset = tmp_path / "subset.npy"
    save_uid_file(str(subset), parse_hex(chosen))
    out = tmp_path / "resharded"
    out.mkdir()
    proc = subprocess.run([sys.executable, os.path.join(datacomp, "resharder.py"), "-i", str(quick_world / "shards"),
                           "-o", str(out), "-s", str(subset), "-j", "1", "--shard-size", "200"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = [json.loads(s["json"])["uid"] for tar in sorted(out.glob("*.tar")) for s in tar_samples(tar)]
    assert sorted(written) == chosen  # each selected sample once, nothing else


def test_datacomp_wds_eval_runs_on_the_evalsets_with_a_teacher(quick_world):
    """DataComp's wds_eval.evaluate_webdataset agrees with the build's own zero-shot accuracy."""
    from pathlib import Path

    from datacomp_plugins.apps.minicomp import openclip
    from datacomp_plugins.apps.minicomp.evaluate import evaluate_checkpoint

    datacomp = _datacomp()
    data = manifest(quick_world)
    teacher = data["teachers"]["b32"]
    openclip.register(str(quick_world / teacher["config"]))
    records = evaluate_checkpoint(Path(datacomp), teacher["model"], quick_world / teacher["checkpoint"],
                                  quick_world / "evalsets", ["shapes", "colors"])
    for record in records:
        expected = teacher["zero_shot_accuracy"][record["key"]]
        n_test = 30 * (6 if record["key"] in ("shapes", "colors") else 1)
        assert abs(record["metrics"]["acc1"] - expected) <= 3.5 / n_test, record  # bf16 autocast prompts


def test_evalset_layout_for_clip_benchmark(quick_world):
    root = quick_world / "evalsets" / "wds_colors_test"
    assert (root / "classnames.txt").read_text().split("\n")[:10] == [
        "red", "orange", "yellow", "lime", "green", "cyan", "blue", "purple", "magenta", "white"]
    assert all("{c}" in t for t in (root / "zeroshot_classification_templates.txt").read_text().splitlines())
    assert (root / "test" / "nshards.txt").read_text().strip() == "1"
    samples = tar_samples(root / "test" / "0.tar")
    labels = [int(s["cls"]) for s in samples]
    assert len(samples) == 10 * 30 and sorted(set(labels)) == list(range(10))
    # the class attribute is what the image shows: "red" images hold many more red-dominant pixels than others
    from PIL import Image

    def red_pixels(sample) -> int:
        pixels = np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB")).reshape(-1, 3).astype(int)
        return int(((pixels[:, 0] > pixels[:, 1] + 130) & (pixels[:, 0] > pixels[:, 2] + 130)).sum())

    counts = np.array([red_pixels(s) for s in samples])
    is_red = np.array(labels) == 0
    assert counts[is_red].mean() > 5 * max(1.0, counts[~is_red].mean())
    assert (counts[is_red] > 0).all()


# ---------------------------------------------------------------------------------------------------------
# World files, resume and refusal


BAD_WORLDS = [
    ("[pool]\nsize = 100\nshard_size = 10\nbogus = 1\n", "pool.bogus"),
    ("[components]\nclean = 0.5\nmismatched = 0.2\n", "components: shares sum to 0.7"),
    ("[world]\nimage_size = 32\njpeg_quality = 90\nseed = 0\n[objects]\nsize = [10, 40]\n", "objects.size"),
    ("[pool]\nsize = 100\nshard_size = 1000\n", "pool.shard_size"),
    ("[[tasks]]\nname = \"x\"\nattribute = \"shape\"\nclasses = [\"circle\", \"moon\"]\ntemplates = [\"{c}\"]\n",
     "classes"),
]


def _world_with(tmp_path, patch: str):
    """The default world with one table replaced by ``patch`` (TOML text)."""
    import tomllib

    from datacomp_plugins.apps.minicomp.build import world_toml
    from datacomp_plugins.apps.minicomp.world import DEFAULT_WORLD

    with open(DEFAULT_WORLD, "rb") as handle:
        data = tomllib.load(handle)
    data.pop("quick")
    over = tomllib.loads(patch)
    for key, value in over.items():
        if key == "tasks":
            data["tasks"] = value
        elif key == "components":
            data[key] = value
        else:
            data[key] = {**data[key], **value}
    path = tmp_path / "world.toml"
    path.write_text(world_toml(data))
    return path


@pytest.mark.parametrize("patch,expected", BAD_WORLDS)
def test_bad_world_file_is_a_clear_error(tmp_path, capsys, patch, expected):
    world = _world_with(tmp_path, patch)
    out = tmp_path / "out"
    assert main(["minicomp", "build", str(out), "--world", str(world)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and str(world) in err and "Traceback" not in err
    assert not out.exists()  # nothing was written


def test_missing_world_and_bad_toml(tmp_path, capsys):
    assert main(["minicomp", "build", str(tmp_path / "o"), "--world", str(tmp_path / "none.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[pool\n")
    assert main(["minicomp", "build", str(tmp_path / "o"), "--world", str(bad)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("x")
    assert main(["minicomp", "build", str(out), "--quick"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert out.read_text() == "x"


def test_component_counts_are_exact_for_awkward_shares():
    from datacomp_plugins.apps.minicomp.world import component_counts

    # 7 samples, shares 1/3 1/3 1/3: floors 2 2 2, the one left over goes to the first largest remainder
    counts = component_counts({"clean": 1 / 3, "mismatched": 1 / 3, "off_task": 1 / 3}, 7)
    assert counts["clean"] == 3 and counts["mismatched"] == 2 and counts["off_task"] == 2
    assert sum(counts.values()) == 7 and counts["near_duplicate"] == 0


def test_default_world_validates_and_its_toml_round_trips(tmp_path):
    from datacomp_plugins.apps.minicomp.build import world_toml
    from datacomp_plugins.apps.minicomp.world import load_world

    for quick in (False, True):
        world = load_world(quick=quick)
        path = tmp_path / f"w{quick}.toml"
        path.write_text(world_toml(world.data))
        again = load_world(str(path))
        assert again.data == world.data and again.fingerprint() == world.fingerprint()
    from datacomp_plugins.apps.minicomp.student import SCALE_CONFIGS

    for name in ("default", "second"):
        full = load_world(name)
        # DataComp's regime: the default student sees as many samples as the pool holds, so a 30% subset is
        # seen 3.3 times; shards hold many of the teacher's batches, so negCLIPLoss's K batchings differ
        assert full["pool"]["size"] == SCALE_CONFIGS["minicomp"]["train_num_samples"]
        assert full["pool"]["shard_size"] >= 8 * full["teachers"]["l14"]["batch_size"]
        assert len(full["tasks"]) >= 3


def test_another_world_or_seed_is_refused(quick_world, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(quick_world, out, ignore=shutil.ignore_patterns("corpus", "runs"))
    before = sorted(p.name for p in out.iterdir())
    assert main(["minicomp", "build", str(out), "--quick", "--seed", "1", "--no_progress"]) == 2
    assert "another world or seed" in capsys.readouterr().err
    assert main(["minicomp", "build", str(out), "--no_progress"]) == 2  # the full world into a quick OUT
    assert sorted(p.name for p in out.iterdir()) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("x")
    assert main(["minicomp", "build", str(other), "--quick"]) == 2
    assert "not a minicomp build" in capsys.readouterr().err


def test_resume_rebuilds_missing_files_byte_for_byte(quick_world, tmp_path):
    """Delete a pool shard, its metadata and truth; rebuilding the same world into OUT resumes and gives the
    same bytes (render and embedding are deterministic), without retraining the teachers."""
    out = tmp_path / "resume"
    shutil.copytree(quick_world, out, ignore=shutil.ignore_patterns("runs"))
    removed = ["shards/00000001.tar", "metadata/00000001.parquet", "metadata/00000001.npz",
               "truth/00000001.parquet", "targets/colors_b32.npy"]
    for rel in removed:
        (out / rel).unlink()
    teacher_mtime = (out / "teacher" / "minicomp-l14.pt").stat().st_mtime_ns
    assert main(["minicomp", "build", str(out), "--quick", "--seed", "0", "--no_progress", "--workers", "1"]) == 0
    for rel in removed:
        assert (out / rel).read_bytes() == (quick_world / rel).read_bytes(), rel
    assert (out / "teacher" / "minicomp-l14.pt").stat().st_mtime_ns == teacher_mtime
    assert manifest(out)["sha256"] == {k: v for k, v in manifest(quick_world)["sha256"].items()}


# ---------------------------------------------------------------------------------------------------------
# Gates: measured by every build, asserted on the quick world, and able to fail


GATE_FAMILIES = ("teacher_accuracy", "clipscore_keeps", "negcliploss_removes", "normsim_work", "corpus_disjoint")


def _clip_score_kept(out) -> tuple[np.ndarray, np.ndarray]:
    """Components and DataComp's clip_score 30% (the (floor(N*0.3)+1)-th best L/14 score and all >= it),
    recomputed here from the parquet and truth files."""
    comps, scores = [], []
    for stem in STEMS:
        comps += pq.read_table(out / "truth" / f"{stem}.parquet")["component"].to_pylist()
        scores.append(pq.read_table(out / "metadata" / f"{stem}.parquet")["clip_l14_similarity_score"].to_numpy())
    values = np.concatenate(scores)
    cut = np.sort(values)[::-1][int(np.floor(len(values) * 0.3))]
    return np.array(comps), values >= cut


# Gates that the quick world must pass (CI asserts them). The hub gates are measured and reported by every
# build but do not hold in the packaged worlds yet (docs/MINICOMP.md, "Gates: measured outcome").
HELD_GATES = ("teacher_accuracy", "normsim_work", "corpus_disjoint")


def test_quick_world_passes_its_gates_and_they_match_a_recomputation(quick_world):
    gates = manifest(quick_world)["gates"]
    assert {g["name"].split(".")[0] for g in gates} == set(GATE_FAMILIES)
    failed = [g for g in gates if not g["passed"] and g["name"].split(".")[0] in HELD_GATES]
    assert not failed, failed
    comps, kept = _clip_score_kept(quick_world)
    found = {g["name"]: g for g in gates}
    for hub in ("generic_caption", "crowded_image", "text_in_image"):
        expected = ((comps == hub) & kept).sum() / kept.sum() / (comps == hub).mean()
        assert abs(found[f"clipscore_keeps.{hub}"]["value"] - expected) < 1e-3, hub
        assert found[f"clipscore_keeps.{hub}"]["passed"] == (expected >= 0.5)
    off = ((comps == "off_task") & kept).sum() / kept.sum() / (comps == "off_task").mean()
    assert abs(found["normsim_work.off_task"]["value"] - off) < 1e-3
    assert found["corpus_disjoint"]["value"] == 0


def test_strict_exits_3_exactly_when_a_gate_failed(quick_world, tmp_path, capsys):
    """A finished build resumed with --strict redoes no stage and exits 3 when its manifest has a failed gate."""
    out = tmp_path / "copy"
    shutil.copytree(quick_world, out, ignore=shutil.ignore_patterns("runs"))
    failed = [g["name"] for g in manifest(out)["gates"] if not g["passed"]]
    before = (out / "MANIFEST.json").read_bytes()
    code = main(["minicomp", "build", str(out), "--quick", "--seed", "0", "--no_progress", "--strict"])
    captured = capsys.readouterr()
    assert code == (3 if failed else 0)
    assert all(name in captured.err for name in failed)
    assert json.loads((out / "build_times.json").read_text()).keys() == {"total"}  # every stage was skipped
    assert (out / "MANIFEST.json").read_bytes() == before  # no clock in it: the same bytes again


def _variant_world(tmp_path, **changes) -> str:
    """The packaged world with some tables changed; its [quick] table is kept as written."""
    import tomllib

    from datacomp_plugins.apps.minicomp.build import world_toml
    from datacomp_plugins.apps.minicomp.world import DEFAULT_WORLD

    with open(DEFAULT_WORLD, encoding="utf-8") as handle:
        text = handle.read()
    data = tomllib.loads(text)
    data.pop("quick")
    for table, values in changes.items():
        data[table] = {**data[table], **values} if table != "components" else values
    path = tmp_path / "variant.toml"
    path.write_text(world_toml(data) + text[text.index("\n[quick]"):])
    return str(path)


@pytest.mark.slow  # builds a second quick world: two more teachers trained
@pytest.mark.timeout(2400)
def test_a_world_not_tuned_passes_the_held_gates_too(tmp_path):
    """Another seed, every component share moved by a few points: the gates that hold are properties of the
    design, not of one tuned draw."""
    from datacomp_plugins.apps.minicomp.world import load_world

    shares = dict(load_world()["components"])
    moved = {"clean": shares["clean"] + 0.04, "generic_caption": shares["generic_caption"] - 0.02,
             "off_task": shares["off_task"] - 0.03, "near_duplicate": shares["near_duplicate"] + 0.02,
             "crowded_image": shares["crowded_image"] + 0.01, "text_in_image": shares["text_in_image"] - 0.01,
             "mismatched": shares["mismatched"] - 0.01}
    world = _variant_world(tmp_path, components={k: round(v, 4) for k, v in moved.items()})
    out = tmp_path / "variant"
    assert main(["minicomp", "build", str(out), "--world", world, "--quick", "--seed", "7", "--no_progress"]) == 0
    gates = manifest(out)["gates"]
    assert {g["name"].split(".")[0] for g in gates} == set(GATE_FAMILIES)
    assert all(g["passed"] for g in gates if g["name"].split(".")[0] in HELD_GATES), gates
