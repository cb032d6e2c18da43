"""negCLIPLoss and NormSim data-filtering baselines for DataComp, computed from the pool's embedding cache."""

__version__ = "0.1.0"
