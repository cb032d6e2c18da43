"""Where and in what precision a run computes: decided once per run, then passed down to every score.

``--num_gpus`` picks the device ("cuda" means each worker's own GPU), ``--precision`` the dtype of the
matrix products (``auto`` measures here, see precision.py), ``--batch_size`` the rows of logits held at once.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from datacomp_plugins.core.errors import PluginError


@dataclass(frozen=True)
class Compute:
    """The run's compute settings, as every score receives them."""

    device: str = "cpu"
    precision: str = "fp32"
    block_rows: int = 0
    progress: bool = True
    note: str | None = None  # what --precision auto decided, for the run summary


def device_for(num_gpus: int) -> str:
    return "cuda" if num_gpus > 0 else "cpu"


def check_gpus(num_gpus: int) -> None:
    """Refuse more GPUs than this machine shows (called for engines whose workers run here; a cluster engine
    checks its own GPUs)."""
    if num_gpus > 0:
        import torch

        if torch.cuda.device_count() < num_gpus:
            raise PluginError(f"--num_gpus {num_gpus}: only {torch.cuda.device_count()} CUDA "
                              "device(s) visible; use --num_gpus 0 for the CPU")


def decide(num_gpus: int, precision: str, block_rows: int, progress: bool, products: bool) -> Compute:
    """The run's Compute: ``--precision auto`` resolved by a short probe when the run multiplies matrices
    (``products``), else fp32; a one-line warning when bf16 will be slow on this CPU."""
    from datacomp_plugins.core import precision as precisions

    device = device_for(num_gpus)
    if not products:  # nothing is multiplied in --precision (clip_score, normsim_d's own stage)
        return Compute(device, "fp32" if precision == "auto" else precision, block_rows, progress)
    if precision == "bf16" and (warning := precisions.bf16_warning(device)):
        print(warning, file=sys.stderr)
    chosen, note = precisions.resolve(precision, device)
    return Compute(device, chosen, block_rows, progress, note)
