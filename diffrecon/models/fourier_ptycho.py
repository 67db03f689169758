"""Fourier ptychography (FP): an LED-array microscope, ptychography with the spaces swapped.

Image n is the incoherent sum over its LEDs l (Zheng et al., Nat. Photonics 7, 739 (2013);
Ou et al., Opt. Express 22, 4960 (2014) for the pupil):

    I_n(r) = flux_n sum_l w_l |F^-1[ O(k + k_l) P(k) ](r)|^2

with O the object spectrum on the high-resolution grid, P the pupil (the NA disc times a
pixel-wise complex field times exp(2 pi i sum_j c_j Z_j), Zernike coefficients c_j in waves),
k_l the spectrum offset of LED l (``physics.led_array``: the array pose shift/rotation/height
is calibrated, plus optional per-LED offsets) and w_l the LED's intensity. This is the
``ptycho`` overlap with the object spectrum as "object", the pupil as "probe" and the LED
offsets as "positions" (``physics.overlap``), detected through a lens (``Imaging``: inverse
FFT), so PIE and autograd both apply. The sub-pixel part of k_l shifts the pupil instead of
the spectrum, which only changes the image by a phase ramp the intensity never sees.

Units: ``led_geometry`` is (shift y, shift x) mm, rotation in degrees, height change mm;
``illumination_angles`` per-LED offsets in spectrum pixels (1 / field of view).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from diffrecon.config import doc, positive
from diffrecon.data.container import DiffractionData
from diffrecon.data.fpm import led_table
from diffrecon.errors import ConfigError
from diffrecon.models.base import ForwardModel, ParamSpec, models
from diffrecon.models.fp_pupil import ZernikeFit
from diffrecon.models.measurement import Measurement
from diffrecon.physics import led_array
from diffrecon.physics.aberrations import aperture, polar_grid
from diffrecon.physics.fft import fft2c, ifft2c
from diffrecon.physics.optics import squared_modulus
from diffrecon.physics.overlap import overlap
from diffrecon.physics.propagators import Imaging
from diffrecon.physics.shifts import extract_patches, insert_patches
from diffrecon.physics.zernike import fit_zernike, zernike_basis, zernike_phase

Tensor = torch.Tensor


@dataclasses.dataclass
class FourierPtychoConfig:
    numerical_aperture: float | None = doc(
        None, "objective NA (none: the file's metadata)", check=positive)
    magnification: float | None = doc(
        None, "objective magnification (none: the file's)", check=positive)
    upsampling: int | None = doc(
        None, "object pixels per camera pixel (none: the least holding every LED's window)",
        minimum=1)
    zernike_max: int = doc(
        15, "Noll indices 4..zernike_max are fitted (piston and tilts are ambiguous)",
        minimum=4)
    calibrate_leds: bool = doc(
        False, "calibrate the LED array pose (shift, rotation, height) every epoch from "
        "calibration_start: per-LED search of the best window offset, then a pose fit "
        "(single-LED images; the sample is assumed not to tilt the beam on the whole)")
    calibration_start: int = doc(3, "epochs run before the first calibration", minimum=0)
    calibration_step_px: float = doc(
        1.0, "per-LED search step, spectrum pixels, halved every 8 epochs down to 1/4 of it "
        "(the object restarts from the bright-field guess at each halving)", check=positive)
    calibrate_height: bool = doc(False, "calibrate the array height too (else the nominal)")
    zernike_fit_iterations: int = doc(10, "L-BFGS iterations of each Zernike fit", minimum=1)
    zernike_search_waves: float = doc(
        0.5, "before the first epoch, the Zernike fit starts from the best of a grid over "
        "Noll 4-8 at -s, 0, +s waves, each scored on the bright-field images with its own "
        "object (0: start from zero; see diffrecon/models/fp_search.py)", minimum=0)
    zernike_hop_waves: float = doc(
        0.15, "basin-hopping step of the Zernike fit once every order is free, waves "
        "(0: no hopping; see diffrecon/models/fp_pupil.py)", minimum=0)


@dataclasses.dataclass
class Microscope:
    """Sampling of an FP data set: camera window (h, w), object grid (H, W), dk, pixel sizes."""

    frame: tuple[int, int]
    grid: tuple[int, int]
    spectrum_pixel: float  # 1 / field of view, cycles per metre
    object_pixel_m: float
    numerical_aperture: float
    wavelength_m: float


def microscope(data: DiffractionData, config: FourierPtychoConfig, margin_px: int = 6
               ) -> Microscope:
    """Object grid large enough that every LED's spectrum window (plus margin) fits."""
    table = led_table(data)
    na = config.numerical_aperture or table.numerical_aperture
    magnification = config.magnification or table.magnification
    h, w = data.frame_shape
    camera_m = data.detector_pixel_size_m[1] / magnification
    dk = 1.0 / (w * camera_m)
    offsets = led_array.spectrum_offsets(torch.as_tensor(table.positions_m), data.distance_m,
                                         data.wavelength_m) / dk
    reach = float(offsets.abs().max()) + max(h, w) / 2 + margin_px
    upsampling = config.upsampling or max(1, math.ceil(2 * reach / min(h, w)))
    return Microscope((h, w), (upsampling * h, upsampling * w), dk, camera_m / upsampling, na,
                      data.wavelength_m)


