"""A relevance score added from outside the package, the way another installed package would: one module and one
entry point. ``filter`` (with the generic --relevance_* flags and their --normsim_* aliases), a recipe, the
``scores`` table and DataComp's patched ``baselines.py`` then run it; the expected uid sets are worked out here
by brute force from the captions and the CLIP column."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import random_hex_uids, unit_rows, write_shard

from datacomp_plugins.core.uids import UID_DTYPE, parse_hex, sorted_unique

# Counts how often the words of a file (its own setting, a file input) occur in each caption.
PLUGIN = textwrap.dedent('''
    """A third-party relevance score: occurrences of a word list's words in the caption."""
    from dataclasses import dataclass, field

    import numpy as np

    from datacomp_plugins.core.errors import PluginError
    from datacomp_plugins.scores.base import Score, ScoreSpec, setting


    @dataclass(frozen=True)
    class Params:
        keywords: str | None = setting(None, "keyword_hits: a text file of words, one per line")


    @dataclass(frozen=True)
    class KeywordHits(Score):
        words: tuple = ()
        name: str = field(init=False, default="keyword_hits")

        @property
        def parquet_columns(self):
            return ("text",)

        def compute(self, shard, columns, embeddings):
            return np.array([sum(t.split().count(w) for w in self.words) for t in columns["text"]],
                            dtype=np.float32)


    class KeywordHitsSpec(ScoreSpec):
        def check(self, params):
            if params.keywords is None:
                raise PluginError("--name keyword_hits: needs --keywords (a text file of words)")

        def shard_score(self, params, run):
            with open(params.keywords, encoding="utf-8") as handle:
                return KeywordHits(words=tuple(sorted(set(handle.read().split()))))


    SPEC = KeywordHitsSpec("keyword_hits", "relevance", "keyword occurrences in the caption", Params,
                           inputs=("keywords",))
