"""Ptychography: a probe scanned over a thin object, far-field or near-field detection.

Exit wave for pattern n and probe mode m (Thibault & Menzel 2013):
    psi_nm(r) = O(r + c_n) * P_m(r - f_n)
where c_n is the integer and f_n the fractional part of the probe-window corner (object pixels).
The geometry is chosen by composition: ``FarField`` (default) or ``AngularSpectrum`` over the
(optionally Fresnel-scaled) detector distance for near-field data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from diffrecon.config import doc, positive
from diffrecon.data.container import DiffractionData
from diffrecon.data.scans import check_scan_sampling
from diffrecon.models.base import ForwardModel, ParamSpec, models
from diffrecon.models.measurement import Measurement
from diffrecon.physics.modes import orthogonalize_modes
from diffrecon.physics.optics import farfield_pixel_size_m, fresnel_scaling, squared_modulus
from diffrecon.physics.overlap import overlap
from diffrecon.physics.propagators import (
    AngularSpectrum,
    FarField,
    Propagator,
    check_farfield_sampling,
)
from diffrecon.physics.shifts import (
    extract_patches,
    illumination_map,
    insert_patches,
    shifted_copies,
)

Tensor = torch.Tensor


@dataclasses.dataclass
class PtychoConfig:
    geometry: Literal["far_field", "near_field"] = doc(
        "far_field", "far_field (Fraunhofer) or near_field (angular spectrum over distance_m)"
    )
    focus_to_sample_m: float | None = doc(
        None, "near field with a divergent beam: focus-sample distance (Fresnel scaling)"
    )
    probe_modes: int = doc(1, "number of incoherent probe modes (mixed states)")
    padding_px: int = doc(8, "object margin around the scan, pixels", minimum=0)
    subpixel: bool = doc(True, "place the probe at sub-pixel positions (Fourier shift)")
    object_amplitude_max: float | None = doc(
        None, "hard constraint |object| <= value after each step (1 for passive samples)",
        check=positive)


def detector_geometry(
    data: DiffractionData, config: PtychoConfig
) -> tuple[Propagator, tuple[float, float]]:
    """The propagator and the sample-plane pixel size (y, x) in metres for this geometry."""
    h, w = data.frame_shape
    if config.geometry == "far_field":
        pixel = (
            farfield_pixel_size_m(data.wavelength_m, data.distance_m, h,
                                  data.detector_pixel_size_m[0]),
            farfield_pixel_size_m(data.wavelength_m, data.distance_m, w,
                                  data.detector_pixel_size_m[1]),
        )
        return FarField(), pixel
    distance, pixel = data.distance_m, data.detector_pixel_size_m
    if config.focus_to_sample_m is not None:
        scaled = [fresnel_scaling(config.focus_to_sample_m, data.distance_m, p) for p in pixel]
        pixel = (scaled[0][0], scaled[1][0])
        distance = scaled[0][1]
    return AngularSpectrum((h, w), pixel, data.wavelength_m, distance), pixel


def scan_grid(
    data: DiffractionData, pixel_size_m: tuple[float, float], padding_px: int
) -> tuple[np.ndarray, tuple[int, int], tuple[float, float]]:
    """Probe-window corners (N, 2) in object pixels, the object shape (H, W) and its origin.

    The origin is the sample position (y, x) in metres of object pixel [0, 0]; the object
    leaves ``padding_px`` pixels around the scanned region. Positions or a geometry in the
    wrong units are reported (``check_scan_sampling``) before any object is allocated.
    """
    positions_m = np.asarray(data.positions_m, dtype=np.float64)
    check_scan_sampling(positions_m, pixel_size_m, data.frame_shape, data.source,
                        data.key("positions_m"))
    centre_px = positions_m / np.asarray(pixel_size_m)
    corner = centre_px - np.array(data.frame_shape) // 2
    # integer offset: object grids of different scans of one sample stay commensurate
    offset = np.floor(corner.min(axis=0)) - padding_px
    corner -= offset
    shape = np.ceil(corner.max(axis=0)).astype(int) + np.array(data.frame_shape)
    shape += padding_px + 1
    origin = offset * np.asarray(pixel_size_m)
    return corner, (int(shape[0]), int(shape[1])), (float(origin[0]), float(origin[1]))


def file_probe(data: DiffractionData) -> Tensor | None:
    """The data file's probe guess as modes (M, H, W) complex64, or None."""
    if data.probe_guess is None:
        return None
    guess = torch.as_tensor(np.asarray(data.probe_guess), dtype=torch.complex64)
    return guess.reshape(-1, *data.frame_shape)


