"""Propagators from the exit-wave plane to the detector, each with its adjoint.

Every propagator is unitary with ``norm="ortho"`` FFTs (evanescent waves aside), so the adjoint is
the inverse. Detector-side arrays live in the propagator's *native layout*: for the far field that
is the uncentred ``torch.fft`` order, which saves two shifts per pattern in the hot loop. Measured
data are converted once with ``to_native``; anything shown to a person goes through
``from_native`` first.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from diffrecon.physics.fft import fftnc, frequency_grid, ifftnc, ifftshift_into

Tensor = torch.Tensor


class SamplingWarning(UserWarning):
    """A propagation whose sampling aliases (the result would be wrong near the edges)."""


class Propagator(nn.Module):
    """Maps an exit wave (..., H, W) (or (..., D, H, W) for ndim=3) to a detector field."""

    ndim: int = 2

    def forward(self, psi: Tensor) -> Tensor:
        raise NotImplementedError

    def adjoint(self, field: Tensor) -> Tensor:
        raise NotImplementedError

    def to_native(self, detector: Tensor, out: Tensor | None = None) -> Tensor:
        """Convert a DC-centred detector-frame array (..., H, W) into the native layout;
        written into ``out`` (same shape, not overlapping ``detector``) when given."""
        return detector if out is None else out.copy_(detector)

    def from_native(self, detector: Tensor) -> Tensor:
        """Inverse of ``to_native``: native layout to DC-centred detector frame."""
        return detector

    def backpropagate(self, detector_field: Tensor) -> Tensor:
        """The exit wave (origin at the array centre) of a DC-centred detector field."""
        return self.adjoint(self.to_native(detector_field))


class Identity(Propagator):
    """No propagation: the detector sees the exit wave (useful for tests and holography)."""

    def forward(self, psi: Tensor) -> Tensor:
        return psi

    def adjoint(self, field: Tensor) -> Tensor:
        return field


class FarField(Propagator):
    """Fraunhofer propagation: an orthonormal FFT over the last ``ndim`` dimensions.

    The detector field is returned in uncentred FFT order (native layout). The exit wave's
    origin is at index N//2; in the uncentred layout that only multiplies the detector field by
    (-1)^(k), which intensities and magnitude projections never see.
    """

    def __init__(self, ndim: int = 2) -> None:
        super().__init__()
        self.ndim = ndim
        self._dims = tuple(range(-ndim, 0))

    def forward(self, psi: Tensor) -> Tensor:
        return torch.fft.fftn(psi, dim=self._dims, norm="ortho")

    def adjoint(self, field: Tensor) -> Tensor:
        return torch.fft.ifftn(field, dim=self._dims, norm="ortho")

    def to_native(self, detector: Tensor, out: Tensor | None = None) -> Tensor:
        if out is not None:
            return ifftshift_into(detector, out, self._dims)
        return torch.fft.ifftshift(detector, dim=self._dims)

    def from_native(self, detector: Tensor) -> Tensor:
        return torch.fft.fftshift(detector, dim=self._dims)

    def backpropagate(self, detector_field: Tensor) -> Tensor:
        # The native layout drops the (-1)^k factor of a centred exit wave; a field built in
        # the centred frame needs the centred inverse transform to come back centred.
        return ifftnc(detector_field, self.ndim)


class Imaging(FarField):
    """A lens from its back focal (pupil) plane to the image: the inverse orthonormal FFT.

    For Fourier ptychography the exit wave is a DC-centred window of the object spectrum times
    the pupil; the camera sees its inverse transform. Native layout as ``FarField``: the
    intensity of ``ifft`` of a centred window is the uncentred (``ifftshift``-ed) image.
    """

    def forward(self, psi: Tensor) -> Tensor:
        return torch.fft.ifftn(psi, dim=self._dims, norm="ortho")

    def adjoint(self, field: Tensor) -> Tensor:
        return torch.fft.fftn(field, dim=self._dims, norm="ortho")

    def backpropagate(self, detector_field: Tensor) -> Tensor:
        return fftnc(detector_field, self.ndim)


def angular_spectrum_kernel(
    shape: tuple[int, int], pixel_size_m: tuple[float, float], wavelength_m: float,
    distance_m: float, *, paraxial: bool = False,
) -> Tensor:
    """Free-space transfer function H(k) over ``distance_m``, shape (H, W), uncentred order.

    Exact: H = exp(2 pi i z sqrt(1/lambda^2 - k^2)) with evanescent components removed.
    Paraxial (Fresnel): H = exp(-i pi lambda z k^2), the same without the constant phase
    exp(2 pi i z / lambda). Complex128, to keep the phase exact for long distances.
    """
    ky, kx = frequency_grid(shape, pixel_size_m, centred=False)
    k2 = ky.square() + kx.square()
    if paraxial:
        return torch.exp(-1j * math.pi * wavelength_m * distance_m * k2)
    kz2 = 1.0 / wavelength_m**2 - k2
    # Subtract the plane-wave phase so long distances do not lose precision; it is a constant.
    kz = torch.sqrt(torch.clamp(kz2, min=0.0)) - 1.0 / wavelength_m
    return torch.where(kz2 > 0, torch.exp(2j * math.pi * distance_m * kz), 0.0)


def check_transfer_function_sampling(
    shape: tuple[int, int], pixel_size_m: tuple[float, float], wavelength_m: float,
    distance_m: float,
) -> None:
    """Warn when the transfer function's phase is undersampled (|z| > N dx^2 / lambda)."""
    for n, dx in zip(shape, pixel_size_m, strict=True):
        limit = n * dx * dx / wavelength_m
        if abs(distance_m) > limit:
            warnings.warn(
                f"angular-spectrum propagation over {distance_m:.3g} m aliases: with {n} pixels "
                f"of {dx:.3g} m the transfer function is sampled well only up to {limit:.3g} m; "
                "pad the field or use a far-field/scaled propagator",
                SamplingWarning,
                stacklevel=3,
            )


