"""diffrecon: differentiable reconstruction for coherent diffractive imaging and ptychography."""

from diffrecon import algorithms, models  # noqa: F401  (populate the registries)
from diffrecon.api import Result, default_config, inspect, list_models, load, reconstruct, simulate
from diffrecon.learn.api import infer, train

__version__ = "0.1.0"

__all__ = [
    "Result", "default_config", "infer", "inspect", "list_models", "load", "reconstruct",
    "simulate", "train",
    "__version__",
]
