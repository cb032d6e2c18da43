"""scores, provenance sidecars, uids compare and the inspect page, against brute-force computations."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from browser import page_counts
from imagepool import make_image_pool, reshard

from datacomp_plugins.cli import main
from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.uids import load_uid_file, parse_hex, save_uid_file, to_hex

TAU = 0.01


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def hexes(path) -> set[str]:
    return {x.decode() for x in to_hex(np.asarray(load_uid_file(str(path))))}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An image pool with two uid files made by `filter` (clip_score and negcliploss, top 40%)."""
    root = tmp_path_factory.mktemp("world")
    pool = make_image_pool(str(root))
    cache = str(root / "cache")
    for name in ("clip_score", "negcliploss"):
        assert main(["filter", "--name", name, "--metadata_dir", pool.metadata, "--fraction", "0.4",
                     "--save_path", str(root / f"{name}.npy"), "--cache_dir", cache, "--no_progress"]) == 0
    return pool, root, cache


def brute_scores(pool) -> dict[str, dict[str, float]]:
    """clip_score and negCLIPLoss (one batch = the whole shard) per uid, in float64 from the stored arrays."""
    out = {}
    for name in sorted(os.listdir(pool.metadata)):
        if not name.endswith(".npz"):
            continue
        arrays = np.load(os.path.join(pool.metadata, name))
        f, g = arrays["l14_img"].astype(np.float64), arrays["l14_txt"].astype(np.float64)
        uids = pq.read_table(os.path.join(pool.metadata, name.replace(".npz", ".parquet"))).column("uid").to_pylist()
        logits = f @ g.T / TAU
        rows = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        cols = np.log(np.exp(logits - logits.max(0, keepdims=True)).sum(0)) + logits.max(0)
        diag = (f * g).sum(1)
        ncl = diag - TAU / 2 * (rows + cols)
        for i, uid in enumerate(uids):
            out[uid] = {"clip_score": float((f[i].astype(np.float32) * g[i].astype(np.float32)).sum()),
                        "negcliploss": float(ncl[i])}
    return out


# --- scores -------------------------------------------------------------------------------------------------

def test_scores_table_matches_brute_force(world, capsys, tmp_path):
    pool, root, cache = world
    out = tmp_path / "scores.parquet"
    code, stdout, _ = run_cli(["scores", "--metadata_dir", pool.metadata, "--out", out, "--cache_dir", cache,
                               "--no_progress"], capsys)
    assert code == 0, stdout
    table = pq.read_table(out)
    assert table.column_names == ["uid", "clip_score", "negcliploss"]
    assert table.column("uid").to_pylist() == pool.uids  # one row per pool row, in shard order
    expected = brute_scores(pool)
    for uid, clip, ncl in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True):
        assert clip == pytest.approx(expected[uid]["clip_score"], abs=1e-6)
        assert ncl == pytest.approx(expected[uid]["negcliploss"], abs=2e-4)
    assert f"{len(pool.uids):,} rows x 2 scores" in stdout


def test_scores_with_a_target_match_brute_force_normsim(world, capsys, tmp_path):
    pool, _, cache = world
    rng = np.random.default_rng(5)
    target = rng.standard_normal((6, 768))
    np.save(tmp_path / "target.npy", target.astype(np.float32))
    out = tmp_path / "normsim.parquet"
    code, _, err = run_cli(["scores", "--metadata_dir", pool.metadata, "--out", out, "--cache_dir", cache,
                            "--target", tmp_path / "target.npy", "--scores", "normsim2,normsiminf", "--no_progress"],
                           capsys)
    assert code == 0, err
    table = pq.read_table(out)
    h = target.astype(np.float32).astype(np.float64)
    h /= np.linalg.norm(h, axis=1, keepdims=True)
    f = np.concatenate([np.load(os.path.join(pool.metadata, n))["l14_img"] for n in sorted(os.listdir(pool.metadata))
                        if n.endswith(".npz")]).astype(np.float64)
    sims = f @ h.T
    np.testing.assert_allclose(table.column("normsim2").to_numpy(), np.sqrt((sims**2).sum(1)), atol=1e-4)
    np.testing.assert_allclose(table.column("normsiminf").to_numpy(), sims.max(1), atol=1e-4)


