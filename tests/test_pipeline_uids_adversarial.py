"""The filter attacked with repeated uids: a --given_uids file with repeats and a pool listing one uid twice
restrict and select each uid once, and say so; uid files against brute-force sorting.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from conftest import make_pool
from uidvalues import A, ints, save_raw

from datacomp_plugins.cli import main


def test_given_uids_file_with_repeats_restricts_once_and_says_so(tmp_path, cache_dir, capsys):
    written = make_pool(str(tmp_path / "pool"), [20, 20])
    hexes = [h for s in written.values() for h in s["uids"]]
    clip = np.concatenate([(s["l14_img"].astype(np.float32) * s["l14_txt"].astype(np.float32)).sum(1)
                           for s in written.values()])
    chosen = list(range(0, 40, 3))  # 14 samples
    values = sorted([int(hexes[i], 16) for i in chosen] + [int(hexes[i], 16) for i in chosen[:5]])
    path = save_raw(tmp_path / "given.npy", values)
    out = tmp_path / "out.npy"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["filter", "--no_progress", "--name", "clip_score", "--metadata_dir", str(tmp_path / "pool"),
                     "--save_path", str(out), "--fraction", "0.5", "--given_uids", path]) == 0
    messages = [str(w.message) for w in caught]
    assert any(f"{path}: uids were not sorted and unique" in m and "(19 uids, 5 duplicates dropped)" in m
               for m in messages), messages
    text = capsys.readouterr().out
    assert f"{path}: 14 uids, 0 not in the pool" in text and "of 14 samples" in text
    # --name clip_score follows DataComp's rule: the floor(N*F)+1 best (no ties here)
    want = sorted(chosen, key=lambda i: (-clip[i], int(hexes[i], 16)))[: math.floor(14 * 0.5) + 1]
    assert ints(np.load(out)) == sorted(int(hexes[i], 16) for i in want)


def test_pool_with_a_repeated_uid_selects_it_once(tmp_path, cache_dir, capsys):
    """A pool listing one uid in two shards (a two-row repeat) keeps its first copy only."""
    from conftest import unit_rows, write_shard

    rng = np.random.default_rng(9)
    img = unit_rows(rng, 2, 768)
    arrays = {"l14_img": img.astype(np.float16), "l14_txt": img.astype(np.float16)}
    write_shard(str(tmp_path / "pool"), "00000000", [f"{A:032x}"], {k: v[:1] for k, v in arrays.items()})
    write_shard(str(tmp_path / "pool"), "00000001", [f"{A:032x}"], {k: v[1:] for k, v in arrays.items()})
    out = tmp_path / "out.npy"
    assert main(["filter", "--no_progress", "--name", "clip_score", "--metadata_dir", str(tmp_path / "pool"),
                 "--save_path", str(out), "--fraction", "1"]) == 0
    assert ints(np.load(out)) == [A]
    assert "1 duplicate uids counted once" in capsys.readouterr().out
