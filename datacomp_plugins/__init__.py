"""negCLIPLoss and NormSim data-filtering baselines for DataComp, computed from the pool's embedding cache.

Importing the package leaves the process untouched; :func:`datacomp_plugins.runtime.configure` sets the
environment a scoring run wants, and the command line and ``filtering.run_filter`` call it.
"""

__version__ = "0.1.0"
