"""Zernike polynomials on the unit disc, Noll-indexed and orthonormal, for pupil aberrations.

Noll (J. Opt. Soc. Am. 66, 207 (1976)) orders the polynomials by a single index j >= 1 (1:
piston, 2-3: tilts, 4: defocus, 5-6: astigmatism, 7-8: coma, 11: spherical) and normalises
them so that

    (1 / pi) * integral over the unit disc of Z_i Z_j dA = delta_ij,

i.e. a coefficient is the rms of its term over the disc. ``Z_j(rho, theta) =
sqrt(n + 1) R_n^m(rho)`` for m = 0, and ``sqrt(2 (n + 1)) R_n^|m|(rho) cos(m theta)`` (even
j) or ``... sin(|m| theta)`` (odd j) otherwise (Noll Eq. 3).
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor

#: conventional names of the first Noll indices
NOLL_NAMES = {
    1: "piston", 2: "tilt_x", 3: "tilt_y", 4: "defocus", 5: "astigmatism_oblique",
    6: "astigmatism_vertical", 7: "coma_vertical", 8: "coma_horizontal", 9: "trefoil_vertical",
    10: "trefoil_oblique", 11: "spherical",
}


def noll_to_nm(j: int) -> tuple[int, int]:
    """Radial order n and signed azimuthal frequency m of Noll index ``j`` (>= 1).

    m > 0 is a cosine term (even j), m < 0 a sine term (odd j), m = 0 radial only.
    """
    if j < 1:
        raise ValueError(f"Noll indices start at 1, got {j}")
    n, remainder = 0, j - 1
    while remainder > n:
        n += 1
        remainder -= n
    m = (n % 2) + 2 * ((remainder + ((n + 1) % 2)) // 2)
    return n, m if j % 2 == 0 or m == 0 else -m


def radial_polynomial(n: int, m: int, rho: Tensor) -> Tensor:
    """Zernike radial polynomial R_n^|m|(rho), same shape and dtype as ``rho``."""
    m = abs(m)
    out = torch.zeros_like(rho)
    for s in range((n - m) // 2 + 1):
        coefficient = (-1) ** s * math.factorial(n - s) / (
            math.factorial(s) * math.factorial((n + m) // 2 - s)
            * math.factorial((n - m) // 2 - s))
        out = out + coefficient * rho.pow(n - 2 * s)
    return out


def zernike(j: int, rho: Tensor, theta: Tensor) -> Tensor:
    """Orthonormal Noll Zernike polynomial Z_j at (rho, theta), zero outside rho <= 1.

    Args:
        j: Noll index (>= 1).
        rho: normalised radius (..., H, W), real.
        theta: azimuth in radians, same shape (measured from +x towards +y).
    """
    n, m = noll_to_nm(j)
    radial = radial_polynomial(n, m, rho)
    if m == 0:
        value = math.sqrt(n + 1) * radial
    else:
        angular = torch.cos(m * theta) if m > 0 else torch.sin(-m * theta)
        value = math.sqrt(2 * (n + 1)) * radial * angular
    return torch.where(rho <= 1, value, torch.zeros_like(value))


def zernike_basis(indices: list[int] | tuple[int, ...], rho: Tensor, theta: Tensor) -> Tensor:
    """Stack (J, ..., H, W) of ``zernike(j, rho, theta)`` for each Noll index in ``indices``."""
    return torch.stack([zernike(j, rho, theta) for j in indices])


def zernike_phase(coefficients_waves: Tensor, basis: Tensor) -> Tensor:
    """Wavefront phase 2 pi sum_j c_j Z_j (H, W) in radians, coefficients (J,) in waves rms.

    Differentiable and linear in the coefficients; ``basis`` from ``zernike_basis``.
    """
    return 2 * math.pi * torch.tensordot(coefficients_waves.to(basis.dtype), basis, dims=1)


def fit_zernike(phase_rad: Tensor, basis: Tensor, weights: Tensor) -> Tensor:
    """Least-squares coefficients (J,) in waves of a phase map (H, W) in radians on ``basis``.

    ``weights`` (H, W) selects (and weights) the pixels used, e.g. the pupil support. The
    phase must be unwrapped (|phase| < pi everywhere, or smooth within the support).
    """
    w = weights.to(basis.dtype).flatten()
    design = basis.reshape(basis.shape[0], -1).T * w[:, None]
    target = phase_rad.to(basis.dtype).flatten() * w / (2 * math.pi)
    return torch.linalg.lstsq(design, target[:, None]).solution[:, 0]
