"""How detector fields become predicted counts: incoherent mode sum, flux, background."""

from __future__ import annotations

import torch
from torch import nn

Tensor = torch.Tensor


class _ModeIntensity(torch.autograd.Function):
    """sum_m |Psi_m|^2 over dim 1 with its closed-form backward 2 g Psi.

    Autograd's generic backward (through the real/imag views and a real-to-complex gradient)
    takes several passes over the batch; this one takes one. A single mode skips the sum over
    dim 1 (a reduction over a length-1 dim still zero-fills and rewrites its output; with
    the other fast-path changes of this step, 400 x 64^2 far field, 1 thread: 0.0489 ->
    0.0452 s/epoch).
    """

    @staticmethod
    def forward(ctx, field: Tensor) -> Tensor:
        ctx.save_for_backward(field)
        intensity = field.real.square()
        intensity += field.imag.square()
        return intensity[:, 0] if field.shape[1] == 1 else intensity.sum(dim=1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (field,) = ctx.saved_tensors
        # complex * real broadcast: one pass, no complex copy of the gradient (torch 2.13 CPU,
        # (50, M, 64, 64): 93 against 97 us for M = 1, 121 against 160 us for M = 2)
        return field * (2 * grad).unsqueeze(1)


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
        # one fused pass (flux * intensity + background took two)
        return torch.addcmul(self.background, flux, intensity)

    def named_fields(self) -> dict[str, nn.Parameter]:
        return {"flux": self.flux, "background": self.background}

    @torch.no_grad()
    def constrain(self) -> None:
        self.flux.clamp_(min=0)
        self.background.clamp_(min=0)
