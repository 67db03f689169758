"""Fourier-ptychography simulation: a bar target with a smooth phase under an LED array.

Registered as the ``fourier_ptycho`` simulator. The truth is an amplitude target of bar
groups (three vertical bars over three horizontal bars per group, periods ``bar_periods``
times the resolution limit lambda / NA_synthetic, where NA_synthetic is the objective NA plus
the largest on-axis illumination NA) with a smooth phase of ``phase_rad`` peak; images are the
``fourier_ptycho`` model's intensities of that target band-limited to the synthetic
aperture (with the true pupil aberrations and the true, possibly
shifted/rotated LED array) plus Poisson noise. The file holds the *nominal* LED grid.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Literal

import numpy as np
import torch

from diffrecon.config import doc
from diffrecon.data.container import DiffractionData, Truth
from diffrecon.data.fpm import with_leds
from diffrecon.data.phantoms import smooth_noise
from diffrecon.data.simulate import Simulator, simulate_patterns, simulators
from diffrecon.losses.likelihoods import make_likelihood
from diffrecon.physics import led_array
from diffrecon.physics.fft import fft2c, frequency_grid, ifft2c


@dataclasses.dataclass
class FPSimulation:
    modality: str = doc("fourier_ptycho", "registered modality to simulate")
    seed: int = doc(0, "random seed (phase object, multiplexing, noise)")
    wavelength_m: float = doc(0.52e-6, "LED wavelength, metres")
    numerical_aperture: float = doc(0.1, "objective NA")
    magnification: float = doc(4.0, "objective magnification")
    camera_pixel_m: float = doc(6.5e-6, "camera pixel pitch, metres")
    image_px: int = doc(64, "camera image size (square), pixels")
    led_rows: int = doc(15, "LED array rows")
    led_columns: int = doc(15, "LED array columns")
    led_pitch_m: float = doc(4e-3, "LED pitch, metres")
    led_height_m: float = doc(60e-3, "LED array distance below the sample, metres")
    led_shift_m: list[float] = doc([0.0, 0.0], "true (y, x) shift of the array, metres "
                                   "(the file holds the nominal, centred grid)")
    led_rotation_deg: float = doc(0.0, "true rotation of the array about the axis, degrees")
    leds_per_image: int = doc(
        1, "LEDs lit per image (multiplexed: bright- and dark-field apart, similar NA together, "
        "spread apart, never a facing pair)")
    photons_per_pixel: float = doc(1000.0, "bright-field counts per pixel of a clear sample")
    noise: Literal["poisson", "none"] = doc("poisson", "noise model")
    zernike_waves: dict[str, float] = doc({}, "true pupil aberrations {Z4 = 0.5, ...}, waves rms")
    phase_rad: float = doc(1.0, "peak phase of the smooth phase object, radians")
    bar_periods: list[float] = doc([4.0, 2.5, 1.6, 1.25, 1.05, 0.8],
                                   "bar-group periods in units of lambda / NA_synthetic")


def bar_layout(shape: tuple[int, int], pixel_m: float, periods_m: list[float]
               ) -> list[tuple[float, float, float]]:
    """(period, top, left) in metres of each bar group of ``bar_target``, left to right."""
    h, w = shape
    left, top = 0.12 * w * pixel_m, 0.2 * h * pixel_m
    out = []
    for period in periods_m:
        out.append((period, top, left))
        left += max(5 * period, 3 * period) + 1.5 * period
    return out


def bar_target(shape: tuple[int, int], pixel_m: float, periods_m: list[float]) -> np.ndarray:
    """USAF-like amplitude (H, W) in [0.3, 1]: per period, 3 vertical over 3 horizontal bars.

    Groups are laid left to right (``bar_layout``); each vertical-bar block is 5 periods
    tall, the horizontal-bar block under it 5 periods wide. Bars are half a period wide.
    """
    h, w = shape
    y = (np.arange(h) + 0.5)[:, None] * pixel_m
    x = (np.arange(w) + 0.5)[None, :] * pixel_m
    target = np.ones(shape)
    for period, top, left in bar_layout(shape, pixel_m, periods_m):
        size = 5 * period
        for k in range(3):
            bar = (x >= left + k * period) & (x < left + (k + 0.5) * period)
            target[bar & (y >= top) & (y < top + size)] = 0.3
            rows = (y >= top + size + period + k * period) & (y < top + size + (k + 1.5) * period)
            target[rows & (x >= left) & (x < left + size)] = 0.3
    return target


@dataclasses.dataclass
class FPMultisliceSimulation(FPSimulation):
    modality: str = doc("fourier_ptycho_multislice", "registered modality to simulate")
    slice_thickness_m: float = doc(
        10e-6, "the bars lie in slice 0, the phase object this far downstream, metres")


def simulate_fp(config: FPSimulation) -> DiffractionData:
    """FP images (N, h, w) of the bar/phase target with ground truth (module docstring).

    An ``FPMultisliceSimulation`` puts the bars and the phase object in two slices
    ``slice_thickness_m`` apart (focus on the first) and images them with the
    ``fourier_ptycho_multislice`` model; the truth is then the two slices (2, H, W).
    """
    from diffrecon.models.fourier_ptycho import FourierPtycho, FourierPtychoConfig
    from diffrecon.models.fourier_ptycho_multislice import (
        FourierPtychoMultislice,
        MultisliceFPConfig,
    )

    rng = np.random.default_rng(config.seed)
    n = config.image_px
    nominal = led_array.grid_positions(config.led_rows, config.led_columns, config.led_pitch_m)
    groups = _groups(nominal, config, rng)
    geometry = with_leds(
        DiffractionData(patterns=np.zeros((len(groups), n, n), np.float32),
                        wavelength_m=config.wavelength_m, distance_m=config.led_height_m,
                        detector_pixel_size_m=(config.camera_pixel_m,) * 2),
        nominal.numpy(), groups, config.numerical_aperture, config.magnification)
    thick = isinstance(config, FPMultisliceSimulation)
    model = (FourierPtychoMultislice.from_data(geometry, MultisliceFPConfig(
        slices=2, slice_thickness_m=config.slice_thickness_m,
        focus_m=-config.slice_thickness_m)) if thick
        else FourierPtycho.from_data(geometry, FourierPtychoConfig()))
    grid, pixel = model.scope.grid, model.scope.object_pixel_m
    axis_na = float(led_array.illumination_na(nominal, config.led_height_m)[
        (nominal[:, 0].abs() < 1e-12)].max()) if config.led_rows % 2 else 0.0
    limit = config.wavelength_m / (config.numerical_aperture + axis_na)
    amplitude = bar_target(grid, pixel, [f * limit for f in config.bar_periods])
    phase = config.phase_rad * _smooth_phase(grid, rng)
    cutoff = (config.numerical_aperture + axis_na) / config.wavelength_m
    layers = [amplitude, np.exp(1j * phase)] if thick else [amplitude * np.exp(1j * phase)]
    truth = np.stack([band_limit(layer, pixel, cutoff) for layer in layers])
    scale = math.sqrt(config.photons_per_pixel * n * n / (grid[0] * grid[1]))
    with torch.no_grad():
        values = torch.as_tensor(truth, dtype=torch.complex128)
        model.object.copy_((values if thick else fft2c(values)).to(torch.complex64))
        model.amplitude = scale
        model.pupil.copy_((model.support * scale).to(torch.complex64)[None])
        for name, value in config.zernike_waves.items():
            model.aberrations[model.noll.index(int(name.lstrip("Zz")))] = value
        model.led_geometry.copy_(torch.tensor([config.led_shift_m[0] * 1e3,
                                               config.led_shift_m[1] * 1e3,
                                               config.led_rotation_deg, 0.0]))
    noise = None if config.noise == "none" else make_likelihood(config.noise)
    generator = torch.Generator().manual_seed(config.seed)
    patterns = simulate_patterns(model, noise, len(groups), generator=generator)
    metadata = {
        **geometry.metadata, "simulation": "fourier_ptycho bar target", "seed": str(config.seed),
        "resolution_limit_m": repr(limit),
        "bar_periods_m": json.dumps([f * limit for f in config.bar_periods]),
        "true_led_shift_m": json.dumps(list(config.led_shift_m)),
        "true_led_rotation_deg": repr(config.led_rotation_deg),
        "true_zernike_waves": json.dumps(config.zernike_waves),
    }
    origin = tuple(-(np.asarray(grid) // 2) * pixel)
    return dataclasses.replace(
        geometry, patterns=patterns, metadata=metadata,
        truth=Truth(object=truth, pixel_size_m=(pixel, pixel),
                    origin_m=(float(origin[0]), float(origin[1]))))


def band_limit(field: np.ndarray, pixel_m: float, cutoff: float) -> np.ndarray:
    """``field`` (H, W) with spatial frequencies above ``cutoff`` (cycles/m) removed, complex64.

    What no LED and pupil can pass is not measured; removing it from the truth makes the
    NRMSE measure the recovery of the measured band.
    """
    ky, kx = frequency_grid(field.shape, (pixel_m, pixel_m))
    inside = (ky.square() + kx.square()) <= cutoff**2
    spectrum = fft2c(torch.as_tensor(field, dtype=torch.complex128)) * inside
    return ifft2c(spectrum).numpy().astype(np.complex64)


def _smooth_phase(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth phase map (H, W) in [0, 1] (correlation ~ 1/10 of the field)."""
    noise = smooth_noise(shape, shape[0] / 10, rng)
    return (noise - noise.min()) / (noise.max() - noise.min())


