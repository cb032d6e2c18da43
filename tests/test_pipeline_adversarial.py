"""The pipeline's stages attacked at their edges: an external fraction of a restricted pool, equal fractions in
the two stages, fraction 1; uid files against brute-force sorting.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from conftest import make_pool
from negcliploss_brute import as_uid, two_stage

from datacomp_plugins.cli import main
from datacomp_plugins.core.uids import UID_DTYPE


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


def test_equal_fractions_keep_the_whole_quality_stage(tmp_path, cache_dir):
    hexes, img, clip, target = two_stage(tmp_path)
    out = tmp_path / "out.npy"
    assert main(["filter", "--no_progress", "--name", "normsiminf", "--metadata_dir", str(tmp_path / "pool"),
                 "--quality_score", "clip_score", "--fraction", "0.3", "--normsim_fraction", "0.3",
                 "--target", str(tmp_path / "target.npy"), "--save_path", str(out)]) == 0
    survivors = sorted(range(40), key=lambda i: (-clip[i], int(hexes[i], 16)))[:12]
    assert np.load(out).tolist() == sorted(as_uid(hexes[i]) for i in survivors)


def test_fraction_one_keeps_every_scorable_sample(tmp_path, cache_dir):
    written = make_pool(str(tmp_path / "pool"), [15, 10])
    hexes = [h for s in written.values() for h in s["uids"]]
    out = tmp_path / "out.npy"
    assert main(["filter", "--no_progress", "--name", "clip_score", "--metadata_dir", str(tmp_path / "pool"),
                 "--save_path", str(out), "--fraction", "1"]) == 0
    assert np.load(out).tolist() == sorted(as_uid(h) for h in hexes)
