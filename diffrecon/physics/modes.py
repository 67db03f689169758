"""Mixed-state (incoherent mode) bookkeeping: orthogonalisation and mode powers."""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def orthogonalize_modes(modes: Tensor) -> Tensor:
    """Orthogonalise incoherent modes (M, H, W) by SVD, strongest first.

    The mutual intensity sum_m |P_m><P_m| (hence every measured intensity) is unchanged; the
    returned modes are mutually orthogonal and sorted by decreasing power (Thibault & Menzel
    2013). Runs in the input's precision.
    """
    m = modes.shape[0]
    flat = modes.reshape(m, -1)
    u, s, vh = torch.linalg.svd(flat, full_matrices=False)
    return (s[:, None].to(vh.dtype) * vh).reshape(modes.shape)


def mode_powers(modes: Tensor) -> Tensor:
    """Fraction of the total intensity in each mode, shape (M,), summing to one."""
    power = modes.abs().square().sum(dim=(-2, -1))
    return power / power.sum()
