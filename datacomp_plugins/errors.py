"""The package's error type under its public name: DataComp's patched ``baselines.py`` imports it from here."""

from datacomp_plugins.core.errors import PluginError

__all__ = ["PluginError"]
