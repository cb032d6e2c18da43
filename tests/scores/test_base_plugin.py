"""A score added from outside the package, the way another installed package would: one module and one
entry point, then ``filter``, a recipe and DataComp's patched ``baselines.py`` offer it unchanged."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import random_hex_uids, unit_rows, write_shard

from datacomp_plugins.core.uids import UID_DTYPE, parse_hex, sorted_unique

PLUGIN = textwrap.dedent('''
    """A third-party quality score: longer captions score higher, scaled by a setting of its own."""
    from dataclasses import dataclass, field

    import numpy as np

    from datacomp_plugins.core.ranges import Range
    from datacomp_plugins.scores.base import Score, ScoreSpec, setting


    @dataclass(frozen=True)
    class Params:
        caption_weight: float = setting(1.0, "caption_length: multiplies the length", Range(float, 0.0, 10.0))


    @dataclass(frozen=True)
    class CaptionLength(Score):
        weight: float = 1.0
        name: str = field(init=False, default="caption_length")

        @property
        def parquet_columns(self):
            return ("text",)

        def compute(self, shard, columns, embeddings):
            return np.array([len(t) for t in columns["text"]], dtype=np.float32) * self.weight


    class CaptionLengthSpec(ScoreSpec):
        def shard_score(self, params, run):
            return CaptionLength(weight=params.caption_weight)


    SPEC = CaptionLengthSpec("caption_length", "quality", "caption length (an example plugin)", params=Params)
''')


@pytest.fixture
def plugin(tmp_path, monkeypatch) -> Path:
    """The module and an installed distribution's entry point, importable by this process and children."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "caption_plugin.py").write_text(PLUGIN)
    info = site / "caption_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: caption-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[datacomp_plugins.scores]\ncaption_length = caption_plugin:SPEC\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return site


def _pool(folder: Path, n: int = 40) -> list[str]:
    """One shard whose captions have lengths 1..n in a shuffled order."""
    rng = np.random.default_rng(0)
    uids = random_hex_uids(n, seed=3)
    lengths = rng.permutation(np.arange(1, n + 1))
    img = unit_rows(rng, n, 768)
    write_shard(str(folder), "00000000", uids, {"l14_img": img.astype(np.float16), "l14_txt": img.astype(np.float16)},
                extra_columns={"text": ["x" * int(k) for k in lengths]})
    return [u for _, u in sorted(zip(lengths, uids, strict=True), reverse=True)]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "datacomp_plugins", *args], capture_output=True, text=True,
                          check=False)


def _expected(by_length: list[str], k: int) -> np.ndarray:
    return sorted_unique(parse_hex(by_length[:k]))


@pytest.mark.slow  # installs a package, then runs the command in subprocesses
def test_filter_and_recipe_run_a_score_from_another_package(plugin, tmp_path, cache_dir):
    by_length = _pool(tmp_path / "pool")
    out = tmp_path / "out.npy"
    result = _cli("filter", "--name", "caption_length", "--metadata_dir", str(tmp_path / "pool"), "--fraction",
                  "0.25", "--caption_weight", "2.0", "--save_path", str(out), "--no_progress")
    assert result.returncode == 0, result.stderr
    kept = np.load(out)
    assert kept.dtype == UID_DTYPE and np.array_equal(kept, _expected(by_length, 10))

    help_text = _cli("filter", "--help").stdout
    assert "--caption_weight" in help_text and "caption_length" in help_text

    bad = _cli("filter", "--name", "caption_length", "--metadata_dir", str(tmp_path / "pool"), "--fraction", "0.5",
               "--caption_weight", "11", "--save_path", str(tmp_path / "bad.npy"))
    assert bad.returncode == 2 and "--caption_weight 11.0: must be in [0, 10]" in bad.stderr

    recipe = tmp_path / "longest.toml"
    recipe.write_text('title = "longest captions"\n[filter]\nname = "caption_length"\nfraction = 0.5\n'
                      'caption_weight = 3.0\n')
    result = _cli("recipe", str(recipe), "--metadata_dir", str(tmp_path / "pool"), "--save_path",
                  str(tmp_path / "recipe.npy"), "--no_progress")
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.load(tmp_path / "recipe.npy"), _expected(by_length, 20))

    # the ``scores`` table offers it too, with its own setting
    table_path = tmp_path / "scores.parquet"
    result = _cli("scores", "--metadata_dir", str(tmp_path / "pool"), "--scores", "caption_length,clip_score",
                  "--caption_weight", "0.5", "--out", str(table_path), "--no_progress")
    assert result.returncode == 0, result.stderr
    table = pq.read_table(table_path).to_pydict()
    lengths = dict(zip(table["uid"], table["caption_length"], strict=True))
    assert sorted(lengths.values()) == [0.5 * k for k in range(1, 41)]

    # as a quality stage before NormSim, named by --quality_score
    target = tmp_path / "target.npy"
    np.save(target, unit_rows(np.random.default_rng(1), 8, 768))
    result = _cli("filter", "--name", "normsiminf", "--quality_score", "caption_length", "--metadata_dir",
                  str(tmp_path / "pool"), "--fraction", "0.5", "--normsim_fraction", "0.25", "--target", str(target),
                  "--save_path", str(tmp_path / "two.npy"), "--no_progress")
    assert result.returncode == 0, result.stderr
    assert set(np.load(tmp_path / "two.npy").tolist()) <= set(_expected(by_length, 20).tolist())


