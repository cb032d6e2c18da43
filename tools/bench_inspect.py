"""Time ``inspect`` and ``scores`` on a ~100,000-sample pool with images (the toy pool plus img2dataset tars).

The pool is the toy generator's (11 shards of 10,000 rows, the last 6,000: 106,000 samples), with a tiny
JPEG per sample in img2dataset's layout (``<key>.jpg/.txt/.json``, the uid in the json) and its labels as a
truth folder (component = the planted kind). Two uid files come from ``filter`` (clip_score and
negcliploss, top 30%), so the score cache is warm, as it is after filtering.

Measured, each in its own process (wall and CPU seconds):
- ``inspect A B --shards --truth`` with the warm cache (target: under 30 s on 2 cores);
- ``scores`` with the warm cache, against a plain read of the same cached score files (the floor).

Usage: python tools/bench_inspect.py [--dir /tmp/bench_inspect] [--shards 11] [--rows 10000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CHILD = """
import json, resource, sys, time
started = time.perf_counter()
from datacomp_plugins.cli import main
code = main(sys.argv[1:])
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"code": code, "seconds": time.perf_counter() - started,
                  "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}))
"""

READ = """
import json, resource, sys, time
import numpy as np
started = time.perf_counter()
from datacomp_plugins.apps.pool_scores import PoolScores, ScoreSettings
scores = PoolScores(ScoreSettings(sys.argv[1], cache_dir=sys.argv[2], progress=False))
opened = time.perf_counter()
rows = 0
for _, uids, values in scores.shards():  # touch every value, as writing them does
    rows += len(uids) + 0 * sum(int(np.isfinite(v).sum()) for v in values.values())
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"code": 0, "seconds": time.perf_counter() - started, "read_seconds": time.perf_counter() - opened,
                  "rows": rows, "cpu_seconds": usage.ru_utime + usage.ru_stime}))
"""


def run(code: str, argv: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def tiny_jpegs(count: int = 64) -> list[bytes]:
    from PIL import Image, ImageDraw

    out = []
    rng = np.random.default_rng(0)
    for _ in range(count):
        image = Image.new("RGB", (96, 72), tuple(int(c) for c in rng.integers(0, 256, 3)))
        ImageDraw.Draw(image).ellipse((20, 15, 60, 50), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


def write_tars(metadata: str, shards: str) -> int:
    """One img2dataset-style tar per metadata shard; returns the number of samples written."""
    os.makedirs(shards, exist_ok=True)
    jpegs = tiny_jpegs()
    total = 0
    for index, name in enumerate(sorted(n for n in os.listdir(metadata) if n.endswith(".parquet"))):
        table = pq.read_table(os.path.join(metadata, name), columns=["uid", "text"])
        stem = name[: -len(".parquet")]
        with tarfile.open(os.path.join(shards, f"{stem}.tar"), "w", format=tarfile.USTAR_FORMAT) as archive:
            for row, (uid, text) in enumerate(zip(*(table.column(c).to_pylist() for c in ("uid", "text")),
                                                  strict=True)):
                key = f"{index:05d}{row:04d}"
                for ext, data in (("jpg", jpegs[row % len(jpegs)]), ("txt", text.encode()),
                                  ("json", json.dumps({"uid": uid, "caption": text, "key": key}).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
        with open(os.path.join(shards, f"{stem}_stats.json"), "w") as handle:
            json.dump({"successes": table.num_rows}, handle)
        total += table.num_rows
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="/tmp/bench_inspect")
    parser.add_argument("--shards", type=int, default=11)
    parser.add_argument("--rows", type=int, default=10000)
    args = parser.parse_args()
    from datacomp_plugins.apps.toy import write_toy_pool

    root = args.dir
    metadata, shards, truth, cache = (os.path.join(root, n) for n in ("toy/metadata", "shards", "truth", "cache"))
    if not os.path.isdir(metadata):
        started = time.perf_counter()
        print(write_toy_pool(os.path.join(root, "toy"), shards=args.shards, rows=args.rows))
        samples = write_tars(metadata, shards)
        os.makedirs(truth, exist_ok=True)
        labels = pq.read_table(os.path.join(root, "toy", "labels.parquet"))
        pq.write_table(pa.table({"uid": labels.column("uid"), "component": labels.column("component")}),
                       os.path.join(truth, "labels.parquet"))
        print(f"pool with images: {samples} samples in {time.perf_counter() - started:.1f} s")
    files = {}
    for name in ("clip_score", "negcliploss"):
        files[name] = os.path.join(root, f"{name}.npy")
        result = run(CHILD, ["filter", "--name", name, "--metadata_dir", metadata, "--fraction", "0.3",
                             "--save_path", files[name], "--cache_dir", cache, "--no_progress"])
        print(f"filter {name}: {result['seconds']:.1f} s (fills the score cache)")
    page = run(CHILD, ["inspect", files["clip_score"], files["negcliploss"], "--metadata_dir", metadata,
                       "--shards", shards, "--truth", truth, "--out", os.path.join(root, "report.html"),
                       "--cache_dir", cache, "--no_progress"])
    size = os.path.getsize(os.path.join(root, "report.html")) / 1e6
    print(f"inspect (warm cache, 2 files, shards, truth): {page['seconds']:.1f} s wall, "
          f"{page['cpu_seconds']:.1f} s CPU, peak RSS {page['peak_rss_mb']:.0f} MB, page {size:.2f} MB")
    table = run(CHILD, ["scores", "--metadata_dir", metadata, "--out", os.path.join(root, "scores.parquet"),
                        "--cache_dir", cache, "--no_progress"])
    floor = run(READ, [metadata, cache])
    print(f"scores (warm cache): {table['seconds']:.2f} s wall; reading the same cached files alone: "
          f"{floor['seconds']:.2f} s ({floor['read_seconds']:.2f} s after opening the pool); {floor['rows']} rows")


if __name__ == "__main__":
    main()
