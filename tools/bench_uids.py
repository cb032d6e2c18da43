"""Time the ``datacomp-plugins uids`` commands on two random uid files of DataComp-list size.

A is ``--n`` random uids, B shares half of A and adds as many new ones (so intersect, union and difference
all produce millions of uids). Each command runs in its own process, which reports its own seconds and peak
RSS (``resource.getrusage``), and its CPU seconds (user + system: a steadier figure than wall seconds on a
shared machine); the baseline row is that process doing nothing (interpreter + imports). The
inputs are made in a separate process too: Linux carries a parent's peak RSS into children it starts.

Usage: python tools/bench_uids.py [--n 20000000] [--dir /tmp/bench_uids]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datacomp_plugins.core.fileio import atomic_save_npy
from datacomp_plugins.core.uids import UID_DTYPE, sorted_unique, to_hex

CHILD = """
import json, resource, sys, time
from datacomp_plugins.cli import main
import datacomp_plugins.select.masks.uidtools, datacomp_plugins.commands.uids
argv = sys.argv[1:]
before = resource.getrusage(resource.RUSAGE_SELF)
started = time.perf_counter()
code = main(argv) if argv else 0
seconds = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_SELF)
cpu = usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime
print(json.dumps({"code": code, "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": usage.ru_maxrss / 1024}))
"""


def random_uids(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniform 128-bit uids, as DataComp's hashes are."""
    uids = np.empty(n, dtype=UID_DTYPE)
    uids["f0"] = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    uids["f1"] = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    return uids


def run(argv: list[str]) -> dict:
    """One command in a fresh process; its last stdout line is the measurement."""
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{argv} failed:\n{done.stderr}")
    lines = done.stdout.strip().splitlines()
    return {**json.loads(lines[-1]), "summary": lines[-2] if len(lines) > 1 else ""}


def make_inputs(folder: str, n: int) -> None:
    """a.npy, b.npy and a.parquet (A's hex uids) in ``folder``."""
    rng = np.random.default_rng(0)
    a = random_uids(rng, n)
    b = np.concatenate([a[: n // 2], random_uids(rng, n - n // 2)])
    atomic_save_npy(os.path.join(folder, "a.npy"), sorted_unique(a))
    atomic_save_npy(os.path.join(folder, "b.npy"), sorted_unique(b))
    text = to_hex(np.load(os.path.join(folder, "a.npy")))
    hexes = pa.LargeStringArray.from_buffers(
        len(text), pa.py_buffer(np.arange(0, 32 * len(text) + 1, 32, dtype=np.int64)), pa.py_buffer(text))
    pq.write_table(pa.table({"uid": hexes}), os.path.join(folder, "a.parquet"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000_000, help="uids per input file")
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--make-inputs", metavar="FOLDER", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_inputs:
        make_inputs(args.make_inputs, args.n)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = lambda name: os.path.join(folder, name)  # noqa: E731
        started = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--n", str(args.n), "--make-inputs", folder], check=True)
        print(f"setup: two files of {args.n:,} uids in {time.perf_counter() - started:.1f} s", flush=True)

        cases = [
            ("baseline (imports only)", []),
            ("intersect A B", ["uids", "intersect", path("a.npy"), path("b.npy"), "-o", path("i.npy")]),
            ("union A B", ["uids", "union", path("a.npy"), path("b.npy"), "-o", path("u.npy")]),
            ("difference A B", ["uids", "difference", path("a.npy"), path("b.npy"), "-o", path("d.npy")]),
            ("to-hex A", ["uids", "to-hex", path("a.npy"), "-o", path("a.txt")]),
            ("from-hex text", ["uids", "from-hex", path("a.txt"), "-o", path("a_text.npy")]),
            ("from-hex parquet", ["uids", "from-hex", path("a.parquet"), "-o", path("a_parquet.npy")]),
            ("info A", ["uids", "info", path("a.npy")]),
        ]
        print(f"{'command':26} {'seconds':>8} {'cpu s':>6} {'peak RSS MB':>12}  summary")
        for name, argv in cases:
            r = run(argv)
            print(f"{name:26} {r['seconds']:8.2f} {r['cpu_seconds']:6.2f} {r['peak_rss_mb']:12.0f}  {r['summary']}",
                  flush=True)
        reference = np.load(path("a.npy"), mmap_mode="r")
        for name in ("a_text.npy", "a_parquet.npy"):
            if not np.array_equal(np.load(path(name), mmap_mode="r"), reference):
                raise SystemExit(f"{name} differs from a.npy")
        print("round trips: a.npy -> text/parquet -> npy identical")


if __name__ == "__main__":
    main()
