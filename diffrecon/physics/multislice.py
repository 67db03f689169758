"""Multislice propagation through a thick sample (Cowley & Moodie 1957), batched over modes.

A sample of S slices with complex transmissions t_s is traversed as

    psi_0 = P * t_0,    psi_s = t_s * F^-1[ K_s F[psi_{s-1}] ],  s = 1 .. S-1,

with the paraxial (Fresnel) angular-spectrum kernel between slices s-1 and s, dz_s apart,

    K_s(k) = exp(-i pi lambda dz_s |k|^2) * exp(-2 pi i dz_s (ky tan theta_y + kx tan theta_x)),

the same sign as ``physics.propagators.angular_spectrum_kernel(paraxial=True)``. The second
factor is a small sample tilt (theta_y, theta_x): the wave walks laterally by dz tan(theta)
per slice, towards +y / +x for positive angles (the Fourier shift theorem of
``physics.shifts.translate``). The exit wave is returned in the plane of the last slice.

Kernels are rebuilt from ``thickness_m`` and ``tilt_rad`` on every call so that both are
differentiable; only the frequency grid is precomputed (``SliceGrid``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from diffrecon.physics.fft import frequency_grid

Tensor = torch.Tensor


class SliceGrid(nn.Module):
    """Cached uncentred frequency grids ky, kx (H, W) in 1/m of a (H, W) slice.

    Args:
        shape: slice (probe window) shape (H, W), pixels.
        pixel_size_m: (y, x) pixel size, metres.
        wavelength_m: wavelength, metres.
    """

    def __init__(self, shape: tuple[int, int], pixel_size_m: tuple[float, float],
                 wavelength_m: float) -> None:
        super().__init__()
        ky, kx = frequency_grid(shape, pixel_size_m, centred=False)
        self.register_buffer("ky", ky.to(torch.float32), persistent=False)
        self.register_buffer("kx", kx.to(torch.float32), persistent=False)
        self.wavelength_m = wavelength_m

    def kernels(self, thickness_m: Tensor, tilt_rad: Tensor | None = None) -> Tensor:
        """Propagation kernels (G, H, W) for gaps ``thickness_m`` (G,) or () (then G = 1)."""
        return fresnel_kernels(self.ky.to(thickness_m.dtype), self.kx.to(thickness_m.dtype),
                               self.wavelength_m, thickness_m, tilt_rad)


def fresnel_kernels(ky: Tensor, kx: Tensor, wavelength_m: float, thickness_m: Tensor,
                    tilt_rad: Tensor | None = None) -> Tensor:
    """Paraxial slice-to-slice kernels K (G, H, W), uncentred frequency order.

    Args:
        ky, kx: (H, W) spatial frequencies in 1/m, uncentred (``torch.fft`` order).
        wavelength_m: wavelength, metres.
        thickness_m: gap(s) between consecutive slices, shape () or (G,), metres; real,
            float32 or float64 (sets complex64 / complex128 out).
        tilt_rad: (2,) sample tilt (theta_y, theta_x) in radians, or None.
    """
    dz = thickness_m.reshape(-1, 1, 1)
    phase = -math.pi * wavelength_m * (ky.square() + kx.square()) * dz
    if tilt_rad is not None:
        slope = torch.tan(tilt_rad)
        phase = phase - 2 * math.pi * dz * (ky * slope[0] + kx * slope[1])
    return torch.polar(torch.ones_like(phase), phase)


def multislice(probe: Tensor, transmissions: Tensor, kernels: Tensor) -> Tensor:
    """Exit waves (B, M, H, W) of probe modes through S slices.

    Args:
        probe: incident waves (B, M, H, W) complex (or (M, H, W), broadcast over B).
        transmissions: slice transmissions (B, S, H, W) complex, one stack per probe position
            (the object patches under the probe), or (S, H, W) shared by all.
        kernels: (S - 1, H, W) per-gap propagation kernels, or (1, H, W) / (H, W) used for
            every gap; uncentred order (``fresnel_kernels``).

    Returns:
        The wave leaving the last slice, in its plane, (B, M, H, W).
    """
    stack = transmissions if transmissions.dim() == 4 else transmissions[None]
    kernels = kernels if kernels.dim() == 3 else kernels[None]
    # unbind, not stack[:, s]: the backward of S slicings would zero-fill S full-size stacks
    slices = [t[:, None] for t in stack.unbind(1)]  # each (B, 1, H, W)
    gaps = kernels.unbind(0)
    psi = probe * slices[0]
    for s in range(1, len(slices)):
        kernel = gaps[min(s - 1, len(gaps) - 1)]
        psi = torch.fft.ifft2(torch.fft.fft2(psi) * kernel) * slices[s]
    return psi