def test_streaming_filter_writes_a_sidecar(world, tmp_path):
    pool, _, cache = world
    out = tmp_path / "s.npy"
    # negcliploss keeps exactly floor(N*F); clip_score follows DataComp's rule (one more, plus ties)
    assert main(["filter", "--name", "negcliploss", "--metadata_dir", pool.metadata, "--fraction", "0.4",
                 "--save_path", str(out), "--cache_dir", cache, "--streaming", "--no_progress"]) == 0
    sidecar = json.loads((tmp_path / "s.npy.json").read_text())
    assert sidecar["uid_count"] == sidecar["counts"]["kept"] == len(load_uid_file(str(out))) == int(0.4 * 73)
    assert sidecar["parameters"]["streaming"] is True


def test_scores_refuses_unknown_score_and_normsim_without_target(world, capsys, tmp_path):
    pool, _, cache = world
    for flags, needle in ((["--scores", "clip_score,bogus"], "unknown score(s) ['bogus']"),
                          (["--scores", "normsim2"], "need --target")):
        code, _, err = run_cli(["scores", "--metadata_dir", pool.metadata, "--out", tmp_path / "s.parquet",
                                "--cache_dir", cache, *flags], capsys)
        assert code == 2 and needle in err
        assert not (tmp_path / "s.parquet").exists()


# --- provenance -----------------------------------------------------------------------------------------------

def test_filter_sidecar_records_the_run(world, capsys):
    pool, root, cache = world
    path = root / "clip_score.npy"
    sidecar = json.loads((root / "clip_score.npy.json").read_text())
    assert sidecar["uid_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sidecar["uid_count"] == len(load_uid_file(str(path)))
    assert sidecar["parameters"]["fraction"] == 0.4 and sidecar["parameters"]["num_batches"] == 10
    assert sidecar["precision"] == "fp32" and sidecar["engine"] == "local"
    assert [s["stem"] for s in sidecar["pool"]["shards"]] == ["00000000", "00000001"]
    for shard in sidecar["pool"]["shards"]:
        assert shard["parquet_bytes"] == os.path.getsize(os.path.join(pool.metadata, shard["stem"] + ".parquet"))
        assert shard["npz_bytes"] == os.path.getsize(os.path.join(pool.metadata, shard["stem"] + ".npz"))
    # the cut-off: DataComp's rule keeps the k+1 best (k = floor(0.4 n); no ties here), from an independent sort
    values = sorted((v["clip_score"] for v in brute_scores(pool).values()), reverse=True)
    k = int(0.4 * len(values)) + 1
    stage = sidecar["stages"][0]
    assert stage["score"] == "clip_score" and stage["kept"] == k and stage["in"] == len(values)
    assert stage["lowest_kept"] == pytest.approx(values[k - 1], abs=1e-6)
    assert stage["highest_dropped"] == pytest.approx(values[k], abs=1e-6)

    code, stdout, _ = run_cli(["uids", "info", path], capsys)
    assert code == 0
    assert "(matches the file)" in stdout and "stage quality (top fraction 0.4" in stdout


def test_set_operation_sidecar_and_stale_detection(world, capsys, tmp_path):
    _, root, _ = world
    a, b = root / "clip_score.npy", root / "negcliploss.npy"
    out = tmp_path / "both.npy"
    code, _, _ = run_cli(["uids", "intersect", a, b, "-o", out], capsys)
    assert code == 0
    sidecar = json.loads((tmp_path / "both.npy.json").read_text())
    assert sidecar["operation"] == "uids intersect"
    assert [i["sha256"] for i in sidecar["inputs"]] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b)]
    assert all(i["made_by"] == "filter" and i["sidecar_matches"] for i in sidecar["inputs"])
    assert sidecar["uid_count"] == len(hexes(a) & hexes(b))
    # a file changed after its sidecar was written is reported, not trusted
    save_uid_file(str(out), parse_hex(sorted(hexes(a)))[:3])
    code, stdout, _ = run_cli(["uids", "info", out], capsys)
    assert code == 0 and "DOES NOT match the file" in stdout


