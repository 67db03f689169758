"""The Fourier-ptychography hand-off to PtyLab (issue 5): its FPM input file and its output.

Imported by ``bench_fp.py`` and by ``workers/ptylab_fp.py`` inside PtyLab's virtual
environment, so it needs only numpy and h5py (never diffrecon).

PtyLab 0.3.7 (``ExperimentalData``, ``Reconstruction``, operationMode ``"FPM"``) reads an HDF5
file with ``ptychogram`` (N, Nd, Nd) counts, ``wavelength`` (m), ``encoder`` (N, 2) LED
positions in the array plane (m), ``dxd`` camera pixel (m), ``zled`` LED-array height (m),
``magnification`` and optional ``NA``. Its window for image n starts, in spectrum pixels, at

    round(-encoder_n / (lambda sqrt(|encoder_n|^2 + zled^2)) * Np dxp) + No // 2 - Np // 2

(``Reconstruction.positions``; row from ``encoder[:, 0]``, column from ``encoder[:, 1]``;
dxp = dxd / magnification), and it images the window with ``fft2c`` (centred orthonormal
*forward* FFT): |fft2c(S[window] P)|^2. Ours images the window at +k_c with the inverse FFT,
|ifft2c(O[window] P)|^2 (``models/fourier_ptycho.py``), so the two agree when PtyLab's
spectrum is the centre-mirrored one, S(k) = O(-k), i.e. S = ifft2c(o) (PtyLab's own
"upsampled" start is exactly that) and its object is o = fft2c(S). The encoder is therefore
our (y, x) LED table as is. Offsets are rounded to whole spectrum pixels (ours are not).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

#: encoder conventions tried against our images (``geometry_misfit``): the nominal one,
#: then the obvious slips (x/y swapped, offsets negated, both)
ENCODER_VARIANTS = {"yx": (False, 1.0), "xy": (True, 1.0), "-yx": (False, -1.0),
                    "-xy": (True, -1.0)}


def write_fpm_file(path: str | Path, patterns: np.ndarray, leds_yx_m: np.ndarray,
                   wavelength_m: float, camera_pixel_m: float, magnification: float,
                   led_height_m: float, numerical_aperture: float) -> None:
    """PtyLab's FPM input file (module docstring) for single-LED images.

    Args:
        patterns: (N, h, w) counts, h == w (PtyLab's frames are square).
        leds_yx_m: (N, 2) (y, x) position of each image's LED in the array plane, metres.
        wavelength_m, camera_pixel_m, led_height_m: metres; magnification, numerical_aperture:
            of the objective.
    """
    images = np.asarray(patterns, dtype=np.float32)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"PtyLab needs square frames (N, n, n), got {images.shape}")
    with h5py.File(path, "w") as f:
        f["ptychogram"] = images
        f["encoder"] = np.asarray(leds_yx_m, dtype=np.float64)
        for key, value in (("wavelength", wavelength_m), ("dxd", camera_pixel_m),
                           ("zled", led_height_m), ("magnification", magnification),
                           ("NA", numerical_aperture)):
            f[key] = float(value)
        f["orientation"] = 0


def encoder_variant(encoder: np.ndarray, name: str) -> np.ndarray:
    """The (N, 2) encoder under one of ``ENCODER_VARIANTS``."""
    swap, sign = ENCODER_VARIANTS[name]
    return sign * (encoder[:, ::-1] if swap else encoder).copy()


def fft2c(x: np.ndarray) -> np.ndarray:
    """Centred orthonormal forward FFT over the last two axes (PtyLab's ``fft2c``)."""
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=axes), norm="ortho"),
                           axes=axes)


def ifft2c(x: np.ndarray) -> np.ndarray:
    """Centred orthonormal inverse FFT over the last two axes (PtyLab's ``ifft2c``)."""
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(x, axes=axes), norm="ortho"),
                           axes=axes)


def centre_crop_or_pad(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``array`` (..., H, W) cut or zero-padded to (..., h, w) about index (H // 2, W // 2),
    which lands on (h // 2, w // 2): the DC pixel of a centred spectrum stays the DC pixel."""
    out = np.zeros((*array.shape[:-2], *shape), dtype=array.dtype)
    src, dst = [], []
    for size, new in zip(array.shape[-2:], shape, strict=True):
        start = new // 2 - size // 2  # where source index 0 lands
        lo, hi = max(start, 0), min(start + size, new)
        dst.append(slice(lo, hi))
        src.append(slice(lo - start, hi - start))
    out[(..., *dst)] = array[(..., *src)]
    return out


def object_from_spectrum(spectrum: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """PtyLab's FPM object spectrum (No, No) as a transmission on our (H, W) object grid.

    The spectrum pixel is 1 / field of view for both (same camera frame), so cutting or
    padding the centred spectrum to (H, W) puts the object on our pixel (field of view / H);
    PtyLab never updates beyond its windows, which all lie inside our grid (ours is sized to
    hold every window), so nothing it reconstructed is cut. Then o = fft2c(S) (module
    docstring), times sqrt(No^2 / (H W)) to keep the amplitude per pixel.
    """
    cut = centre_crop_or_pad(np.asarray(spectrum), grid)
    scale = np.sqrt(spectrum.shape[-1] * spectrum.shape[-2] / (grid[0] * grid[1]))
    return (fft2c(cut) * scale).astype(np.complex64)


def spectrum_from_object(transmission: np.ndarray, size: int) -> np.ndarray:
    """The inverse of ``object_from_spectrum``: PtyLab's (size, size) spectrum of an object
    on our grid (for the geometry check)."""
    h, w = transmission.shape[-2:]
    scale = np.sqrt(h * w / size**2)
    return centre_crop_or_pad(ifft2c(transmission.astype(np.complex128)), (size, size)) * scale


def ptylab_corners(encoder: np.ndarray, wavelength_m: float, zled_m: float, dxp_m: float,
                   frame: int, grid: int) -> np.ndarray:
    """Top-left corners (N, 2) (row, column) of PtyLab's FPM windows, spectrum pixels: its
    ``Reconstruction.positions`` formula (module docstring) for encoder (N, 2) metres, object
    pixel ``dxp_m`` = camera pixel / magnification, frames of ``frame`` pixels and its object
    spectrum of ``grid`` pixels (the worker checks this against PtyLab's own)."""
    radius = np.sqrt((encoder**2).sum(1) + zled_m**2)[:, None]
    offsets = np.round(-encoder / (wavelength_m * radius) * dxp_m * frame)
    return offsets.astype(int) + grid // 2 - frame // 2


def window_images(spectrum: np.ndarray, corners: np.ndarray, pupil: np.ndarray) -> np.ndarray:
    """PtyLab's FPM forward model: |fft2c(S[r:r+n, c:c+n] P)|^2 (N, n, n) per corner (r, c)."""
    n = pupil.shape[-1]
    patches = np.stack([spectrum[r : r + n, c : c + n] for r, c in corners])
    return np.abs(fft2c(patches * pupil)) ** 2


def geometry_misfit(images: np.ndarray, reference: np.ndarray) -> float:
    """Median over images n of ||c_n I_n - R_n|| / ||R_n||, each with its best scale c_n:
    0 when every window is right (each image weighs the same, dark field included)."""
    a = images.reshape(len(images), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    scale = (a * b).sum(1) / np.maximum((a * a).sum(1), 1e-300)
    errors = np.linalg.norm(scale[:, None] * a - b, axis=1) / np.linalg.norm(b, axis=1)
    return float(np.median(errors))
