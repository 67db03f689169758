"""Input conversion shared by the metric modules: complex128 fields and float64 weights."""

from __future__ import annotations

import numpy as np
import torch

Tensor = torch.Tensor
ArrayLike = Tensor | np.ndarray


def as_complex(x: ArrayLike, device: torch.device | None = None) -> Tensor:
    return torch.as_tensor(x, device=device).to(torch.complex128)


def pixel_weights(mask: ArrayLike | None, like: Tensor) -> Tensor:
    """float64 weights of ``like``'s shape: ones, or ``mask`` (bool or float) broadcast."""
    if mask is None:
        return torch.ones(like.shape, dtype=torch.float64, device=like.device)
    if isinstance(mask, np.ndarray):
        mask = np.array(mask, dtype=np.float64)  # a writable copy (memory-mapped masks are not)
    return torch.as_tensor(mask, device=like.device).to(torch.float64).expand(like.shape)
