"""uid values as Python ints for the uid tests: 128-bit ints <-> DataComp's (hi, lo) uid arrays, and sorted
lists with repeats (how a list makes the resharder upsample a sample).
"""

from __future__ import annotations

import random

import numpy as np

from datacomp_plugins.core.uids import UID_DTYPE

LOW = 2**64
A, B, C = 5 * LOW + 9, 5 * LOW + 11, 7 * LOW  # A and B share a high half


def arr(values) -> np.ndarray:
    return np.array([divmod(v, LOW) for v in values], dtype=UID_DTYPE)


def ints(uids: np.ndarray) -> list[int]:
    return [int(hi) * LOW + int(lo) for hi, lo in np.asarray(uids).tolist()]


def save_raw(path, values) -> str:
    np.save(path, arr(values))
    return str(path)


def repeated_sorted(rng: random.Random, n: int) -> list[int]:
    """Sorted values with repeats (some runs of 3), sharing high halves, incl. the extremes."""
    base = [rng.choice([rng.getrandbits(128), rng.getrandbits(2) * LOW + rng.getrandbits(2), 2**128 - 1, 0])
            for _ in range(n)]
    return sorted(base + rng.sample(base, max(1, n // 3)) + rng.sample(base, max(1, n // 5)))
