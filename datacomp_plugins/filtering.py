"""Kept for patched DataComp checkouts of earlier versions, which import ``BASELINES``, ``run_filter`` and
``validate`` from here. The public surface is :mod:`datacomp_plugins.datacomp_api`; the run is pipeline.py,
its settings config.py."""

from __future__ import annotations

from datacomp_plugins.config import Summary, baselines, validate
from datacomp_plugins.datacomp_api import __getattr__ as _lazy
from datacomp_plugins.pipeline import run_filter

BASELINES = baselines()
FilterConfig = _lazy("FilterConfig")

__all__ = ["BASELINES", "FilterConfig", "Summary", "run_filter", "validate"]
