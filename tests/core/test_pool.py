"""Reading pools: local, file:// and memory:// URLs, float16/float32, compressed or not, and bad layouts."""

from __future__ import annotations

import fsspec
import numpy as np
import pytest
from conftest import make_pool, random_hex_uids, unit_rows, write_shard

from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.pool import Pool
from datacomp_plugins.core.uids import UID_DTYPE


@pytest.mark.parametrize("dtype,compressed", [(np.float16, False), (np.float32, True), (np.float16, True)])
def test_reads_embeddings_as_stored_and_uids(tmp_path, dtype, compressed):
    written = make_pool(str(tmp_path), [7, 3], dtype=dtype, compressed=compressed)
    pool = Pool(f"file://{tmp_path}")
    assert [s.stem for s in pool.shards] == ["00000000", "00000001"]
    shard = pool.shards[1]
    assert pool.num_rows(shard) == 3
    arrays = pool.read_embeddings(shard, ["l14_img"], 3)
    assert arrays["l14_img"].dtype == dtype  # converted by the consumer, once, where it is cheapest
    np.testing.assert_array_equal(arrays["l14_img"], written["00000001"]["l14_img"].astype(dtype))
    want = np.array([divmod(int(u, 16), 2**64) for u in written["00000001"]["uids"]], dtype=UID_DTYPE)
    assert (pool.read_uids(shard) == want).all()


def test_other_float_widths_arrive_as_float32(tmp_path):
    written = make_pool(str(tmp_path), [4], dtype=np.float64)
    arrays = Pool(str(tmp_path)).read_embeddings(Pool(str(tmp_path)).shards[0], ["l14_txt"], 4)
    assert arrays["l14_txt"].dtype == np.float32
    np.testing.assert_array_equal(arrays["l14_txt"], written["00000000"]["l14_txt"].astype(np.float32))


def test_memory_filesystem():
    fs = fsspec.filesystem("memory")
    rng = np.random.default_rng(0)
    write_shard("/pool-a", "s0", random_hex_uids(4), {"l14_img": unit_rows(rng, 4, 768),
                                                      "l14_txt": unit_rows(rng, 4, 768)}, fs=fs)
    pool = Pool("memory://pool-a")
    assert len(pool.shards) == 1
    assert pool.read_embeddings(pool.shards[0], ["l14_txt"], 4)["l14_txt"].shape == (4, 768)


def test_fingerprint_changes_with_content(tmp_path):
    make_pool(str(tmp_path), [4])
    before = Pool(str(tmp_path)).shards[0].fingerprint
    make_pool(str(tmp_path), [5])
    assert Pool(str(tmp_path)).shards[0].fingerprint != before


def test_bad_layouts(tmp_path):
    with pytest.raises(PluginError, match="--metadata_dir .*missing.*: no such directory"):
        Pool(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PluginError, match="no .parquet files"):
        Pool(str(tmp_path / "empty"))
    make_pool(str(tmp_path / "p"), [4])
    (tmp_path / "p" / "00000000.npz").unlink()
    with pytest.raises(PluginError, match=r"00000000\.parquet: no matching 00000000\.npz"):
        Pool(str(tmp_path / "p"))


def test_missing_key_and_row_mismatch(tmp_path):
    rng = np.random.default_rng(0)
    write_shard(str(tmp_path), "s", random_hex_uids(5), {"l14_img": unit_rows(rng, 4, 768)})
    pool = Pool(str(tmp_path))
    with pytest.raises(PluginError, match=r"s\.npz: no array 'l14_txt'; it has \['l14_img'\]"):
        pool.read_embeddings(pool.shards[0], ["l14_txt"], 5)
    with pytest.raises(PluginError, match=r"'l14_img' has 4 rows but .*s\.parquet has 5"):
        pool.read_embeddings(pool.shards[0], ["l14_img"], 5)
