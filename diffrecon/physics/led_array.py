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

import math

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


def net_tilt(field: Tensor) -> Tensor:
    """The linear phase ramp of ``field`` (..., H, W) as a spectrum offset (2,), pixels.

    A field o(r) exp(2 pi i (d_y y / H + d_x x / W)) has its spectrum shifted by d; d is read
    from the mean phase difference of neighbouring pixels (amplitude-weighted), which a
    periodic phase biases little. A sample that tilts the beam on the whole has d != 0.
    """
    h, w = field.shape[-2:]
    # neighbours inside the array only: the wrap-around pair of a ramp with a non-integer d
    # jumps by 2 pi d and would bias the estimate by O(1 / H)
    dy = (field[..., 1:, :] * field[..., :-1, :].conj()).sum()
    dx = (field[..., :, 1:] * field[..., :, :-1].conj()).sum()
    return torch.stack([torch.angle(dy) * h, torch.angle(dx) * w]) / (2 * math.pi)


def fit_pose(nominal_m: Tensor, target: Tensor, pose: Tensor, height_m: float,
             wavelength_m: float, spectrum_pixel: float, *, weights: Tensor | None = None,
             free: tuple[bool, bool, bool, bool] = (True, True, True, True),
             iterations: int = 50) -> Tensor:
    """Array pose (4,) (shift y, shift x mm, rotation degrees, height change mm) whose LED
    offsets (``spectrum_offsets / spectrum_pixel``) best match ``target`` (L, 2) pixels.

    Weighted least squares (``weights`` (L,), default 1) by L-BFGS from ``pose``, over the
    entries marked ``free``; ``nominal_m`` (L, 2) nominal LED positions.
    """
    start = pose.detach().double().clone()
    mask = torch.tensor(free, dtype=torch.float64)
    delta = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    weights = torch.ones(len(target), dtype=torch.float64) if weights is None else weights
    optimizer = torch.optim.LBFGS([delta], max_iter=iterations, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-10, tolerance_change=1e-14)

    def loss() -> Tensor:
        optimizer.zero_grad()
        current = start + mask * delta
        positions = transform_positions(nominal_m.double(), current[:2] * 1e-3,
                                        torch.deg2rad(current[2]))
        offsets = spectrum_offsets(positions, height_m + current[3] * 1e-3, wavelength_m)
        residual = (offsets / spectrum_pixel - target.double()).square().sum(1)
        value = (weights.double() * residual).sum()
        value.backward()
        return value

    optimizer.step(loss)
    return (start + mask * delta).detach()