def _groups(nominal: torch.Tensor, config: FPSimulation, rng: np.random.Generator
            ) -> np.ndarray:
    """LED indices (N, K) per image; -1 pads groups left short.

    Bright- and dark-field LEDs never share an image, and each run of K*K LEDs of similar
    illumination NA (similar brightness, so that the dim outer ones are not lost in the shot
    noise of brighter ones) is split into K images by ``spread_groups``.
    """
    k = config.leds_per_image
    if k == 1:
        return np.arange(len(nominal))[:, None]
    bright = led_array.is_brightfield(nominal, config.led_height_m,
                                      config.numerical_aperture).numpy()
    na = led_array.illumination_na(nominal, config.led_height_m).numpy()
    xy = nominal.numpy()
    rows: list[list[int]] = []
    for kind in (bright, ~bright):
        members = rng.permutation(np.flatnonzero(kind))
        members = members[np.argsort(na[members], kind="stable")]
        for start in range(0, len(members), k * k):
            rows += spread_groups(xy, members[start : start + k * k], k)
    return np.stack([np.concatenate([row, -np.ones(k - len(row), np.int64)]) for row in rows])


def spread_groups(xy: np.ndarray, leds: np.ndarray, k: int) -> list[list[int]]:
    """Split ``leds`` (indices into the LED positions ``xy`` (L, 2)) into groups of <= k,
    each LED joining the group whose nearest member is farthest from it.

    Far-apart LEDs light disjoint spectrum windows, which one image then separates best (LEDs
    of one image with overlapping windows also cut the ePIE step, normalised by their summed
    pupil intensity); LEDs facing each other (k_l, -k_l, within half the LED spacing) never
    share a group, since a symmetric pair's summed intensity is the same for the object and
    its twin conj(o) in the band they cover (a real pupil), which leaves it ambiguous.
    """
    spacing = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    spacing = float(np.median(np.where(spacing > 0, spacing, np.inf).min(1)))
    groups: list[list[int]] = [[] for _ in range(-(-len(leds) // k))]

    # math.hypot, not np.linalg.norm: a vector norm goes through the BLAS dot, whose rounding
    # depends on the BLAS kernel (e.g. OPENBLAS_CORETYPE), and this grid is full of exact ties
    def room(group: list[int], led: int) -> float:
        if len(group) >= k or any(math.hypot(*(xy[led] + xy[o])) < spacing / 2 for o in group):
            return -np.inf
        return min((math.hypot(*(xy[led] - xy[o])) for o in group), default=np.inf)

    for led in (int(i) for i in leds):
        best = max(range(len(groups)), key=lambda g: room(groups[g], led))
        if room(groups[best], led) == -np.inf:
            groups.append([])
            best = len(groups) - 1
        groups[best].append(led)
    return [group for group in groups if group]


simulators.register("fourier_ptycho")(Simulator(FPSimulation, simulate_fp))
simulators.register("fourier_ptycho_multislice")(Simulator(FPMultisliceSimulation, simulate_fp))
