"""Choosing the matrix-product precision: bf16 pays only on hardware with bf16 units.

On a CPU without AMX or AVX512-BF16, PyTorch emulates bf16 products and a bf16 run is 2-3x *slower* than
fp32 end to end (docs/PERFORMANCE.md), so asking for bf16 there gets a one-line warning, and
``--precision auto`` measures instead of guessing: a short product in both precisions on this machine,
the faster one wins. fp32 stays the default because only it gives the same uid file on every machine.
"""

from __future__ import annotations

import time

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # x86 (/proc/cpuinfo "flags")
ARM_BF16_FEATURES = ("bf16",)  # aarch64 (/proc/cpuinfo "Features")
PROBE_ROWS = 1024
PROBE_DIM = 768
PROBE_REPEATS = 3


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags, or None where the system does not say (not Linux)."""
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def cpu_has_bf16(flags: set[str] | None = None) -> bool | None:
    """True/False when the CPU does/does not have bf16 units; None when it cannot be told."""
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return None
    return any(f in flags for f in CPU_BF16_FLAGS + ARM_BF16_FEATURES)


def bf16_warning(device: str, flags: set[str] | None = None) -> str | None:
    """The one line to print when ``--precision bf16`` will be slower than fp32 here (else None)."""
    if device != "cpu" or cpu_has_bf16(flags) is not False:
        return None
    return ("warning: --precision bf16: this CPU has no bf16 units (neither amx_bf16 nor avx512_bf16 in "
            "/proc/cpuinfo), so bf16 products are emulated and typically 2-3x slower than fp32; use fp32 "
            "(the default) or --precision auto")


def _time_product(dtype, device: str) -> float:
    """Seconds for the best of a few (rows x d) @ (d x rows) products plus exp2, as negCLIPLoss runs them."""
    import torch

    generator = torch.Generator().manual_seed(0)
    left = torch.randn(PROBE_ROWS, PROBE_DIM, generator=generator).to(device=device, dtype=dtype)
    right = torch.randn(PROBE_DIM, PROBE_ROWS, generator=generator).to(device=device, dtype=dtype)
    out = torch.empty(PROBE_ROWS, PROBE_ROWS, device=device, dtype=dtype)
    best = float("inf")
    for attempt in range(PROBE_REPEATS + 1):
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(left, right, out=out).mul_(0.01).exp2_()
        if device != "cpu":
            torch.cuda.synchronize()
        if attempt:  # the first one warms up (allocations, kernel selection)
            best = min(best, time.perf_counter() - start)
    return best


def probe(device: str = "cpu") -> tuple[str, dict[str, float]]:
    """The faster of fp32 and bf16 on ``device`` for negCLIPLoss's kind of product, and the timings (s)."""
    import torch

    timings = {"fp32": _time_product(torch.float32, device), "bf16": _time_product(torch.bfloat16, device)}
    return min(timings, key=lambda name: (timings[name], name != "fp32")), timings


def resolve(precision: str, device: str) -> tuple[str, str | None]:
    """The concrete precision for a run and the note for its summary (None when nothing was decided)."""
    if precision != "auto":
        return precision, None
    choice, timings = probe(device)
    measured = ", ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in timings.items())
    return choice, f"precision auto: {choice} (probe on {device}: {measured})"
