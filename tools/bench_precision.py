"""How much --precision bf16/fp16 changes negCLIPLoss and NormSim_inf selections against fp32.

For each precision: Spearman correlation of the scores with fp32's, and the overlap of the selected
subset (top 30% for negCLIPLoss; 30% -> 20% for NormSim_inf) with fp32's, plus the end-to-end time. Runs
on the example pool and on a larger generated one (more shards, more rows per shard).

Usage: python tools/bench_precision.py [--rows 4000] [--shards 6] [--large_rows 16384] [--large_shards 4]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from datacomp_plugins.apps.toy import write_toy_pool
from datacomp_plugins.config import FilterConfig
from datacomp_plugins.core.cache import ScoreCache
from datacomp_plugins.core.pool import Pool
from datacomp_plugins.pipeline import gather, run_filter, shard_score


def ranks(x: np.ndarray) -> np.ndarray:
    out = np.empty(len(x))
    out[np.argsort(x, kind="stable")] = np.arange(len(x))
    return out


def measure(pool_dir: str, target: str, label: str) -> None:
    print(f"\n{label}")
    print(f"  {'baseline':<12} {'precision':<9} {'spearman':>9} {'overlap':>8} {'seconds':>8}")
    for name, extra in (("negcliploss", {"fraction": 0.3}),
                        ("normsiminf", {"fraction": 0.3, "normsim_fraction": 0.2, "target": target})):
        reference = None
        for precision in ("fp32", "bf16", "fp16"):
            with tempfile.TemporaryDirectory() as cache:
                save = os.path.join(cache, "out.npy")
                config = FilterConfig(name=name, metadata_dir=pool_dir, save_path=save, cache_dir=cache,
                                      precision=precision, progress=False, **extra)
                start = time.perf_counter()
                run_filter(config)
                seconds = time.perf_counter() - start
                pool = Pool(pool_dir)
                scores = (shard_score(config, "negcliploss"),)
                _, (values,) = gather(pool, ScoreCache(cache, pool), scores)
                kept = set(map(tuple, np.load(save).tolist()))
            if reference is None:
                reference = (values, kept)
            rho = np.corrcoef(ranks(values), ranks(reference[0]))[0, 1]
            overlap = len(kept & reference[1]) / max(1, len(reference[1]))
            print(f"  {name:<12} {precision:<9} {rho:>9.5f} {overlap:>8.4f} {seconds:>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--shards", type=int, default=6)
    parser.add_argument("--large_rows", type=int, default=16384)
    parser.add_argument("--large_shards", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        for label, rows, shards in (("example pool", args.rows, args.shards),
                                    ("larger pool", args.large_rows, args.large_shards)):
            out = os.path.join(root, label.replace(" ", "_"))
            write_toy_pool(out, shards=shards, rows=rows)
            measure(os.path.join(out, "metadata"), os.path.join(out, "targets", "target_l14.npy"),
                    f"{label}: {shards} shards x {rows} rows (negCLIPLoss scores compared; overlap of final subset)")


if __name__ == "__main__":
    main()
