"""Peak memory of a filter run against pool size: 4x the shards (same shard size) must cost <= 1.3x.

Each run is a fresh process (peak RSS = ru_maxrss of the child), so runs do not share memory. The global
selection holds ~25 bytes per sample (16 uid + 4 score + masks), which is what grows with the pool; the
shards in flight (embeddings, one logit block) are what sets the base.

Usage: python tools/bench_memory.py [--rows 8192] [--shards 2] [--factor 4] [--name negcliploss]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile

from bench_negcliploss import write_pool  # tools/ is on sys.path when this script runs


def peak_rss_mib(args: list[str]) -> float:
    """Peak RSS of one child process running the command line."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run([sys.executable, "-m", "datacomp_plugins", *args], check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(after, before) / 1024  # ru_maxrss is KiB on Linux; children's peak is a running max


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--name", default="negcliploss")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as root:
        # the smaller pool runs first: RUSAGE_CHILDREN's maximum only ever grows
        for shards in (args.shards, args.shards * args.factor):
            folder = os.path.join(root, f"pool{shards}")
            write_pool(folder, shards, args.rows, 768)
            cli = ["filter", "--name", args.name, "--metadata_dir", folder, "--fraction", "0.3", "--no_progress",
                   "--save_path", os.path.join(root, f"o{shards}.npy"), "--cache_dir", os.path.join(root, f"c{shards}"),
                   "--negcliploss_batch_size", str(args.rows), "--num_batches", "2"]
            results.append((shards, peak_rss_mib(cli)))
    for shards, rss in results:
        print(f"{args.name}: {shards:>3} shards x {args.rows} rows: peak RSS {rss:.0f} MiB")
    print(f"ratio {args.factor}x shards: {results[1][1] / results[0][1]:.2f}x memory")


if __name__ == "__main__":
    main()