def test_malformed_sidecar_is_an_error(tmp_path, capsys):
    path = tmp_path / "x.npy"
    save_uid_file(str(path), parse_hex(["ab".rjust(32, "0"), "cd".rjust(32, "0")]))
    (tmp_path / "x.npy.json").write_text("{not json")
    code, _, err = run_cli(["uids", "info", path], capsys)
    assert code == 2 and "x.npy.json: unreadable provenance sidecar" in err


# --- compare --------------------------------------------------------------------------------------------------

def test_compare_matches_sets_and_quantiles(world, capsys):
    pool, root, cache = world
    a, b = root / "clip_score.npy", root / "negcliploss.npy"
    code, stdout, _ = run_cli(["uids", "compare", a, b, "--metadata_dir", pool.metadata, "--cache_dir", cache,
                               "--json", "--no_progress"], capsys)
    assert code == 0
    result = json.loads(stdout)
    sa, sb = hexes(a), hexes(b)
    pair = result["pairs"][0]
    assert (pair["intersection"], pair["union"], pair["a_only"], pair["b_only"]) == (
        len(sa & sb), len(sa | sb), len(sa - sb), len(sb - sa))
    assert pair["jaccard"] == pytest.approx(len(sa & sb) / len(sa | sb))
    brute = brute_scores(pool)
    for side, members in (("a_only_scores", sa - sb), ("b_only_scores", sb - sa)):
        for name in ("clip_score", "negcliploss"):
            values = np.array([brute[u][name] for u in members])
            stats = pair[side][name]
            assert stats["count"] == len(members)
            if len(values):
                assert stats["q50"] == pytest.approx(float(np.median(values)), abs=2e-4)
                assert stats["q0"] == pytest.approx(values.min(), abs=2e-4)
                assert stats["q100"] == pytest.approx(values.max(), abs=2e-4)


# --- the page -------------------------------------------------------------------------------------------------

def cards(page: str) -> list[dict]:
    """Every sample card of the page: uid, whether it has an image, the image bytes, its grid heading."""
    out = []
    heading = ""
    for match in re.finditer(r'<h3>(.*?)</h3>|<figure class="card">(.*?)</figure>', page, re.S):
        if match.group(1) is not None:
            heading = match.group(1)
            continue
        body = match.group(2)
        image = re.search(r'src="data:image/(?:jpeg|png);base64,([^"]+)"', body)
        out.append({"uid": re.search(r"<code>([0-9a-f]{32})</code>", body).group(1), "heading": heading,
                    "image": base64.b64decode(image.group(1)) if image else None,
                    "caption": re.search(r'<span class="caption">(.*?)</span>', body, re.S).group(1)})
    return out


@pytest.fixture(scope="module")
def page(world, tmp_path_factory):
    pool, root, cache = world
    out = tmp_path_factory.mktemp("page") / "report.html"
    assert main(["inspect", str(root / "clip_score.npy"), str(root / "negcliploss.npy"), "--metadata_dir",
                 pool.metadata, "--shards", pool.shards, "--truth", pool.truth, "--out", str(out),
                 "--cache_dir", cache, "--per_group", "5", "--no_progress"]) == 0
    return out


def test_page_is_self_contained_and_bounded(page):
    text = page.read_text()
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text
    assert "src=\"http" not in text and "<link" not in text
    assert page.stat().st_size < 15e6


def test_page_counts_equal_uid_file_sizes(world, page):
    _, root, _ = world
    counts = page_counts(page.read_text())
    a, b = hexes(root / "clip_score.npy"), hexes(root / "negcliploss.npy")
    assert counts[str(root / "clip_score.npy")] == len(a)
    assert counts[str(root / "negcliploss.npy")] == len(b)
    assert (counts["both"], counts["a_only"], counts["b_only"]) == (len(a & b), len(a - b), len(b - a))


