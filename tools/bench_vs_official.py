"""negCLIPLoss: our pipeline against a port of the official research code's algorithm, same pool, same CPU.

The port (``official_port``) follows the structure of ``cal_new_clip_score`` / ``cs_new_helper`` in the
official repository (ypwang61/negCLIPLoss_NormSim, baselines/vas2.py), run on CPU in fp32 with the same K and
B as ours: per shard, uids parsed with a Python loop, K rounds of a random permutation cut into blocks of B
(the short last block kept), ``exp(logits / T)`` then sums, top fraction by ``argpartition``. It exists to
put our numbers in context, so it keeps the official costs (the per-uid loop, the B×B exp matrix) and its
float32 overflow. Four reports:

- end to end time of each (median of ``--repeats``, fresh score cache for ours every time), samples/s, ratio,
  on shards of 2·B rows (every batch full: the port's best case) and of 1.5·B rows (the port keeps a short
  last batch, we split the shard into equal batches). Each side runs as it would for a user: ours in this
  process with the package's settings, the port in its own process with PyTorch's defaults
  (``--port_env thp`` gives the port our allocator setting too);
- uid parsing alone: the per-uid Python loop against ``datacomp_plugins.core.uids.parse_hex``, same column;
- overflow: a pair with similarity 1.0 at T = 0.01 gives exp(100) > float32 max, so the port scores it
  -inf/NaN (and drops the best-aligned sample), while ours stays finite;
- agreement: Spearman correlation of the two score columns on the benchmark pool (high, not exact: the
  batches differ), and the exact case (one batch = the whole shard) as a check of the port itself.

Usage: python tools/bench_vs_official.py [--shards 4] [--rows 16384 12288] [--rounds 2] [--batch 8192] [--repeats 3]
"""

from __future__ import annotations

from datacomp_plugins import runtime

runtime.configure()  # first, as in the CLI: its environment settings precede torch's loading

# isort: split
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from bench_negcliploss import write_pool  # tools/ is on sys.path when this file runs as a script

from datacomp_plugins.config import FilterConfig
from datacomp_plugins.core.cache import ScoreCache
from datacomp_plugins.core.pool import Pool
from datacomp_plugins.core.uids import UID_DTYPE, parse_hex
from datacomp_plugins.pipeline import gather, run_filter, shard_score

DIM = 768  # L/14
IMAGE_KEY, TEXT_KEY, SCORE_COLUMN = "l14_img", "l14_txt", "clip_l14_similarity_score"


# --- the port -------------------------------------------------------------------------------------------------

