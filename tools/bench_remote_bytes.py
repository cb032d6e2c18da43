"""Bytes a score fetches from a pool on S3, against the bytes it needs; and local read speed, this code vs another.

A DataComp-like pool (``--shards`` shards of ``--rows`` samples: parquet with DataComp's columns, npz with
``l14_img``, ``l14_txt``, ``b32_img``, ``b32_txt``, ``dedup`` in ``--dtype``) is put on moto's S3 server on
127.0.0.1 behind the counting proxy of ``tests/s3server.py``. Each ``filter`` run is a fresh process with an
empty score cache and reads ``s3://``; the proxy sums the response bodies per object.

"needed" is, per shard, the zip entries (local header + compressed data) of the npz members the score reads
plus the compressed size of the parquet column chunks it reads (from the footer). The goal is fetched/needed
<= 1.1 for clip_score (uid + clip_l14_similarity_score columns only), negcliploss (l14 members + uid) and
normsiminf with a target (the same).

``--before DIR`` names a source tree of another version (e.g. ``git archive ad946e2 datacomp_plugins | tar -x
-C DIR``); every measurement is then made for both, with ``PYTHONPATH`` choosing the code. The local part
times reading every shard's uid column and l14 members (best of ``--repeats``, page cache warm) and a whole
local ``filter --name negcliploss`` run.

Usage: python tools/bench_remote_bytes.py [--rows 8192] [--shards 4] [--dtype float16] [--before DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from s3server import S3  # noqa: E402  (the tests' loopback S3 server and counting proxy)

SCORES = {  # name: (filter flags, npz members read, parquet columns read)
    "clip_score": (["--name", "clip_score", "--fraction", "0.3"], [], ["uid", "clip_l14_similarity_score"]),
    "negcliploss": (["--name", "negcliploss", "--fraction", "0.3"], ["l14_img", "l14_txt"], ["uid"]),
    "normsiminf+target": (["--name", "normsiminf", "--fraction", "0.3", "--normsim_fraction", "0.2",
                           "--target", "{target}"], ["l14_img", "l14_txt"], ["uid"]),
}

LOCAL_READ = """
import sys, time
import datacomp_plugins
from datacomp_plugins.core.pool import Pool
print(datacomp_plugins.__file__, file=sys.stderr)
pool = Pool(sys.argv[1])
best = float("inf")
for _ in range(int(sys.argv[2])):
    started = time.perf_counter()
    for shard in pool.shards:
        rows = len(pool.read_uids(shard))
        pool.read_embeddings(shard, ["l14_img", "l14_txt"], rows)
    best = min(best, time.perf_counter() - started)
print(best)
"""


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build_pool(folder: str, shards: int, rows: int, dtype: str, seed: int = 0) -> None:
    """DataComp's layout and columns; random unit embeddings with a planted image-text correlation."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(shards):
        img = unit(rng, rows, 768)
        txt = img * rng.uniform(0.2, 0.9, (rows, 1)) + unit(rng, rows, 768)
        txt /= np.linalg.norm(txt, axis=1, keepdims=True)
        b32_img, b32_txt = unit(rng, rows, 512), unit(rng, rows, 512)
        uids = [bytes(rng.integers(0, 256, 16, dtype=np.uint8)).hex() for _ in range(rows)]
        words = np.array(["a", "photo", "of", "the", "dog", "cat", "on", "in", "red", "small", "house", "tree"])
        table = pa.table({
            "uid": uids,
            "url": [f"https://images.example.com/{rng.integers(1e12)}/{i}.jpg" for i in range(rows)],
            "text": [" ".join(rng.choice(words, rng.integers(4, 20))) for _ in range(rows)],
            "original_width": rng.integers(200, 4000, rows),
            "original_height": rng.integers(200, 4000, rows),
            "clip_b32_similarity_score": (b32_img * b32_txt).sum(1).astype(np.float64),
            "clip_l14_similarity_score": (img * txt).sum(1).astype(np.float64),
            "face_bboxes": [[] for _ in range(rows)],
            "sha256": [bytes(rng.integers(0, 256, 32, dtype=np.uint8)).hex() for _ in range(rows)],
        })
        stem = f"{index:08d}"
        pq.write_table(table, os.path.join(folder, f"{stem}.parquet"))
        np.savez(os.path.join(folder, f"{stem}.npz"), l14_img=img.astype(dtype), l14_txt=txt.astype(dtype),
                 b32_img=b32_img.astype(dtype), b32_txt=b32_txt.astype(dtype),
                 dedup=unit(rng, rows, 256).astype(dtype))


def needed(folder: str, stem: str, members: list[str], columns: list[str]) -> tuple[int, int]:
    """(npz bytes of the members' zip entries, parquet bytes of the columns' chunks) of one shard."""
    with zipfile.ZipFile(os.path.join(folder, f"{stem}.npz")) as archive:
        infos = {i.filename: i for i in archive.infolist()}
    npz = sum(30 + len(infos[m + ".npy"].filename.encode()) + len(infos[m + ".npy"].extra)
              + infos[m + ".npy"].compress_size for m in members)
    metadata = pq.read_metadata(os.path.join(folder, f"{stem}.parquet"))
    parquet = sum(metadata.row_group(g).column(i).total_compressed_size
                  for g in range(metadata.num_row_groups) for i in range(metadata.num_columns)
                  if metadata.row_group(g).column(i).path_in_schema in columns)
    return npz, parquet


