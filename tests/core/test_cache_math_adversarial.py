"""The score cache attacked with score files of the wrong length and values changed under an old checksum:
recomputed, and the result equals the float64 brute force.
"""

from __future__ import annotations

import numpy as np
import pytest
from negcliploss_brute import (
    NEG,
    TOLERANCE,
    adversarial_pool,
    negcliploss_flags,
    shard_scores,
)

from datacomp_plugins.cli import main


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
