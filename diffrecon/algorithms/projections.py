"""Projections shared by the classical phasing algorithms (ER, HIO, DM, RAAR, OSS).

The iterate ``x`` lives in the model's *object* space: a complex array shaped like the object,
(H, W) or (D, H, W). A model that supports projections provides
- ``transmission(x)``: the exit wave of an object (its composition with a known illumination
  and reference), same shape, and ``propagator`` (with ``adjoint``);
- ``object_step(delta_psi)``: the least-squares object change for an exit-wave change (the
  identity without illumination);
- ``support`` (bool, object shape) and ``constraint`` ("none", "real" or "positive").
The Fourier-magnitude projection is then the likelihood's ``project`` carried back through that
map; everything here is a pure function of tensors plus that small protocol.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch

from diffrecon.losses.likelihoods import Likelihood
from diffrecon.physics.filters import gaussian_blur
from diffrecon.physics.propagators import Propagator

Tensor = torch.Tensor


class Projectable(Protocol):
    support: Tensor
    constraint: str
    propagator: Propagator

    def transmission(self, obj: Tensor) -> Tensor: ...

    def object_step(self, delta_psi: Tensor) -> Tensor: ...


def fourier_error(field: Tensor, amplitude: Tensor, valid: Tensor | None) -> Tensor:
    """Squared Fourier error sum_valid (|F| - a)^2 / sum_valid a^2 (scalar tensor).

    Args:
        field: (B, M, ...) complex detector field.
        amplitude: (B, ...) measured amplitudes sqrt(counts).
        valid: bool broadcastable to ``amplitude`` or None.
    """
    modulus = (field.real.square() + field.imag.square()).sum(1).sqrt()
    residual = (modulus - amplitude).square()
    weight = amplitude.square()
    if valid is not None:
        residual, weight = torch.where(valid, residual, 0.0), torch.where(valid, weight, 0.0)
    return residual.sum() / weight.sum().clamp(min=1e-30)


def fourier_projection(
    model: Projectable, obj: Tensor, measured: Tensor, valid: Tensor | None,
    likelihood: Likelihood,
) -> tuple[Tensor, Tensor]:
    """P_M: the object whose detector field has the measured modulus (phases kept).

    Args:
        model: see the module docstring.
        obj: complex object-space iterate, (H, W) or (D, H, W).
        measured: (1, ...) prepared measured data in the propagator's native layout.
        valid: bool detector mask (native layout) or None; masked pixels keep the model's field.
        likelihood: whose ``amplitude``/``project`` turn prepared data into amplitudes.

    Returns:
        The projected object and the squared Fourier error of ``obj`` before projection.
    """
    psi = model.transmission(obj)
    field = model.propagator(psi[None, None])
    error = fourier_error(field, likelihood.amplitude(measured), valid)
    projected = model.propagator.adjoint(likelihood.project(field, measured, valid))[0, 0]
    return obj + model.object_step(projected - psi), error


def pointwise_constraint(obj: Tensor, constraint: str) -> Tensor:
    """Projection onto real (``"real"``) or real non-negative (``"positive"``) values."""
    if constraint == "real":
        return obj.real.to(obj.dtype)
    if constraint == "positive":
        return obj.real.clamp(min=0).to(obj.dtype)
    return obj


def support_projection(obj: Tensor, support: Tensor, constraint: str = "none") -> Tensor:
    """P_S: zero outside ``support`` and the pointwise ``constraint`` inside it."""
    return torch.where(support, pointwise_constraint(obj, constraint), 0.0)


def feasible(obj: Tensor, support: Tensor, constraint: str = "none") -> Tensor:
    """Where ``obj`` already satisfies the object constraints (Fienup's set gamma), bool."""
    if constraint == "positive":
        return support & (obj.real >= 0)
    return support


def shrinkwrap(obj: Tensor, sigma_px: float, threshold: float,
               reference: Literal["max", "rms"] = "max") -> Tensor:
    """New support: |obj| blurred by a Gaussian of ``sigma_px``, above ``threshold`` of its max.

    Marchesini et al., Phys. Rev. B 68, 140101 (2003). ``obj`` is (H, W) or (D, H, W), zero
    outside the current support. With ``reference="rms"`` the threshold is a fraction of the
    blurred modulus' RMS over the current support instead (as PyNX does for Bragg CDI): a few
    hot voxels then cannot wipe out the rest of a uniform crystal.
    """
    blurred = gaussian_blur(obj.abs(), sigma_px, obj.dim())
    if reference == "rms":
        inside = blurred[obj != 0]
        return blurred > threshold * (inside.square().mean().sqrt() if inside.numel() else 0)
    return blurred > threshold * blurred.max()
