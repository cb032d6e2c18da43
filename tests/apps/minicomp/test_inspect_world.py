"""`scores`, `uids compare` and `inspect` on the quick mini DataComp world: real images in img2dataset's layout,
embeddings from trained teachers, and the world's truth labels."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from datacomp_plugins.cli import main
from datacomp_plugins.core.uids import load_uid_file, to_hex


def hexes(path) -> set[str]:
    return {x.decode() for x in to_hex(np.asarray(load_uid_file(str(path))))}


def truth_labels(out) -> dict[str, str]:
    labels: dict[str, str] = {}
    folder = out / "truth"
    for name in sorted(os.listdir(folder)):
        table = pq.read_table(folder / name, columns=["uid", "component"]).to_pydict()
        labels.update(zip(table["uid"], table["component"], strict=True))
    return labels


@pytest.fixture(scope="module")
def subsets(quick_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect-world")
    cache = str(root / "cache")
    for name in ("clip_score", "negcliploss"):
        assert main(["filter", "--name", name, "--metadata_dir", str(quick_world / "metadata"), "--fraction", "0.3",
                     "--save_path", str(root / f"{name}.npy"), "--cache_dir", cache, "--no_progress"]) == 0
    return root, cache


def test_scores_on_the_world_equal_its_metadata(quick_world, subsets, tmp_path):
    _, cache = subsets
    out = tmp_path / "scores.parquet"
    assert main(["scores", "--metadata_dir", str(quick_world / "metadata"), "--arch", "l14", "--out", str(out),
                 "--cache_dir", cache, "--no_progress"]) == 0
    table = pq.read_table(out).to_pydict()
    meta = {}
    for name in sorted(os.listdir(quick_world / "metadata")):
        if name.endswith(".parquet"):
            part = pq.read_table(quick_world / "metadata" / name,
                                 columns=["uid", "clip_l14_similarity_score"]).to_pydict()
            meta.update(zip(part["uid"], part["clip_l14_similarity_score"], strict=True))
    assert sorted(table["uid"]) == sorted(meta)
    ours = np.array(table["clip_score"], dtype=np.float64)
    theirs = np.array([meta[u] for u in table["uid"]], dtype=np.float64)
    np.testing.assert_allclose(ours, theirs, atol=2e-3)  # the column holds the float16 embeddings' dot product
    assert np.isfinite(np.array(table["negcliploss"], dtype=np.float64)).all()


def test_inspect_page_on_the_world(quick_world, subsets, tmp_path):
    from browser import page_counts

    root, cache = subsets
    page = tmp_path / "page.html"
    a, b = root / "clip_score.npy", root / "negcliploss.npy"
    assert main(["inspect", str(a), str(b), "--metadata_dir", str(quick_world / "metadata"), "--shards",
                 str(quick_world / "shards"), "--truth", str(quick_world / "truth"), "--out", str(page),
                 "--cache_dir", cache, "--per_group", "4", "--no_progress"]) == 0
    text = page.read_text()
    assert page.stat().st_size < 15e6 and "<img" in text
    counts = page_counts(text)
    kept_a, kept_b = hexes(a), hexes(b)
    assert counts[str(a)] == len(kept_a) and counts[str(b)] == len(kept_b)
    assert (counts["both"], counts["a_only"], counts["b_only"]) == (
        len(kept_a & kept_b), len(kept_a - kept_b), len(kept_b - kept_a))
    labels = truth_labels(quick_world)
    for component in sorted(set(labels.values())):
        members = [u for u, c in labels.items() if c == component]
        n = sum(u in kept_a for u in members)
        assert f'data-component="{component}">{100.0 * n / len(members):.1f}% ({n})</td>' in text


def test_inspect_page_on_the_world_in_chromium(quick_world, subsets, tmp_path):
    from browser import dump_dom, find_chromium, self_check

    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium found (install Debian's 'chromium' package, or set $CHROMIUM)")
    root, cache = subsets
    page = tmp_path / "page.html"
    assert main(["inspect", str(root / "negcliploss.npy"), "--metadata_dir", str(quick_world / "metadata"),
                 "--shards", str(quick_world / "shards"), "--truth", str(quick_world / "truth"), "--out", str(page),
                 "--cache_dir", cache, "--per_group", "4", "--no_progress"]) == 0
    dom, console = dump_dom(binary, page)
    check = self_check(dom)
    assert check["images"] > 0 and check["undecoded"] == [] and check["errors"] == []
    assert console == []