class LEDCalibration:
    """Loop callback: ``FourierPtycho.calibrate_pose`` after every epoch from the start one;
    the object's net tilt goes into the pose at each object restart and at the end."""

    def on_start(self, run: Any) -> None:
        model = run.model
        if int(model.groups.shape[1]) != 1:
            raise ConfigError("model.calibrate_leds needs single-LED images (this data set "
                              "multiplexes several LEDs per image)")

    def on_epoch_end(self, run: Any, epoch: int, logs: dict[str, float]) -> None:
        model = run.model
        if epoch + 1 < model.config.calibration_start:
            return
        measured = run.batches(torch.arange(len(run.batches)))
        done = epoch + 1 - model.config.calibration_start
        model.calibrate_pose(measured, run.objective.likelihood,
                             model.config.calibration_step_px * 0.5 ** min(done // 8, 2))
        if done in (8, 16):
            # the object grown on a wrong pose holds the windows where they are (a trap):
            # restart it from the bright-field guess under the improved pose
            model.recentre(measured, restart=True)

    def on_end(self, run: Any) -> None:
        if run.model.config.calibrate_leds:
            run.model.recentre(run.batches(torch.arange(len(run.batches))))


@models.register("fourier_ptycho")
class FourierPtycho(ForwardModel):
    """Fourier ptychography; see the module docstring.

    Parameters: ``object`` (1, H, W) complex spectrum (DC-centred, orthonormal FFT of the
    transmission); ``pupil`` (1, h, w) complex; ``aberrations`` (J,) Zernike waves rms;
    ``led_geometry`` (4,); ``illumination_angles`` (L, 2) px; ``led_intensity`` (L,);
    ``flux`` (N,) and ``background`` (h, w) as ``ptycho``.
    """

    Config = FourierPtychoConfig
    alignment = {"remove_ramp": True}
    #: ePIE on small batches converges far faster than Adam here (bench_fp.py)
    run_defaults = {"algorithm": {"name": "epie"}, "recon": {"batch_size": 4}}
    lr_scales = {"object": "the starting spectrum's RMS amplitude",
                 "pupil": "the starting pupil's amplitude (from the bright-field counts)"}

    def __init__(self, spectrum: Tensor, scope: Microscope, leds_m: Tensor, groups: Tensor,
                 height_m: float, amplitude: float, config: FourierPtychoConfig) -> None:
        super().__init__(Imaging(), Measurement(groups.shape[0], scope.frame))
        self.scope, self.config = scope, config
        alpha, phi = polar_grid(scope.frame, (1 / (scope.frame[0] * scope.spectrum_pixel),
                                              1 / (scope.frame[1] * scope.spectrum_pixel)),
                                scope.wavelength_m, dtype=torch.float32)
        support = aperture(alpha, scope.numerical_aperture)
        self.noll = list(range(4, config.zernike_max + 1))
        self.register_buffer("support", support)
        self.register_buffer("basis", zernike_basis(self.noll, alpha / scope.numerical_aperture,
                                                    phi))
        self.register_buffer("nominal_leds", leds_m.to(torch.float64))
        self.register_buffer("groups", groups.clamp(min=0))
        self.register_buffer("lit", (groups >= 0).to(torch.float32))
        self.height_m, self.amplitude = height_m, amplitude
        self.object = nn.Parameter(spectrum)
        self.register_buffer("initial_spectrum", spectrum.detach().clone(), persistent=False)
        self.pupil = nn.Parameter((support * amplitude).to(torch.complex64)[None])
        self.aberrations = nn.Parameter(torch.zeros(len(self.noll)))
        self.led_geometry = nn.Parameter(torch.zeros(4))
        self.illumination_angles = nn.Parameter(torch.zeros(leds_m.shape[0], 2))
        self.led_intensity = nn.Parameter(torch.ones(leds_m.shape[0]))

    @classmethod
    def from_data(cls, data: DiffractionData, config: FourierPtychoConfig, *,
                  generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                  ) -> FourierPtycho:
        table, scope = led_table(data), microscope(data, config)
        leds = torch.as_tensor(table.positions_m)
        bright = led_array.is_brightfield(leds, data.distance_m, scope.numerical_aperture)
        images = [i for i, row in enumerate(table.groups) if bool(bright[row[0]])]
        images = images or list(range(data.num_patterns))
        # per LED: a multiplexed image holds the sum of its lit LEDs' images
        lit = np.maximum((np.asarray(table.groups)[images] >= 0).sum(1), 1)
        mean = np.mean(np.asarray(data.patterns[images], dtype=np.float64)
                       / lit[:, None, None], axis=0)
        counts = max(float(mean.mean()), 1e-12)
        (h, w), (big_h, big_w) = scope.frame, scope.grid
        # bright-field start: the upsampled (zero-padded spectrum) mean bright-field amplitude
        low = fft2c(torch.as_tensor(np.sqrt(mean / counts), dtype=torch.complex128))
        spectrum = torch.zeros(scope.grid, dtype=torch.complex128)
        top, left = big_h // 2 - h // 2, big_w // 2 - w // 2
        spectrum[top : top + h, left : left + w] = low * math.sqrt(big_h * big_w / (h * w))
        amplitude = math.sqrt(counts * h * w / (big_h * big_w))
        model = cls(spectrum.to(torch.complex64)[None], scope, leds,
                    torch.as_tensor(table.groups), float(data.distance_m), amplitude, config)
        return model.to(device)

    @classmethod
    def param_defaults(cls, config: FourierPtychoConfig) -> dict[str, ParamSpec]:
        return {
            "object": ParamSpec(lr=0.05),
            "pupil": ParamSpec(enabled=False, lr=0.02, start=10),
            # fitted once per epoch by L-BFGS, object held (ZernikeFit); "adam": per minibatch
            "aberrations": ParamSpec(lr=0.01, start=2, optimizer="callback"),
            "led_geometry": ParamSpec(enabled=False, lr=0.02, start=5),
            "illumination_angles": ParamSpec(enabled=False, lr=0.05, start=10),
            "led_intensity": ParamSpec(enabled=False, lr=0.01, start=10),
            "flux": ParamSpec(enabled=False, lr=0.01, start=10),
            "background": ParamSpec(enabled=False, lr=0.1, start=10),
        }

    def data_scales(self) -> dict[str, float]:
        return {"object": float(self.object.detach().abs().square().mean().sqrt()),
                "pupil": self.amplitude}

    # --- physics --------------------------------------------------------------------------
    def led_positions(self) -> Tensor:
        """Calibrated LED positions (L, 2) (y, x), metres, float64."""
        g = self.led_geometry.double()
        return led_array.transform_positions(self.nominal_leds, g[:2] * 1e-3,
                                             torch.deg2rad(g[2]))

    def led_centres(self) -> Tensor:
        """Spectrum offsets (L, 2) of every LED's window, spectrum pixels (the model's dtype)."""
        height = self.height_m + self.led_geometry[3].double() * 1e-3
        offsets = led_array.spectrum_offsets(self.led_positions(), height, self.scope.wavelength_m)
        real = self.illumination_angles.dtype
        return (offsets / self.scope.spectrum_pixel).to(real) + self.illumination_angles

    def current_pupil(self) -> Tensor:
        """The pupil (h, w): support * pixel field * exp(2 pi i sum_j c_j Z_j)."""
        phase = zernike_phase(self.aberrations, self.basis)
        return self.pupil[0] * torch.polar(self.support, phase)

    def _windows(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Integer corners (B*K, 2), sub-pixel parts (B*K, 2) and sqrt LED weights (B, K)."""
        leds = self.groups[index]
        big = torch.tensor(self.scope.grid, device=leds.device)
        small = torch.tensor(self.scope.frame, device=leds.device)
        corner = self.led_centres()[leds.flatten()] + (big // 2 - small // 2)
        corners = torch.minimum(corner.detach().floor().clamp(min=0), big - small - 1)
        weights = self.led_intensity[leds].clamp(min=1e-12).sqrt() * self.lit[index]
        return corners.long(), corner - corners, weights

    def exit_wave(self, index: Tensor) -> Tensor:
        corners, fraction, weights = self._windows(index)
        psi = overlap(self.object, self.current_pupil()[None], corners, fraction, self.spares)
        return psi.reshape(*weights.shape, *psi.shape[-2:]) * weights[..., None, None]

    def callbacks(self) -> list[Any]:
        return ([LEDCalibration()] if self.config.calibrate_leds else []) + [ZernikeFit()]

    @torch.no_grad()
    def image_losses(self, measured: Tensor, likelihood: Any, shift_px: Tensor,
                     chunk: int = 64) -> Tensor:
        """Per-image negative log-likelihood (N,) with every LED window moved by ``shift_px``."""
        out = []
        self.illumination_angles.add_(shift_px)
        try:
            for index in torch.arange(measured.shape[0], device=measured.device).split(chunk):
                values = likelihood.elementwise(self(index), measured[index])
                out.append(values.sum(dim=(1, 2)))
        finally:
            self.illumination_angles.sub_(shift_px)
        return torch.cat(out)

    @torch.no_grad()
    def calibrate_pose(self, measured: Tensor, likelihood: Any, step: float,
                       rounds: int = 3) -> None:
        """``rounds`` rounds of LED calibration (see ``FourierPtychoConfig.calibrate_leds``).

        Each LED's window offset is chosen among the current one and its 8 neighbours ``step``
        pixels away (the one fitting its image best, as in pcFPM, Sun et al., Opt. Express 24,
        15765 (2016)); the array pose is then fitted to all offsets.
        """
        moves = torch.tensor([(dy, dx) for dy in (-step, 0.0, step) for dx in (-step, 0.0, step)],
                             device=measured.device)
        for _ in range(rounds):
            losses = torch.stack([self.image_losses(measured, likelihood, move)
                                  for move in moves])
            best = moves[torch.argmin(losses, dim=0)]  # (N, 2); image n has LED groups[n, 0]
            self._fit_pose(best, self._calibration_weights(measured))

    @torch.no_grad()
    def recentre(self, measured: Tensor, *, restart: bool = False) -> None:
        """Move the object's net tilt d into the array pose (and restart the object if asked).

        A common translation d of every window and of the spectrum leaves the images
        unchanged: the spectrum is translated back to centre (d removed from the object) and
        the windows move by -d, refitting the pose. With ``restart`` the object starts again
        from the bright-field guess (already centred).
        """
        obj = self.transmission()[0]
        tilt = led_array.net_tilt(obj)
        self._fit_pose(-tilt.expand(self.groups.shape[0], 2),
                       self._calibration_weights(measured))
        if restart:
            self.object.copy_(self.initial_spectrum)
            return
        y, x = (torch.arange(n, device=obj.device, dtype=torch.float64) for n in self.scope.grid)
        ramp = tilt[0] * y[:, None] / self.scope.grid[0] + tilt[1] * x[None, :] / self.scope.grid[1]
        untilted = obj * torch.polar(torch.ones_like(ramp), -2 * math.pi * ramp).to(obj.dtype)
        self.object.copy_(fft2c(untilted)[None])

    @staticmethod
    def _calibration_weights(measured: Tensor) -> Tensor:
        # every LED counts alike, except images too dark to tell one offset from another
        signal = measured.flatten(1).sum(1).double()
        return (signal > 0.01 * signal.median()).double()

    def _fit_pose(self, moves: Tensor, weights: Tensor) -> None:
        """Refit the pose to every image's LED offset moved by ``moves`` (N, 2) pixels."""
        leds = self.groups[:, 0]
        target = (self.led_centres() - self.illumination_angles)[leds] + moves.to(torch.float64)
        pose = led_array.fit_pose(self.nominal_leds[leds], target, self.led_geometry,
                                  self.height_m, self.scope.wavelength_m,
                                  self.scope.spectrum_pixel, weights=weights,
                                  free=(True, True, True, self.config.calibrate_height))
        self.led_geometry.copy_(pose.to(self.led_geometry.dtype))

    @torch.no_grad()
    def partner_intensities(self, index: Tensor) -> dict[str, Tensor]:
        corners, _, weights = self._windows(index)
        w2 = weights.square().flatten()[:, None, None]
        pupil2 = squared_modulus(self.current_pupil())
        on_object = insert_patches(pupil2 * w2, corners, tuple(self.object.shape[-2:]))
        patches = extract_patches(self.object[0], corners, self.scope.frame)
        return {"object": on_object[None], "pupil": (squared_modulus(patches) * w2).sum(0)[None]}

    @torch.no_grad()
    def constrain(self) -> None:
        super().constrain()
        self.led_intensity.clamp_(min=0)

    # --- outputs --------------------------------------------------------------------------
    def transmission(self) -> Tensor:
        """The object (1, H, W) in real space, the inverse FFT of the spectrum."""
        return ifft2c(self.object)

    def synthetic_na(self) -> float:
        """Objective NA plus the largest illumination NA of any LED (calibrated)."""
        with torch.no_grad():
            height = self.height_m + float(self.led_geometry[3]) * 1e-3
            na = led_array.illumination_na(self.led_positions(), height)
        return self.scope.numerical_aperture + float(na.max())

    def results(self) -> dict[str, Any]:
        with torch.no_grad():
            pupil = self.current_pupil() / self.amplitude
            total = fit_zernike(torch.angle(pupil), self.basis, self.support)
            height = self.height_m + float(self.led_geometry[3]) * 1e-3
            bright = led_array.is_brightfield(self.led_positions(), height,
                                              self.scope.numerical_aperture)
            g = self.led_geometry.double()
            out: dict[str, Any] = {
                "object": self.transmission().cpu().numpy(),
                "spectrum": self.object.cpu().numpy(),
                "pupil": pupil.cpu().numpy(),
                "zernike_noll": np.asarray(self.noll),
                "aberrations_waves": self.aberrations.double().cpu().numpy(),
                "pupil_zernike_waves": total.double().cpu().numpy(),
                "led_positions_m": self.led_positions().cpu().numpy(),
                "led_positions_nominal_m": self.nominal_leds.cpu().numpy(),
                "led_shift_m": (g[:2] * 1e-3).cpu().numpy(),
                "led_rotation_rad": float(torch.deg2rad(g[2])),
                "led_height_m": height,
                "led_intensity": self.led_intensity.detach().cpu().numpy(),
                "brightfield": bright.cpu().numpy(),
                "synthetic_na": self.synthetic_na(),
                "flux": self.measurement.flux.detach().cpu().numpy(),
                "pixel_size_m": np.asarray((self.scope.object_pixel_m,) * 2),
                "origin_m": -np.asarray(self.scope.grid) // 2 * self.scope.object_pixel_m,
            }
        for j, value in zip(self.noll, out["pupil_zernike_waves"], strict=True):
            out[f"Z{j}_waves"] = float(value)
        return out

    @classmethod
    def describe(cls, data: DiffractionData) -> str:
        scope = microscope(data, FourierPtychoConfig())
        table = led_table(data)
        leds = torch.as_tensor(table.positions_m)
        na = led_array.illumination_na(leds, data.distance_m)
        bright = int((na <= scope.numerical_aperture).sum())
        return "\n".join([
            f"objective:        NA {scope.numerical_aperture:.3g}, magnification "
            f"{table.magnification:.3g}, object-side camera pixel "
            f"{scope.object_pixel_m * scope.grid[1] / scope.frame[1] * 1e6:.4g} um",
            f"LEDs:             {len(leds)} ({bright} bright-field), up to "
            f"{table.groups.shape[1]} per image, height {data.distance_m * 1e3:.4g} mm",
            f"synthetic NA:     {scope.numerical_aperture + float(na.max()):.3g} "
            f"(resolution lambda / NA = "
            f"{data.wavelength_m / (scope.numerical_aperture + float(na.max())) * 1e6:.3g} um)",
            f"object grid:      {scope.grid[0]} x {scope.grid[1]} pixels of "
            f"{scope.object_pixel_m * 1e9:.4g} nm (upsampling {scope.grid[0] // scope.frame[0]})",
        ])
