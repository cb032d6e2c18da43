"""Adversarial checks of the core math and selection against independent float64 brute force.

Every expected value here is recomputed from the definitions (DESIGN.md section 3, ARCHITECTURE.md) with
numpy in float64: the negCLIPLoss batches are re-derived from the documented seeding, so scoring a whole
shard as one batch instead of ``--negcliploss_batch_size``, or seeding the batches differently, fails.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import make_pool, random_hex_uids, unit_rows, write_shard

from datacomp_plugins.cli import main
from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.uids import UID_DTYPE
from datacomp_plugins.scores import metrics

TOLERANCE = 2e-5  # float32 scoring against float64: observed errors are ~1e-6


def as_uid(h: str) -> tuple[int, int]:
    return divmod(int(h, 16), 2**64)


def lse(x: np.ndarray, axis: int) -> np.ndarray:
    top = x.max(axis=axis, keepdims=True)
    return (np.log(np.exp(x - top).sum(axis=axis, keepdims=True)) + top).squeeze(axis)


def documented_rounds(seed: int, stem: str, n: int, batch: int, rounds: int) -> list[list[np.ndarray]]:
    """The batches ARCHITECTURE.md documents: default_rng(SeedSequence([seed, sha256(stem)])), one stream per
    shard; each round a permutation cut into ceil(n/B) near-equal parts; one whole batch when B >= n."""
    if batch >= n:
        return [[np.arange(n)]]
    digest = hashlib.sha256(stem.encode()).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    rng = np.random.default_rng(np.random.SeedSequence([seed, *words]))
    count = -(-n // batch)
    return [np.array_split(rng.permutation(n), count) for _ in range(rounds)]


def brute_negcliploss(img: np.ndarray, txt: np.ndarray, rounds: list[list[np.ndarray]], tau: float,
                      batch: int) -> np.ndarray:
    """CLIPScore minus the mean over rounds of (τ/2)(row LSE + column LSE), each scaled to the size min(B, n)."""
    img, txt = img.astype(np.float64), txt.astype(np.float64)
    n = len(img)
    reference = min(batch, n)
    total = np.zeros(n)
    for batches in rounds:
        for b in batches:
            logits = img[b] @ txt[b].T / tau
            scale = math.log(reference) - math.log(len(b))
            total[b] += tau / 2 * (lse(logits, 1) + lse(logits, 0) + 2 * scale)
    return (img * txt).sum(1) - total / len(rounds)


def shard_scores(arrays: dict, stem: str, seed: int, batch: int, rounds: int, tau: float,
                 derive=documented_rounds) -> np.ndarray:
    """Brute-force score of every row of a stored shard; NaN where a row has a non-finite value."""
    img = arrays["l14_img"].astype(np.float64)
    txt = arrays["l14_txt"].astype(np.float64)
    finite = np.isfinite(img).all(1) & np.isfinite(txt).all(1)
    out = np.full(len(img), np.nan)
    rows = np.flatnonzero(finite)
    if len(rows) == 0:
        return out
    out[rows] = brute_negcliploss(img[rows], txt[rows], derive(seed, stem, len(rows), batch, rounds), tau, batch)
    return out


def adversarial_pool(folder: str) -> dict[str, dict]:
    """Shards larger and smaller than B = 16, one with partly non-finite rows (a NaN, an inf)."""
    rng = np.random.default_rng(11)
    sizes = {"00000000": 50, "00000001": 23, "00000002": 9}
    hexes = random_hex_uids(sum(sizes.values()), seed=11)
    written, start = {}, 0
    for stem, n in sizes.items():
        img = unit_rows(rng, n, 768)
        txt = img * rng.uniform(0.0, 0.6, (n, 1)) + unit_rows(rng, n, 768)
        txt /= np.linalg.norm(txt, axis=1, keepdims=True)
        arrays = {"l14_img": img.astype(np.float16), "l14_txt": txt.astype(np.float16)}
        if stem == "00000001":
            arrays["l14_img"][5, 100] = np.nan
            arrays["l14_txt"][17, 3] = np.inf
        uids = hexes[start : start + n]
        start += n
        write_shard(folder, stem, uids, arrays)
        written[stem] = {"uids": uids, **arrays}
    return written


NEG = dict(seed=3, batch=16, rounds=3, tau=0.05)


def cached_negcliploss(pool_dir: str, cache_dir: str) -> dict[str, np.ndarray]:
    from datacomp_plugins.config import FilterConfig
    from datacomp_plugins.core.cache import ScoreCache
    from datacomp_plugins.core.pool import Pool
    from datacomp_plugins.pipeline import shard_score

    pool = Pool(pool_dir)
    cache = ScoreCache(cache_dir, pool)
    config = FilterConfig("negcliploss", pool_dir, "x", negcliploss_batch_size=NEG["batch"],
                          num_batches=NEG["rounds"], temperature=NEG["tau"], seed=NEG["seed"])
    score = shard_score(config, "negcliploss")
    out = {}
    for shard in pool.shards:
        rows = len(cache.load_uids(shard))
        out[shard.stem] = np.asarray(cache.load_score(shard, score, rows), dtype=np.float64)
    return out


def negcliploss_flags(pool: str) -> list[str]:
    return ["filter", "--no_progress", "--name", "negcliploss", "--metadata_dir", pool,
            "--negcliploss_batch_size", str(NEG["batch"]), "--num_batches", str(NEG["rounds"]),
            "--temperature", str(NEG["tau"]), "--seed", str(NEG["seed"])]


def test_negcliploss_of_real_shards_equals_brute_force_over_the_seeded_batches(tmp_path, cache_dir):
    pool = str(tmp_path / "pool")
    written = adversarial_pool(pool)
    out = tmp_path / "out.npy"
    assert main([*negcliploss_flags(pool), "--save_path", str(out), "--fraction", "0.5"]) == 0
    cached = cached_negcliploss(pool, cache_dir)
    for stem, arrays in written.items():
        want = shard_scores(arrays, stem, NEG["seed"], NEG["batch"], NEG["rounds"], NEG["tau"])
        got = cached[stem]
        assert np.array_equal(np.isnan(got), np.isnan(want)), stem
        assert np.nanmax(np.abs(got - want)) < TOLERANCE, stem
        if len(arrays["uids"]) > NEG["batch"]:
            # The check can tell the documented batches from a whole-shard batch and from other seeding.
            whole = shard_scores(arrays, stem, NEG["seed"], 10**9, 1, NEG["tau"])
            other_seed = shard_scores(arrays, stem, NEG["seed"] + 1, NEG["batch"], NEG["rounds"], NEG["tau"])
            other_stem = shard_scores(arrays, stem + "x", NEG["seed"], NEG["batch"], NEG["rounds"], NEG["tau"])
            for wrong in (whole, other_seed, other_stem):
                assert np.nanmax(np.abs(wrong - want)) > 50 * TOLERANCE
    # The uid file is the brute force's top half (ties by uid), unscorable rows never counted as kept.
    hexes = [h for a in written.values() for h in a["uids"]]
    scores = np.concatenate([shard_scores(a, s, NEG["seed"], NEG["batch"], NEG["rounds"], NEG["tau"])
                             for s, a in written.items()])
    order = sorted(np.flatnonzero(np.isfinite(scores)), key=lambda i: (-scores[i], int(hexes[i], 16)))
    k = math.floor(len(hexes) * 0.5)
    assert scores[order[k - 1]] - scores[order[k]] > 2 * TOLERANCE  # the cut is decidable at this tolerance
    assert np.load(out).tolist() == sorted(as_uid(hexes[i]) for i in order[:k])


def test_seed_changes_scores_of_shards_larger_than_b_only(tmp_path, cache_dir):
    """Shards of at most B rows are one batch (no randomness), larger ones follow the seed."""
    pool = str(tmp_path / "pool")
    written = adversarial_pool(pool)
    flags = negcliploss_flags(pool)
    flags[flags.index("--seed") + 1] = "4"
    assert main([*flags, "--save_path", str(tmp_path / "o.npy"), "--fraction", "0.5"]) == 0
    from datacomp_plugins.config import FilterConfig
    from datacomp_plugins.core.cache import ScoreCache
    from datacomp_plugins.core.pool import Pool
    from datacomp_plugins.pipeline import shard_score

    pool_obj = Pool(pool)
    cache = ScoreCache(cache_dir, pool_obj)
    config = FilterConfig("negcliploss", pool, "x", negcliploss_batch_size=NEG["batch"],
                          num_batches=NEG["rounds"], temperature=NEG["tau"], seed=4)
    score = shard_score(config, "negcliploss")
    for shard in pool_obj.shards:
        arrays = written[shard.stem]
        got = np.asarray(cache.load_score(shard, score, len(arrays["uids"])), dtype=np.float64)
        want = shard_scores(arrays, shard.stem, 4, NEG["batch"], NEG["rounds"], NEG["tau"])
        assert np.nanmax(np.abs(got - want)) < TOLERANCE


# --- the log-sum-exp guards -------------------------------------------------------------------------------


def brute_r(img: np.ndarray, txt: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    logits = img.astype(np.float64) @ txt.astype(np.float64).T / tau
    return lse(logits, 1), lse(logits, 0)


class Calls:
    """Counts calls of the block pass and of the exact (slow) log-sum-exp, by the dimension it reduces."""

    def __init__(self, monkeypatch) -> None:
        self.exp_sums = 0
        self.exact: list[int] = []
        real_exp_sums, real_lse = metrics._exp_sums, torch.logsumexp

        def exp_sums(*args, **kwargs):
            self.exp_sums += 1
            return real_exp_sums(*args, **kwargs)

        def logsumexp(tensor, dim, *args, **kwargs):
            self.exact.append(dim)
            return real_lse(tensor, dim, *args, **kwargs)

        monkeypatch.setattr(metrics, "_exp_sums", exp_sums)
        monkeypatch.setattr(torch, "logsumexp", logsumexp)


def one_batch_terms(img: np.ndarray, txt: np.ndarray, tau: float, block_rows: int = 0) -> np.ndarray:
    """R(i) of one whole batch (reference size n) from the package."""
    terms = metrics.normalisation_term(torch.from_numpy(img), torch.from_numpy(txt), [None], tau, len(img),
                                       block_rows)
    return terms.double().numpy()


@pytest.mark.parametrize("n,norm", [(3, 1.0), (300, 1.0), (40, 3.0)])
def test_every_logit_at_the_bound_overflows_cleanly(monkeypatch, n, norm):
    """All logits equal M/τ (identical rows): exp of the bound overflows float32, so exactly one shifted redo."""
    u = unit_rows(np.random.default_rng(0), 1, 768)[0] * norm
    img = np.tile(u, (n, 1)).astype(np.float32)
    tau = 0.01
    calls = Calls(monkeypatch)
    got = one_batch_terms(img, img.copy(), tau)
    row, col = brute_r(img, img, tau)
    want = tau / 2 * (row + col)
    assert np.isfinite(got).all()
    assert np.abs(got - want).max() < 1e-6 * max(1.0, np.abs(want).max())
    assert calls.exp_sums == 2  # plain sums overflowed, one redo with the shift
    assert calls.exact == []  # nothing underflowed


def test_a_column_that_underflows_while_its_rows_do_not():
    """Column j's logits are all -1/τ = -200 (exp underflows float32 to 0) while every row holds +40s."""
    rng = np.random.default_rng(1)
    u = unit_rows(rng, 1, 768)[0]
    n, j, tau = 6, 2, 0.005
    img = np.tile(u, (n, 1)).astype(np.float32)
    other = unit_rows(rng, n, 768)
    other -= (other @ u)[:, None] * u  # orthogonal to u
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    txt = (0.2 * u + math.sqrt(1 - 0.04) * other).astype(np.float32)
    txt[j] = -u
    row, col = brute_r(img, txt, tau)
    assert col[j] < -190 and (row > 35).all()
    got = one_batch_terms(img, txt, tau)
    want = tau / 2 * (row + col)
    assert np.isfinite(got).all()
    assert np.abs(got - want).max() < 1e-5


