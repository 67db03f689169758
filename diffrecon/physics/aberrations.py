"""Axial aberrations of an electron lens in Krivanek notation, and the aberrated probe.

The aberration function of the objective (probe-forming) lens at scattering angle
alpha = lambda |k| and azimuth phi = atan2(ky, kx) is (Krivanek et al., Ultramicroscopy 78, 1
(1999), Eq. 1)

    chi(k) = 2 pi / lambda * sum_{n, m} alpha^(n + 1) / (n + 1)
             * (C_nm,a cos(m phi) + C_nm,b sin(m phi))          [radians]

with n the order (1..5) and m the symmetry (m <= n + 1, m + n odd); a round aberration (m = 0)
has only the ``a`` component. A coefficient of magnitude C and angle phi_nm is
C_nm,a = C cos(m phi_nm), C_nm,b = C sin(m phi_nm) (see ``polar_to_components``).

The probe in the sample plane is the inverse Fourier transform of the aperture times
exp(-i chi). **Sign convention**: with this sign, chi of a pure defocus C10 = dz is
pi lambda dz k^2, and exp(-i chi) is exactly the paraxial Fresnel transfer function
exp(-i pi lambda dz k^2) of ``physics.propagators`` over +dz. So C10 > 0 means the sample sits
C10 *downstream* of the probe's crossover (the beam is focused above the sample: overfocus);
Scherzer-type underfocus is C10 < 0. C30 (= Cs) > 0 for an uncorrected round lens.
All coefficients are in metres; k in 1/m; angles in radians.
"""

from __future__ import annotations

import math

import torch

from diffrecon.errors import ConfigError
from diffrecon.physics.fft import frequency_grid, ifft2c

Tensor = torch.Tensor


def _table() -> list[tuple[str, int, int, str]]:
    rows = []
    for n in range(1, 6):
        for m in range((n + 1) % 2, n + 2, 2):
            if m == 0:
                rows.append((f"C{n}{m}", n, m, "a"))
            else:
                rows += [(f"C{n}{m}a", n, m, "a"), (f"C{n}{m}b", n, m, "b")]
    return rows


#: (name, order n, symmetry m, component) of every coefficient, in tensor order:
#: C10, C12a, C12b, C21a, C21b, C23a, C23b, C30, C32a, C32b, C34a, C34b, C41a, ..., C56b.
ABERRATIONS: tuple[tuple[str, int, int, str], ...] = tuple(_table())
ABERRATION_NAMES: tuple[str, ...] = tuple(row[0] for row in ABERRATIONS)


def aberration_index(name: str) -> int:
    """Position of coefficient ``name`` (e.g. "C10", "C12a", "C30") in the coefficient tensor."""
    try:
        return ABERRATION_NAMES.index(name)
    except ValueError:
        known = ", ".join(ABERRATION_NAMES)
        raise ConfigError(f"unknown aberration '{name}' (known: {known})") from None


def aberration_vector(values: dict[str, float], *, dtype: torch.dtype = torch.float64) -> Tensor:
    """Coefficient tensor (len(ABERRATION_NAMES),) in metres from a {name: metres} mapping."""
    out = torch.zeros(len(ABERRATIONS), dtype=dtype)
    for name, value in values.items():
        out[aberration_index(name)] = value
    return out


def polar_to_components(magnitude_m: float, angle_rad: float, m: int) -> tuple[float, float]:
    """(C_a, C_b) of an aberration of symmetry ``m``, ``magnitude_m`` and azimuth ``angle_rad``."""
    return magnitude_m * math.cos(m * angle_rad), magnitude_m * math.sin(m * angle_rad)


