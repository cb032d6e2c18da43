"""Numbers out of range and recipe settings of the wrong type: refused before any work, exit status 2, the
flag and the expected range in the message, no traceback, no output and no cache."""

from __future__ import annotations

import argparse
import os

import numpy as np
import pytest
from conftest import expect_exit_2, make_pool

from datacomp_plugins.cli import build_parser, main
from datacomp_plugins.scores import metrics

FILTER_NUMBERS = [
    (["--seed", "-1"], "--seed -1: must be an integer in [0, 2^32)"),
    (["--seed", "4294967296"], "--seed 4294967296: must be an integer in [0, 2^32)"),
    (["--temperature", "1e-40"], "--temperature 1e-40: must be in [0.0001, 10000]"),
    (["--temperature", "1e300"], "--temperature 1e+300: must be in [0.0001, 10000]"),
    (["--temperature", "nan"], "--temperature nan: must be in"),
    (["--temperature", "-0.01"], "--temperature -0.01: must be in"),
    (["--batch_size", "1000000000000"], "--batch_size 1000000000000: must be an integer in [0, 2^31)"),
    (["--batch_size", "-3"], "--batch_size -3: must be an integer in [0, 2^31)"),
    (["--num_batches", "1000000000000"], "--num_batches 1000000000000: must be an integer in [1, 10000]"),
    (["--num_batches", "0"], "--num_batches 0: must be an integer in [1, 10000]"),
    (["--negcliploss_batch_size", "1000000000000"], "--negcliploss_batch_size 1000000000000: must be an integer"),
    (["--num_workers", "-1"], "--num_workers -1: must be an integer in [0, 4096]"),
    (["--fraction", "nan"], "--fraction nan: must be in (0, 1]"),
    (["--fraction", "inf"], "--fraction inf: must be in (0, 1]"),
]


@pytest.mark.parametrize("extra,message", FILTER_NUMBERS)
def test_filter_numbers_out_of_range_are_refused_before_any_work(tmp_path, cache_dir, capsys, extra, message):
    make_pool(str(tmp_path / "pool"), [10])
    out = tmp_path / "out.npy"
    argv = ["filter", "--no_progress", "--name", "negcliploss", "--metadata_dir", str(tmp_path / "pool"),
            "--save_path", str(out), *extra]
    if "--fraction" not in extra:
        argv += ["--fraction", "0.5"]
    expect_exit_2(capsys, argv, out, message)
    assert not os.path.exists(cache_dir)


NORMSIM_NUMBERS = [
    (["--normsim_threshold", "nan"], "--relevance_threshold nan: must be a finite number"),
    (["--normsim_threshold=-inf"], "--relevance_threshold -inf: must be a finite number"),
    (["--normsim_fraction", "nan"], "--relevance_fraction nan: must be in (0, 1]"),
]


@pytest.mark.parametrize("extra,message", NORMSIM_NUMBERS)
def test_normsim_numbers_out_of_range_are_refused(tmp_path, cache_dir, capsys, extra, message):
    make_pool(str(tmp_path / "pool"), [10])
    np.save(tmp_path / "t.npy", np.eye(3, 768, dtype=np.float32))
    out = tmp_path / "out.npy"
    expect_exit_2(capsys, ["filter", "--no_progress", "--name", "normsiminf", "--metadata_dir",
                           str(tmp_path / "pool"), "--fraction", "0.5", "--target", str(tmp_path / "t.npy"),
                           "--save_path", str(out), *extra], out, message)
    assert not os.path.exists(cache_dir)


def test_normsim_d_iters_and_external_fraction_ranges(tmp_path, cache_dir, capsys):
    make_pool(str(tmp_path / "pool"), [10])
    out = tmp_path / "out.npy"
    common = ["filter", "--no_progress", "--metadata_dir", str(tmp_path / "pool"), "--save_path", str(out)]
    expect_exit_2(capsys, [*common, "--name", "normsim_d", "--fraction", "0.5", "--normsim_fraction", "0.2",
                           "--normsim_d_iters", "2000000"], out, "--normsim_d_iters 2000000: must be an integer")
    expect_exit_2(capsys, [*common, "--name", "clip_score", "--fraction", "0.5", "--external_scores", "x.parquet",
                           "--external_column", "s", "--external_fraction", "nan"], out,
                  "--external_fraction nan: must be in (0, 1]")


