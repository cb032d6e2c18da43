"""negCLIPLoss and NormSim data-filtering baselines for DataComp, computed from the pool's embedding cache.

Importing the package leaves the process untouched and loads no score or engine plugin;
:func:`datacomp_plugins.runtime.configure` sets the environment a scoring run wants, and the command line and
``pipeline.run_filter`` call it. DataComp's patched ``baselines.py`` uses :mod:`datacomp_plugins.datacomp_api`.
"""

__version__ = "0.1.0"