def angular_basis(alpha: Tensor, phi: Tensor) -> Tensor:
    """The functions multiplying each coefficient, shape (K, H, W), K = len(ABERRATIONS).

    Entry j is alpha^(n+1)/(n+1) cos(m phi) or sin(m phi) for the j-th coefficient, so that
    chi = 2 pi / lambda * sum_j C_j basis_j. ``alpha`` (rad) and ``phi`` (rad): (H, W).
    """
    rows = []
    for _, n, m, part in ABERRATIONS:
        angular = torch.cos(m * phi) if part == "a" else torch.sin(m * phi)
        rows.append(alpha.pow(n + 1) / (n + 1) * angular)
    return torch.stack(rows)


def polar_grid(
    shape: tuple[int, int], pixel_size_m: tuple[float, float], wavelength_m: float, *,
    centred: bool = True, dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Scattering angle alpha = lambda |k| (rad) and azimuth phi (rad) of an (H, W) grid."""
    ky, kx = frequency_grid(shape, pixel_size_m, centred=centred, dtype=torch.float64,
                            device=device)
    alpha = wavelength_m * torch.sqrt(ky.square() + kx.square())
    return alpha.to(dtype), torch.atan2(ky, kx).to(dtype)


def aberration_phase(coefficients_m: Tensor, basis: Tensor, wavelength_m: float) -> Tensor:
    """chi (H, W) in radians from coefficients (K,) in metres and ``angular_basis`` (K, H, W).

    Differentiable with respect to every coefficient (chi is linear in them).
    """
    return (2 * math.pi / wavelength_m) * torch.tensordot(coefficients_m, basis, dims=1)


def aperture(alpha: Tensor, convergence_rad: float, soft_edge_px: float = 0.0,
             alpha_step_rad: float | None = None) -> Tensor:
    """Probe-forming aperture (H, W), 1 inside alpha <= convergence, 0 outside.

    With ``soft_edge_px`` > 0 the edge is a linear ramp ``soft_edge_px`` reciprocal pixels wide
    (``alpha_step_rad`` = lambda * dk per pixel), which avoids ringing of a hard disc.
    """
    if soft_edge_px <= 0 or alpha_step_rad is None:
        return (alpha <= convergence_rad).to(alpha.dtype)
    width = soft_edge_px * alpha_step_rad
    return torch.clamp(0.5 + (convergence_rad - alpha) / width, 0.0, 1.0)


def probe_from_pupil(pupil: Tensor, electrons: float | Tensor) -> Tensor:
    """Sample-plane probe (..., H, W) of a DC-centred pupil function, carrying ``electrons``.

    ``electrons`` is the total intensity sum |P|^2 (Parseval with the orthonormal FFT).
    """
    probe = ifft2c(pupil)
    norm = probe.abs().square().sum(dim=(-2, -1), keepdim=True)
    return probe * torch.sqrt(electrons / norm)


def electron_probe(
    shape: tuple[int, int], pixel_size_m: tuple[float, float], wavelength_m: float,
    convergence_rad: float, coefficients_m: Tensor, *, soft_edge_px: float = 0.0,
    electrons: float = 1.0,
) -> Tensor:
    """Aberrated convergent-beam probe (H, W): ifft(aperture * exp(-i chi)), sum |P|^2 = electrons.

    Args:
        shape: probe frame (H, W), pixels.
        pixel_size_m: sample-plane pixel size (y, x), metres.
        wavelength_m: electron wavelength, metres.
        convergence_rad: aperture semi-angle, radians.
        coefficients_m: (len(ABERRATIONS),) Krivanek coefficients, metres (real; its dtype,
            float32 or float64, sets the precision: complex64 or complex128 out).
        soft_edge_px: aperture edge width in reciprocal pixels (0: hard edge).
        electrons: total intensity of the probe.
    """
    dtype = coefficients_m.dtype
    alpha, phi = polar_grid(shape, pixel_size_m, wavelength_m, dtype=dtype,
                            device=coefficients_m.device)
    step = wavelength_m / (shape[1] * pixel_size_m[1])
    pupil = aperture(alpha, convergence_rad, soft_edge_px, step)
    chi = aberration_phase(coefficients_m, angular_basis(alpha, phi), wavelength_m)
    return probe_from_pupil(torch.polar(pupil, -chi), electrons)
