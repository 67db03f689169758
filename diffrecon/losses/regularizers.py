"""Regularizers: scalar penalties on a named model parameter, added to the likelihood.

Each is a pure function of a tensor; the objective applies it, with a weight, to the parameter
named in the config (canonical names: ``object``, ``probe``, ...).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffrecon.registry import Registry

Tensor = torch.Tensor

regularizers: Registry[Callable[[Tensor], Tensor]] = Registry("regularizer")


@regularizers.register("tv")
def total_variation(field: Tensor, eps: float = 1e-8) -> Tensor:
    """Isotropic total variation sum sqrt(|dy f|^2 + |dx f|^2 + eps) over the last two axes.

    Works on complex fields (differences of complex values); eps keeps the gradient finite.
    """
    dy = torch.diff(field, dim=-2)[..., :, :-1]
    dx = torch.diff(field, dim=-1)[..., :-1, :]
    return torch.sqrt(dy.abs().square() + dx.abs().square() + eps).sum()


@regularizers.register("sparsity")
def sparsity(field: Tensor) -> Tensor:
    """L1 norm sum |f| (sparse objects, e.g. weak scatterers on an empty background)."""
    return field.abs().sum()


@regularizers.register("amplitude_max")
def amplitude_above_one(field: Tensor) -> Tensor:
    """Quadratic penalty sum relu(|f| - 1)^2 on transmission amplitudes above one.

    A soft version of the hard constraint |O| <= 1 (a passive object cannot amplify).
    """
    return torch.relu(field.abs() - 1).square().sum()