def test_only_the_underflowing_column_takes_the_exact_path(monkeypatch):
    rng = np.random.default_rng(1)
    u = unit_rows(rng, 1, 768)[0]
    n, j, tau = 6, 4, 0.005
    img = np.tile(u, (n, 1)).astype(np.float32)
    other = unit_rows(rng, n, 768)
    other -= (other @ u)[:, None] * u
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    txt = (0.2 * u + math.sqrt(1 - 0.04) * other).astype(np.float32)
    txt[j] = -u
    calls = Calls(monkeypatch)
    one_batch_terms(img, txt, tau)
    assert calls.exp_sums == 1  # no overflow: no shifted redo
    assert calls.exact == [0]  # one exact column pass (reducing over rows), no row pass


@pytest.mark.parametrize("n,block_rows", [(64, 0), (700, 256)])
def test_finite_sums_are_not_recomputed(monkeypatch, n, block_rows):
    """Real-looking batches (τ = 0.01, so exp of the bound would overflow) stay on the fast path."""
    rng = np.random.default_rng(2)
    img = unit_rows(rng, n, 768)
    txt = img * 0.5 + unit_rows(rng, n, 768)
    txt = (txt / np.linalg.norm(txt, axis=1, keepdims=True)).astype(np.float32)
    tau = 0.01
    assert 1 / tau + math.log(n) >= metrics._EXP_CEILING  # the plain sums are a gamble here, and they win
    calls = Calls(monkeypatch)
    got = one_batch_terms(img, txt, tau, block_rows)
    row, col = brute_r(img, txt, tau)
    assert np.abs(got - tau / 2 * (row + col)).max() < 1e-6
    assert calls.exp_sums == 1
    assert calls.exact == []


