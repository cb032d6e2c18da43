"""Selection and uid parsing speed: what a sweep over fractions costs once scores are cached.

- uid parsing: our vectorised ``parse_hex`` against DataComp's per-uid Python loop
  (``divmod(int(uid, 16), 2**64)`` per string), on the same pyarrow column.
- selection on N cached scores (default 100M): duplicate-uid detection (hash), exact top-k with uid
  tie-breaking, and a threshold, each timed separately; plus bytes per sample held.

Usage: python tools/bench_select.py [--samples 100000000] [--uids 1000000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
from datacomp_plugins.select.masks.masks import first_occurrence, threshold_mask, top_k_mask

from datacomp_plugins.core.uids import UID_DTYPE, parse_hex, to_hex


def clock(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000_000)
    parser.add_argument("--uids", type=int, default=1_000_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    uids = np.empty(args.uids, dtype=UID_DTYPE)
    uids["f0"], uids["f1"] = rng.integers(0, 2**63, (2, args.uids), dtype=np.int64).astype(np.uint64)
    column = pa.array(to_hex(uids).astype(str))
    ours, t_ours = clock(lambda: parse_hex(column))
    strings = column.to_pylist()
    loop, t_loop = clock(lambda: np.array([divmod(int(u, 16), 2**64) for u in strings], UID_DTYPE))
    assert (ours == loop).all()
    print(f"uid parsing, {args.uids:,} uids: vectorised {t_ours:.2f} s, per-uid loop {t_loop:.2f} s "
          f"({t_loop / t_ours:.1f}x)")

    n = args.samples
    pool = np.empty(n, dtype=UID_DTYPE)
    pool["f0"], pool["f1"] = rng.integers(0, 2**63, (2, n), dtype=np.int64).astype(np.uint64)
    scores = rng.standard_normal(n, dtype=np.float32)
    eligible, t_dup = clock(lambda: first_occurrence(pool))
    keep, t_top = clock(lambda: top_k_mask(scores, pool, int(n * 0.3), eligible))
    _, t_thr = clock(lambda: threshold_mask(scores, 0.5, eligible))
    print(f"selection on {n:,} cached scores: duplicates {t_dup:.1f} s, top 30% {t_top:.1f} s "
          f"(kept {int(keep.sum()):,}), threshold {t_thr:.1f} s; held: 16 B uid + 4 B score + 2 B masks per sample "
          f"= {n * 22 / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