def _port_round(image: torch.Tensor, text: torch.Tensor, batch_size: int, temperature: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One round: (clip score, ½T·log row sum, ½T·log column sum) per sample, for one random partition."""
    f = image.float()
    g = text.float()
    n = f.shape[0]
    if batch_size is None or batch_size >= n:
        batch_size = n
    order = torch.randperm(n, generator=generator)
    clip, norm1, norm2 = torch.zeros(n), torch.zeros(n), torch.zeros(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]  # the last block may be short; it is kept as is
        sims = f[idx] @ g[idx].T
        exp_sims = torch.exp(sims / temperature)  # exp first, then sum: overflows for sims > T·log(FLT_MAX)
        clip[idx] = torch.diag(sims)
        norm1[idx] = 0.5 * temperature * torch.log(exp_sims.sum(dim=1))
        norm2[idx] = 0.5 * temperature * torch.log(exp_sims.sum(dim=0))
    return clip, norm1, norm2


def official_port(metadata_dir: str, K: int, B: int, T: float, fraction: float, seed: int,
                  save_path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Score every shard the official way, keep the top ``fraction``, save the sorted uids.

    Returns the pool's (uids, scores) in shard order, for the agreement check. ``save_path`` None writes the
    uid file to a temporary folder (the write is part of the timed work).
    """
    generator = torch.Generator().manual_seed(seed)
    stems = sorted(name[: -len(".parquet")] for name in os.listdir(metadata_dir) if name.endswith(".parquet"))
    all_uids, all_scores = [], []
    for stem in stems:
        root = os.path.join(metadata_dir, stem)
        table = pq.read_table(f"{root}.parquet", columns=["uid", SCORE_COLUMN])
        uids = np.array([divmod(int(uid, 16), 2**64) for uid in table.column("uid").to_pylist()], dtype=UID_DTYPE)
        with np.load(f"{root}.npz") as npz:
            image = torch.from_numpy(npz[IMAGE_KEY])
            text = torch.from_numpy(npz[TEXT_KEY])
        n = image.shape[0]
        clip, norm1, norm2 = torch.zeros(n), torch.zeros(n), torch.zeros(n)
        for _ in range(K):
            c, r1, r2 = _port_round(image, text, B, T, generator)
            clip += c
            norm1 += r1
            norm2 += r2
        if K > 1:
            clip /= K
            norm1 /= K
            norm2 /= K
        all_uids.append(uids)
        all_scores.append((clip - (norm1 + norm2)).numpy())
    uids = np.concatenate(all_uids)
    scores = np.concatenate(all_scores)
    want = int(len(scores) * fraction)
    chosen = uids[np.argpartition(scores, -want)[-want:]]
    chosen.sort()
    if save_path is None:
        with tempfile.TemporaryDirectory() as folder:
            np.save(os.path.join(folder, "port.npy"), chosen)
    else:
        np.save(save_path, chosen)
    return uids, scores


# --- ours -----------------------------------------------------------------------------------------------------

def _config(folder: str, cache: str, K: int, B: int, T: float, fraction: float, seed: int) -> FilterConfig:
    return FilterConfig(name="negcliploss", metadata_dir=folder, save_path=os.path.join(cache, "ours.npy"),
                        fraction=fraction, num_batches=K, negcliploss_batch_size=B, temperature=T, seed=seed,
                        cache_dir=cache, progress=False)


def ours(folder: str, cache: str, K: int, B: int, T: float, fraction: float,
         seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Run our pipeline end to end into ``cache``; returns the pool's (uids, scores) read back from it."""
    config = _config(folder, cache, K, B, T, fraction, seed)
    run_filter(config)
    pool = Pool(folder)
    uids, (scores,) = gather(pool, ScoreCache(cache, pool), (shard_score(config, "negcliploss"),))
    return uids, scores


# --- reports --------------------------------------------------------------------------------------------------

def port_in_own_process(folder: str, K: int, B: int, T: float, fraction: float, seed: int, env: str) -> float:
    """Seconds the port takes in a fresh process (timed inside it, imports excluded, as ours is).

    ``env`` "plain": PyTorch's defaults (what the official code gets); "thp": our allocator setting too.
    """
    environment = dict(os.environ, THP_MEM_ALLOC_ENABLE="1" if env == "thp" else "0", MKL_CBWR="AUTO")
    command = [sys.executable, os.path.abspath(__file__), "--port_only", folder, "--rounds", str(K), "--batch",
               str(B), "--temperature", str(T), "--fraction", str(fraction), "--seed", str(seed)]
    done = subprocess.run(command, env=environment, check=True, capture_output=True, text=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


def time_both(folder: str, K: int, B: int, T: float, fraction: float, seed: int,
              repeats: int, env: str) -> tuple[float, float]:
    """Median seconds of (ours, port), interleaved so both see the same background load."""
    mine, port = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            config = _config(folder, cache, K, B, T, fraction, seed)
            start = time.perf_counter()
            run_filter(config)
            mine.append(time.perf_counter() - start)
        port.append(port_in_own_process(folder, K, B, T, fraction, seed, env))
    print(f"  runs (s): ours {' '.join(f'{t:.2f}' for t in mine)}; port {' '.join(f'{t:.2f}' for t in port)}")
    return statistics.median(mine), statistics.median(port)


def time_uid_parsing(folder: str, repeats: int) -> tuple[int, float, float]:
    """Median seconds of the per-uid loop and of parse_hex on the pool's whole uid column (same results)."""
    stems = sorted(name for name in os.listdir(folder) if name.endswith(".parquet"))
    column = pa.concat_arrays([chunk for name in stems
                               for chunk in pq.read_table(os.path.join(folder, name), columns=["uid"])
                               .column("uid").chunks])
    loop_times, ours_times = [], []
    for _ in range(max(repeats, 5)):
        start = time.perf_counter()
        looped = np.array([divmod(int(uid, 16), 2**64) for uid in column.to_pylist()], dtype=UID_DTYPE)
        loop_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        vectorised = parse_hex(column)
        ours_times.append(time.perf_counter() - start)
    if not np.array_equal(looped, vectorised):
        raise SystemExit("uid parsing: the loop and parse_hex disagree")
    return len(column), statistics.median(loop_times), statistics.median(ours_times)


def overflow_demo(root: str, seed: int) -> None:
    """A shard whose first pair has similarity 1.0: exp(1.0 / 0.01) = e^100 overflows float32 (max ~e^88.7)."""
    folder = os.path.join(root, "overflow")
    write_pool(folder, shards=1, rows=8, dim=DIM, seed=seed)
    path = os.path.join(folder, "00000000.npz")
    with np.load(path) as npz:
        arrays = {key: npz[key].copy() for key in npz.files}
    arrays[TEXT_KEY][0] = arrays[IMAGE_KEY][0]
    np.savez(path, **arrays)
    T, K, B = 0.01, 2, 4
    similarity = float(arrays[IMAGE_KEY][0].astype(np.float32) @ arrays[TEXT_KEY][0].astype(np.float32))
    port_uids, port_scores = official_port(folder, K, B, T, 0.25, seed)
    with tempfile.TemporaryDirectory() as cache:
        our_uids, our_scores = ours(folder, cache, K, B, T, 0.25, seed)
        kept_by_ours = np.load(os.path.join(cache, "ours.npy"))
    with tempfile.TemporaryDirectory() as out:
        official_port(folder, K, B, T, 0.25, seed, save_path=os.path.join(out, "port.npy"))
        kept_by_port = np.load(os.path.join(out, "port.npy"))
    assert port_uids[0] == our_uids[0]
    print(f"overflow demo: 1 shard x 8 rows, T={T}, K={K}, B={B}; pair 0 similarity {similarity:.4f} "
          f"(float32 exp overflows above T*ln(FLT_MAX) = {T * math.log(np.finfo(np.float32).max):.4f})")
    print(f"  port scores: {np.array2string(port_scores, precision=4)}")
    print(f"  ours scores: {np.array2string(our_scores, precision=4)}")
    print(f"  pair 0: port {port_scores[0]}, ours {our_scores[0]:.4f}; non-finite scores: port "
          f"{int((~np.isfinite(port_scores)).sum())}, ours {int((~np.isfinite(our_scores)).sum())}; "
          f"top 25% keeps pair 0: port {bool(np.isin(port_uids[0], kept_by_port))}, "
          f"ours {bool(np.isin(our_uids[0], kept_by_ours))}")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho as the Pearson correlation of ranks (continuous scores: ties have measure zero)."""
    ranks = [np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(np.float64) for x in (a, b)]
    return float(np.corrcoef(ranks[0], ranks[1])[0, 1])


def aligned(uids_a: np.ndarray, scores_a: np.ndarray, uids_b: np.ndarray,
            scores_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both score columns in the same (uid) order."""
    order_a, order_b = np.argsort(uids_a), np.argsort(uids_b)
    if not np.array_equal(uids_a[order_a], uids_b[order_b]):
        raise SystemExit("agreement: the two pipelines saw different uids")
    return scores_a[order_a], scores_b[order_b]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rows", type=int, nargs="+", default=[16384, 12288], help="rows per shard, one pool each")
    parser.add_argument("--rounds", type=int, default=2, help="K")
    parser.add_argument("--batch", type=int, default=8192, help="B")
    parser.add_argument("--temperature", type=float, default=0.01)
    parser.add_argument("--fraction", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--port_env", choices=["plain", "thp"], default="plain",
                        help="the port's process: PyTorch's defaults, or with our allocator setting")
    parser.add_argument("--port_only", metavar="FOLDER", help=argparse.SUPPRESS)  # the port's own process
    args = parser.parse_args()
    K, B, T, fraction, seed = args.rounds, args.batch, args.temperature, args.fraction, args.seed
    if args.port_only:
        start = time.perf_counter()
        official_port(args.port_only, K, B, T, fraction, seed)
        print(json.dumps({"seconds": time.perf_counter() - start}))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average at start "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as root:
        for rows in args.rows:
            folder = os.path.join(root, f"pool{rows}")
            write_pool(folder, args.shards, rows, DIM, seed=seed)
            samples = args.shards * rows
            print(f"pool: {args.shards} shards x {rows} rows, d={DIM}, K={K}, B={B}, T={T}, fraction={fraction}; "
                  f"port process: {args.port_env}")
            mine, port = time_both(folder, K, B, T, fraction, seed, args.repeats, args.port_env)
            print(f"end to end (median of {args.repeats}): ours {mine:.2f} s = {samples / mine:.0f} samples/s; "
                  f"port {port:.2f} s = {samples / port:.0f} samples/s; ours / port speed {port / mine:.2f}x")
        folder = os.path.join(root, f"pool{args.rows[0]}")

        count, loop_s, ours_s = time_uid_parsing(folder, args.repeats)
        print(f"uid parsing of {count} uids: Python loop {loop_s * 1e3:.1f} ms, parse_hex {ours_s * 1e3:.2f} ms; "
              f"ratio {loop_s / ours_s:.0f}x")

        overflow_demo(root, seed)

        port_uids, port_scores = official_port(folder, K, B, T, fraction, seed)
        with tempfile.TemporaryDirectory() as cache:
            our_uids, our_scores = ours(folder, cache, K, B, T, fraction, seed)
        a, b = aligned(port_uids, port_scores, our_uids, our_scores)
        print(f"agreement on the pool: Spearman {spearman(a, b):.4f} (different random batches); "
              f"mean |port - ours| {np.abs(a - b).mean():.2e}")

        exact = os.path.join(root, "exact")
        write_pool(exact, 1, 2048, DIM, seed=seed + 1)
        port_uids, port_scores = official_port(exact, 1, 4096, T, fraction, seed)
        with tempfile.TemporaryDirectory() as cache:
            our_uids, our_scores = ours(exact, cache, 1, 4096, T, fraction, seed)
        a, b = aligned(port_uids, port_scores, our_uids, our_scores)
        print(f"exact case (1 shard x 2048, one batch = the shard): max |port - ours| {np.abs(a - b).max():.2e}, "
              f"Spearman {spearman(a, b):.6f}")
    print(f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