def test_rows_below_the_guard_are_recomputed_but_not_the_rest(monkeypatch):
    """Row i's logits all ~-1/τ: only that row goes through the exact path (and is right)."""
    rng = np.random.default_rng(3)
    u = unit_rows(rng, 1, 768)[0]
    n, i, tau = 5, 1, 0.005
    txt = np.tile(u, (n, 1)).astype(np.float32)
    other = unit_rows(rng, n, 768)
    other -= (other @ u)[:, None] * u
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    img = (0.2 * u + math.sqrt(1 - 0.04) * other).astype(np.float32)
    img[i] = -u
    calls = Calls(monkeypatch)
    got = one_batch_terms(img, txt, tau)
    row, col = brute_r(img, txt, tau)
    assert np.abs(got - tau / 2 * (row + col)).max() < 1e-5
    assert calls.exact == [1]


# --- NormSim ----------------------------------------------------------------------------------------------


def test_normsim_inf_shard_larger_than_its_blocks_and_a_non_finite_row(tmp_path):
    from datacomp_plugins.scores import targets
    from datacomp_plugins.scores.normsim import NormSimScore

    rng = np.random.default_rng(4)
    image = unit_rows(rng, 37, 768).astype(np.float16)
    image[9, 7] = np.nan
    target = unit_rows(rng, 11, 768)
    key, target_path, gram_path = targets.materialise(target, str(tmp_path / "t"))
    for p in ("inf", "2"):
        score = NormSimScore(p=p, target=key, target_path=target_path, gram_path=gram_path, block_rows=8)
        got = score.compute(None, {}, {"l14_img": image})
        sims = image.astype(np.float64) @ target.astype(np.float64).T
        want = sims.max(1) if p == "inf" else np.sqrt((sims**2).sum(1))
        assert np.isnan(got[9]) and np.isfinite(np.delete(got, 9)).all()
        assert np.abs(np.delete(got - want, 9)).max() < 1e-5
    # the target itself in blocks smaller than it, including a last partial block
    tgt = torch.from_numpy(target)
    for block in (1, 4, 10, 11, 12):
        got = metrics.normsim_inf(torch.from_numpy(image[:9].astype(np.float32)), tgt, block=block).numpy()
        assert np.abs(got - (image[:9].astype(np.float64) @ target.T).max(1)).max() < 1e-5


