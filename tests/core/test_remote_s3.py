"""Pools on an S3 API (moto's server on loopback, tests/s3server.py): every command gives the local run's bytes,
only the npz members and parquet column chunks a score needs cross the network, transient faults are retried,
permanent ones name the object, and the score cache neither refetches nor misses an object changed in place.
"""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import random_hex_uids, unit_rows, write_shard
from hypothesis import given, settings
from hypothesis import strategies as st
from s3server import S3, Fault

from datacomp_plugins.cli import main
from datacomp_plugins.core.remote import TAIL_BYTES

BUCKET = "pools"
SHARDS = {"s0": 400, "s1": 250, "s2": 350}


def build_pool(folder: str, seed: int = 0, sizes: dict[str, int] = SHARDS) -> None:
    """DataComp's layout: l14 and b32 embeddings (float16), captions long enough that unused columns weigh."""
    rng = np.random.default_rng(seed)
    uids = random_hex_uids(sum(sizes.values()), seed)
    start = 0
    for stem, n in sizes.items():
        img = unit_rows(rng, n, 768)
        txt = img * rng.uniform(0.2, 0.9, (n, 1)) + unit_rows(rng, n, 768)
        txt /= np.linalg.norm(txt, axis=1, keepdims=True)
        arrays = {"l14_img": img.astype(np.float16), "l14_txt": txt.astype(np.float16),
                  "b32_img": unit_rows(rng, n, 512).astype(np.float16),
                  "b32_txt": unit_rows(rng, n, 512).astype(np.float16)}
        captions = ["".join(rng.choice(list("abcdefghij "), 300)) for _ in range(n)]
        write_shard(folder, stem, uids[start:start + n], arrays, extra_columns={"caption": captions})
        start += n


@pytest.fixture(scope="session")
def s3():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = S3()
    yield server
    server.close()


@pytest.fixture
def env(s3, monkeypatch):
    """Credentials and the endpoint for this test only: the environment and fsspec's config, as a user sets them."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "HTTP_PROXY",
                 "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # loopback only, whatever proxy the machine has
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3.endpoint})
    s3.proxy.reset()
    yield s3
    s3.proxy.reset()


@pytest.fixture(scope="session")
def pools(s3, tmp_path_factory):
    """The same pool locally and on the S3 server (uploaded once, with its own credentials)."""
    local = str(tmp_path_factory.mktemp("pool") / "metadata")
    build_pool(local)
    target = tmp_path_factory.mktemp("target") / "target.npy"
    np.save(target, unit_rows(np.random.default_rng(5), 16, 768))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NO_PROXY", "127.0.0.1")
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        fs = fsspec.filesystem("s3", endpoint_url=s3.endpoint)
        fs.mkdir(BUCKET)
        fs.put(local + "/", f"{BUCKET}/medium/metadata/", recursive=True)
    return local, f"s3://{BUCKET}/medium/metadata", str(target)


def member_bytes(npz: str, keys: list[str]) -> int:
    """What the named arrays occupy in the zip: local header + (compressed) data, from the central directory."""
    with zipfile.ZipFile(npz) as archive:
        infos = {i.filename: i for i in archive.infolist()}
        return sum(30 + len(infos[k + ".npy"].filename.encode()) + len(infos[k + ".npy"].extra)
                   + infos[k + ".npy"].compress_size for k in keys)


def chunk_bytes(parquet: str, columns: list[str]) -> int:
    """The compressed size of the named columns' chunks, from the parquet footer."""
    metadata = pq.read_metadata(parquet)
    return sum(metadata.row_group(g).column(i).total_compressed_size for g in range(metadata.num_row_groups)
               for i in range(metadata.num_columns) if metadata.row_group(g).column(i).path_in_schema in columns)


FILTERS = {
    "clip_score": ["--fraction", "0.3"],
    "negcliploss": ["--fraction", "0.3"],
    "normsim2": ["--fraction", "0.6", "--normsim_fraction", "0.3", "--target", "{target}"],
    "normsiminf": ["--fraction", "0.6", "--normsim_fraction", "0.3", "--target", "{target}"],
    "normsim_d": ["--fraction", "0.6", "--normsim_fraction", "0.3", "--normsim_d_iters", "5"],
}
NEEDS = {  # the npz members each baseline reads, per pass over the pool, and the parquet columns
    "clip_score": ([], ["uid", "clip_l14_similarity_score"]),
    "negcliploss": ([["l14_img", "l14_txt"]], ["uid"]),
    "normsim2": ([["l14_img", "l14_txt"]], ["uid"]),
    "normsiminf": ([["l14_img", "l14_txt"]], ["uid"]),
    # scoring, then the survivors' image embeddings for the iterations (a second pass)
    "normsim_d": ([["l14_img", "l14_txt"], ["l14_img"]], ["uid"]),
}


