"""Process settings that must be in place before torch is loaded, applied explicitly where a run starts.

Importing :mod:`datacomp_plugins` changes nothing in the process: a library that edits ``os.environ`` on
import surprises its callers. Instead every entry point that computes scores calls :func:`configure` before
torch is imported: the command line (``cli.main``), ``pipeline.run_filter`` (which DataComp's patched
``baselines.py`` reaches through ``datacomp_api.run_baseline``), and each engine's worker before it imports
torch.
"""

from __future__ import annotations

import os


def configure() -> None:
    """Set this package's process defaults (idempotent; an explicit setting in the environment wins)."""
    # MKL's strict conditional numerical reproducibility: matrix products give the same bits whatever the thread
    # count (measured: no speed cost), so uid files do not depend on --num_workers. It must be set before MKL's
    # first call in this process; worker processes call configure() before they import torch.
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
    # PyTorch's CPU allocator backs large tensors with transparent huge pages when this is set before torch is
    # imported: a fresh 50 MB tensor then costs ~10 ms of page faults instead of ~25 ms, and a freshly allocated
    # matrix product runs ~10% faster. Speed only, never a bit.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