def test_compute_block_larger_than_the_shard_is_capped(tmp_path, cache_dir, capsys):
    """A --batch_size beyond the shard changes nothing but memory: same bytes as the automatic block."""
    make_pool(str(tmp_path / "pool"), [300])
    common = ["filter", "--no_progress", "--name", "negcliploss", "--metadata_dir", str(tmp_path / "pool"),
              "--fraction", "0.3", "--negcliploss_batch_size", "100"]
    assert main([*common, "--save_path", str(tmp_path / "auto.npy"), "--cache_dir", str(tmp_path / "c1")]) == 0
    assert main([*common, "--save_path", str(tmp_path / "big.npy"), "--batch_size", "1000000000",
                 "--cache_dir", str(tmp_path / "c2")]) == 0
    assert (tmp_path / "auto.npy").read_bytes() == (tmp_path / "big.npy").read_bytes()


def test_compute_block_that_cannot_fit_in_memory_is_refused(tmp_path, cache_dir, capsys, monkeypatch):
    make_pool(str(tmp_path / "pool"), [600])
    monkeypatch.setattr(metrics, "_physical_memory", lambda: 1 << 20)  # a 1 MiB machine
    out = tmp_path / "out.npy"
    expect_exit_2(capsys, ["filter", "--no_progress", "--name", "negcliploss", "--metadata_dir",
                           str(tmp_path / "pool"), "--fraction", "0.3", "--batch_size", "512",
                           "--save_path", str(out)], out, "--batch_size 512: a block of 512 x 600 logits needs",
                  "use a smaller --batch_size")


@pytest.mark.parametrize("argv,message", [
    (["--shards", "0"], "--shards 0: must be an integer in [1, 10000]"),
    (["--rows", "-5"], "--rows -5: must be an integer in [1, 10000000]"),
    (["--rows", "100000000000"], "--rows 100000000000: must be an integer"),
    (["--seed", "-1"], "--seed -1: must be an integer in [0, 2^32)"),
])
def test_toy_pool_numbers(tmp_path, capsys, argv, message):
    out = tmp_path / "toy"
    expect_exit_2(capsys, ["toy-pool", str(out), *argv], out, message)


@pytest.mark.parametrize("argv,message", [
    (["--batch_size", "0"], "--batch_size 0: must be an integer in [1, 2^20]"),
    (["--num_workers", "-2"], "--num_workers -2: must be an integer in [0, 4096]"),
])
def test_embed_numbers(tmp_path, capsys, argv, message):
    out = tmp_path / "e.npy"
    expect_exit_2(capsys, ["embed", "--model", "RN50", "--images", str(tmp_path), "--out", str(out), *argv], out,
                  message)


def test_demo_numbers(tmp_path, capsys):
    expect_exit_2(capsys, ["demo", str(tmp_path / "d"), "--normsim_fraction", "nan"], tmp_path / "d",
                  "--normsim_fraction nan: must be in (0, 1]")


def test_recipe_flags_go_through_the_same_ranges(tmp_path, cache_dir, capsys):
    make_pool(str(tmp_path / "pool"), [10])
    out = tmp_path / "out.npy"
    expect_exit_2(capsys, ["recipe", "negcliploss_30", "--metadata_dir", str(tmp_path / "pool"), "--save_path",
                           str(out), "--num_workers", "-1"], out, "--num_workers -1: must be an integer")
    expect_exit_2(capsys, ["recipe", "negcliploss_30", "--metadata_dir", str(tmp_path / "pool"), "--save_path",
                           str(out), "--set", "seed=-7"], out, "--seed -7: must be an integer in [0, 2^32)")
    assert not os.path.exists(cache_dir)


# ------------------------------------------------------------------------------------------ recipe --set

def _recipe(tmp_path, *extra):
    return ["recipe", "negcliploss_30", "--metadata_dir", str(tmp_path / "pool"), "--save_path",
            str(tmp_path / "out.npy"), "--no_progress", *extra]


def test_set_false_means_false(tmp_path, cache_dir, capsys):
    make_pool(str(tmp_path / "pool"), [40])
    assert main(_recipe(tmp_path, "--set", "streaming=false", "--set", "negcliploss_batch_size=16")) == 0
    assert "streaming selection" not in capsys.readouterr().out
    assert main(_recipe(tmp_path, "--set", "streaming=true", "--set", "negcliploss_batch_size=16")) == 0
    assert "streaming selection" in capsys.readouterr().out


