"""The public surface for DataComp's patched ``baselines.py``: every name the patch imports, and only here.

The patch (``patches/datacomp-baselines.patch``) imports from this module alone, and tests/apps check that it
does; a name here changes only with a new patch. What each name is for:

* :data:`BASELINES`: every baseline this package offers, by name (DataComp keeps its own where names meet);
* :func:`add_plugin_arguments`: adds this package's flags (every registered score's and engine's settings,
  ``--relevance_fraction`` with its alias ``--normsim_fraction``, ...) to DataComp's parser;
* :func:`run_baseline`: runs one of :data:`BASELINES` from DataComp's parsed arguments, checking every
  setting once, and returns the run's :class:`Summary`;
* :class:`PluginError`: what every bad setting or input raises, with a one-line message.

Patches of older versions imported ``datacomp_plugins.filtering`` (``BASELINES``, ``run_filter``,
``validate``), ``datacomp_plugins.commands.filter`` (``add_plugin_arguments``, ``config_from_args``) and
``datacomp_plugins.errors`` (``PluginError``); those names stay there for such checkouts. Importing this
module loads no score; :data:`BASELINES` does, the first time it is read.
"""

from __future__ import annotations

import argparse
from typing import Any

from datacomp_plugins.config import Summary
from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.flags import add_plugin_arguments, config_from_args

__all__ = ["BASELINES", "PluginError", "Summary", "add_plugin_arguments", "run_baseline"]  # noqa: F822 (lazy)


def run_baseline(args: argparse.Namespace) -> Summary:
    """Run the baseline ``args.name`` with the settings of DataComp's parsed ``args`` (ours and its own flags);
    every setting is checked once, before any work, and the uid file written to ``args.save_path``."""
    from datacomp_plugins.pipeline import run_filter

    return run_filter(config_from_args(args))


def __getattr__(name: str) -> Any:
    if name == "BASELINES":  # read from the registry when asked for, not on import
        from datacomp_plugins.config import baselines

        return baselines()
    if name == "FilterConfig":
        from datacomp_plugins import config

        return config.FilterConfig
    if name == "run_filter":
        from datacomp_plugins.pipeline import run_filter

        return run_filter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
