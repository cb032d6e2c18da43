"""negCLIPLoss and log-sum-exp recomputed in float64 from the definitions (DESIGN.md section 3), for the tests.

The batches are re-derived from the documented seeding, so scoring a whole shard as one batch instead of
``--negcliploss_batch_size``, or seeding the batches differently, fails a test that compares with these.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
from conftest import make_pool, random_hex_uids, unit_rows, write_shard

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


def two_stage(tmp_path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    written = make_pool(str(tmp_path / "pool"), [20, 20])
    hexes = [h for s in written.values() for h in s["uids"]]
    img = np.concatenate([s["l14_img"] for s in written.values()]).astype(np.float64)
    clip = np.concatenate([(s["l14_img"].astype(np.float32) * s["l14_txt"].astype(np.float32)).sum(1)
                           for s in written.values()])
    target = unit_rows(np.random.default_rng(8), 7, 768)
    np.save(tmp_path / "target.npy", target)
    return hexes, img, clip, target


class _Stem:
    """What a Score reads of a shard when computing: its name (the seed stream)."""

    def __init__(self, stem: str) -> None:
        self.stem = stem


def score_arrays(img: np.ndarray, txt: np.ndarray, stem: str, **params) -> np.ndarray:
    from datacomp_plugins.scores.negcliploss import NegCLIPLossScore

    score = NegCLIPLossScore(**params)
    return score.compute(_Stem(stem), {}, {"l14_img": img, "l14_txt": txt}).astype(np.float64)
