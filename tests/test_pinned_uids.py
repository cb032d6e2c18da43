"""Pinned uid files: every baseline and variant on one fixed generated pool, byte for byte.

This guards a restructuring of the package, nothing else: the pins were written by the code as it stood
before the move, so a difference here means a move changed behaviour. Correctness itself is proven by the
float64 reference tests (test_adversarial_math.py, test_metrics.py, test_filter.py). After a deliberate
change of results, rewrite the pins with ``DATACOMP_PLUGINS_WRITE_PINS=1 pytest tests/test_pinned_uids.py``
and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datacomp_plugins.apps.toy import write_toy_pool
from datacomp_plugins.cli import main
from datacomp_plugins.core.uids import parse_hex, sorted_unique, to_hex

PINS = Path(__file__).parent / "data" / "pinned_uids.json"
WRITE = os.environ.get("DATACOMP_PLUGINS_WRITE_PINS") == "1"

QUALITY = ["--fraction", "0.3"]
NORMSIM = ["--fraction", "0.3", "--normsim_fraction", "0.2"]
# id -> filter flags ({pool}, {target}, {dfn}, {hype}, {scores} are filled in)
VARIANTS: dict[str, list[str]] = {
    "clip_score-fraction": ["--name", "clip_score", *QUALITY],
    "clip_score-threshold": ["--name", "clip_score", "--threshold", "0.05"],
    "clip_score-b32": ["--name", "clip_score", "--arch", "b32", *QUALITY],
    "negcliploss-fraction": ["--name", "negcliploss", *QUALITY],
    "negcliploss-2workers": ["--name", "negcliploss", *QUALITY, "--num_workers", "2"],
    "negcliploss-threshold": ["--name", "negcliploss", "--threshold", "-0.5"],
    "negcliploss-batches": ["--name", "negcliploss", *QUALITY, "--negcliploss_batch_size", "256",
                            "--num_batches", "3", "--seed", "7", "--temperature", "0.02"],
    "negcliploss-b32": ["--name", "negcliploss", "--arch", "b32", *QUALITY],
    "normsim2": ["--name", "normsim2", *NORMSIM, "--target", "{target}"],
    "normsiminf": ["--name", "normsiminf", *NORMSIM, "--target", "{target}"],
    "normsiminf-threshold": ["--name", "normsiminf", *QUALITY, "--normsim_threshold", "0.3",
                             "--target", "{target}"],
    "normsiminf-after-clip_score": ["--name", "normsiminf", *NORMSIM, "--quality_score", "clip_score",
                                    "--target", "{target}"],
    "normsiminf-alone": ["--name", "normsiminf", "--fraction", "1.0", "--normsim_fraction", "0.2",
                         "--target", "{target}"],
    "normsim2-alone": ["--name", "normsim2", "--fraction", "1.0", "--normsim_fraction", "0.2",
                       "--target", "{target}"],
    "normsim_d": ["--name", "normsim_d", *NORMSIM, "--normsim_d_iters", "20"],
    "restricted": ["--name", "negcliploss", *QUALITY, "--given_uids", "{dfn}"],
    "restricted-two": ["--name", "normsiminf", *NORMSIM, "--target", "{target}", "--given_uids", "{dfn}::{hype}"],
    "external": ["--name", "negcliploss", *QUALITY, "--external_scores", "{scores}", "--external_column",
                 "hype", "--external_fraction", "0.5"],
    "restricted-external": ["--name", "clip_score", *QUALITY, "--given_uids", "{dfn}", "--external_scores",
                            "{scores}", "--external_column", "hype", "--external_fraction", "0.5"],
    "streaming-negcliploss": ["--name", "negcliploss", *QUALITY, "--streaming"],
    "streaming-clip_score": ["--name", "clip_score", *QUALITY, "--streaming"],
    "streaming-threshold": ["--name", "negcliploss", "--threshold", "-0.5", "--streaming"],
}
RECIPES = ["clipscore_30", "negcliploss_30", "negcliploss_normsim2d", "negcliploss_normsiminf_target",
           "dfn_with_ours", "dfn_hype_ours"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> dict[str, str]:
    """A fixed toy pool (three shards, one short), two uid lists and an external score file."""
    out = tmp_path_factory.mktemp("pinned")
    write_toy_pool(str(out), shards=3, rows=900, seed=11)
    uids = sorted_unique(parse_hex(pq.read_table(out / "labels.parquet")["uid"]))
    rng = np.random.default_rng(5)
    np.save(out / "dfn.npy", np.sort(rng.choice(uids, int(len(uids) * 0.6), replace=False), order=["f0", "f1"]))
    np.save(out / "hype.npy", np.sort(rng.choice(uids, len(uids) // 2, replace=False), order=["f0", "f1"]))
    scored = rng.choice(uids, int(len(uids) * 0.9), replace=False)
    pq.write_table(pa.table({"uid": to_hex(scored).astype(str), "hype": rng.standard_normal(len(scored))}),
                   out / "hype.parquet")
    return {"pool": str(out / "metadata"), "target": str(out / "targets" / "target_l14.npy"),
            "dfn": str(out / "dfn.npy"), "hype": str(out / "hype.npy"), "scores": str(out / "hype.parquet")}


@pytest.fixture(scope="module")
def pins() -> dict[str, str]:
    return json.loads(PINS.read_text()) if PINS.exists() else {}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check(pins: dict[str, str], name: str, path: Path) -> None:
    if WRITE:
        current = json.loads(PINS.read_text()) if PINS.exists() else {}
        current[name] = _digest(path)
        PINS.write_text(json.dumps(dict(sorted(current.items())), indent=1) + "\n")
        return
    assert name in pins, f"no pin for {name}: write it with DATACOMP_PLUGINS_WRITE_PINS=1"
    assert _digest(path) == pins[name], f"{name}: the uid file changed"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_filter_variant_is_pinned(pool, pins, tmp_path, cache_dir, name):
    save = tmp_path / "out.npy"
    flags = [flag.format(**pool) for flag in VARIANTS[name]]
    assert main(["filter", *flags, "--metadata_dir", pool["pool"], "--save_path", str(save),
                 "--no_progress"]) == 0
    _check(pins, name, save)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_is_pinned(pool, pins, tmp_path, cache_dir, name):
    save = tmp_path / "out.npy"
    assert main(["recipe", name, "--metadata_dir", pool["pool"], "--save_path", str(save), "--no_progress",
                 "--target", pool["target"], "--dfn_uids", pool["dfn"], "--hype_uids", pool["hype"]]) == 0
    _check(pins, f"recipe-{name}", save)


def test_ray_engine_is_pinned(pool, pins, tmp_path, cache_dir):
    pytest.importorskip("ray", reason="the 'ray' extra is not installed (pip install 'datacomp-plugins[ray]')")
    save = tmp_path / "out.npy"
    assert main(["filter", "--name", "negcliploss", *QUALITY, "--metadata_dir", pool["pool"], "--save_path",
                 str(save), "--no_progress", "--engine", "ray", "--num_workers", "2"]) == 0
    _check(pins, "negcliploss-fraction", save)  # the same pin as the local engine's


def test_every_pin_is_used():
    """A pin nobody checks guards nothing: the pin file and the variants above agree."""
    if WRITE:
        pytest.skip("writing pins")
    expected = set(VARIANTS) | {f"recipe-{name}" for name in RECIPES}
    assert set(json.loads(PINS.read_text())) == expected
