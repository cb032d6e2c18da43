"""negCLIPLoss end to end (read pool, parse uids, score, select, write) against the fp32 matmul roofline.

The cost model (DESIGN.md section 4): each sample costs 2·K·B·d FLOP of matrix products. The roofline is
this machine's matmul rate in the same precision, measured on a B×d @ d×B product written into a
preallocated output (a fresh output's page faults would understate the machine), right before and after
every timed run: each run's ratio is taken against its own roofline, so a shared machine's drifting speed
cancels, and the median ratio is reported with its range. Two pools:

- ``spec``: shards of 8192 rows with B = 8192 — one batch is the whole shard, so the K rounds are identical
  and computed once; the ratio against the cost model can then exceed 1.
- ``full``: shards of 2·B rows — every round is a real new partition, so the work done is exactly the cost
  model's; this is the honest fraction of roofline.

Usage: python tools/bench_negcliploss.py [--shards 4] [--repeats 3] [--num_gpus 0] [--precision fp32]
"""

from __future__ import annotations

from datacomp_plugins import runtime

runtime.configure()  # first, as in the CLI: its environment settings precede torch's loading

# isort: split
import argparse
import io
import os
import statistics
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from datacomp_plugins.config import FilterConfig
from datacomp_plugins.pipeline import run_filter


def write_pool(folder: str, shards: int, rows: int, dim: int, seed: int = 0) -> None:
    """Random unit float16 embeddings in DataComp's layout (uncompressed npz, as DataComp ships)."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for index in range(shards):
        arrays = {}
        for key in ("l14_img", "l14_txt"):
            x = rng.standard_normal((rows, dim), dtype=np.float32)
            arrays[key] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
        uids = [f"{v:032x}" for v in rng.integers(0, 2**63, rows, dtype=np.int64).tolist()]
        pq.write_table(pa.table({"uid": uids, "clip_l14_similarity_score": np.zeros(rows)}),
                       os.path.join(folder, f"{index:08d}.parquet"))
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        with open(os.path.join(folder, f"{index:08d}.npz"), "wb") as handle:
            handle.write(buffer.getvalue())


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_rate(size: int, dim: int, device: str, repeats: int = 3, precision: str = "fp32") -> float:
    """Median GFLOP/s of a size×dim @ dim×size product (the shape negCLIPLoss multiplies) in ``precision``,
    into a preallocated output."""
    a = torch.randn(size, dim, device=device).to(DTYPES[precision])
    b = torch.randn(dim, size, device=device).to(DTYPES[precision])
    out = torch.empty(size, size, device=device, dtype=DTYPES[precision])
    times = []
    for _ in range(repeats + 1):
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * size * size * dim / statistics.median(times[1:]) / 1e9


def run_case(label: str, folder: str, rows: int, shards: int, k: int, b: int, dim: int, repeats: int,
             num_gpus: int, precision: str = "fp32") -> dict:
    """Median time of ``repeats`` runs, and the median (min, max) of each run's work done / roofline."""
    device = "cuda" if num_gpus else "cpu"
    samples = rows * shards
    rounds_done = 1 if b >= rows else k
    done_flop = samples * 2 * rounds_done * b * dim
    seconds, roofs, ratios = [], [], []
    for _ in range(repeats):
        before = matmul_rate(b, dim, device, precision=precision)
        with tempfile.TemporaryDirectory() as cache:
            config = FilterConfig(name="negcliploss", metadata_dir=folder, save_path=os.path.join(cache, "o.npy"),
                                  fraction=0.3, num_batches=k, negcliploss_batch_size=b, cache_dir=cache,
                                  num_gpus=num_gpus, precision=precision, progress=False)
            start = time.perf_counter()
            run_filter(config)
            seconds.append(time.perf_counter() - start)
        roof = (before + matmul_rate(b, dim, device, precision=precision)) / 2
        roofs.append(roof)
        ratios.append(done_flop / seconds[-1] / 1e9 / roof)
    t = statistics.median(seconds)
    return {"label": label, "samples": samples, "seconds": t, "samples_per_s": samples / t,
            "model_gflops": samples * 2 * k * b * dim / t / 1e9, "done_gflops": done_flop / t / 1e9,
            "roofline_gflops": statistics.median(roofs), "ratio": statistics.median(ratios),
            "ratio_range": (min(ratios), max(ratios))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8192, help="B")
    parser.add_argument("--rounds", type=int, default=2, help="K")
    parser.add_argument("--num_gpus", type=int, default=0)
    parser.add_argument("--precision", choices=sorted(DTYPES), default="fp32",
                        help="score precision; the roofline is measured in the same precision")
    args = parser.parse_args()
    dim, b, k = 768, args.batch, args.rounds
    device = "cuda" if args.num_gpus else "cpu"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, {args.precision}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as root:
        cases = [("spec", b), ("full", 2 * b)]
        results = []
        for label, rows in cases:
            folder = os.path.join(root, label)
            write_pool(folder, args.shards, rows, dim)
            result = run_case(label, folder, rows, args.shards, k, b, dim, args.repeats, args.num_gpus,
                              args.precision)
            results.append((rows, result))
    print(f"{'pool':<6} {'shards x rows':>14} {'samples/s':>10} {'GFLOP/s (cost model)':>21} "
          f"{'GFLOP/s (work done)':>20} {'matmul GFLOP/s':>15} {'done / roofline (range)':>24}")
    for rows, r in results:
        print(f"{r['label']:<6} {f'{args.shards} x {rows}':>14} {r['samples_per_s']:>10.0f} "
              f"{r['model_gflops']:>21.1f} {r['done_gflops']:>20.1f} {r['roofline_gflops']:>15.1f} "
              f"{r['ratio']:>12.2f} ({r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f})")


if __name__ == "__main__":
    main()
