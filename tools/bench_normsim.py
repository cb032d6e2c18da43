"""NormSim throughput: NormSim_2 vs target size, NormSim_inf vs the fp32 matmul roofline, NormSim_2-D cost.

- NormSim_2 goes through the d×d Gram matrix: samples/s must not depend on the target's size.
- NormSim_inf is a blocked exact max over the target: its GFLOP/s (2·|T|·d per sample) against this
  machine's fp32 matmul rate measured in the same run.
- NormSim_2-D: time and peak memory of ``dynamic.iterate`` on a smaller run, projected to 1M samples ×
  500 iterations with the cost model (each iteration costs min(2·d², 2·d·dropped) FLOP per survivor).

Usage: python tools/bench_normsim.py [--pool 16384] [--target 100000] [--d_rows 100000] [--d_iters 50]
(100k samples over 50 iterations drop ~667 per iteration, as 1M over 500 does.)
"""

from __future__ import annotations

from datacomp_plugins import runtime

runtime.configure()  # first, as in the CLI: its environment settings precede torch's loading

# isort: split
import argparse
import resource
import statistics
import time

import numpy as np
import torch

from datacomp_plugins.scores.dynamic import drop_schedule, iterate
from datacomp_plugins.scores.metrics import normsim2, normsim_inf


def unit(n: int, d: int, seed: int) -> torch.Tensor:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1, keepdim=True)


def timed(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(m: int, n: int, d: int) -> float:
    """GFLOP/s of an m×d @ d×n product into a preallocated output (the machine's rate, no page faults)."""
    a, b = unit(m, d, 1), unit(n, d, 2).T.contiguous()
    out = torch.empty(m, n)
    return 2 * m * n * d / timed(lambda: torch.mm(a, b, out=out)) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=16384, help="pool images scored")
    parser.add_argument("--target", type=int, default=100_000, help="target rows for NormSim_inf")
    parser.add_argument("--d_rows", type=int, default=100_000, help="NormSim_2-D start size S0")
    parser.add_argument("--d_iters", type=int, default=50)
    args = parser.parse_args()
    d = 768
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    image = unit(args.pool, d, 0)

    print("\nNormSim_2 (Gram route): samples/s by target size")
    for size in (1_000, 10_000, 100_000):
        target = unit(size, d, 3)
        gram = target.T @ target
        seconds = timed(lambda gram=gram: normsim2(image, gram))
        print(f"  target {size:>7}: {args.pool / seconds:>12.0f} samples/s")

    print(f"\nNormSim_inf, target {args.target} x {d}")
    target = unit(args.target, d, 4)
    block = 4096
    before = matmul_rate(block, 16384, d)
    seconds = timed(lambda: torch.cat([normsim_inf(image[i : i + block], target)
                                       for i in range(0, args.pool, block)]), repeats=2)
    flops = 2 * args.pool * args.target * d
    roof = (before + matmul_rate(block, 16384, d)) / 2
    print(f"  {args.pool / seconds:.0f} samples/s, {flops / seconds / 1e9:.1f} GFLOP/s, "
          f"matmul roofline {roof:.1f} GFLOP/s -> {flops / seconds / 1e9 / roof:.2f} of roofline")

    print(f"\nNormSim_2-D: {args.d_rows} samples, target {args.d_rows * 2 // 3}, {args.d_iters} iterations")
    x = unit(args.d_rows, d, 5).numpy().astype(np.float16)
    uids = np.zeros(args.d_rows, dtype=np.dtype("u8,u8"))
    uids["f1"] = np.arange(args.d_rows)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    iterate(x, uids, args.d_rows * 2 // 3, args.d_iters)
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def model_flops(n: int, iters: int) -> float:
        alive, total = n, 0.0
        for number, drop in enumerate(drop_schedule(n, n * 2 // 3, iters)):
            total += alive * 2 * d * (d if number == 0 else min(d, drop))
            alive -= drop
        return total

    rate = model_flops(args.d_rows, args.d_iters) / seconds
    projected = model_flops(1_000_000, 500) / rate
    print(f"  {seconds:.1f} s ({rate / 1e9:.1f} GFLOP/s of model work); peak RSS {rss / 1024:.0f} MiB "
          f"(grew {(rss - rss_before) / 1024:.0f} MiB)")
    print(f"  projected 1M samples x 500 iterations at that rate: {projected / 60:.0f} min; memory: "
          f"S0 float16 spill {1_000_000 * d * 2 / 2**30:.2f} GiB on disk, resident float32 copy "
          f"{1_000_000 * d * 4 / 2**30:.2f} GiB if under the resident budget, ~40 B/sample of indices/scores")


if __name__ == "__main__":
    main()
