"""negCLIPLoss and NormSim data-filtering baselines for DataComp, computed from the pool's embedding cache."""

import os

# MKL's strict conditional numerical reproducibility: matrix products give the same bits whatever the thread
# count (measured: no speed cost), so uid files do not depend on --num_workers. It must be set before MKL's
# first call in this process; worker processes import this package first. An explicit setting wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"
