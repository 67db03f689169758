"""Stitching per-pattern object patches into the full object of a ptychographic scan.

Each patch is known up to its own global phase. The phases are synchronised first (greedily
from the scan's centre outwards, each patch matched to what is already stitched where they
overlap, then a few passes matching every patch to all the others), and the patches are then
averaged with the probe intensity as weight, using the shared ``insert_patches``:

    O = (sum_n insert(w_n c_n p_n) + eps) / (sum_n insert(w_n) + eps)

which tends to 1 (a blank transmission) where nothing was illuminated.
"""

from __future__ import annotations

import torch

from diffrecon.physics.shifts import extract_patches, insert_patches

Tensor = torch.Tensor


def _unit(values: Tensor) -> Tensor:
    magnitude = values.abs()
    return torch.where(magnitude > 1e-20, values / magnitude.clamp(min=1e-30),
                       torch.ones_like(values))


def synchronise_phases(patches: Tensor, weights: Tensor, corners: Tensor,
                       object_shape: tuple[int, int], passes: int = 3) -> Tensor:
    """Unit phase factors (N,) that make overlapping ``patches`` (N, h, w) agree.

    Args:
        patches: (N, h, w) complex.
        weights: (N, h, w) real, >= 0 (probe intensity).
        corners: (N, 2) integer window corners, object pixels.
        object_shape: (H, W).
        passes: refinement passes after the greedy pass.
    """
    n = patches.shape[0]
    weighted = weights * patches
    centre = corners.double().mean(0)
    order = torch.argsort((corners.double() - centre).square().sum(1)).tolist()
    factors = torch.ones(n, dtype=patches.dtype)
    total = torch.zeros(object_shape, dtype=patches.dtype)
    for k in order:
        window = total[corners[k, 0] : corners[k, 0] + patches.shape[-2],
                       corners[k, 1] : corners[k, 1] + patches.shape[-1]]
        inner = (weighted[k].conj() * window).sum()
        factors[k] = _unit(inner)
        window += factors[k] * weighted[k]
    for _ in range(passes):
        total = insert_patches(factors[:, None, None] * weighted, corners, object_shape)
        others = extract_patches(total, corners, tuple(patches.shape[-2:]))
        others = others - factors[:, None, None] * weighted
        inner = (weighted.conj() * others).sum(dim=(-2, -1))
        factors = torch.where(inner.abs() > 0, _unit(inner), factors)
    return factors


def blend(patches: Tensor, weights: Tensor, factors: Tensor, corners: Tensor,
          object_shape: tuple[int, int], blank_weight: float = 1e-3) -> Tensor:
    """Weighted average (H, W) of phase-corrected ``patches``; differentiable in ``patches``.

    Args:
        patches: (N, h, w) complex object windows.
        weights: (N, h, w) real probe intensities.
        factors: (N,) unit phase factors (from :func:`synchronise_phases`).
        corners: (N, 2) integer window corners in object pixels.
        object_shape: (H, W).
        blank_weight: weight (relative to the largest summed weight) of the blank (1)
            transmission assumed where nothing was illuminated.
    """
    numerator = insert_patches(factors[:, None, None] * weights * patches, corners, object_shape)
    denominator = insert_patches(weights.to(patches.real.dtype), corners, object_shape)
    eps = blank_weight * float(denominator.max())
    return (numerator + eps) / (denominator + eps)


@torch.no_grad()
def global_factors(patches: Tensor, weights: Tensor, corners: Tensor,
                   object_shape: tuple[int, int]) -> Tensor:
    """Synchronised phase factors (N,) with one global phase fixed: the weighted mean of the
    stitched object is real, as it is for the blank (1) transmission blended in around it."""
    factors = synchronise_phases(patches, weights, corners, object_shape)
    return factors * _unit((factors[:, None, None] * weights * patches).sum()).conj()


@torch.no_grad()
def stitch(patches: Tensor, weights: Tensor, corners: Tensor, object_shape: tuple[int, int],
           blank_weight: float = 1e-3) -> Tensor:
    """The stitched object (H, W) complex from phase-synchronised, weighted patches.

    Args:
        patches: (N, h, w) complex object windows.
        weights: (N, h, w) real probe intensities.
        corners: (N, 2) integer window corners in object pixels (those of the model).
        object_shape: (H, W).
        blank_weight: see :func:`blend`.
    """
    corners = corners.long()
    factors = global_factors(patches, weights, corners, object_shape)
    return blend(patches, weights, factors, corners, object_shape, blank_weight)
