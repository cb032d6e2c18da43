"""NormSim_2-D (scores/dynamic.py): the drop schedule and the iterated selection against the algorithm as the
paper writes it (Σ recomputed from the survivors every iteration), in memory, streamed from disk and end to end.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import make_pool, two_stage_pool, unit_rows, write_shard

from datacomp_plugins.cli import main
from datacomp_plugins.core.uids import UID_DTYPE
from datacomp_plugins.scores.dynamic import drop_schedule, iterate


def brute_normsim_d(x: np.ndarray, uids: np.ndarray, target: int, iters: int) -> set[int]:
    """The algorithm as written in the paper: recompute Σ of the current set every iteration."""
    alive = list(range(len(x)))
    for drop in drop_schedule(len(x), target, iters):
        sigma = sum(np.outer(x[i], x[i]) for i in alive)
        score = {i: float(x[i] @ sigma @ x[i]) for i in alive}
        alive.sort(key=lambda i: (-score[i], int(uids[i][0]), int(uids[i][1])))
        alive = alive[: len(alive) - drop]
    return set(alive)




@pytest.mark.parametrize("start,target,iters", [(10, 4, 3), (10, 4, 500), (7, 7, 5), (100, 1, 7)])
def test_drop_schedule(start, target, iters):
    plan = drop_schedule(start, target, iters)
    assert sum(plan) == start - target
    assert len(plan) == min(iters, start - target)
    if plan:
        assert max(plan) - min(plan) <= 1 and min(plan) >= 1


@pytest.mark.parametrize("iters", [1, 4, 40])
def test_normsim_d_matches_brute_force(iters):
    rng = np.random.default_rng(iters)
    x = unit_rows(rng, 60, 8)
    x[:20] = unit_rows(rng, 1, 8) + 0.3 * unit_rows(rng, 20, 8)  # a cluster that should survive
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    uids = np.zeros(60, dtype=UID_DTYPE)
    uids["f1"] = rng.permutation(60)
    got = set(np.flatnonzero(iterate(x, uids, 25, iters)).tolist())
    assert got == brute_normsim_d(x.astype(np.float64), uids, 25, iters)


def test_normsim_d_streams_from_disk_the_same(monkeypatch):
    import datacomp_plugins.scores.dynamic as dynamic

    rng = np.random.default_rng(5)
    x = unit_rows(rng, 300, 8)
    uids = np.zeros(300, dtype=UID_DTYPE)
    uids["f1"] = np.arange(300)
    resident = iterate(x, uids, 100, 30)
    monkeypatch.setattr(dynamic, "RESIDENT_BYTES", 0)
    monkeypatch.setattr(dynamic, "CHUNK_ROWS", 7)
    assert (iterate(x, uids, 100, 30) == resident).all()


def test_normsim_d_end_to_end_equals_iterate_on_survivors(tmp_path, cache_dir):
    shards, _ = two_stage_pool(tmp_path)
    out = tmp_path / "out.npy"
    assert main(["filter", "--no_progress", "--name", "normsim_d", "--metadata_dir", str(tmp_path / "pool"),
                 "--quality_score", "clip_score", "--fraction", "0.8", "--normsim_fraction", "0.4",
                 "--normsim_d_iters", "5", "--save_path", str(out)]) == 0
    hexes = [h for s in shards for h in s[0]]
    img = np.concatenate([s[1] for s in shards]).astype(np.float16).astype(np.float64)
    quality = np.concatenate([s[2] for s in shards])
    n = len(hexes)
    survivors = sorted(range(n), key=lambda i: (-quality[i], int(hexes[i], 16)))[: math.floor(n * 0.8)]
    survivors.sort()
    uids = np.array([divmod(int(hexes[i], 16), 2**64) for i in survivors], dtype=UID_DTYPE)
    kept = brute_normsim_d(img[survivors], uids, math.floor(n * 0.4), 5)
    assert np.load(out).tolist() == sorted(uids[i].tolist() for i in kept)


@pytest.mark.parametrize("chosen", [[[], [2], [0, 3, 4]], [[1], [], [4]], [[0], [0], [0]]])
def test_spill_holds_the_chosen_finite_rows_in_order(tmp_path, chosen):
    """Every chosen row of every shard, one-row and empty choices included, lands in the spill in order,
    except the non-finite row, which the mask marks; worked out from the arrays written."""
    from datacomp_plugins.core.pool import Pool
    from datacomp_plugins.scores.dynamic import spill_image_embeddings

    written = make_pool(str(tmp_path / "pool"), [5, 5, 5], dim=8)
    stems = sorted(written)
    bad_stem, bad_row = stems[2], 4
    arrays = {stem: written[stem]["l14_img"].copy() for stem in stems}
    arrays[bad_stem][bad_row, 3] = np.nan
    for stem in stems:  # rewrite the shards with the non-finite row in place
        write_shard(str(tmp_path / "pool"), stem, written[stem]["uids"],
                    {"l14_img": arrays[stem], "l14_txt": written[stem]["l14_txt"]})
    pool = Pool(str(tmp_path / "pool"))
    rows = [np.array(c, dtype=np.int64) for c in chosen]
    want_rows, want_finite = [], []
    for stem, picked in zip(stems, chosen, strict=True):
        for r in picked:
            finite = bool(np.isfinite(arrays[stem][r]).all())
            want_finite.append(finite)
            if finite:
                want_rows.append(arrays[stem][r])
    with spill_image_embeddings(pool, pool.shards, rows, "l14_img", 8, str(tmp_path / "spill")) as (spill, ok):
        assert ok.tolist() == want_finite
        assert np.array_equal(np.asarray(spill), np.array(want_rows, dtype=np.float16).reshape(-1, 8))
    assert [p for p in (tmp_path / "spill").iterdir() if p.suffix == ".f16"] == []