def run(code: str, argv: list[str], env: dict) -> float:
    """One command in a fresh process importing the package from ``code`` (run outside any checkout:
    ``python -m`` puts the working directory first on the path)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "datacomp_plugins", *argv], check=True, env={**env, "PYTHONPATH": code},
                   stdout=subprocess.DEVNULL, cwd=tempfile.gettempdir())
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--before", help="source tree of the version to compare with")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--local_only", action="store_true", help="only the local speed comparison")
    parser.add_argument("--reads_only", action="store_true", help="local: time the reads, not a whole filter run")
    args = parser.parse_args()
    codes = ([("before", os.path.abspath(args.before))] if args.before else []) + [("after", ROOT)]

    work = args.dir or tempfile.mkdtemp(prefix="bench_remote_")
    local = os.path.join(work, "metadata")
    build_pool(local, args.shards, args.rows, args.dtype)
    target = os.path.join(work, "target.npy")
    np.save(target, unit(np.random.default_rng(1), 1000, 768))
    stems = sorted(n[:-4] for n in os.listdir(local) if n.endswith(".npz"))
    npz_size = np.mean([os.path.getsize(os.path.join(local, f"{s}.npz")) for s in stems])
    parquet_size = np.mean([os.path.getsize(os.path.join(local, f"{s}.parquet")) for s in stems])
    print(f"pool: {args.shards} shards x {args.rows:,} rows, {args.dtype}; per shard npz {npz_size:,.0f} B, "
          f"parquet {parquet_size:,.0f} B")

    results = {}
    if not args.local_only:
        results = measure_s3(args, codes, work, local, target, stems)
    local_speed(args, codes, work, local)
    print(json.dumps({f"{s}/{c}": v for (s, c), v in results.items()}))


def measure_s3(args, codes, work, local, target, stems) -> dict:
    """Every score on the pool on S3, once per version, each in a fresh process with an empty cache."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    s3 = S3()
    credentials = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                   "NO_PROXY": "127.0.0.1"}
    os.environ.update(credentials)
    import fsspec

    fs = fsspec.filesystem("s3", endpoint_url=s3.endpoint)
    fs.mkdir("bench")
    fs.put(local + "/", "bench/metadata/", recursive=True)
    env = {**os.environ, **credentials, "FSSPEC_S3_ENDPOINT_URL": s3.endpoint}
    results = {}
    print(f"\n{'score':<18} {'code':<7} {'npz B/shard':>13} {'parquet B/shard':>16} {'needed B/shard':>15} "
          f"{'fetched/needed':>15} {'GETs/shard':>11} {'B/sample':>9}")
    for score, (flags, members, columns) in SCORES.items():
        need = [needed(local, s, members, columns) for s in stems]
        need_total = sum(a + b for a, b in need) / len(stems)
        for label, code in codes:
            cache = tempfile.mkdtemp(dir=work)
            s3.proxy.reset()
            argv = ["filter", "--no_progress", "--metadata_dir", "s3://bench/metadata", "--save_path",
                    os.path.join(work, f"{score}-{label}.npy"), "--cache_dir", cache,
                    *[f.replace("{target}", target) for f in flags]]
            run(code, argv, env)
            npz = sum(s3.proxy.bytes_fetched(f"/{s}.npz") for s in stems) / len(stems)
            parquet = sum(s3.proxy.bytes_fetched(f"/{s}.parquet") for s in stems) / len(stems)
            gets = sum(len(s3.proxy.gets(f"/{s}.npz")) + len(s3.proxy.gets(f"/{s}.parquet")) for s in stems)
            ratio = (npz + parquet) / need_total
            results[(score, label)] = {"npz": npz, "parquet": parquet, "needed": need_total, "ratio": ratio}
            print(f"{score:<18} {label:<7} {npz:>13,.0f} {parquet:>16,.0f} {need_total:>15,.0f} {ratio:>15.3f} "
                  f"{gets / len(stems):>11.1f} {(npz + parquet) / args.rows:>9,.0f}")
        if len(codes) == 2:
            files = {pathlib.Path(work, f"{score}-{label}.npy").read_bytes() for label, _ in codes}
            same = len(files) == 1
            print(f"{'':<18} uid files identical before/after: {same}")
    s3.close()
    return results


def local_speed(args, codes, work, local) -> None:
    """Local reads and a local filter run, per version (the remote path must not cost a local pool anything)."""
    print(f"\nlocal reads (uid column + l14 members of {args.shards} shards) and a local "
          f"`filter --name negcliploss`, best of {args.repeats} rounds, the versions interleaved:")
    reads: dict[str, list[float]] = {label: [] for label, _ in codes}
    walls: dict[str, list[float]] = {label: [] for label, _ in codes}
    for _ in range(args.repeats):
        for label, code in codes:
            out = subprocess.run([sys.executable, "-c", LOCAL_READ, local, "3"], check=True, capture_output=True,
                                 text=True, env={**os.environ, "PYTHONPATH": code}, cwd=tempfile.gettempdir())
            reads[label].append(float(out.stdout))
            if args.reads_only:
                continue
            cache = tempfile.mkdtemp(dir=work)
            walls[label].append(run(code, ["filter", "--no_progress", "--name", "negcliploss", "--fraction", "0.3",
                                           "--metadata_dir", local, "--save_path",
                                           os.path.join(work, f"local-{label}.npy"), "--cache_dir", cache],
                                    dict(os.environ)))
    for label, _ in codes:
        wall = f"filter {min(walls[label]):.2f} s (median {np.median(walls[label]):.2f})" if walls[label] else ""
        print(f"  {label:<7} reads {min(reads[label]):.3f} s (median {np.median(reads[label]):.3f})   {wall}")


if __name__ == "__main__":
    main()
