"""Update rules over a forward model: autograd optimisers, PIE family, projections."""

from diffrecon.algorithms import cdi, gradient, pie, recipe  # noqa: F401  (registrations)
from diffrecon.algorithms.base import Algorithm, algorithms

__all__ = ["Algorithm", "algorithms"]
