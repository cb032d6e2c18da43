"""Every recipe in baselines/ runs on the example pool; placeholders and listing behave."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import fake_assets

from datacomp_plugins import recipes
from datacomp_plugins.apps.toy import write_toy_pool
from datacomp_plugins.cli import main
from datacomp_plugins.core.uids import UID_DTYPE, is_sorted_unique, parse_hex, sorted_unique


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    write_toy_pool(str(out), shards=2, rows=1500)
    uids = sorted_unique(parse_hex(pq.read_table(out / "labels.parquet")["uid"]))
    rng = np.random.default_rng(0)
    np.save(out / "dfn.npy", np.sort(rng.choice(uids, int(len(uids) * 0.6), replace=False), order=["f0", "f1"]))
    np.save(out / "hype.npy", np.sort(rng.choice(uids, 200, replace=False), order=["f0", "f1"]))
    return out, len(uids)


@pytest.mark.parametrize("name", recipes.available())
def test_every_recipe_runs_on_the_example_pool(toy, tmp_path, monkeypatch, cache_dir, name):
    out, pool_size = toy
    fake_assets(tmp_path, monkeypatch)  # in1k assets served locally, checked by sha256
    recipe = recipes.load(name)
    save = tmp_path / "out.npy"
    args = ["recipe", name, "--metadata_dir", str(out / "metadata"), "--save_path", str(save), "--no_progress",
            "--target", str(out / "targets" / "target_l14.npy"), "--dfn_uids", str(out / "dfn.npy"),
            "--hype_uids", str(out / "hype.npy")]
    assert main(args) == 0
    kept = np.load(save)
    assert kept.dtype == UID_DTYPE and is_sorted_unique(kept)
    base = int(np.load(out / "dfn.npy").shape[0]) if "given_uids" in recipe.filter else pool_size
    final = recipe.filter.get("normsim_fraction", recipe.filter["fraction"])
    # clip_score alone follows DataComp's rule: one more than floor(N*F) (random scores have no ties)
    ours = math.floor(base * final) + (recipe.filter["name"] == "clip_score")
    if recipe.union:
        hype = np.load(out / "hype.npy")
        assert len(kept) >= max(ours, len(hype)) and np.isin(hype.view("V16"), kept.view("V16")).all()
    else:
        assert len(kept) == ours
    if "given_uids" in recipe.filter and not recipe.union:
        assert np.isin(kept.view("V16"), np.load(out / "dfn.npy").view("V16")).all()


def test_list_and_errors(toy, tmp_path, capsys, cache_dir):
    out, _ = toy
    assert main(["recipe", "--list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in recipes.available()) and "31.7 / 36.0 / 35.0" in listing
    save = tmp_path / "o.npy"
    assert main(["recipe", "negcliploss_normsiminf_target", "--metadata_dir", str(out / "metadata"),
                 "--save_path", str(save)]) == 2
    assert "needs --target" in capsys.readouterr().err
    assert main(["recipe", "nope", "--metadata_dir", str(out / "metadata"), "--save_path", str(save)]) == 2
    assert "recipe nope: not found; available: clipscore_30" in capsys.readouterr().err
    assert not save.exists()


@pytest.mark.parametrize("name", ["negcliploss_30", "dfn_hype_ours"])
def test_a_recipe_checks_its_settings_once(toy, tmp_path, monkeypatch, cache_dir, name):
    """The recipe validates before its own work (union files, scratch folder); run_filter does not again."""
    from datacomp_plugins import config, pipeline

    out, _ = toy
    calls = []
    real = config.validate

    def counting(cfg):
        calls.append(cfg.save_path)
        return real(cfg)

    monkeypatch.setattr(config, "validate", counting)
    monkeypatch.setattr(pipeline, "validate", counting)
    save = tmp_path / "o.npy"
    argv = ["recipe", name, "--metadata_dir", str(out / "metadata"), "--save_path", str(save), "--no_progress"]
    if name == "dfn_hype_ours":
        argv += ["--target", str(out / "targets" / "target_l14.npy"), "--dfn_uids", str(out / "dfn.npy"),
                 "--hype_uids", str(out / "hype.npy")]
    assert main(argv) == 0 and save.is_file()
    assert calls == [str(save)]
    monkeypatch.setattr(config, "validate", real)
    assert main(["filter", "--name", "clip_score", "--metadata_dir", str(out / "metadata"), "--save_path",
                 str(tmp_path / "f.npy"), "--fraction", "0.1", "--no_progress"]) == 0
    assert calls == [str(save), str(tmp_path / "f.npy")]  # a plain filter is checked by run_filter, once


def test_set_overrides_a_filter_setting(toy, tmp_path, cache_dir):
    out, pool_size = toy
    save = tmp_path / "o.npy"
    assert main(["recipe", "negcliploss_30", "--metadata_dir", str(out / "metadata"), "--save_path", str(save),
                 "--no_progress", "--set", "fraction=0.1", "--set", "negcliploss_batch_size=256"]) == 0
    assert len(np.load(save)) == math.floor(pool_size * 0.1)
