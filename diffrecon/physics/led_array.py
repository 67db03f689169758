"""LED-array illumination for Fourier ptychography: LED positions to spectrum offsets.

An LED at (y, x) in its array plane, a height z below the sample, illuminates a thin sample
around the optical axis with a plane wave travelling along -(y, x, -z) / r, r = sqrt(x^2 + y^2 +
z^2) (the far-field, point-source approximation of Zheng et al., Nat. Photonics 7, 739 (2013)).
The sample field o(r) exp(2 pi i k_ill . r), k_ill = -(y, x) / (lambda r), has the spectrum
O(k - k_ill), so the objective pupil, centred at k = 0, passes the object spectrum around

    k_c = -k_ill = (y, x) / (lambda r)        (cycles per metre)

which is what ``spectrum_offsets`` returns. An LED is bright-field when |k_c| <= NA / lambda
(its direct beam enters the pupil) and dark-field otherwise.

The array's pose is calibrated by a rigid transform of the nominal LED coordinates:
rotation by ``rotation_rad`` about the optical axis (from +x towards +y), then a shift.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def grid_positions(rows: int, columns: int, pitch_m: float, *,
                   dtype: torch.dtype = torch.float64) -> Tensor:
    """Nominal (y, x) positions (rows * columns, 2) in metres of a regular array, centred.

    Row-major order: LED k is at row k // columns, column k % columns.
    """
    y = (torch.arange(rows, dtype=dtype) - (rows - 1) / 2) * pitch_m
    x = (torch.arange(columns, dtype=dtype) - (columns - 1) / 2) * pitch_m
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([yy.flatten(), xx.flatten()], dim=1)


def transform_positions(nominal_m: Tensor, shift_m: Tensor, rotation_rad: Tensor) -> Tensor:
    """LED positions (L, 2) (y, x) metres after a rotation about the axis, then a shift.

    Args:
        nominal_m: (L, 2) nominal (y, x) positions, metres.
        shift_m: (2,) (y, x) shift of the array, metres.
        rotation_rad: () rotation angle, radians, from +x towards +y.
    """
    cos, sin = torch.cos(rotation_rad), torch.sin(rotation_rad)
    y, x = nominal_m[:, 0], nominal_m[:, 1]
    return torch.stack([sin * x + cos * y, cos * x - sin * y], dim=1) + shift_m


def spectrum_offsets(positions_m: Tensor, height_m: Tensor | float, wavelength_m: float) -> Tensor:
    """Centre (L, 2) (y, x) of each LED's pupil window in the object spectrum, cycles / metre.

    k_c = (y, x) / (lambda sqrt(x^2 + y^2 + z^2)) (module docstring); differentiable with
    respect to the positions and the height.
    """
    height = torch.as_tensor(height_m, dtype=positions_m.dtype, device=positions_m.device)
    radius = torch.sqrt(positions_m.square().sum(1, keepdim=True) + height.square())
    return positions_m / (wavelength_m * radius)


def illumination_na(positions_m: Tensor, height_m: Tensor | float) -> Tensor:
    """Illumination numerical aperture sin(theta) (L,) of each LED."""
    height = torch.as_tensor(height_m, dtype=positions_m.dtype, device=positions_m.device)
    lateral = positions_m.square().sum(1)
    return torch.sqrt(lateral / (lateral + height.square()))


def is_brightfield(positions_m: Tensor, height_m: Tensor | float,
                   numerical_aperture: float) -> Tensor:
    """(L,) bool: the LED's direct beam enters the objective (illumination NA <= NA)."""
    return illumination_na(positions_m, height_m) <= numerical_aperture
