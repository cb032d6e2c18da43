"""The mini DataComp's hubs, noisy captions, gates, stage runner and the teacher's tau and B, without a build.

Expected values are worked by hand (small pools of components with known selections) or are properties of
the spec (a dropped word is absent, a generic caption names the scene's own colour), never copied outputs.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from datacomp_plugins.apps.minicomp import gates, render
from datacomp_plugins.apps.minicomp.world import COMPONENTS, load_world
from datacomp_plugins.core.errors import PluginError


def _world(tmp_path, **captions):
    """The default world with ``[captions]`` keys replaced."""
    import tomllib

    from datacomp_plugins.apps.minicomp.build import world_toml
    from datacomp_plugins.apps.minicomp.world import DEFAULT_WORLD

    with open(DEFAULT_WORLD, "rb") as handle:
        data = tomllib.load(handle)
    data.pop("quick")
    data["captions"].update({"drop": 0.0, "noise_prob": 0.0, **captions})  # no noise unless a test asks
    path = tmp_path / "w.toml"
    path.write_text(world_toml(data))
    return load_world(str(path))


def _specs(world, component: str, n: int = 40) -> list[dict]:
    comps = np.full(n + 1, COMPONENTS.index(component), dtype=np.int8)
    comps[0] = COMPONENTS.index("clean")
    return [render.make_spec(world, render.STREAM_POOL, i, comps) for i in range(1, n + 1)]


# ---------------------------------------------------------------- hubs and captions


def test_generic_captions_are_filled_from_the_scene(tmp_path):
    world = _world(tmp_path, generic=["a {color} thing", "something on a {background} background"])
    for spec in _specs(world, "generic_caption"):
        words = render.caption_fields(spec)
        assert spec["caption"] in (f"a {words['color']} thing", f"something on a {words['background']} background")


def test_crowded_images_are_one_colour_and_captioned_without_shape(tmp_path):
    world = _world(tmp_path, crowded=["{color} shapes on {background}"])
    lo, hi = world["objects"]["crowded_count"]
    for spec in _specs(world, "crowded_image"):
        assert lo <= len(spec["objects"]) <= hi
        assert {o["color"] for o in spec["objects"]} == {spec["color"]}
        assert spec["caption"] == f"{spec['color']} shapes on {render.caption_fields(spec)['background']}"


def test_text_in_image_writes_the_colour_and_draws_no_object(tmp_path):
    world = _world(tmp_path, text=["the word {color}"])
    specs = _specs(world, "text_in_image", 12)
    for spec in specs:
        assert spec["objects"] == [] and spec["overlay"] == spec["color"]
        assert spec["caption"] == f"the word {spec['color']}"
    # the text is drawn (the image differs from its bare background) and no two images are the same bytes
    images = [render.jpeg(render.draw(world, s), s["quality"]) for s in specs]
    bare = [render.jpeg(render.draw(world, {**s, "overlay": None}), s["quality"]) for s in specs]
    assert all(a != b for a, b in zip(images, bare, strict=True))
    assert len(set(images)) == len(images)


def test_caption_drop_removes_attribute_words_and_noise_adds_tokens(tmp_path):
    world = _world(tmp_path, templates=["{count} {pattern} {color} {shapes} on {background}"], drop=1.0,
                   noise=["free shipping"], noise_prob=1.0)
    for spec in _specs(world, "clean"):
        words = spec["caption"].split()
        assert spec["caption"].startswith("free shipping ") or spec["caption"].endswith(" free shipping")
        rest = spec["caption"].replace("free shipping", "").split()
        assert rest == ["shape" if spec["count"] == 1 else "shapes", "on"], spec["caption"]
        assert spec["color"] not in words
    clean = _world(tmp_path, templates=["{count} {color} {shapes}"])  # drop 0, no noise: every word there
    for spec in _specs(clean, "clean"):
        f = render.caption_fields(spec)
        assert spec["caption"] == f"{f['count']} {f['color']} {f['shapes']}"


def test_drop_probability_is_honoured_on_average(tmp_path):
    world = _world(tmp_path, templates=["{color} {shapes}"], drop=0.3)
    specs = _specs(world, "clean", 400)
    kept = np.mean([render.caption_fields(s)["color"] in s["caption"].split() for s in specs])
    assert abs(kept - 0.7) < 0.08  # binomial sd for 400 draws is 0.023


@pytest.mark.parametrize("captions,needle", [
    ({"drop": 1.5}, "captions.drop"),
    ({"noise_prob": 0.2, "noise": []}, "captions.noise_prob"),
    ({"generic": ["a {colour} thing"]}, "captions.generic[0]"),
    ({"crowded": []}, "captions.crowded"),
])
def test_bad_caption_keys_are_clear_errors(tmp_path, captions, needle):
    with pytest.raises(PluginError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        _world(tmp_path, **captions)


def test_worlds_without_the_new_caption_keys_still_load(tmp_path):
    import tomllib

    from datacomp_plugins.apps.minicomp.build import world_toml
    from datacomp_plugins.apps.minicomp.world import DEFAULT_WORLD

    with open(DEFAULT_WORLD, "rb") as handle:
        data = tomllib.load(handle)
    data.pop("quick")
    data["captions"] = {"templates": data["captions"]["templates"], "generic": ["an image"]}
    path = tmp_path / "old.toml"
    path.write_text(world_toml(data))
    caps = load_world(str(path))["captions"]
    assert caps["drop"] == 0 and caps["noise"] == [] and caps["crowded"] and caps["text"]


def test_teacher_corpus_can_be_cleaner_than_the_pool(tmp_path):
    """teacher_corpus.caption_drop / caption_noise_prob render the corpus's captions, the pool keeps its own."""
    import tomllib

    from datacomp_plugins.apps.minicomp.build import Builder, world_toml
    from datacomp_plugins.apps.minicomp.world import DEFAULT_WORLD

    with open(DEFAULT_WORLD, "rb") as handle:
        data = tomllib.load(handle)
    data.pop("quick")
    data["captions"].update({"templates": ["{color} {shapes}"], "drop": 1.0, "noise": ["jpg"], "noise_prob": 1.0})
    data["teacher_corpus"].update({"caption_drop": 0.0, "caption_noise_prob": 0.0})
    path = tmp_path / "w.toml"
    path.write_text(world_toml(data))
    world = load_world(str(path))
    corpus = world.corpus_view()
    comps = np.full(30, COMPONENTS.index("clean"), dtype=np.int8)
    for i in range(30):
        pool_spec = render.make_spec(world, render.STREAM_POOL, i, comps)
        corpus_spec = render.make_spec(corpus, render.STREAM_TEACHER, i, comps)
        assert "jpg" in pool_spec["caption"].split() and pool_spec["color"] not in pool_spec["caption"]
        f = render.caption_fields(corpus_spec)
        assert corpus_spec["caption"] == f"{f['color']} {f['shapes']}"
    jobs = Builder(str(tmp_path / "out"), world, 1, progress=False).render_jobs()
    by_stream = {job["stream"]: job["world"] for job in jobs if job["kind"] == "samples"}
    assert by_stream[render.STREAM_TEACHER]["captions"]["noise_prob"] == 0.0
    assert by_stream[render.STREAM_POOL]["captions"]["noise_prob"] == 1.0
    # left out, the corpus is as noisy as the pool
    assert load_world(DEFAULT_WORLD).corpus_view()["captions"] == load_world(DEFAULT_WORLD)["captions"]
    data["teacher_corpus"]["caption_drop"] = 1.5
    path.write_text(world_toml(data))
    with pytest.raises(PluginError, match="teacher_corpus.caption_drop"):
        load_world(str(path))