def run_filter(name: str, metadata: str, target: str, save: str, cache: str, *extra: str) -> int:
    args = [a.replace("{target}", target) for a in FILTERS[name]]
    return main(["filter", "--no_progress", "--name", name, "--metadata_dir", metadata, "--save_path", save,
                 "--cache_dir", cache, *args, *extra])


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_filter_on_s3_equals_local_and_reads_only_what_it_needs(name, env, pools, tmp_path):
    local, remote, target = pools
    assert run_filter(name, local, target, str(tmp_path / "local.npy"), str(tmp_path / "c1")) == 0
    env.proxy.reset()
    assert run_filter(name, remote, target, str(tmp_path / "s3.npy"), str(tmp_path / "c2")) == 0
    assert (tmp_path / "s3.npy").read_bytes() == (tmp_path / "local.npy").read_bytes()
    passes, columns = NEEDS[name]
    for stem in SHARDS:
        npz, parquet = os.path.join(local, f"{stem}.npz"), os.path.join(local, f"{stem}.parquet")
        fetched_npz = env.proxy.bytes_fetched(f"/{stem}.npz")
        fetched_parquet = env.proxy.bytes_fetched(f"/{stem}.parquet")
        members = sum(member_bytes(npz, keys) for keys in passes)
        print(f"{name} {stem}: npz {fetched_npz:,} B of {os.path.getsize(npz):,} (members {members:,}), "
              f"parquet {fetched_parquet:,} B of {os.path.getsize(parquet):,} "
              f"(chunks {chunk_bytes(parquet, columns):,})")
        if passes:  # the central directory's tail, then the members: nothing of b32_*
            assert members <= fetched_npz <= 1.1 * members
            assert len(env.proxy.gets(f"/{stem}.npz")) <= 2 * len(passes)
        else:
            assert fetched_npz == 0
        # the footer's tail, then the column chunks: the captions' column (most of the file) never
        assert chunk_bytes(parquet, columns) <= fetched_parquet <= chunk_bytes(parquet, columns) + TAIL_BYTES
        assert fetched_parquet < 0.5 * os.path.getsize(parquet)


def test_workers_in_other_processes_read_s3(env, pools, tmp_path):
    local, remote, target = pools
    assert run_filter("negcliploss", local, target, str(tmp_path / "local.npy"), str(tmp_path / "c1")) == 0
    assert run_filter("negcliploss", remote, target, str(tmp_path / "s3.npy"), str(tmp_path / "c2"),
                      "--num_workers", "2") == 0
    assert (tmp_path / "s3.npy").read_bytes() == (tmp_path / "local.npy").read_bytes()


def test_scores_inspect_and_recipe_on_s3_equal_local(env, pools, tmp_path, capsys):
    local, remote, target = pools
    outputs = {}
    for where, pool in (("local", local), ("s3", remote)):
        folder = tmp_path / where  # the same file names on both sides: the page shows them
        folder.mkdir()
        cache = str(folder / "cache")
        scores = folder / "scores.parquet"
        assert main(["scores", "--metadata_dir", pool, "--out", str(scores), "--cache_dir", cache,
                     "--target", target, "--no_progress"]) == 0
        recipe = folder / "recipe.npy"
        assert main(["recipe", "negcliploss_30", "--metadata_dir", pool, "--save_path", str(recipe),
                     "--cache_dir", cache, "--no_progress"]) == 0
        page = folder / "page.html"
        assert main(["inspect", str(recipe), "--metadata_dir", pool, "--out", str(page), "--cache_dir", cache,
                     "--no_progress"]) == 0
        text = page.read_text().replace(str(folder), "DIR").replace(pool, "POOL")
        outputs[where] = (scores.read_bytes(), recipe.read_bytes(), text)
    capsys.readouterr()
    assert pq.read_table(io.BytesIO(outputs["s3"][0])).equals(pq.read_table(io.BytesIO(outputs["local"][0])))
    assert outputs["s3"][0] == outputs["local"][0]
    assert outputs["s3"][1] == outputs["local"][1]
    assert outputs["s3"][2] == outputs["local"][2]
    assert env.proxy.gets(".npz"), "the s3 runs must have read the pool on the server"


