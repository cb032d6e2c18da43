"""The names DataComp's patched ``baselines.py`` imports (``BASELINES``, ``run_filter``, ``validate``), kept
stable while the package moves: the run itself is pipeline.py, its settings config.py."""

from __future__ import annotations

from datacomp_plugins.config import FilterConfig, Summary, baselines, validate
from datacomp_plugins.pipeline import run_filter

BASELINES = baselines()

__all__ = ["BASELINES", "FilterConfig", "Summary", "run_filter", "validate"]
