"""N-dimensional Fourier-domain filters and support estimates (pure functions, pixel units).

Used by CDI: the Gaussian blur of shrinkwrap and OSS, and the object support estimated from the
autocorrelation of a diffraction pattern. Every function works on the last ``ndim`` axes, with
the array origin at index N//2 of each axis (as ``fftnc``).
"""

from __future__ import annotations

import math

import torch

from diffrecon.physics.fft import ifftnc

Tensor = torch.Tensor


def gaussian_transfer(
    shape: tuple[int, ...], sigma_px: float, *, device: torch.device | str | None = None
) -> Tensor:
    """Transfer function exp(-2 pi^2 sigma^2 |k|^2) of a Gaussian blur, uncentred FFT order.

    Args:
        shape: the last ``len(shape)`` axes of the field, pixels.
        sigma_px: standard deviation of the real-space Gaussian, pixels (0: identity).
        device: where to build it.

    Returns:
        float32 array of ``shape`` (k in cycles per pixel, DC at index 0).
    """
    k2 = torch.zeros((), dtype=torch.float64, device=device)
    for axis, n in enumerate(shape):
        k = torch.fft.fftfreq(n, dtype=torch.float64, device=device)
        k2 = k2 + k.reshape([-1 if a == axis else 1 for a in range(len(shape))]).square()
    return torch.exp(-2 * math.pi**2 * sigma_px**2 * k2).to(torch.float32)


def gaussian_blur(field: Tensor, sigma_px: float, ndim: int = 2) -> Tensor:
    """Circular Gaussian blur of ``field`` (..., *shape) over its last ``ndim`` axes.

    Real input gives a real output; complex input is blurred as a complex field.

    Args:
        field: real or complex (..., H, W) or (..., D, H, W).
        sigma_px: Gaussian standard deviation, pixels.
        ndim: number of trailing axes blurred.
    """
    if sigma_px <= 0:
        return field
    dims = tuple(range(-ndim, 0))
    transfer = gaussian_transfer(tuple(field.shape[-ndim:]), sigma_px, device=field.device)
    blurred = torch.fft.ifftn(torch.fft.fftn(field, dim=dims) * transfer, dim=dims)
    return blurred if field.is_complex() else blurred.real


def autocorrelation(intensity: Tensor, ndim: int = 2) -> Tensor:
    """|inverse FFT| of a DC-centred intensity (..., *shape): the object's autocorrelation.

    The result is centred (zero lag at index N//2 of each axis); masked pixels should be zero
    (they then only remove a smooth, low-frequency part).
    """
    return ifftnc(intensity.to(torch.complex64), ndim).abs()


def halve_support(mask: Tensor) -> Tensor:
    """The set of r with 2 r in ``mask`` (r from the array centre): half the size, same shape.

    An object's autocorrelation is twice as wide as the object, so halving the autocorrelation
    support gives a loose, centred estimate of the object support (Fienup 1982).
    """
    index = []
    for axis, n in enumerate(mask.shape):
        source = (2 * (torch.arange(n, device=mask.device) - n // 2) + n // 2).clamp(0, n - 1)
        index.append(source.reshape([-1 if a == axis else 1 for a in range(mask.dim())]))
    return mask[tuple(index)]


def fill_holes(mask: Tensor) -> Tensor:
    """``mask`` (bool, 2D or 3D) with every region not connected to the array border filled."""
    outside = ~mask
    reach = torch.zeros_like(mask)
    for axis in range(mask.dim()):
        reach.index_fill_(axis, torch.tensor([0, mask.shape[axis] - 1], device=mask.device), True)
    reach &= outside
    pool = torch.nn.functional.max_pool2d if mask.dim() == 2 else torch.nn.functional.max_pool3d
    while True:
        grown = pool(reach[None, None].float(), 3, 1, 1)[0, 0].bool() & outside
        if torch.equal(grown, reach):
            return ~reach
        reach = grown


def erode(mask: Tensor, voxels: int) -> Tensor:
    """``mask`` (bool, 2D or 3D) shrunk by ``voxels`` (nearest-neighbour steps, periodic)."""
    out = mask.clone()
    for _ in range(voxels):
        shrunk = out.clone()
        for axis in range(mask.dim()):
            shrunk &= torch.roll(out, 1, axis) & torch.roll(out, -1, axis)
        out = shrunk
    return out


def autocorrelation_support(
    intensity: Tensor, threshold: float = 0.04, sigma_px: float = 1.0, highpass_px: float = 0.0
) -> Tensor:
    """Loose object support (bool, same shape) from a DC-centred 2D or 3D intensity.

    The autocorrelation is blurred by ``sigma_px``, thresholded at ``threshold`` of its
    maximum, its holes filled, and halved in size about the centre (``halve_support``). With
    a beamstop, pass its size as ``highpass_px``: the pattern is then high-passed by
    1 - exp(-k^2 / 2 k0^2) (k0 = highpass_px, k in Fourier pixels) so the missing centre does
    not leave a broad ghost that the threshold would take for the object.
    """
    ndim = intensity.dim()
    if highpass_px > 0:
        sigma = intensity.shape[-1] / (2 * math.pi * highpass_px)
        lowpass = torch.fft.fftshift(gaussian_transfer(tuple(intensity.shape), sigma))
        intensity = intensity * (1 - lowpass.to(intensity.device))
    blurred = gaussian_blur(autocorrelation(intensity, ndim), sigma_px, ndim)
    return halve_support(fill_holes(blurred > threshold * blurred.max()))


def cross_term_support(intensity: Tensor, reference: Tensor, threshold: float = 0.1,
                       sigma_px: float = 1.0) -> Tensor:
    """Object support (bool, same shape) of holographic CDI from the cross-correlation terms.

    With a compact known reference R at offset d from the array centre, the autocorrelation
    |IFFT(I)| holds the object correlated with R at lags +d and -d (the object and its twin).
    Each lobe (a disc of radius 0.6 |d| about it) is moved back by -/+d, blurred by
    ``sigma_px`` and thresholded at ``threshold`` of its maximum; the support is their union
    with holes filled (loose: the twin is excluded by the known reference, not the support).

    Args:
        intensity: DC-centred intensity (H, W) or (D, H, W), masked pixels zero.
        reference: complex reference, same shape, zero away from the reference.
    """
    ndim = intensity.dim()
    correlation = autocorrelation(intensity, ndim)
    weight = reference.abs()
    grids = torch.meshgrid(*[torch.arange(n, device=intensity.device, dtype=torch.float32)
                             - n // 2 for n in intensity.shape], indexing="ij")
    offset = [float((weight * g).sum() / weight.sum().clamp(min=1e-30)) for g in grids]
    radius2 = (0.6 * math.hypot(*offset)) ** 2
    support = torch.zeros_like(intensity, dtype=torch.bool)
    for sign in (1, -1):
        lobe = sum((g - sign * o) ** 2 for g, o in zip(grids, offset, strict=True)) <= radius2
        moved = torch.roll(torch.where(lobe, correlation, 0.0),
                           [-round(sign * o) for o in offset], tuple(range(ndim)))
        blurred = gaussian_blur(moved, sigma_px, ndim)
        support |= blurred > threshold * blurred.max()
    return fill_holes(support)