# ---------------------------------------------------------------- gates: hand-worked selections


def test_selection_gates_hand_worked():
    # 20 samples: 10 clean, 4 generic, 4 off_task, 2 crowded; the top 30% (6 samples) of each score:
    comps = np.array(["clean"] * 10 + ["generic_caption"] * 4 + ["off_task"] * 4 + ["crowded_image"] * 2)
    clip = np.zeros(20, bool)
    clip[[0, 10, 11, 14, 15, 18]] = True  # CLIPScore keeps 2 generic, 2 off-task, 1 crowded, 1 clean
    neg = np.zeros(20, bool)
    neg[[0, 1, 2, 10, 14, 15]] = True  # negCLIPLoss keeps 1 generic, 0 crowded
    found = {g.name: g for g in gates.selection_gates(comps, clip, neg, quick=False)}
    # generic: 2/6 of the selection against 4/20 of the pool -> 1.667 >= 0.5; negCLIPLoss 1 of 2 -> 0.5 <= 0.5
    assert math.isclose(found["clipscore_keeps.generic_caption"].value, (2 / 6) / (4 / 20))
    assert found["clipscore_keeps.generic_caption"].passed
    assert math.isclose(found["negcliploss_removes.generic_caption"].value, 0.5)
    assert found["negcliploss_removes.generic_caption"].passed
    # crowded: 1/6 against 2/20 -> 1.667; negCLIPLoss keeps none of the 1 -> 0
    assert found["negcliploss_removes.crowded_image"].value == 0.0
    # off-task: 2/6 against 4/20 -> over-represented
    assert math.isclose(found["normsim_work.off_task"].value, (2 / 6) / (4 / 20))
    assert "negcliploss_removes.text_in_image" not in found  # not in this pool
    # a negCLIPLoss that keeps every generic sample CLIPScore keeps fails its gate
    neg2 = neg.copy()
    neg2[11] = True
    assert not {g.name: g for g in gates.selection_gates(comps, clip, neg2, False)}[
        "negcliploss_removes.generic_caption"].passed
    # a CLIPScore that keeps no hub fails "keeps"
    none = np.zeros(20, bool)
    none[:6] = True
    assert not {g.name: g for g in gates.selection_gates(comps, none, neg, False)}[
        "clipscore_keeps.generic_caption"].passed


