"""Fourier-space metrics: ring averages, FRC, PRTF and the Fourier R-factor.

Pixel units: spatial frequencies in cycles per pixel (0 to 0.5); intensities in photons.
Inputs may be torch tensors or numpy arrays; work is done in float64/complex128.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from diffrecon.losses.inputs import ArrayLike, as_complex, pixel_weights
from diffrecon.physics.fft import fft2c, frequency_grid

Tensor = torch.Tensor


def ring_index(
    shape: Sequence[int], num_rings: int | None = None, *, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """Ring number of every pixel of a DC-centred 2D spectrum (DC at index (H//2, W//2)).

    Ring i holds spatial frequencies |f| in [(i - 1/2) df, (i + 1/2) df), df = 0.5 / num_rings,
    with |f| in cycles per pixel; pixels beyond the last ring get index ``num_rings + 1``.

    Args:
        shape: (H, W).
        num_rings: rings beyond DC; default min(H, W) // 2, so no ring is empty.
        device: device of the returned tensors.

    Returns:
        index: (H, W) int64 in [0, num_rings + 1].
        frequencies: (num_rings + 1,) float64 ring centres i * df, 0 to 0.5 cycles/pixel.
    """
    num_rings = num_rings or min(shape) // 2
    ky, kx = frequency_grid((int(shape[0]), int(shape[1])), device=device)
    spacing = 0.5 / num_rings
    index = torch.round(torch.sqrt(ky**2 + kx**2) / spacing).long().clamp_max(num_rings + 1)
    frequencies = torch.arange(num_rings + 1, dtype=torch.float64, device=device) * spacing
    return index, frequencies


def _ring_sum(values: Tensor, index: Tensor, num_rings: int) -> Tensor:
    """Sum ``values`` (H, W) over each ring of ``index``: shape (num_rings + 1,)."""
    out = torch.zeros(num_rings + 2, dtype=values.dtype, device=values.device)
    return out.index_add_(0, index.reshape(-1), values.reshape(-1))[:-1]


def radial_average(
    image: ArrayLike, *, mask: ArrayLike | None = None, num_rings: int | None = None
) -> tuple[Tensor, Tensor]:
    """Azimuthal (ring) average of a DC-centred 2D array, weighted by ``mask``.

    Args:
        image: (H, W) real or complex, DC at (H//2, W//2).
        mask: bool or float (H, W) weights; rings with zero weight come back NaN.
        num_rings: see :func:`ring_index`.

    Returns:
        frequencies (num_rings + 1,) in cycles/pixel and ring averages (num_rings + 1,).
    """
    values = torch.as_tensor(image)
    values = values.to(torch.promote_types(values.dtype, torch.float64))
    if values.ndim != 2:
        raise ValueError(f"expected an (H, W) image, got shape {tuple(values.shape)}")
    weights = pixel_weights(mask, values)
    index, frequencies = ring_index(values.shape, num_rings, device=values.device)
    rings = len(frequencies) - 1
    total = _ring_sum(weights * values, index, rings)
    count = _ring_sum(weights, index, rings)
    return frequencies, total / count.where(count > 0, torch.nan)


def frc(
    a: ArrayLike, b: ArrayLike, *, num_rings: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Fourier ring correlation of two 2D images and the 1/2-bit threshold.

    FRC(r) = Re sum_ring F_a conj(F_b) / sqrt(sum_ring |F_a|^2 sum_ring |F_b|^2); threshold
    T(r) = (0.2071 + 1.9102/sqrt(n_r)) / (1.2071 + 0.9102/sqrt(n_r)) with n_r pixels in the
    ring (van Heel & Schatz, J. Struct. Biol. 151, 250 (2005)). The images should already be
    aligned (e.g. ``align(b, a)``): the FRC is not invariant to shifts or phase offsets.

    Args:
        a: (H, W) real or complex image.
        b: (H, W) image on the same grid.
        num_rings: see :func:`ring_index`.

    Returns:
        frequencies (R,) in cycles/pixel (0 to 0.5), FRC values (R,) and threshold (R,), float64.
    """
    fa, fb = fft2c(as_complex(a)), fft2c(as_complex(b))
    if fa.shape != fb.shape or fa.ndim != 2:
        raise ValueError(f"expected two (H, W) images, got {fa.shape} and {fb.shape}")
    index, frequencies = ring_index(fa.shape, num_rings, device=fa.device)
    rings = len(frequencies) - 1
    cross = _ring_sum(fa * fb.conj(), index, rings).real
    power = _ring_sum(fa.abs() ** 2, index, rings) * _ring_sum(fb.abs() ** 2, index, rings)
    correlation = cross / torch.sqrt(power).clamp_min(1e-300)
    root_n = torch.sqrt(_ring_sum(torch.ones_like(index, dtype=torch.float64), index, rings))
    root_n = root_n.clamp_min(1.0)
    threshold = (0.2071 + 1.9102 / root_n) / (1.2071 + 0.9102 / root_n)
    return frequencies, correlation, threshold


def frc_resolution(frequencies: Tensor, frc: Tensor, threshold: Tensor | float) -> float:
    """First frequency (cycles/pixel) where ``frc`` drops below ``threshold``, else 0.5.

    The crossing is linearly interpolated between rings; ring 0 (DC) is ignored. Resolution in
    metres is pixel_size_m / (2 * result) for a half-period, pixel_size_m / result for a period.
    """
    difference = torch.as_tensor(frc).double() - torch.as_tensor(threshold).double()
    frequencies = torch.as_tensor(frequencies).double()
    below = torch.nonzero(difference[1:] < 0)
    if len(below) == 0:
        return 0.5
    i = int(below[0]) + 1
    before, after = float(difference[i - 1]), float(difference[i])
    fraction = before / (before - after) if before > 0 else 0.0
    return float(frequencies[i - 1] + fraction * (frequencies[i] - frequencies[i - 1]))


def r_factor(
    predicted_intensity: ArrayLike, measured_intensity: ArrayLike, mask: ArrayLike | None = None
) -> float:
    """Fourier-amplitude R-factor sum |sqrt(I_pred) - sqrt(I_meas)| / sum sqrt(I_meas).

    Args:
        predicted_intensity: (..., H, W) real, photons; negative values are clipped to 0.
        measured_intensity: same shape.
        mask: bool or float weights of valid pixels (False for beamstop, gaps, hot pixels).
    """
    measured = torch.as_tensor(measured_intensity).to(torch.float64).clamp_min(0).sqrt()
    predicted = torch.as_tensor(predicted_intensity, device=measured.device).to(torch.float64)
    weights = pixel_weights(mask, measured)
    difference = (weights * (predicted.clamp_min(0).sqrt() - measured).abs()).sum()
    return float(difference / (weights * measured).sum())


def prtf(
    fields: ArrayLike,
    measured_intensity: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    num_rings: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Phase retrieval transfer function, ring average of |<F_j e^{i phi_j}>_j| / sqrt(I_meas).

    Each detector field is given the global phase phi_j that best matches the first one, the
    fields are averaged, and the pixelwise ratio to the measured amplitude is ring-averaged over
    valid pixels (Chapman et al., JOSA A 23, 1179 (2006)). The reconstructions should be aligned
    in real space (:func:`align`) before they are propagated.

    Args:
        fields: (R, H, W) complex DC-centred far fields of R reconstructions, sqrt(photons).
        measured_intensity: (H, W) photons, DC-centred.
        mask: bool (H, W) valid pixels; pixels with zero measured intensity are skipped too.
        num_rings: see :func:`ring_index`.

    Returns:
        frequencies (num_rings + 1,) in cycles per object pixel and PRTF values (NaN where a ring
        has no valid pixel).
    """
    stack = as_complex(fields)
    measured = torch.as_tensor(measured_intensity, device=stack.device).to(torch.float64)
    valid = pixel_weights(mask, measured) * (measured > 0)
    overlap = (valid * stack.conj() * stack[:1]).sum(dim=(-2, -1), keepdim=True)
    mean = (stack * torch.exp(1j * torch.angle(overlap))).mean(dim=0)
    ratio = mean.abs() / measured.clamp_min(1e-300).sqrt()
    return radial_average(ratio, mask=valid, num_rings=num_rings)