def test_normsim_inf_of_rows_all_below_zero():
    """The running maximum must start below every similarity (a 0 start would clip negative maxima)."""
    rng = np.random.default_rng(5)
    target = unit_rows(rng, 6, 768)
    image = -target.sum(0) + 0.01 * unit_rows(rng, 3, 768)  # negative against every target row
    image = (image / np.linalg.norm(image, axis=1, keepdims=True)).astype(np.float32)
    want = (image.astype(np.float64) @ target.T).max(1)
    assert (want < 0).all()
    got = metrics.normsim_inf(torch.from_numpy(image), torch.from_numpy(target), block=4).numpy()
    assert np.abs(got - want).max() < 1e-6


def test_target_with_a_row_of_zeros_is_refused(tmp_path, cache_dir, capsys):
    make_pool(str(tmp_path / "pool"), [10])
    target = unit_rows(np.random.default_rng(6), 5, 768)
    target[3] = 0
    np.save(tmp_path / "target.npy", target)
    out = tmp_path / "out.npy"
    code = main(["filter", "--no_progress", "--name", "normsim2", "--metadata_dir", str(tmp_path / "pool"),
                 "--quality_score", "clip_score", "--fraction", "0.5", "--normsim_fraction", "0.2",
                 "--target", str(tmp_path / "target.npy"), "--save_path", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "target.npy: row 3 is all zeros" in err and "Traceback" not in err
    assert not out.exists()


# --- the score cache --------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra_rows", [5, -3])
def test_cached_score_file_of_the_wrong_length_is_recomputed(tmp_path, cache_dir, capsys, extra_rows):
    pool = str(tmp_path / "pool")
    written = adversarial_pool(pool)
    flags = [*negcliploss_flags(pool), "--fraction", "0.5"]
    assert main([*flags, "--save_path", str(tmp_path / "a.npy")]) == 0
    from datacomp_plugins.config import FilterConfig
    from datacomp_plugins.core.cache import ScoreCache
    from datacomp_plugins.core.pool import Pool
    from datacomp_plugins.pipeline import shard_score

    pool_obj = Pool(pool)
    cache = ScoreCache(cache_dir, pool_obj)
    config = FilterConfig("negcliploss", pool, "x", negcliploss_batch_size=NEG["batch"],
                          num_batches=NEG["rounds"], temperature=NEG["tau"], seed=NEG["seed"])
    score = shard_score(config, "negcliploss")
    shard = pool_obj.shards[0]
    rows = len(written[shard.stem]["uids"])
    # A well-formed file with a valid checksum, but not one value per row: high values that would win.
    cache.save(cache.score_path(shard, score), np.full(rows + extra_rows, 100.0, dtype=np.float32))
    capsys.readouterr()
    assert main([*flags, "--save_path", str(tmp_path / "b.npy")]) == 0
    assert "(1 scored, 2 from cache)" in capsys.readouterr().out
    assert np.load(tmp_path / "b.npy").tolist() == np.load(tmp_path / "a.npy").tolist()
    again = np.load(cache.score_path(shard, score))
    want = shard_scores(written[shard.stem], shard.stem, NEG["seed"], NEG["batch"], NEG["rounds"], NEG["tau"])
    assert len(again) == rows and np.abs(again - want).max() < TOLERANCE


# --- restrictions and flag boundaries ---------------------------------------------------------------------


def test_external_fraction_is_a_share_of_the_given_uids(tmp_path, cache_dir, capsys):
    written = make_pool(str(tmp_path / "pool"), [30, 30])
    hexes = [h for s in written.values() for h in s["uids"]]
    clip = np.concatenate([(s["l14_img"].astype(np.float32) * s["l14_txt"].astype(np.float32)).sum(1)
                           for s in written.values()])
    rng = np.random.default_rng(7)
    given = sorted(rng.choice(60, 24, replace=False).tolist())
    np.save(tmp_path / "given.npy", np.array(sorted(as_uid(hexes[i]) for i in given), dtype=UID_DTYPE))
    ext = rng.standard_normal(60)
    pq.write_table(pa.table({"uid": hexes, "hype": ext}), tmp_path / "hype.parquet")
    out = tmp_path / "out.npy"
    assert main(["filter", "--no_progress", "--name", "clip_score", "--metadata_dir", str(tmp_path / "pool"),
                 "--save_path", str(out), "--fraction", "0.5", "--given_uids", str(tmp_path / "given.npy"),
                 "--external_scores", str(tmp_path / "hype.parquet"), "--external_column", "hype",
                 "--external_fraction", "0.25"]) == 0

    def top(indices, score, k):
        return sorted(indices, key=lambda i: (-score[i], int(hexes[i], 16)))[:k]

    restricted = top(given, ext, math.floor(24 * 0.25))  # 6 of the 24 given, not 15 of the 60 in the pool
    # --name clip_score follows DataComp's rule: the floor(N*F)+1 best (no ties here)
    want = top(restricted, clip, math.floor(len(restricted) * 0.5) + 1)
    assert np.load(out).tolist() == sorted(as_uid(hexes[i]) for i in want)
    assert "hype top 0.25: 6" in capsys.readouterr().out


def two_stage(tmp_path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    written = make_pool(str(tmp_path / "pool"), [20, 20])
    hexes = [h for s in written.values() for h in s["uids"]]
    img = np.concatenate([s["l14_img"] for s in written.values()]).astype(np.float64)
    clip = np.concatenate([(s["l14_img"].astype(np.float32) * s["l14_txt"].astype(np.float32)).sum(1)
                           for s in written.values()])
    target = unit_rows(np.random.default_rng(8), 7, 768)
    np.save(tmp_path / "target.npy", target)
    return hexes, img, clip, target


def test_equal_fractions_keep_the_whole_quality_stage(tmp_path, cache_dir):
    hexes, img, clip, target = two_stage(tmp_path)
    out = tmp_path / "out.npy"
    assert main(["filter", "--no_progress", "--name", "normsiminf", "--metadata_dir", str(tmp_path / "pool"),
                 "--quality_score", "clip_score", "--fraction", "0.3", "--normsim_fraction", "0.3",
                 "--target", str(tmp_path / "target.npy"), "--save_path", str(out)]) == 0
    survivors = sorted(range(40), key=lambda i: (-clip[i], int(hexes[i], 16)))[:12]
    assert np.load(out).tolist() == sorted(as_uid(hexes[i]) for i in survivors)


def test_one_normsim_d_iteration_drops_the_lowest_at_once(tmp_path, cache_dir):
    """--normsim_d_iters 1 (the smallest allowed): one pass, Σ over all survivors, keep the top share."""
    hexes, img, clip, _ = two_stage(tmp_path)
    out = tmp_path / "out.npy"
    assert main(["filter", "--no_progress", "--name", "normsim_d", "--metadata_dir", str(tmp_path / "pool"),
                 "--quality_score", "clip_score", "--fraction", "0.5", "--normsim_fraction", "0.25",
                 "--normsim_d_iters", "1", "--save_path", str(out)]) == 0
    survivors = sorted(range(40), key=lambda i: (-clip[i], int(hexes[i], 16)))[:20]
    x = img[survivors]
    sigma = x.T @ x
    scores = ((x @ sigma) * x).sum(1)
    kept = sorted(range(20), key=lambda i: (-scores[i], int(hexes[survivors[i]], 16)))[:10]
    assert np.load(out).tolist() == sorted(as_uid(hexes[survivors[i]]) for i in kept)


def test_fraction_one_keeps_every_scorable_sample(tmp_path, cache_dir):
    written = make_pool(str(tmp_path / "pool"), [15, 10])
    hexes = [h for s in written.values() for h in s["uids"]]
    out = tmp_path / "out.npy"
    assert main(["filter", "--no_progress", "--name", "clip_score", "--metadata_dir", str(tmp_path / "pool"),
                 "--save_path", str(out), "--fraction", "1"]) == 0
    assert np.load(out).tolist() == sorted(as_uid(h) for h in hexes)


BOUNDARY_FLAGS = {
    "fraction 0": (["--fraction", "0"], "--fraction 0.0: must be in (0, 1]"),
    "fraction above 1": (["--fraction", "1.0000001"], "must be in (0, 1]"),
    "fraction nan": (["--fraction", "nan"], "--fraction nan: must be in (0, 1]"),
    "fraction negative": (["--fraction", "-0.5"], "must be in (0, 1]"),
    "threshold nan": (["--threshold", "nan"], "--threshold nan: must be a finite number"),
    "threshold inf": (["--threshold", "inf"], "must be a finite number"),
    "zero batches": (["--fraction", "0.5", "--num_batches", "0"], "--num_batches 0: must be an integer in [1, "),
    "zero batch size": (["--fraction", "0.5", "--negcliploss_batch_size", "0"],
                        "--negcliploss_batch_size 0: must be an integer in [1, "),
    "negative block": (["--fraction", "0.5", "--batch_size", "-1"], "--batch_size -1"),
    "zero temperature": (["--fraction", "0.5", "--temperature", "0"], "--temperature 0.0: must be in [0.0001, "),
    "nan temperature": (["--fraction", "0.5", "--temperature", "nan"], "--temperature nan"),
    "inf temperature": (["--fraction", "0.5", "--temperature", "inf"], "--temperature inf"),
    "zero iterations": (["--name", "normsim_d", "--fraction", "0.5", "--normsim_fraction", "0.2",
                         "--normsim_d_iters", "0"], "--normsim_d_iters 0: must be an integer in [1, "),
    "normsim above fraction": (["--name", "normsim_d", "--fraction", "0.5", "--normsim_fraction", "0.5000001"],
                               "is larger than --fraction"),
    "normsim fraction 0": (["--name", "normsim_d", "--fraction", "0.5", "--normsim_fraction", "0"],
                           "--relevance_fraction 0.0: must be in (0, 1]"),
    "external fraction 0": (["--fraction", "0.5", "--external_scores", "x.parquet", "--external_column", "s",
                             "--external_fraction", "0"], "--external_fraction 0.0: must be in (0, 1]"),
}


@pytest.mark.parametrize("case", sorted(BOUNDARY_FLAGS))
def test_flag_boundaries_are_refused_before_any_work(tmp_path, cache_dir, capsys, case):
    extra, message = BOUNDARY_FLAGS[case]
    name = [] if "--name" in extra else ["--name", "negcliploss"]
    out = tmp_path / "out.npy"
    code = main(["filter", "--no_progress", *name, "--metadata_dir", str(tmp_path / "no-pool"),
                 "--save_path", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not out.exists() and not os.path.exists(cache_dir)


# --- shards at the edges of negCLIPLoss -------------------------------------------------------------------


class _Stem:
    """What a Score reads of a shard when computing: its name (the seed stream)."""

    def __init__(self, stem: str) -> None:
        self.stem = stem


def score_arrays(img: np.ndarray, txt: np.ndarray, stem: str, **params) -> np.ndarray:
    from datacomp_plugins.scores.negcliploss import NegCLIPLossScore

    score = NegCLIPLossScore(**params)
    return score.compute(_Stem(stem), {}, {"l14_img": img, "l14_txt": txt}).astype(np.float64)


def test_rows_longer_than_one_use_their_real_norms_for_the_bound():
    """|f| = 3 (e.g. unnormalised embeddings): logits reach 300 at τ = 0.01, beyond a unit-norm bound."""
    rng = np.random.default_rng(12)
    img = (unit_rows(rng, 40, 768) * 3.0).astype(np.float16)
    txt = unit_rows(rng, 40, 768)
    txt[:5] = img[:5].astype(np.float32) / 3.0  # some pairs at the top logit
    txt = txt.astype(np.float16)
    txt[7, 0] = np.nan  # and one row left out, so the scored rows are a subset
    got = score_arrays(img, txt, "s", batch_size=16, num_batches=2, temperature=0.01, seed=1)
    want = shard_scores({"l14_img": img, "l14_txt": txt}, "s", 1, 16, 2, 0.01)
    assert np.isnan(got[7]) and np.isfinite(np.delete(got, 7)).all()
    assert np.nanmax(np.abs(got - want)) < 1e-4 * np.nanmax(np.abs(want))


@pytest.mark.parametrize("finite_rows", [0, 1, 2])
def test_shards_with_at_most_two_scorable_rows(finite_rows):
    rng = np.random.default_rng(13)
    img = unit_rows(rng, 4, 768).astype(np.float16)
    txt = unit_rows(rng, 4, 768).astype(np.float16)
    img[finite_rows:, 0] = np.nan
    got = score_arrays(img, txt, "t", batch_size=1, num_batches=3, temperature=0.07, seed=0)
    want = shard_scores({"l14_img": img, "l14_txt": txt}, "t", 0, 1, 3, 0.07)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[finite_rows:]).all()
    if finite_rows:
        # B = 1: every batch is one sample, R(i) = f_i·g_i, so the score is 0 up to rounding.
        assert np.abs(got[:finite_rows]).max() < 1e-5 and np.abs(got - want)[:finite_rows].max() < 1e-5


def test_score_defaults_are_the_command_line_defaults():
    """Library defaults of the Score objects equal the flags' defaults: same cache keys either way."""
    from datacomp_plugins.config import FilterConfig
    from datacomp_plugins.pipeline import shard_score
    from datacomp_plugins.scores.clip_score import ParquetScore
    from datacomp_plugins.scores.negcliploss import NegCLIPLossScore

    config = FilterConfig("negcliploss", "pool", "out.npy")
    assert shard_score(config, "negcliploss") == NegCLIPLossScore()
    assert shard_score(config, "clip_score") == ParquetScore()
    assert (NegCLIPLossScore().num_batches, NegCLIPLossScore().batch_size, NegCLIPLossScore().temperature,
            NegCLIPLossScore().seed) == (10, 32768, 0.01, 0)  # DESIGN.md section 3: K = 10, B = 32768, τ = 0.01


def test_threshold_keeps_a_score_equal_to_it_and_never_nan():
    from datacomp_plugins.select.masks import threshold_mask, top_k_mask

    scores = np.array([0.5, np.nan, 0.25, 0.5, -np.inf, 0.75], dtype=np.float32)
    assert threshold_mask(scores, 0.5).tolist() == [True, False, False, True, False, True]
    assert threshold_mask(scores, 0.75, np.array([1, 1, 1, 1, 1, 0], bool)).tolist() == [False] * 6
    uids = np.array([(0, i) for i in (5, 4, 3, 2, 1, 0)], dtype=UID_DTYPE)
    # k = 2 of the finite scores: 0.75, then the tie at 0.5 goes to the smaller uid (row 3)
    assert top_k_mask(scores, uids, 2).tolist() == [False, False, False, True, False, True]
    assert top_k_mask(scores, uids, 0).tolist() == [False] * 6
    assert top_k_mask(scores, uids, 99).tolist() == [True, False, True, True, False, True]


@pytest.mark.parametrize("start,target,iterations,want", [
    (5, 5, 3, []), (5, 6, 3, []), (5, 2, 1, [3]), (5, 2, 3, [1, 1, 1]), (7, 2, 2, [3, 2]), (4, 1, 9, [1, 1, 1])])
def test_drop_schedule_edges(start, target, iterations, want):
    from datacomp_plugins.scores.dynamic import drop_schedule

    assert drop_schedule(start, target, iterations) == want



def test_stale_checksum_and_block_size_against_the_cache(tmp_path, cache_dir, capsys):
    """A score file changed in place (same length, old CRC) is recomputed; --batch_size alone reuses the cache."""
    pool = str(tmp_path / "pool")
    adversarial_pool(pool)
    flags = [*negcliploss_flags(pool), "--fraction", "0.5"]
    assert main([*flags, "--save_path", str(tmp_path / "a.npy")]) == 0
    capsys.readouterr()
    assert main([*flags, "--batch_size", "256", "--save_path", str(tmp_path / "b.npy")]) == 0
    assert "(0 scored, 3 from cache)" in capsys.readouterr().out
    from datacomp_plugins.config import FilterConfig
    from datacomp_plugins.core.cache import ScoreCache
    from datacomp_plugins.core.pool import Pool
    from datacomp_plugins.pipeline import shard_score

    pool_obj = Pool(pool)
    cache = ScoreCache(cache_dir, pool_obj)
    config = FilterConfig("negcliploss", pool, "x", negcliploss_batch_size=NEG["batch"],
                          num_batches=NEG["rounds"], temperature=NEG["tau"], seed=NEG["seed"])
    path = cache.score_path(pool_obj.shards[1], shard_score(config, "negcliploss"))
    values = np.load(path)
    values[np.isfinite(values)] = 100.0
    np.save(path, values)  # the CRC file still describes the old values
    assert main([*flags, "--save_path", str(tmp_path / "c.npy")]) == 0
    assert "(1 scored, 2 from cache)" in capsys.readouterr().out
    assert np.load(tmp_path / "c.npy").tolist() == np.load(tmp_path / "a.npy").tolist()
    assert np.load(tmp_path / "b.npy").tolist() == np.load(tmp_path / "a.npy").tolist()


def test_a_pickled_target_matrix_is_never_loaded(tmp_path, monkeypatch):
    from datacomp_plugins.scores.normsim import NormSimScore, _matrix

    np.save(tmp_path / "target.npy", np.array([{"not": "numbers"}], dtype=object), allow_pickle=True)
    score = NormSimScore(p="inf", target="x", target_path=str(tmp_path / "target.npy"), gram_path="")
    image = unit_rows(np.random.default_rng(15), 3, 768)
    _matrix.cache_clear()
    unpickled = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: unpickled.append(a))
    with pytest.raises(PluginError, match="materialised target"):  # read with allow_pickle=False: refused
        score.compute(None, {}, {"l14_img": image})
    assert unpickled == []


@pytest.mark.parametrize("transpose", [False, True])
def test_a_row_that_overflows_while_no_column_does(monkeypatch, transpose):
    """Row 0's logits are all 87: each term fits float32, their sum of 10 does not; every column sum fits.
    One non-finite side is enough to redo the batch with the shift (and the transpose: a column alone)."""
    rng = np.random.default_rng(16)
    u = unit_rows(rng, 1, 768)[0]
    n, tau = 10, 0.01

    def orthogonal(rows: int) -> np.ndarray:
        v = unit_rows(rng, rows, 768)
        v -= (v @ u)[:, None] * u
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    img = orthogonal(n)
    img[0] = u
    txt = 0.87 * u + math.sqrt(1 - 0.87**2) * orthogonal(n)
    img, txt = img.astype(np.float32), txt.astype(np.float32)
    if transpose:
        img, txt = txt, img
    row, col = brute_r(img, txt, tau)
    side = col if transpose else row
    assert side[0] > math.log(np.finfo(np.float32).max) and (np.delete(side, 0) < 80).all()
    assert ((row if transpose else col) < 88).all()
    calls = Calls(monkeypatch)
    got = one_batch_terms(img, txt, tau)
    assert np.isfinite(got).all() and np.abs(got - tau / 2 * (row + col)).max() < 1e-5
    assert calls.exp_sums == 2
