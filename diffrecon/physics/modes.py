"""Mixed-state (incoherent mode) bookkeeping: orthogonalisation and mode powers."""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def orthogonalize_modes(modes: Tensor, reference: Tensor | None = None) -> Tensor:
    """Orthogonalise incoherent modes (M, H, W) by SVD, strongest first.

    The mutual intensity sum_m |P_m><P_m| (hence every measured intensity) is unchanged; the
    returned modes are mutually orthogonal and sorted by decreasing power (Thibault & Menzel
    2013). An SVD fixes each mode only up to a phase factor; with ``reference`` (M, H, W) each
    mode takes the global phase that best matches the reference mode of the same index, so
    repeated orthogonalisation does not make the modes' phases jump. Runs in the input's
    precision.
    """
    m = modes.shape[0]
    flat = modes.reshape(m, -1)
    u, s, vh = torch.linalg.svd(flat, full_matrices=False)
    out = s[:, None].to(vh.dtype) * vh
    if reference is not None:
        overlap = (out.conj() * reference.reshape(m, -1)).sum(1)
        out = out * torch.exp(1j * torch.angle(overlap))[:, None].to(out.dtype)
    return out.reshape(modes.shape)


def mode_powers(modes: Tensor) -> Tensor:
    """Fraction of the total intensity in each mode, shape (M,), summing to one."""
    power = modes.abs().square().sum(dim=(-2, -1))
    return power / power.sum()