def test_page_thumbnails_are_the_samples_images(world, page):
    from PIL import Image

    pool, _, _ = world
    originals = {}
    for name in sorted(os.listdir(pool.shards)):
        if name.endswith(".tar"):
            import tarfile

            with tarfile.open(os.path.join(pool.shards, name)) as archive:
                members = {m.name: archive.extractfile(m).read() for m in archive if m.isfile()}
            for member, data in members.items():
                if member.endswith(".json"):
                    originals[json.loads(data)["uid"]] = members[member.replace(".json", ".jpg")]
    shown = cards(page.read_text())
    assert shown
    caption_of = dict(zip(pool.uids, pool.captions, strict=True))
    for card in shown:
        assert card["caption"] == caption_of[card["uid"]]
        if card["uid"] in pool.missing:
            assert card["image"] is None
            continue
        assert card["image"] is not None
        thumb = np.asarray(Image.open(io.BytesIO(card["image"])).convert("RGB"), dtype=np.float64)
        original = Image.open(io.BytesIO(originals[card["uid"]])).convert("RGB")
        # small images are scaled up by a whole factor, pixel for pixel (nearest, lossless), to <= 128 px
        factor = max(1, 128 // max(original.size))
        assert thumb.shape[:2] == (original.height * factor, original.width * factor)
        pixels = np.asarray(original, dtype=np.float64)
        assert np.array_equal(thumb, np.repeat(np.repeat(pixels, factor, 0), factor, 1))


def test_page_grids_are_the_right_samples(world, page):
    pool, root, _ = world
    brute = brute_scores(pool)
    a, b = hexes(root / "clip_score.npy"), hexes(root / "negcliploss.npy")
    by_score = sorted(pool.uids, key=lambda u: brute[u]["clip_score"])
    kept_low = [u for u in by_score if u in a][:5]
    dropped_high = [u for u in reversed(by_score) if u not in a][:5]
    grids: dict[str, list[str]] = {}
    for card in cards(page.read_text()):
        grids.setdefault(card["heading"], []).append(card["uid"])
    first = next(h for h in grids if h.startswith("Just above"))  # section A comes first
    below = next(h for h in grids if h.startswith("Just below"))
    assert grids[first] == kept_low
    assert grids[below] == dropped_high
    assert grids["Highest clip_score in the pool"] == list(reversed(by_score))[:5]
    only_a = next(h for h in grids if h.startswith("Only A"))
    only_b = next(h for h in grids if h.startswith("Only B"))
    assert set(grids[only_a]) <= a - b and set(grids[only_b]) <= b - a
    assert len(grids[only_a]) == min(10, len(a - b))


def test_page_truth_shares(world, page):
    pool, root, _ = world
    text = page.read_text()
    for path in (root / "clip_score.npy", root / "negcliploss.npy"):
        kept = hexes(path)
        for component in set(pool.components):
            members = [u for u, c in zip(pool.uids, pool.components, strict=True) if c == component]
            n = sum(u in kept for u in members)
            assert f'data-component="{component}">{100.0 * n / len(members):.1f}% ({n})</td>' in text


def test_page_is_seeded(world, page, tmp_path):
    pool, root, cache = world
    again = tmp_path / "again.html"
    assert main(["inspect", str(root / "clip_score.npy"), str(root / "negcliploss.npy"), "--metadata_dir",
                 pool.metadata, "--shards", pool.shards, "--truth", pool.truth, "--out", str(again),
                 "--cache_dir", cache, "--per_group", "5", "--no_progress"]) == 0
    assert again.read_bytes() == page.read_bytes()


def _svgs(text: str) -> list[tuple[str, list[tuple[int, int]], list[int]]]:
    """Every histogram: its label, (pool, kept) per bin and the y-axis tick labels."""
    out = []
    for match in re.finditer(r'<svg class="hist[^"]*"[^>]*aria-label="histogram of ([^"]+)">(.*?)</svg>', text, re.S):
        bins = [(int(p), int(k)) for p, k in re.findall(r"<title>\[[^)]*\): (\d+) in pool, (\d+) kept</title>",
                                                          match.group(2))]
        ticks = [int(t) for t in re.findall(r'class="ytick">(\d+)</text>', match.group(2))]
        out.append((match.group(1), bins, ticks))
    return out


def test_page_histograms_have_a_y_axis_and_a_zoom_on_the_cutoff(world, page):
    pool, root, _ = world
    brute = brute_scores(pool)
    values = np.array([brute[u]["clip_score"] for u in pool.uids])
    kept = hexes(root / "clip_score.npy")
    charts = _svgs(page.read_text())
    full = next(c for c in charts if c[0] == "clip_score")
    counts = np.histogram(values, np.linspace(values.min(), values.max(), 41))[0]
    assert [p for p, _ in full[1]] == counts.tolist()
    assert full[2] == sorted({0, int(counts.max()) // 2, int(counts.max())})  # the y axis: 0 .. tallest bar
    zoom = next(c for c in charts if c[0].startswith("clip_score, zoomed on the cut-off"))
    # the window holds as many samples below the cut-off as are kept: every kept sample is inside it, and the
    # kept range fills about half of the 40 bins instead of a few
    assert sum(k for _, k in zoom[1]) == len(kept)
    assert sum(p for p, _ in zoom[1]) == min(2 * len(kept), len(values))
    assert sum(1 for _, k in zoom[1] if k) >= 12
    assert zoom[2][-1] == max(p for p, _ in zoom[1])


def test_page_cards_name_their_component_and_shares_come_first(world, page):
    pool, _, _ = world
    text = page.read_text()
    component_of = dict(zip(pool.uids, pool.components, strict=True))
    shown = re.findall(r'<span class="component">component: ([^<]+)</span>.*?<code>([0-9a-f]{32})</code>', text,
                       re.S)
    assert len(shown) == len(cards(text)) > 0
    assert all(component_of[uid] == name for name, uid in shown)
    assert text.index("Share of each component kept") < text.index("<h2>A:")


def test_inspect_shards_where_no_uid_matches_is_refused(world, tmp_path, capsys):
    pool, root, cache = world
    other = make_image_pool(str(tmp_path / "other"), shard_sizes=(10,), seed=5)  # other uids, same layout
    out = tmp_path / "x.html"
    code, _, err = run_cli(["inspect", root / "clip_score.npy", "--metadata_dir", pool.metadata, "--shards",
                            other.shards, "--out", out, "--cache_dir", cache, "--no_progress"], capsys)
    assert code == 2 and "Traceback" not in err
    assert "no uid of the files matched" in err and "img2dataset's layout" in err, err
    assert not out.exists()


def test_inspect_reads_the_toy_pools_labels_as_truth(tmp_path, capsys):
    """The toy pool's labels.parquet is a truth file as it is: the shares match a count by hand."""
    from datacomp_plugins.apps.toy import write_toy_pool

    write_toy_pool(str(tmp_path / "toy"), shards=2, rows=300)
    cache, metadata = tmp_path / "cache", tmp_path / "toy" / "metadata"
    assert main(["filter", "--name", "clip_score", "--metadata_dir", str(metadata), "--fraction", "0.3",
                 "--save_path", str(tmp_path / "a.npy"), "--cache_dir", str(cache), "--no_progress"]) == 0
    out = tmp_path / "toy.html"
    code, _, err = run_cli(["inspect", tmp_path / "a.npy", "--metadata_dir", metadata, "--out", out, "--truth",
                            tmp_path / "toy" / "labels.parquet", "--cache_dir", cache, "--no_progress"], capsys)
    assert code == 0, err
    labels = pq.read_table(tmp_path / "toy" / "labels.parquet").to_pydict()
    kept = hexes(tmp_path / "a.npy")
    text = out.read_text()
    for component in set(labels["component"]):
        members = [u for u, c in zip(labels["uid"], labels["component"], strict=True) if c == component]
        n = sum(u in kept for u in members)
        assert f'data-component="{component}">{100.0 * n / len(members):.1f}% ({n})</td>' in text


@pytest.mark.skipif(not os.environ.get("DATACOMP_DIR"), reason="DATACOMP_DIR is not set (DataComp's resharder)")
@pytest.mark.slow  # reshards a pool of images first
def test_page_on_resharded_shards_reads_no_json(world, page, tmp_path, monkeypatch):
    """DataComp's resharder names members <uid>-<j>: the tar headers alone locate every sample."""
    from datacomp_plugins.apps import shard_images

    pool, root, cache = world
    resharded = tmp_path / "resharded"
    reshard(os.environ["DATACOMP_DIR"], pool.shards, str(root / "clip_score.npy"), str(resharded))

    def no_json(*args):
        raise AssertionError("a json member was read")

    monkeypatch.setattr(shard_images, "_json_uid", no_json)
    out = tmp_path / "resharded.html"
    assert main(["inspect", str(root / "clip_score.npy"), "--metadata_dir", pool.metadata, "--shards",
                 str(resharded), "--out", str(out), "--cache_dir", cache, "--per_group", "5", "--no_progress"]) == 0
    shown = cards(out.read_text())
    kept = hexes(root / "clip_score.npy")
    with_image = {c["uid"] for c in shown if c["image"] is not None}
    # exactly the shown samples the resharder copied (kept, and downloaded) have a thumbnail
    assert with_image == {c["uid"] for c in shown if c["uid"] in kept and c["uid"] not in pool.missing}
    assert with_image
    same = {c["uid"]: c["image"] for c in cards(page.read_text())}
    for card in shown:  # the resharder copies the bytes: the same thumbnails as from img2dataset's tars
        if card["image"] is not None and card["uid"] in same:
            assert card["image"] == same[card["uid"]]


def test_page_on_toy_pool_shows_scores_only(tmp_path, capsys):
    from datacomp_plugins.apps.toy import write_toy_pool

    write_toy_pool(str(tmp_path / "toy"), shards=2, rows=300)
    cache = tmp_path / "cache"
    metadata = tmp_path / "toy" / "metadata"
    assert main(["filter", "--name", "clip_score", "--metadata_dir", str(metadata), "--fraction", "0.3",
                 "--save_path", str(tmp_path / "a.npy"), "--cache_dir", str(cache), "--no_progress"]) == 0
    out = tmp_path / "toy.html"
    code, stdout, _ = run_cli(["inspect", tmp_path / "a.npy", "--metadata_dir", metadata, "--out", out,
                               "--cache_dir", cache, "--no_progress"], capsys)
    assert code == 0
    text = out.read_text()
    assert "No images: --shards was not given" in text and "<img" not in text
    assert page_counts(text)[str(tmp_path / "a.npy")] == len(load_uid_file(str(tmp_path / "a.npy")))
    assert cards(text)  # the grids still list samples with captions and scores


def test_inspect_bad_input_is_refused(world, capsys, tmp_path):
    pool, root, cache = world
    a = root / "clip_score.npy"
    out = tmp_path / "x.html"
    base = ["--metadata_dir", pool.metadata, "--out", out, "--cache_dir", cache, "--no_progress"]
    bad_truth = tmp_path / "truth"
    bad_truth.mkdir()
    pq.write_table(pq.read_table(os.path.join(pool.truth, "00000000.parquet")).drop(["component"]),
                   bad_truth / "00000000.parquet")
    for argv, needle in (
        ([a, a, a, *base], "expected one or two uid files, got 3"),
        ([a, "--shards", tmp_path / "none", *base], "--shards"),
        ([a, "--shards", pool.metadata, *base], "no .tar shards"),
        ([a, "--truth", bad_truth, *base], "00000000.parquet: no column(s) ['component']"),
        ([tmp_path / "missing.npy", *base], "missing.npy: uid file not found"),
    ):
        code, _, err = run_cli(["inspect", *argv], capsys)
        assert code == 2 and needle in err, (argv, err)
        assert not out.exists()


# --- a real browser ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chromium():
    from browser import find_chromium

    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium found (install Debian's 'chromium' package, or set $CHROMIUM to a Chrome binary)")
    return binary


def test_browser_harness_sees_broken_images_and_console_messages(chromium, tmp_path):
    """The checks below can fail: a page with an undecodable image and a console message is caught."""
    from browser import dump_dom

    from datacomp_plugins.apps.inspect_page import page_template

    bad = tmp_path / "bad.html"
    bad.write_text(page_template().substitute(
        title="bad", notes="", body='<img data-uid="x" src="data:image/jpeg;base64,AAAA">'
                                    '<script>console.error("boom")</script>'))
    dom, console = dump_dom(chromium, bad)
    from browser import self_check

    check = self_check(dom)
    assert check["images"] == 1 and check["undecoded"] == ["x"]
    assert any('"boom"' in line for line in console)


@pytest.mark.slow  # a headless Chromium
def test_page_in_headless_chromium(world, page, chromium, tmp_path):
    from browser import dump_dom, screenshot, self_check
    from PIL import Image

    _, root, _ = world
    dom, console = dump_dom(chromium, page)
    check = self_check(dom)
    shown = cards(page.read_text())
    assert check["images"] == sum(c["image"] is not None for c in shown) > 0
    assert check["undecoded"] == [] and check["errors"] == []
    assert console == []  # no console message at all (errors, CSP violations, warnings)
    counts = page_counts(dom)  # as the browser rendered them
    a, b = hexes(root / "clip_score.npy"), hexes(root / "negcliploss.npy")
    assert counts[str(root / "clip_score.npy")] == len(a) and counts[str(root / "negcliploss.npy")] == len(b)
    assert (counts["both"], counts["a_only"], counts["b_only"]) == (len(a & b), len(a - b), len(b - a))

    shot = np.asarray(Image.open(screenshot(chromium, page, tmp_path / "page.png")).convert("RGB"), dtype=np.int16)
    assert shot.shape[0] >= 1000 and shot.shape[1] >= 1000
    not_white = (shot < 235).any(axis=2).mean()
    colours = len(np.unique(shot.reshape(-1, 3) // 8, axis=0))
    assert not_white > 0.05 and colours > 50, (not_white, colours)  # text, charts and thumbnails, not a blank page


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_header_reader_agrees_with_tarfile(tmp_path, fmt):
    from datacomp_plugins.apps.shard_images import tar_members

    rng = np.random.default_rng(fmt)
    path = tmp_path / "x.tar"
    names = ["a.jpg", "dir/b.json", "p" * 60 + "/" + "q" * 80 + ".txt", "é-unicode.jpg", "empty.txt"]
    if fmt != tarfile.USTAR_FORMAT:
        names.append("long/" + "n" * 150 + ".jpg")  # GNU long name / pax path record
    with tarfile.open(path, "w", format=fmt) as archive:
        for name in names:
            data = rng.bytes(int(rng.integers(0, 3000)) if name != "empty.txt" else 0)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        folder = tarfile.TarInfo("a-folder")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
    with tarfile.open(path) as archive:
        expected = [(m.name, m.offset_data, m.size) for m in archive if m.isfile()]
    with open(path, "rb") as handle:
        assert list(tar_members(handle, str(path))) == expected
    raw = bytearray(path.read_bytes())
    raw[130] ^= 1  # a flipped bit in the first size field
    (tmp_path / "bad.tar").write_bytes(bytes(raw))
    with open(tmp_path / "bad.tar", "rb") as handle, pytest.raises(PluginError, match="bad.tar: corrupt tar header"):
        list(tar_members(handle, str(tmp_path / "bad.tar")))