def mean_pattern(data: DiffractionData) -> Tensor:
    """Mean counts over the scan (H, W), DC-centred, masked pixels filled to keep the total."""
    valid = torch.as_tensor(data.valid_mask())
    total = torch.as_tensor(data.summed_counts())
    mean = torch.where(valid, total / data.num_patterns, 0.0)
    # masked pixels hold no counts: rescale so the probe carries the full mean intensity
    return mean * (total.sum() / data.num_patterns) / mean.sum().clamp(min=1e-30)


def curved_probe(mean: Tensor, propagator: Propagator, curvature_px2: float) -> Tensor:
    """Probe (1, H, W) whose far-field amplitude is sqrt(``mean``), with a quadratic phase.

    The phase pi * a * k^2 (k in cycles per pixel) is a defocus: by stationary phase it maps
    the frequency k to the position a * k, so a = R / k_max gives a probe of radius R pixels.
    """
    h, w = mean.shape
    ky = torch.fft.fftshift(torch.fft.fftfreq(h, dtype=torch.float64))
    kx = torch.fft.fftshift(torch.fft.fftfreq(w, dtype=torch.float64))
    k2 = ky[:, None].square() + kx[None, :].square()
    field = torch.sqrt(mean) * torch.exp(1j * math.pi * curvature_px2 * k2)
    return propagator.backpropagate(field).to(torch.complex64)[None]


