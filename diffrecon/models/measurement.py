"""How detector fields become predicted counts: incoherent mode sum, flux, background."""

from __future__ import annotations

import torch
from torch import nn

Tensor = torch.Tensor


class _ModeIntensity(torch.autograd.Function):
    """sum_m |Psi_m|^2 over dim 1 with its closed-form backward 2 g Psi.

    Autograd's generic backward (through the real/imag views and a real-to-complex gradient)
    takes several passes over the batch; this one takes one.
    """

    @staticmethod
    def forward(ctx, field: Tensor) -> Tensor:
        ctx.save_for_backward(field)
        return (field.real.square() + field.imag.square()).sum(dim=1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (field,) = ctx.saved_tensors
        # cast first: complex * real broadcasting is an order of magnitude slower on the CPU
        return field * (2 * grad).unsqueeze(1).to(field.dtype)


def mode_intensity(field: Tensor) -> Tensor:
    """Incoherent sum of mode intensities: (B, M, ...) complex -> (B, ...) real."""
    return _ModeIntensity.apply(field)


class Measurement(nn.Module):
    """I = flux[index] * sum_m |Psi_m|^2 + background, in the propagator's native layout.

    Args:
        num_patterns: N, one flux factor per pattern (learnable, starts at 1).
        frame_shape: (H, W) of the detector; the background (counts per pixel, learnable,
            non-negative, starts at 0) has this shape.
    """

    def __init__(self, num_patterns: int, frame_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.flux = nn.Parameter(torch.ones(num_patterns))
        self.background = nn.Parameter(torch.zeros(frame_shape))

    def forward(self, field: Tensor, index: Tensor) -> Tensor:
        intensity = mode_intensity(field)
        flux = self.flux[index].reshape(-1, *([1] * (intensity.dim() - 1)))
        return flux * intensity + self.background

    def named_fields(self) -> dict[str, nn.Parameter]:
        return {"flux": self.flux, "background": self.background}

    @torch.no_grad()
    def constrain(self) -> None:
        self.flux.clamp_(min=0)
        self.background.clamp_(min=0)