def test_a_broken_plugin_leaves_the_built_in_scores(tmp_path, monkeypatch, cache_dir):
    site = tmp_path / "site"
    info = site / "broken-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[datacomp_plugins.scores]\nbroken = no_such_module:SPEC\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]))
    _pool(tmp_path / "pool")
    result = _cli("filter", "--name", "clip_score", "--metadata_dir", str(tmp_path / "pool"), "--fraction", "0.5",
                  "--save_path", str(tmp_path / "out.npy"), "--no_progress")
    assert result.returncode == 0, result.stderr
    assert "score 'broken' (no_such_module:SPEC) not offered" in result.stderr


def test_a_plugin_whose_setting_collides_is_dropped(tmp_path, monkeypatch, cache_dir):
    """A plugin may not redefine a run setting (--fraction) or another score's (--seed, differently)."""
    site = tmp_path / "site"
    site.mkdir()
    for name, setting_line in (("grabs_fraction", "fraction: float = setting(0.5, 'mine')"),
                               ("grabs_seed", "seed: str = setting('x', 'mine')")):
        (site / f"{name}.py").write_text(PLUGIN.replace("caption_length", name).replace(
            f'caption_weight: float = setting(1.0, "{name}: multiplies the length", Range(float, 0.0, 10.0))'
            , setting_line).replace("params.caption_weight", "1.0"))
    info = site / "collide-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: collide\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[datacomp_plugins.scores]\ngrabs_fraction = grabs_fraction:SPEC\n"
                                           "grabs_seed = grabs_seed:SPEC\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]))
    _pool(tmp_path / "pool")
    result = _cli("filter", "--name", "clip_score", "--metadata_dir", str(tmp_path / "pool"), "--fraction", "0.5",
                  "--save_path", str(tmp_path / "out.npy"), "--no_progress")
    assert result.returncode == 0, result.stderr
    assert "score 'grabs_fraction' (grabs_fraction:SPEC) not offered: its setting(s) ['fraction'] collide" \
        in result.stderr
    assert "score 'grabs_seed' (grabs_seed:SPEC) not offered: its setting(s) ['seed'] collide" in result.stderr
    assert "invalid choice: 'grabs_seed'" in _cli("filter", "--name", "grabs_seed").stderr


def _datacomp_dir() -> Path:
    folder = os.environ.get("DATACOMP_DIR")
    if not folder or not (Path(folder) / "baselines.py").is_file():
        pytest.skip("needs DataComp's source in DATACOMP_DIR (CI sets it to ../shared/datacomp)")
    return Path(folder)


@pytest.mark.slow  # runs DataComp's baselines.py
def test_datacomp_baselines_py_offers_the_plugin_score(plugin, tmp_path, cache_dir):
    from datacomp_plugins.cli import main

    checkout = tmp_path / "datacomp"
    shutil.copytree(_datacomp_dir(), checkout, ignore=shutil.ignore_patterns(".git"))
    assert main(["patch-datacomp", str(checkout)]) == 0
    by_length = _pool(tmp_path / "pool")
    out = tmp_path / "dc.npy"
    result = subprocess.run([sys.executable, "baselines.py", "--name", "caption_length", "--metadata_dir",
                             str(tmp_path / "pool"), "--save_path", str(out), "--fraction", "0.25",
                             "--caption_weight", "0.5"], cwd=checkout, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.load(out), _expected(by_length, 10))
    table = pq.read_table(tmp_path / "pool" / "00000000.parquet")
    assert isinstance(table, pa.Table) and table.num_rows == 40