def check_farfield_sampling(field: Tensor, limit: float = 0.05) -> None:
    """Warn when a field (..., H, W) meant for far-field propagation reaches its frame edge.

    The detector samples the far field at the Nyquist rate of a field as wide as the frame:
    an exit wave that spills past the frame aliases (wraps around) in the patterns. The check
    is the fraction of energy in the outer eighth of the frame on each side.
    """
    h, w = field.shape[-2:]
    energy = field.abs().square().reshape(-1, h, w).sum(0)
    inner = energy[h // 8 : h - h // 8, w // 8 : w - w // 8].sum()
    outside = float(1 - inner / energy.sum().clamp(min=1e-30))
    if outside > limit:
        warnings.warn(
            f"far-field sampling: {100 * outside:.0f}% of the probe's energy lies in the outer "
            "eighth of the frame, so the exit waves wrap around and the diffraction patterns "
            "alias; use a larger detector crop (finer sample-plane sampling) or a smaller beam",
            SamplingWarning,
            stacklevel=3,
        )


class AngularSpectrum(Propagator):
    """Plane-wave near-field propagation over ``distance_m`` by the angular-spectrum method.

    Args:
        shape: field shape (H, W) in pixels.
        pixel_size_m: sample-plane pixel size (y, x) in metres.
        wavelength_m: wavelength in metres.
        distance_m: propagation distance in metres (negative propagates back).
        paraxial: use the Fresnel (paraxial) transfer function instead of the exact one.
    """

    def __init__(
        self, shape: tuple[int, int], pixel_size_m: tuple[float, float], wavelength_m: float,
        distance_m: float, *, paraxial: bool = False,
    ) -> None:
        super().__init__()
        check_transfer_function_sampling(shape, pixel_size_m, wavelength_m, distance_m)
        kernel = angular_spectrum_kernel(
            shape, pixel_size_m, wavelength_m, distance_m, paraxial=paraxial
        )
        self.register_buffer("kernel", kernel.to(torch.complex64))
        self.distance_m = distance_m

    def forward(self, psi: Tensor) -> Tensor:
        return torch.fft.ifft2(torch.fft.fft2(psi) * self.kernel)

    def adjoint(self, field: Tensor) -> Tensor:
        return torch.fft.ifft2(torch.fft.fft2(field) * self.kernel.conj())