def add_modes(probe: Tensor, modes: int, generator: torch.Generator | None) -> Tensor:
    """Extend (M0, H, W) to ``modes`` modes, orthogonalised, strongest first.

    New modes are the first one times smooth first- and second-order polynomials of the
    coordinates (Hermite-like shapes, the low-order modes of a partially coherent beam), each
    at 5% of its power: noise-like starts scatter into every detector pixel and slow the fit.
    """
    if probe.shape[0] >= modes:
        return orthogonalize_modes(probe[:modes])
    base = probe[0]
    h, w = base.shape
    y = (torch.arange(h, dtype=torch.float32) - h // 2)[:, None] / (h / 4)
    x = (torch.arange(w, dtype=torch.float32) - w // 2)[None, :] / (w / 4)
    shapes = [y.expand(h, w), x.expand(h, w), x * y, x.square() - y.square(),
              x.square() + y.square() - 1]
    power = float(base.abs().square().sum())
    extra = []
    for k in range(modes - probe.shape[0]):
        mode = base * shapes[k % len(shapes)] * (1 + 0.1 * k)
        extra.append(mode * math.sqrt(0.05 * power / float(mode.abs().square().sum())))
    return orthogonalize_modes(torch.cat([probe, torch.stack(extra)]))


def energy_radius(image: Tensor, fraction: float = 0.9) -> float:
    """Radius (pixels, from the array centre) holding ``fraction`` of the image's sum."""
    h, w = image.shape
    y = torch.arange(h, dtype=torch.float64) - h // 2
    x = torch.arange(w, dtype=torch.float64) - w // 2
    radius = torch.sqrt(y[:, None].square() + x[None, :].square()).flatten()
    order = torch.argsort(radius)
    cumulative = torch.cumsum(image.flatten()[order].double(), 0) / image.sum()
    return float(radius[order][torch.searchsorted(cumulative, fraction).clamp(max=h * w - 1)])


@models.register("ptycho")
class Ptycho(ForwardModel):
    """Far- or near-field ptychography with mixed-state probe, positions, flux and background.

    Parameters (canonical names): ``object`` (1, H, W) complex transmission; ``probe``
    (M, h, w) complex, sqrt(photons) per pixel; ``positions`` (N, 2) probe-window corners in
    object pixels (y, x); ``flux`` (N,); ``background`` (h, w) counts, native layout.
    """

    Config = PtychoConfig
    lr_scales = {"probe": "the starting probe's peak amplitude"}

    def __init__(
        self, object_: Tensor, probe: Tensor, positions_px: Tensor, propagator: Propagator,
        pixel_size_m: tuple[float, float], origin_m: tuple[float, float],
        config: PtychoConfig,
    ) -> None:
        super().__init__(propagator, Measurement(positions_px.shape[0], probe.shape[-2:]))
        self.object = nn.Parameter(object_)
        self.probe = nn.Parameter(probe)
        self.positions = nn.Parameter(positions_px)
        self.register_buffer("initial_positions", positions_px.detach().clone())
        self.pixel_size_m = pixel_size_m
        self.origin_m = origin_m
        self.config = config

    @classmethod
    def from_data(
        cls, data: DiffractionData, config: PtychoConfig, *,
        generator: torch.Generator | None = None, device: torch.device | str = "cpu",
    ) -> Ptycho:
        propagator, pixel = detector_geometry(data, config)
        probe = file_probe(data)
        if probe is None:
            probe = curved_probe(mean_pattern(data), propagator, 0.0)
        probe = add_modes(probe, config.probe_modes, generator)
        if isinstance(propagator, FarField) and data.probe_guess is not None:
            check_farfield_sampling(probe)
        corner, shape, origin = scan_grid(data, pixel, config.padding_px)
        obj = torch.ones((1, *shape), dtype=torch.complex64)
        model = cls(
            obj, probe, torch.as_tensor(corner, dtype=torch.float32), propagator,
            (float(pixel[0]), float(pixel[1])), origin, config,
        )
        return model.to(device)

    @classmethod
    def param_defaults(cls, config: PtychoConfig) -> dict[str, ParamSpec]:
        """Adam steps: the object 0.02 per update (transmission ~1); the probe a fraction of
        its peak amplitude, 0.005 in the far field, where the guess already has the measured
        far-field modulus and a trial-chosen curvature, and 0.02 in the near field, where it
        starts further off. On the 400 x 64^2 benchmark (1 thread) 0.005 instead of 0.02 gave
        NRMSE 0.023 instead of 0.030 after 100 epochs and <= 0.1 after 15 instead of 20
        epochs (420 x 128^2: 0.050 instead of 0.058 after 30); on the near-field set 0.005
        gave 0.096 against 0.055."""
        probe_step = 0.005 if config.geometry == "far_field" else 0.02
        return {
            "object": ParamSpec(lr=0.02),
            "probe": ParamSpec(lr=probe_step, start=1),
            "positions": ParamSpec(enabled=False, lr=1.0, optimizer="sgd", start=10),
            "flux": ParamSpec(enabled=False, lr=0.01, start=10),
            "background": ParamSpec(enabled=False, lr=0.1, start=10),
        }

    def data_scales(self) -> dict[str, float]:
        return {"probe": float(self.probe.detach().abs().max())}

    def initial_guesses(self, data: DiffractionData) -> list[tuple[str, dict[str, Tensor]]]:
        """Far field without a probe guess: probes of several sizes (defocus either way).

        The mean pattern fixes the probe's far-field amplitude but not its curvature, and a
        flat-phase guess (a focus) far smaller than the real, defocused beam converges slowly
        or not at all. Radii N/8, N/5 and N/3.5 (with both signs of curvature) and the focus
        are tried; the reconstructor keeps the one whose short trial fits the data best.
        """
        if data.probe_guess is not None or not isinstance(self.propagator, FarField):
            return []
        mean = mean_pattern(data)
        frame = min(data.frame_shape)
        k_max = max(energy_radius(mean), 1.0) / frame  # cycles per pixel
        candidates = [("focus", 0.0)]
        for divisor in (8.0, 5.0, 3.5):
            radius = frame / divisor
            candidates += [(f"radius {radius:.0f} px {sign}", s * radius / k_max)
                           for sign, s in (("+", 1.0), ("-", -1.0))]
        return [
            (label, {"probe": add_modes(curved_probe(mean, self.propagator, a),
                                        self.probe.shape[0], torch.Generator().manual_seed(0))
                                        .to(self.probe.device)})
            for label, a in candidates
        ]

    @contextlib.contextmanager
    def restricted(self, patterns: Tensor) -> Iterator[None]:
        """The object cropped to the probe windows of ``patterns`` (positions shifted to
        match), so that trials on the centre of a large scan update, snapshot and keep moments
        of that crop only; the full object and positions are restored untouched on exit.

        2000 x 256^2 frames (a 2435^2 object, 45 MiB), 2 threads: the trials of the initial
        probe guesses take 9.3 s instead of 11.6 s on the full object, whose Adam steps,
        gradients and snapshots the central 128 patterns barely touch; the losses are the
        same.
        """
        corners = self.positions.detach()[patterns.to(self.positions.device)].floor()
        size = torch.tensor(self.probe.shape[-2:], device=corners.device)
        bound = torch.tensor(self.object.shape[-2:], device=corners.device)
        low = corners.min(0).values.long()
        high = torch.minimum(corners.max(0).values.long() + size + 2, bound)
        full_object, full_positions = self.object, self.positions
        try:
            self.object = nn.Parameter(
                full_object.detach()[..., low[0] : high[0], low[1] : high[1]].clone())
            self.positions = nn.Parameter(full_positions.detach() - low)
            yield
        finally:
            self.object, self.positions = full_object, full_positions
            self.spares.clear()  # the crop's gradient buffer

    def _placement(self, index: Tensor) -> tuple[Tensor, Tensor]:
        positions = self.positions[index]
        corners = positions.detach().floor()
        return corners.long(), positions - corners

    def probes_at(self, index: Tensor) -> Tensor:
        """Probe modes placed at the sub-pixel offsets of patterns ``index``: (B, M, h, w)."""
        _, fraction = self._placement(index)
        if self.config.subpixel:
            return shifted_copies(self.probe, fraction)
        return self.probe.expand(index.shape[0], *self.probe.shape)

    def exit_wave(self, index: Tensor) -> Tensor:
        corners, fraction = self._placement(index)
        return overlap(self.object, self.probe, corners,
                       fraction if self.config.subpixel else None, self.spares)

    @torch.no_grad()
    def constrain(self) -> None:
        super().constrain()
        limit = self.config.object_amplitude_max
        if limit is not None:
            amplitude = self.object.abs()
            self.object.mul_(torch.where(amplitude > limit, limit / amplitude, 1.0))
        low = torch.zeros(2, device=self.positions.device)
        high = torch.tensor(self.object.shape[-2:], device=low.device) - torch.tensor(
            self.probe.shape[-2:], device=low.device
        ) - 1
        self.positions.clamp_(min=low, max=high)

    def end_epoch(self, epoch: int) -> None:
        # Once an epoch, not every step: the SVD mixes modes and resets their phases, which
        # would scramble the optimiser's per-element moments if done after each update.
        if self.probe.shape[0] > 1:
            self.probe.copy_(orthogonalize_modes(self.probe, reference=self.probe))


    def partner_intensities(self, index: Tensor) -> dict[str, Tensor]:
        corners, _ = self._placement(index)
        probe_intensity = squared_modulus(self.probes_at(index)).sum(1)  # (B, h, w)
        on_object = insert_patches(probe_intensity, corners, tuple(self.object.shape[-2:]))
        patches = extract_patches(self.object, corners, tuple(self.probe.shape[-2:]))
        on_probe = squared_modulus(patches).sum(dim=(0, 1))
        return {"object": on_object[None], "probe": on_probe[None]}

    @torch.no_grad()
    def curvatures(self, index: Tensor, names: list[str]) -> dict[str, Tensor]:
        """Positions: 2 sum_r sum_m |P_m|^2 |d O / d r_a|^2 per axis a, shape (B, 2).

        The Gauss-Newton curvature of the loss with respect to the probe-object offset. A
        rigid shift of the whole exit wave only tilts the far-field phase, which intensities
        never see, so the curvature comes from the *object* gradient under the probe (the
        classic position-correction argument); a featureless region gives none, and the
        position then stays put rather than wander.
        """
        if "positions" not in names:
            return {}
        corners, _ = self._placement(index)
        size = tuple(self.probe.shape[-2:])
        grown = (size[0] + 2, size[1] + 2)
        low = (corners - 1).clamp(min=0)
        patches = extract_patches(self.object.detach(), low, grown)[:, 0]  # (B, h+2, w+2)
        slopes = [
            (patches[:, 2:, 1:-1] - patches[:, :-2, 1:-1]) / 2,
            (patches[:, 1:-1, 2:] - patches[:, 1:-1, :-2]) / 2,
        ]
        weight = squared_modulus(self.probe.detach()).sum(0).flatten()  # (h*w,)
        columns = [squared_modulus(slope).flatten(1) @ weight for slope in slopes]
        return {"positions": 2 * torch.stack(columns, dim=1)}

    @torch.no_grad()
    def illumination(self) -> Tensor:
        """Summed probe intensity over the scan on the object grid, shape (H, W)."""
        corners = self.positions.detach().round().long()
        intensity = squared_modulus(self.probe).sum(0)
        return illumination_map(intensity, corners, tuple(self.object.shape[-2:]))

    def truth_mask(self) -> np.ndarray:
        illumination = self.illumination().cpu().numpy()
        return illumination > 0.1 * illumination.max()

    def positions_m(self, positions_px: Tensor | None = None) -> np.ndarray:
        """Probe-centre positions (N, 2) in metres, (y, x), from window corners in pixels."""
        px = (self.positions if positions_px is None else positions_px).detach().cpu().numpy()
        centre = px.astype(np.float64) + np.array(self.probe.shape[-2:]) // 2
        return centre * np.asarray(self.pixel_size_m) + np.asarray(self.origin_m)

    def results(self) -> dict[str, Any]:
        return {
            "object": self.object.detach().cpu().numpy(),
            "probe": self.probe.detach().cpu().numpy(),
            "positions_m": self.positions_m(),
            "positions_px": self.positions.detach().cpu().numpy(),
            "positions_initial_px": self.initial_positions.cpu().numpy(),
            "flux": self.measurement.flux.detach().cpu().numpy(),
            "background": self.propagator.from_native(self.measurement.background.detach())
            .cpu()
            .numpy(),
            "illumination": self.illumination().cpu().numpy(),
            "pixel_size_m": np.asarray(self.pixel_size_m),
            "origin_m": np.asarray(self.origin_m),
        }