def test_accuracy_gates_use_the_world_size_thresholds():
    acc = {"l14": {"shapes": 0.81, "colors": 0.79}, "b32": {"shapes": 0.71}}
    full = {g.name: g.passed for g in gates.accuracy_gates(acc, quick=False)}
    assert full == {"teacher_accuracy.l14.shapes": True, "teacher_accuracy.l14.colors": False,
                    "teacher_accuracy.b32.shapes": True}
    quick = {g.name: g.passed for g in gates.accuracy_gates(acc, quick=True)}
    assert all(quick.values())
    table = gates.table([g.as_dict() for g in gates.accuracy_gates(acc, False)])
    assert "FAIL" in table and "teacher_accuracy.l14.colors" in table


# ---------------------------------------------------------------- the stage runner


def test_stage_runner_skips_finished_stages_and_reruns_from_a_missing_output(tmp_path):
    from datacomp_plugins.apps.minicomp.build import Stage, StageRunner

    calls: list[str] = []

    def make(name: str, output: str | None):
        def run(results):
            calls.append(name)
            if output:
                (tmp_path / output).write_text(name)
            return {"n": len(results)}
        return Stage(name, run, lambda: [output] if output else [])

    stages = [make("a", "a.txt"), make("b", "b.txt"), make("c", None)]
    first = StageRunner(str(tmp_path), progress=False).run(stages, {})
    assert calls == ["a", "b", "c"] and first == {"a": {"n": 0}, "b": {"n": 1}, "c": {"n": 2}}
    calls.clear()
    again = StageRunner(str(tmp_path), progress=False).run(stages, {})
    assert calls == [] and again == first  # results read back from the completion markers
    (tmp_path / "b.txt").unlink()
    StageRunner(str(tmp_path), progress=False).run(stages, {})
    assert calls == ["b", "c"]  # b's output is missing: b and everything after it run again


# ---------------------------------------------------------------- negCLIPLoss at the teacher's tau and B


def test_recipe_takes_tau_and_b_from_a_manifest(tmp_path, cache_dir):
    from conftest import make_pool

    from datacomp_plugins import recipes

    make_pool(str(tmp_path / "pool" / "metadata"), [300, 200])
    toy_pool = tmp_path / "pool"

    manifest = tmp_path / "MANIFEST.json"
    manifest.write_text(json.dumps({"teachers": {"l14": {"temperature": 0.0625, "batch_size": 128}}}))
    found = recipes.teacher_settings(str(manifest), "l14")
    assert found == {"temperature": 0.0625, "negcliploss_batch_size": 128}
    assert recipes.parse_setting("temperature", "manifest") == "manifest"
    recipe = recipes.Recipe("r", "r", "", {"name": "negcliploss", "arch": "l14", "fraction": 0.3,
                                           "temperature": "manifest", "negcliploss_batch_size": "manifest"})
    recipes.run(recipe, str(toy_pool / "metadata"), str(tmp_path / "a.npy"), {"manifest": str(manifest)},
                       {"progress": False})
    direct = recipes.Recipe("d", "d", "", {"name": "negcliploss", "arch": "l14", "fraction": 0.3,
                                           "temperature": 0.0625, "negcliploss_batch_size": 128})
    recipes.run(direct, str(toy_pool / "metadata"), str(tmp_path / "b.npy"), {},
                {"progress": False})
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()
    with pytest.raises(PluginError, match="no such MANIFEST.json"):
        recipes.run(recipe, str(toy_pool / "metadata"), str(tmp_path / "c.npy"),
                    {"manifest": str(tmp_path / "none.json")}, {"progress": False})
    assert not (tmp_path / "c.npy").exists()


def test_which_minicomp_filters_use_negcliploss():
    from datacomp_plugins.apps.minicomp.run import uses_negcliploss

    assert uses_negcliploss({"name": "negcliploss", "fraction": 0.3})
    assert uses_negcliploss({"name": "normsiminf", "fraction": 0.3, "normsim_fraction": 0.2})
    assert uses_negcliploss({"name": "normsim_d", "fraction": 0.3})
    assert not uses_negcliploss({"name": "clip_score", "fraction": 0.3})
    assert not uses_negcliploss({"name": "normsiminf", "fraction": 0.3, "quality_score": "clip_score"})
    assert not uses_negcliploss({"name": "normsiminf", "fraction": 1.0})
