"""Wavelengths, sampling relations and probe builders (all SI at the boundary)."""

from __future__ import annotations

import math

import torch

from diffrecon.physics.fft import coordinate_grid, frequency_grid, ifft2c

Tensor = torch.Tensor

PLANCK_EV_S = 4.135667696e-15
SPEED_OF_LIGHT = 299_792_458.0
HC_EV_M = PLANCK_EV_S * SPEED_OF_LIGHT  # 1.23984198e-6 eV m
PLANCK_J_S = 6.62607015e-34
ELECTRON_MASS_KG = 9.1093837015e-31
ELEMENTARY_CHARGE_C = 1.602176634e-19


def squared_modulus(field: Tensor) -> Tensor:
    """Intensity |field|^2 of a complex tensor, same shape, real (a strided view of a complex
    temporary: the real part of field * conj(field), exactly re^2 + im^2).

    On the CPU ``field.abs().square()`` is about 6x slower (a complex abs is a hypot): 595 vs
    92 us on 50 x 64^2 complex64, 51 vs 8 us on 4 x 64^2 (1 thread).
    """
    return (field * field.conj()).real


def xray_wavelength_m(energy_ev: float) -> float:
    """Photon wavelength in metres for a photon energy in eV (lambda = h c / E)."""
    if energy_ev <= 0:
        raise ValueError(f"photon energy must be positive, got {energy_ev} eV")
    return HC_EV_M / energy_ev


def xray_energy_ev(wavelength_m: float) -> float:
    """Photon energy in eV for a wavelength in metres."""
    return HC_EV_M / wavelength_m


def electron_wavelength_m(voltage_v: float) -> float:
    """Relativistic electron wavelength in metres for an accelerating voltage in volts.

    lambda = h / sqrt(2 m e V (1 + e V / (2 m c^2))); 300 kV gives 1.9687 pm.
    """
    energy_j = ELEMENTARY_CHARGE_C * voltage_v
    rest_j = ELECTRON_MASS_KG * SPEED_OF_LIGHT**2
    momentum = math.sqrt(2 * ELECTRON_MASS_KG * energy_j * (1 + energy_j / (2 * rest_j)))
    return PLANCK_J_S / momentum


def electron_voltage_v(wavelength_m: float) -> float:
    """Accelerating voltage in volts of electrons of relativistic wavelength ``wavelength_m``.

    Inverse of ``electron_wavelength_m``: e V = m c^2 (sqrt(1 + (p / m c)^2) - 1), p = h / lambda.
    """
    if wavelength_m <= 0:
        raise ValueError(f"wavelength must be positive, got {wavelength_m} m")
    momentum = PLANCK_J_S / wavelength_m
    mc = ELECTRON_MASS_KG * SPEED_OF_LIGHT
    kinetic = mc * SPEED_OF_LIGHT * (math.sqrt(1 + (momentum / mc) ** 2) - 1)
    return kinetic / ELEMENTARY_CHARGE_C


def interaction_constant(voltage_v: float) -> float:
    """Electron interaction constant sigma in rad / (V m), relativistic.

    sigma = 2 pi m e lambda / h^2 with the relativistic mass m = m0 (1 + e V / m0 c^2),
    equivalently (2 pi / (lambda V)) (m0 c^2 + e V) / (2 m0 c^2 + e V) (Kirkland, Advanced
    Computing in Electron Microscopy, Eq. 5.6). A projected potential v_z in V m gives the
    phase sigma v_z in radians; 300 kV: 6.53e6 rad/(V m) (6.53e-4 rad/(V A)).
    """
    wavelength = electron_wavelength_m(voltage_v)
    rest_ev = ELECTRON_MASS_KG * SPEED_OF_LIGHT**2 / ELEMENTARY_CHARGE_C
    return 2 * math.pi / (wavelength * voltage_v) * (rest_ev + voltage_v) / (
        2 * rest_ev + voltage_v
    )


def farfield_pixel_size_m(
    wavelength_m: float, distance_m: float, frame_px: int, detector_pixel_m: float
) -> float:
    """Reconstruction (sample-plane) pixel size lambda z / (N dx_detector) in metres."""
    return wavelength_m * distance_m / (frame_px * detector_pixel_m)


def fresnel_scaling(
    focus_to_sample_m: float, sample_to_detector_m: float, detector_pixel_m: float
) -> tuple[float, float]:
    """Effective (pixel size, distance) of divergent-beam near-field geometry.

    A point source at the focus, the sample at ``focus_to_sample_m`` and the detector
    ``sample_to_detector_m`` further: the magnification is M = (z1 + z2) / z1 and, by the
    Fresnel scaling theorem, the measurement equals a plane-wave one at distance z2 / M with
    pixel size dx / M.
    """
    magnification = (focus_to_sample_m + sample_to_detector_m) / focus_to_sample_m
    return detector_pixel_m / magnification, sample_to_detector_m / magnification


def _normalise(field: Tensor, photons: float) -> Tensor:
    return field * math.sqrt(photons / float(field.abs().square().sum()))


def circular_aperture_probe(
    shape: tuple[int, int], radius_px: float, photons: float = 1.0, *,
    dtype: torch.dtype = torch.complex64, device: torch.device | str | None = None,
) -> Tensor:
    """A flat disc of radius ``radius_px`` (pinhole-defined probe), shape (H, W), energy photons."""
    y, x = coordinate_grid(shape, device=device)
    disc = ((y.square() + x.square()) <= radius_px**2).to(torch.float64)
    return _normalise(disc.to(dtype), photons)


def gaussian_probe(
    shape: tuple[int, int], fwhm_px: float, photons: float = 1.0, *,
    dtype: torch.dtype = torch.complex64, device: torch.device | str | None = None,
) -> Tensor:
    """A Gaussian beam of intensity FWHM ``fwhm_px`` pixels, flat phase, shape (H, W)."""
    y, x = coordinate_grid(shape, device=device)
    sigma = fwhm_px / (2 * math.sqrt(2 * math.log(2)))  # of the intensity
    amplitude = torch.exp(-(y.square() + x.square()) / (4 * sigma**2))
    return _normalise(amplitude.to(dtype), photons)


def zone_plate_probe(
    shape: tuple[int, int], pixel_size_m: float, wavelength_m: float, *,
    diameter_m: float, focal_length_m: float, defocus_m: float = 0.0,
    central_stop: float = 0.0, photons: float = 1.0,
    dtype: torch.dtype = torch.complex64, device: torch.device | str | None = None,
) -> Tensor:
    """Field of a Fresnel zone plate focus, ``defocus_m`` downstream of the focal plane.

    The lens is a pupil of numerical aperture NA = D / (2 f) (optionally with a central stop,
    as a fraction of D); its focus is the inverse FT of that pupil and the defocus is applied
    with the exact angular-spectrum transfer function. Shape (H, W), total intensity photons.
    """
    ky, kx = frequency_grid(shape, (pixel_size_m, pixel_size_m), device=device)
    k2 = ky.square() + kx.square()
    cutoff = diameter_m / (2 * focal_length_m) / wavelength_m  # NA / lambda, cycles per metre
    pupil = (k2 <= cutoff**2) & (k2 >= (central_stop * cutoff) ** 2)
    kz = torch.sqrt(torch.clamp(1 / wavelength_m**2 - k2, min=0.0))
    pupil_field = pupil.to(torch.complex128) * torch.exp(2j * math.pi * defocus_m * kz)
    return _normalise(ifft2c(pupil_field).to(dtype), photons)
