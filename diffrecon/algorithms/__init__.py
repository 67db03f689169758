"""Update rules over a forward model: autograd optimisers, PIE family, projections."""

from diffrecon.algorithms import gradient, pie  # noqa: F401  (register the algorithms)
from diffrecon.algorithms.base import Algorithm, algorithms

__all__ = ["Algorithm", "algorithms"]
