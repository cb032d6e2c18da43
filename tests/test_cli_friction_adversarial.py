"""Friction a new user met: recipe sizes at the wrong scale, a clip_score count that differed from DataComp's
own baseline, --help without defaults, and a README silent on DATACOMP_DIR and the resharder's -o folder.
The DataComp checks run DataComp's own code from ``DATACOMP_DIR`` (skipped only when it is unset)."""

from __future__ import annotations

import argparse
import ast
import math
import os
import re
from pathlib import Path

import datacomp_checkout
import numpy as np
import pyarrow as pa
import pytest
from conftest import random_hex_uids, unit_rows, write_shard

from datacomp_plugins import recipes
from datacomp_plugins.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"
checkouts = datacomp_checkout.checkouts  # the module fixture: a clean and a patched copy of DATACOMP_DIR
# DataComp's pool sizes by scale (paper, Table 1): the samples seen in training equal the pool size
PAPER_POOL_SIZES = {"small": 12_800_000, "medium": 128_000_000, "large": 1_280_000_000, "xlarge": 12_800_000_000}


# ------------------------------------------------------------------------------------------- recipe sizes

def _scale_configs() -> dict:
    """SCALE_CONFIGS parsed from DataComp's scale_configs.py (a literal; nothing of DataComp is imported)."""
    source = (datacomp_checkout.datacomp_dir() / "scale_configs.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "SCALE_CONFIGS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("scale_configs.py defines no SCALE_CONFIGS")


def test_datacomp_scales_are_the_paper_pool_sizes():
    configs = _scale_configs()
    assert {k: configs[k]["train_num_samples"] for k in PAPER_POOL_SIZES} == PAPER_POOL_SIZES


@pytest.mark.parametrize("name", recipes.available())
def test_recipe_medium_sizes_are_of_the_128m_pool(name):
    pool = _scale_configs()["medium"]["train_num_samples"]
    recipe = recipes.load(name)
    settings = recipe.filter
    final = settings.get("normsim_fraction", settings["fraction"])
    if recipe.union:  # depends on another method's list; only a bound is known
        assert recipe.expected_samples == 0
    elif "given_uids" in settings:  # a share of DFN's medium selection (~15% of the pool)
        assert recipe.expected_samples == math.floor(0.15 * pool * final)
    else:  # clip_score follows DataComp's count: one more than floor(N*F) (no ties at this scale's estimate)
        assert recipe.expected_samples == math.floor(pool * final) + (settings["name"] == "clip_score")


# ------------------------------------------------------------------------------ clip_score versus DataComp

def _tied_pool(folder: Path) -> tuple[list[str], np.ndarray]:
    """Two shards of float64 CLIP scores with a three-way tie at the fraction's cut-off, and neighbours that
    differ from the cut-off by less than float32 can tell apart."""
    rng = np.random.default_rng(21)
    scores = rng.uniform(0.0, 0.2, 40)
    cut = 0.25
    scores[[3, 17, 25, 8, 33, 1, 12, 30, 22]] = rng.uniform(0.3, 0.4, 9)  # nine clear winners, both shards
    scores[31] = cut + 1e-12  # rank 10: above the cut-off by less than float32 resolves
    scores[[7, 28, 36]] = cut  # ranks 11-13: tied at the cut-off (floor(40 * 0.25) = 10)
    scores[14] = cut - 1e-12  # rank 14: equal to the cut-off in float32, below it in float64
    hexes = random_hex_uids(40, seed=22)
    for stem, rows in (("00000000", slice(0, 23)), ("00000001", slice(23, 40))):
        n = len(range(40)[rows])
        write_shard(str(folder), stem, hexes[rows], {"l14_img": unit_rows(rng, n, 768),
                                                     "l14_txt": unit_rows(rng, n, 768)},
                    extra_columns={"clip_l14_similarity_score": pa.array(scores[rows], type=pa.float64())})
    return hexes, scores


@pytest.mark.parametrize("selection", [["--fraction", "0.25"], ["--threshold", "0.25"], ["--fraction", "0.05"]])
def test_clip_score_writes_datacomps_uid_file_byte_for_byte(checkouts, tmp_path, cache_dir, selection):
    hexes, scores = _tied_pool(tmp_path / "pool")
    theirs = tmp_path / "datacomp" / "clip.npy"
    result = datacomp_checkout.baselines_py(checkouts["orig"], "--name", "clip_score", "--metadata_dir",
                                      str(tmp_path / "pool"), "--save_path", str(theirs), "--arch", "l14",
                                      *selection, "--num_workers", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    # an independent count: DataComp's rule, by hand, in float64
    if selection[0] == "--fraction":
        cutoff = np.sort(scores)[::-1][math.floor(40 * float(selection[1]))]
    else:
        cutoff = float(selection[1])
    want = sorted(divmod(int(h, 16), 2**64) for h, v in zip(hexes, scores, strict=True) if v >= cutoff)
    assert np.load(theirs).tolist() == want
    if selection == ["--fraction", "0.25"]:
        assert len(want) == 13  # ten above the cut-off and the three tied at it; not cut - 1e-12
    for extra in ([], ["--streaming"]):
        ours = tmp_path / f"ours{len(extra)}.npy"
        assert main(["filter", "--no_progress", "--name", "clip_score", "--metadata_dir", str(tmp_path / "pool"),
                     "--save_path", str(ours), "--arch", "l14", *selection, *extra]) == 0
        assert ours.read_bytes() == theirs.read_bytes(), extra


# -------------------------------------------------------------------------------------- --help and README

def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + (name,), sub
                yield from _parsers(sub, path + (name,))


def test_help_of_every_command_shows_defaults():
    checked = 0
    for path, parser in _parsers(build_parser()):
        formatter = parser.formatter_class(prog=" ".join(path))
        for action in parser._actions:
            if not action.option_strings or action.default is argparse.SUPPRESS:
                continue
            text = formatter._get_help_string(action) if action.help else ""
            assert "%(default)s" in text or "(default:" in text, (path, action.option_strings)
            checked += 1
    assert checked > 40
    rendered = " ".join(next(p for path, p in _parsers(build_parser()) if path == ("filter",)).format_help().split())
    assert "(default: 0.01)" in rendered and "(default: 32768)" in rendered and "(default: fp32)" in rendered


def test_readme_documents_datacomp_dir_and_the_resharder_output_folder():
    text = README.read_text()
    assert "DATACOMP_DIR" in text
    resharder = [line for line in text.splitlines() if "resharder.py" in line and " -o " in line]
    assert resharder
    for line in resharder:
        folder = re.search(r" -o (\S+)", line).group(1)
        assert f"mkdir -p {folder}" in text, line
    assert re.search(r"resharder needs its -o folder to exist", text)


def test_datacomp_dir_points_at_a_checkout():
    """CI sets DATACOMP_DIR; when it is set it must hold DataComp's scripts (not a stale path)."""
    if not os.environ.get("DATACOMP_DIR"):
        pytest.skip("DATACOMP_DIR is not set")
    root = Path(os.environ["DATACOMP_DIR"])
    assert (root / "baselines.py").is_file() and (root / "scale_configs.py").is_file()


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path, cache_dir):
    """``filter ... | head -1``: the uid file is complete; the unread summary is no traceback."""
    import subprocess
    import sys

    uids = random_hex_uids(20, seed=4)
    rng = np.random.default_rng(4)
    write_shard(str(tmp_path / "pool"), "00000000", uids,
                {"l14_img": unit_rows(rng, 20, 768), "l14_txt": unit_rows(rng, 20, 768)})
    out = tmp_path / "out.npy"
    reader, writer = os.pipe()
    os.close(reader)  # nobody will read the summary
    try:
        result = subprocess.run([sys.executable, "-m", "datacomp_plugins", "filter", "--name", "clip_score",
                                 "--fraction", "0.5", "--metadata_dir", str(tmp_path / "pool"), "--save_path",
                                 str(out), "--no_progress"], stdout=writer, stderr=subprocess.PIPE, text=True,
                                check=False)
    finally:
        os.close(writer)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 141
    assert len(np.load(out)) == 11  # DataComp's rule: floor(20 * 0.5) + 1 (no ties)


def test_readme_says_how_to_reach_the_command_and_what_make_test_downloads():
    text = README.read_text()
    quick = text[text.index("## Quick start") : text.index("## Filtering a DataComp pool")]
    assert quick.index("make demo") < quick.index("make test")  # the first two commands stay first
    first_use = text.index("datacomp-plugins filter")
    assert "source .venv/bin/activate" in text[:first_use] and ".venv/bin/datacomp-plugins" in text[:first_use]
    assert "torchvision" in quick and "5.5 GB" in quick and "CUDA" in quick