@pytest.mark.parametrize("setting,message", [
    ("streaming=no", "--set streaming=no: expected true or false"),
    ("streaming=0", "--set streaming=0: expected true or false"),
    ("fraction=true", "--set fraction=true: expected a number"),
    ("fraction=abc", "--set fraction=abc: expected a number"),
    ("num_batches=2.5", "--set num_batches=2.5: expected an integer"),
    ("fractoin=0.2", "--set fractoin: unknown setting; known settings: "),
    ("save_path=x.npy", "--set save_path: unknown setting (give it as --save_path)"),
    ("=3", "--set =3: expected KEY=VALUE"),
])
def test_set_is_typed_by_the_schema(tmp_path, cache_dir, capsys, setting, message):
    make_pool(str(tmp_path / "pool"), [10])
    err = expect_exit_2(capsys, _recipe(tmp_path, "--set", setting), tmp_path / "out.npy", message)
    if "unknown setting;" in message:
        assert "fraction" in err.split("known settings:")[1] and "negcliploss_batch_size" in err
    assert not os.path.exists(cache_dir)


def test_set_none_unsets_an_optional_setting(tmp_path, cache_dir, capsys):
    """fraction=none with threshold=X switches the recipe to a threshold (what a user of --set expects)."""
    make_pool(str(tmp_path / "pool"), [40])
    assert main(_recipe(tmp_path, "--set", "fraction=none", "--set", "threshold=-1000",
                        "--set", "negcliploss_batch_size=16")) == 0
    assert len(np.load(tmp_path / "out.npy")) == 40  # every sample scores above -1000


@pytest.mark.parametrize("name", ["../baselines/negcliploss_30", "baselines/negcliploss_30", "..", "a/../b",
                                  "/etc/passwd", "neg\\cliploss"])
def test_recipe_name_with_a_path_is_refused(tmp_path, cache_dir, capsys, name):
    make_pool(str(tmp_path / "pool"), [10])
    out = tmp_path / "out.npy"
    expect_exit_2(capsys, ["recipe", name, "--metadata_dir", str(tmp_path / "pool"), "--save_path", str(out)], out,
                  "not a recipe name", "no path separator or '..'", "negcliploss_30")


def test_recipe_toml_with_wrong_types_is_refused(tmp_path, cache_dir, capsys):
    make_pool(str(tmp_path / "pool"), [10])
    recipe = tmp_path / "mine.toml"
    recipe.write_text('[filter]\nname = "negcliploss"\nfraction = 0.3\nstreaming = "false"\n')
    out = tmp_path / "out.npy"
    expect_exit_2(capsys, ["recipe", str(recipe), "--metadata_dir", str(tmp_path / "pool"), "--save_path", str(out)],
                  out, "--streaming 'false': expected true or false")
    recipe.write_text('[filter]\nname = "negcliploss"\nfraction = "0.3"\n')
    expect_exit_2(capsys, ["recipe", str(recipe), "--metadata_dir", str(tmp_path / "pool"), "--save_path", str(out)],
                  out, "--fraction 0.3: must be in (0, 1]")
    recipe.write_text('[filter]\nname = "negcliploss"\nfraction = 0.3\ntarget = 5\n')
    expect_exit_2(capsys, ["recipe", str(recipe), "--metadata_dir", str(tmp_path / "pool"), "--save_path", str(out)],
                  out, "--target 5: expected a string")


def test_every_filter_number_has_a_range():
    """No numeric flag of `filter` escapes the range table (a new flag must be added to it)."""
    from datacomp_plugins.config import number_ranges

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["filter"]
    numeric = {a.dest for a in sub._actions if a.type in (int, float)}
    assert numeric and numeric <= set(number_ranges()), numeric - set(number_ranges())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("temperature", ["1e-4", "1e4"])
def test_temperature_range_ends_give_finite_scores(tmp_path, cache_dir, capsys, temperature, precision):
    """The range is what the kernels handle: at both ends every sample gets a finite score."""
    make_pool(str(tmp_path / "pool"), [50])
    assert main(["filter", "--no_progress", "--name", "negcliploss", "--metadata_dir", str(tmp_path / "pool"),
                 "--fraction", "0.5", "--negcliploss_batch_size", "16", "--temperature", temperature,
                 "--precision", precision, "--save_path", str(tmp_path / "out.npy")]) == 0
    line = capsys.readouterr().out
    assert "kept 25 of 50" in line and "; 0 not scorable;" in line