@pytest.mark.parametrize("kind", [500, 503, "drop", "cut"])
def test_transient_faults_are_retried_to_the_same_file(kind, env, pools, tmp_path, monkeypatch):
    import datacomp_plugins.core.pool as pool_module

    monkeypatch.setattr(pool_module.time, "sleep", lambda _: None)  # our own backoff; the client's stays
    local, remote, target = pools
    assert run_filter("negcliploss", local, target, str(tmp_path / "local.npy"), str(tmp_path / "c1")) == 0
    faults = [Fault(kind, times=2, path_suffix="s1.npz"), Fault(kind, times=1, path_suffix="s0.parquet"),
              Fault(kind, times=1, path_suffix=f"/{BUCKET}")]  # the listing too
    env.proxy.faults.extend(faults)
    assert run_filter("negcliploss", remote, target, str(tmp_path / "s3.npy"), str(tmp_path / "c2")) == 0
    assert [f.hits for f in faults] == [2, 1, 1]  # the faults did happen
    assert (tmp_path / "s3.npy").read_bytes() == (tmp_path / "local.npy").read_bytes()


@pytest.mark.parametrize("status,words", [(403, "access denied"), (404, "file not found")])
def test_permanent_errors_name_the_object_once(status, words, env, pools, tmp_path, capsys, monkeypatch):
    import datacomp_plugins.core.pool as pool_module

    monkeypatch.setattr(pool_module.time, "sleep", lambda _: None)
    _, remote, target = pools
    env.proxy.faults.append(Fault(status, times=None, path_suffix="s1.npz"))
    out = tmp_path / "s3.npy"
    assert run_filter("negcliploss", remote, target, str(out), str(tmp_path / "c")) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert f"error: s3://{BUCKET}/medium/metadata/s1.npz: {words}" in err
    print(err)
    assert len(env.proxy.gets("s1.npz")) <= 3  # not retried as if transient (the client may retry once)
    assert not out.exists()


def test_a_refused_listing_is_one_clear_error(env, pools, tmp_path, capsys):
    _, remote, target = pools
    env.proxy.faults.append(Fault(403, times=None, path_suffix=f"/{BUCKET}"))
    assert run_filter("negcliploss", remote, target, str(tmp_path / "o.npy"), str(tmp_path / "c")) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert f"error: --metadata_dir {remote}: access denied" in err


def test_cache_rerun_fetches_nothing_and_notices_an_object_changed_in_place(env, pools, tmp_path, capsys):
    local, remote, target = pools
    cache = str(tmp_path / "cache")
    assert run_filter("negcliploss", remote, target, str(tmp_path / "a.npy"), cache) == 0
    assert len(env.proxy.gets(".npz")) == 2 * len(SHARDS)  # tail + members, once per shard
    env.proxy.reset()
    assert run_filter("negcliploss", remote, target, str(tmp_path / "b.npy"), cache) == 0
    assert env.proxy.gets(".npz") == [] and env.proxy.gets(".parquet") == []  # the listing alone
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()

    # a copy of the pool elsewhere in the store: the cache is keyed by content (ETag), so nothing is fetched
    fs = fsspec.filesystem("s3")
    copy = f"{BUCKET}/copy/metadata"
    fs.put(local + "/", copy + "/", recursive=True)
    env.proxy.reset()
    assert run_filter("negcliploss", f"s3://{copy}", target, str(tmp_path / "c.npy"), cache) == 0
    assert env.proxy.gets(".npz") == []

    # s1.npz overwritten in place with other embeddings of the same shapes: same key, same size, new ETag
    changed = tmp_path / "changed"
    build_pool(str(changed))
    build_pool(str(tmp_path / "other"), seed=9)
    (changed / "s1.npz").write_bytes((tmp_path / "other" / "s1.npz").read_bytes())
    assert os.path.getsize(changed / "s1.npz") == os.path.getsize(os.path.join(local, "s1.npz"))
    before = fs.info(f"{copy}/s1.npz")["ETag"]
    fs.put(str(changed / "s1.npz"), f"{copy}/s1.npz")
    assert fs.info(f"{copy}/s1.npz", refresh=True)["ETag"] != before
    env.proxy.reset()
    assert run_filter("negcliploss", f"s3://{copy}", target, str(tmp_path / "d.npy"), cache) == 0
    assert {r.path.rsplit("/", 1)[1] for r in env.proxy.gets(".npz")} == {"s1.npz"}  # only the changed shard
    assert run_filter("negcliploss", str(changed), target, str(tmp_path / "e.npy"), str(tmp_path / "fresh")) == 0
    assert (tmp_path / "d.npy").read_bytes() == (tmp_path / "e.npy").read_bytes()
    assert (tmp_path / "d.npy").read_bytes() != (tmp_path / "c.npy").read_bytes()