''')
N = 40


@pytest.fixture
def plugin(tmp_path, monkeypatch) -> Path:
    """The module and an installed distribution's entry point, importable by this process's children."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "keyword_plugin.py").write_text(PLUGIN)
    info = site / "keyword_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: keyword-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[datacomp_plugins.scores]\nkeyword_hits = keyword_plugin:SPEC\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return site


def _pool(folder: Path, words: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """One shard: caption k holds 'cat' r_k times (r a permutation of 1..N) plus words not in the list."""
    rng = np.random.default_rng(5)
    uids = random_hex_uids(N, seed=11)
    hits = rng.permutation(np.arange(1, N + 1))
    img, txt = unit_rows(rng, N, 768), unit_rows(rng, N, 768)
    captions = [" ".join(["cat"] * int(k) + ["dog", "catalog"]) for k in hits]
    write_shard(str(folder), "00000000", uids, {"l14_img": img.astype(np.float16), "l14_txt": txt.astype(np.float16)},
                extra_columns={"text": captions})
    clip = pq.read_table(folder / "00000000.parquet").column("clip_l14_similarity_score").to_numpy()
    words.write_text("cat\nbird\n")
    return uids, hits.astype(np.float64), clip.astype(np.float32)


def _expected(uids: list[str], hits: np.ndarray, clip: np.ndarray, fraction: float,
              relevance: float | None = None, threshold: float | None = None) -> np.ndarray:
    """By brute force: the top floor(N*F) by CLIP score, then the top floor(N*F2) (or hits >= T) among them."""
    survivors = np.argsort(-clip, kind="stable")[: int(N * fraction)]
    if threshold is not None:
        kept = [i for i in survivors if hits[i] >= threshold]
    else:
        kept = sorted(survivors, key=lambda i: -hits[i])[: int(N * relevance)]
    return sorted_unique(parse_hex([uids[i] for i in kept]))


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "datacomp_plugins", *args], capture_output=True, text=True,
                          check=False, cwd=cwd, timeout=300)


def test_filter_recipe_and_scores_run_a_relevance_score_from_another_package(plugin, tmp_path, cache_dir):
    words = tmp_path / "words.txt"
    uids, hits, clip = _pool(tmp_path / "pool", words)
    pool = str(tmp_path / "pool")
    base = ["filter", "--name", "keyword_hits", "--quality_score", "clip_score", "--metadata_dir", pool,
            "--fraction", "0.5", "--keywords", str(words), "--no_progress"]

    result = _cli(*base, "--relevance_fraction", "0.25", "--save_path", str(tmp_path / "a.npy"))
    assert result.returncode == 0, result.stderr
    kept = np.load(tmp_path / "a.npy")
    assert kept.dtype == UID_DTYPE and len(kept) == 10
    assert np.array_equal(kept, _expected(uids, hits, clip, 0.5, relevance=0.25))

    # the older flag name is an alias: the same bytes
    result = _cli(*base, "--normsim_fraction", "0.25", "--save_path", str(tmp_path / "alias.npy"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "alias.npy").read_bytes() == (tmp_path / "a.npy").read_bytes()

    # a threshold on the relevance score instead of a fraction
    result = _cli(*base, "--relevance_threshold", "30", "--save_path", str(tmp_path / "t.npy"))
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.load(tmp_path / "t.npy"), _expected(uids, hits, clip, 0.5, threshold=30))

    # its own check, and its declared file input is never an output
    missing = _cli(*[a for a in base if a not in ("--keywords", str(words))], "--relevance_fraction", "0.25",
                   "--save_path", str(tmp_path / "m.npy"))
    assert missing.returncode == 2 and "needs --keywords" in missing.stderr
    clobber = _cli(*base, "--relevance_fraction", "0.25", "--save_path", str(words))
    assert clobber.returncode == 2 and f"is the --keywords input {words}" in clobber.stderr
    assert words.read_text() == "cat\nbird\n"

    help_text = _cli("filter", "--help").stdout
    assert "--keywords" in help_text and "keyword_hits" in help_text and "--relevance_fraction" in help_text

    # a recipe, with the older key name as existing recipes have it
    recipe = tmp_path / "hits.toml"
    recipe.write_text(f'title = "cats"\n[filter]\nname = "keyword_hits"\nquality_score = "clip_score"\n'
                      f'fraction = 0.5\nnormsim_fraction = 0.25\nkeywords = "{words}"\n')
    result = _cli("recipe", str(recipe), "--metadata_dir", pool, "--save_path", str(tmp_path / "r.npy"),
                  "--no_progress")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "r.npy").read_bytes() == (tmp_path / "a.npy").read_bytes()
    # an override under the new name replaces the recipe's value under the older one
    result = _cli("recipe", str(recipe), "--metadata_dir", pool, "--save_path", str(tmp_path / "r2.npy"),
                  "--set", "relevance_fraction=0.125", "--no_progress")
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.load(tmp_path / "r2.npy"), _expected(uids, hits, clip, 0.5, relevance=0.125))

    # the scores table: one column of per-sample values, exactly the hit counts
    result = _cli("scores", "--metadata_dir", pool, "--scores", "keyword_hits", "--keywords", str(words), "--out",
                  str(tmp_path / "s.parquet"), "--no_progress")
    assert result.returncode == 0, result.stderr
    table = pq.read_table(tmp_path / "s.parquet").to_pydict()
    assert dict(zip(table["uid"], table["keyword_hits"], strict=True)) == dict(zip(uids, hits.tolist(), strict=True))


def _datacomp_dir() -> Path:
    folder = os.environ.get("DATACOMP_DIR")
    if not folder or not (Path(folder) / "baselines.py").is_file():
        pytest.skip("needs DataComp's source in DATACOMP_DIR (CI sets it to ../shared/datacomp)")
    return Path(folder)


def test_datacomp_baselines_py_runs_the_relevance_plugin(plugin, tmp_path, cache_dir):
    from datacomp_plugins.cli import main

    checkout = tmp_path / "datacomp"
    shutil.copytree(_datacomp_dir(), checkout, ignore=shutil.ignore_patterns(".git"))
    assert main(["patch-datacomp", str(checkout)]) == 0
    words = tmp_path / "words.txt"
    uids, hits, clip = _pool(tmp_path / "pool", words)
    for flag in ("--relevance_fraction", "--normsim_fraction"):
        out = tmp_path / f"dc{flag}.npy"
        result = subprocess.run([sys.executable, "baselines.py", "--name", "keyword_hits", "--quality_score",
                                 "clip_score", "--metadata_dir", str(tmp_path / "pool"), "--save_path", str(out),
                                 "--fraction", "0.5", flag, "0.25", "--keywords", str(words)],
                                cwd=checkout, capture_output=True, text=True, check=False, timeout=300)
        assert result.returncode == 0, result.stderr
        assert np.array_equal(np.load(out), _expected(uids, hits, clip, 0.5, relevance=0.25))
