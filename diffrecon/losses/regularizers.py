"""Regularizers: scalar penalties on a named model parameter, added to the likelihood.

Each is a pure function of a tensor; the objective applies it, with a weight, to the parameter
named in the config (canonical names: ``object``, ``probe``, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from diffrecon.physics.optics import squared_modulus
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
    return torch.sqrt(squared_modulus(dy) + squared_modulus(dx) + eps).sum()


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


@regularizers.register("depth_tv")
def depth_total_variation(field: Tensor, eps: float = 1e-8) -> Tensor:
    """Total variation along depth, sum sqrt(|f[s+1] - f[s]|^2 + eps), of slices (S, H, W).

    Favours piecewise-constant structure along z (multislice objects); zero for S = 1.
    """
    dz = torch.diff(field, dim=-3)
    return (torch.sqrt(squared_modulus(dz) + eps) - eps**0.5).sum()


@regularizers.register("depth_lowpass")
def depth_highpass_energy(field: Tensor, sigma_slices: float = 1.0) -> Tensor:
    """Energy of the kz-high-pass part of slices (S, H, W): sum |f - G_z * f|^2.

    G_z is a Gaussian of ``sigma_slices`` slices along depth (kz low-pass, as in the depth
    regularisation of multislice ptychography, Chen et al., Science 372, 826 (2021)), applied
    in the kz domain with the slices mirrored (even extension), so a depth-uniform object
    costs nothing.
    """
    slices = field.shape[-3]
    if slices < 2:
        return field.real.sum() * 0
    mirrored = torch.cat([field, torch.flip(field, dims=(-3,))], dim=-3)
    kz = torch.fft.fftfreq(2 * slices, device=field.device, dtype=field.real.dtype)
    transfer = torch.exp(-2 * (math.pi * sigma_slices * kz) ** 2)[:, None, None]
    spectrum = torch.fft.fft(mirrored, dim=-3) * (1 - transfer)
    high = torch.fft.ifft(spectrum, dim=-3)[..., :slices, :, :]
    return squared_modulus(high).sum()