def test_a_corrupt_member_fails_its_crc(env, pools, tmp_path, capsys):
    local, _, target = pools
    with open(os.path.join(local, "s0.npz"), "rb") as handle:
        data = bytearray(handle.read())
    with zipfile.ZipFile(os.path.join(local, "s0.npz")) as archive:
        info = archive.getinfo("l14_img.npy")
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + 500] ^= 0x40  # inside the array data
    fs = fsspec.filesystem("s3")
    folder = f"{BUCKET}/corrupt/metadata"
    for name in ("s0.parquet",):
        fs.put(os.path.join(local, name), f"{folder}/{name}")
    fs.pipe(f"{folder}/s0.npz", bytes(data))
    assert run_filter("negcliploss", f"s3://{folder}", target, str(tmp_path / "o.npy"), str(tmp_path / "c")) == 2
    err = capsys.readouterr().err
    assert f"{folder}/s0.npz" in err and "CRC-32" in err


def test_storage_options_flag_gives_the_endpoint_and_credentials(env, pools, tmp_path, monkeypatch, capsys):
    local, remote, target = pools
    monkeypatch.setitem(fsspec.config.conf, "s3", {})  # no endpoint from fsspec's config ...
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")  # ... nor credentials from the environment
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    options = json.dumps({"endpoint_url": env.endpoint, "key": "testing", "secret": "testing"})
    assert run_filter("clip_score", local, target, str(tmp_path / "local.npy"), str(tmp_path / "c1")) == 0
    assert run_filter("clip_score", remote, target, str(tmp_path / "s3.npy"), str(tmp_path / "c2"),
                      "--storage_options", options) == 0
    assert (tmp_path / "s3.npy").read_bytes() == (tmp_path / "local.npy").read_bytes()
    assert env.proxy.gets(".parquet")
    for bad, words in (("{endpoint", "--storage_options: not JSON"), ("[1]", "expected a JSON object")):
        assert run_filter("clip_score", remote, target, str(tmp_path / "x.npy"), str(tmp_path / "c3"),
                          "--storage_options", bad) == 2
        assert words in capsys.readouterr().err


def test_a_footer_larger_than_the_tail_costs_one_more_read(env, tmp_path):
    from datacomp_plugins.core.pool import Pool

    folder = tmp_path / "wide"
    rng = np.random.default_rng(3)
    img = unit_rows(rng, 50, 768).astype(np.float16)
    wide = {f"extra_column_with_a_long_name_{i:04d}": np.arange(50.0) + i for i in range(400)}
    write_shard(str(folder), "w0", random_hex_uids(50, 3), {"l14_img": img, "l14_txt": img}, extra_columns=wide)
    footer = pq.read_metadata(folder / "w0.parquet").serialized_size
    assert footer > TAIL_BYTES
    fsspec.filesystem("s3").put(str(folder) + "/", f"{BUCKET}/wide/metadata/", recursive=True)
    pool = Pool(f"s3://{BUCKET}/wide/metadata")
    env.proxy.reset()
    shard = pool.shards[0]
    assert pool.read_uids(shard).tolist() == Pool(str(folder)).read_uids(Pool(str(folder)).shards[0]).tolist()
    assert len(env.proxy.gets("w0.parquet")) == 3  # the tail, the rest of the footer, the uid chunk
    assert env.proxy.bytes_fetched("w0.parquet") <= footer + 8 + chunk_bytes(str(folder / "w0.parquet"), ["uid"])
    assert pool.num_rows(shard) == 50 and len(env.proxy.gets("w0.parquet")) == 3  # the footer is kept


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(1, 80)), max_size=5),
       st.lists(st.tuples(st.integers(0, 300), st.integers(0, 120)), min_size=1, max_size=6))
def test_prefetched_parts_return_the_file_and_fetch_only_gaps(known, reads):
    from datacomp_plugins.core.remote import PrefetchedParts

    content = bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8))
    fetched = []

    def fetcher(start, stop):
        fetched.append((start, stop))
        return content[start:stop]

    parts = {(a, min(a + n, 300)): content[a:min(a + n, 300)] for a, n in known if a < 300}
    cache = PrefetchedParts(0, fetcher, len(content), data=dict(parts))
    for start, length in reads:
        before = len(fetched)
        missing = cache.gaps(start, min(start + length, 300)) if start < 300 else []
        assert cache._fetch(start, start + length) == content[start:start + length]
        assert fetched[before:] == missing  # exactly the bytes not known yet, and nothing twice
