"""Multislice Fourier ptychography: an LED-array microscope looking at a thick sample.

The sample is S thin slices ``dz`` apart (Tian & Waller, Optica 2, 104 (2015)). Each LED's
tilted plane wave exp(-2 pi i k_l . r) (``physics.led_array``: k_l is the spectrum offset of
the LED, the pupil then passes the object spectrum around +k_l as in ``fourier_ptycho``)
crosses the slices (``physics.multislice``), the exit wave is refocused by ``focus_m`` to the
objective's focal plane, and the pupil window of its spectrum forms the image:

    I_n = flux_n sum_l w_l |F^-1[ P(k) D(k) F[ multislice(t_1..t_S, tilt_l) ](k) ]|^2

with D the Fresnel kernel over ``focus_m``. S = 1 with ``focus_m`` = 0 is ``fourier_ptycho``
(exactly for integer LED offsets; the thin model shifts the pupil by Fourier interpolation for
sub-pixel ones). The whole field is propagated per LED, so an epoch costs S + 1 full-grid
FFT pairs per image instead of one window FFT.

Known limitation: the illumination angles cover a cone of half-angle asin(NA_ill) and the
objective accepts NA, so the 3D transfer function has the *missing cone* of limited-angle
tomography: axial resolution is about lambda / (1 - sqrt(1 - NA_syn^2)) at best and low axial
frequencies (slowly varying structure along z) are not measured; slices closer than that, or
smooth in z, are not separated. PIE updates do not apply (the slices are not a product with
the pupil); the default algorithm is autograd (Adam).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from diffrecon.config import doc, positive
from diffrecon.data.container import DiffractionData
from diffrecon.models.base import ParamSpec, models
from diffrecon.models.fourier_ptycho import FourierPtycho, FourierPtychoConfig
from diffrecon.physics.fft import coordinate_grid, fft2c, frequency_grid, ifft2c
from diffrecon.physics.multislice import fresnel_kernels, multislice

Tensor = torch.Tensor


@dataclasses.dataclass
class MultisliceFPConfig(FourierPtychoConfig):
    slices: int = doc(2, "number of object slices S")
    slice_thickness_m: float = doc(
        5e-6, "distance between consecutive slices, metres", check=positive)
    focus_m: float = doc(0.0, "focal plane relative to the last slice, metres (< 0: inside)")


@models.register("fourier_ptycho_multislice")
class FourierPtychoMultislice(FourierPtycho):
    """Multislice FP; see the module docstring. ``object`` is (S, H, W) complex transmission
    slices (real space); the other parameters are those of ``fourier_ptycho``."""

    Config = MultisliceFPConfig
    lr_scales = {"pupil": FourierPtycho.lr_scales["pupil"]}
    run_defaults = {"algorithm": {"name": "gradient"}, "recon": {"batch_size": 16}}

    @classmethod
    def from_data(cls, data: DiffractionData, config: MultisliceFPConfig, *,
                  generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                  ) -> FourierPtychoMultislice:
        model = super().from_data(data, config, generator=generator)
        assert isinstance(model, FourierPtychoMultislice)
        with torch.no_grad():
            # the bright-field amplitude shared among the slices, flat phase
            amplitude = ifft2c(model.object[0]).abs().clamp(min=1e-3)
            slices = amplitude.pow(1.0 / config.slices).to(torch.complex64)
        model.object = nn.Parameter(slices.expand(config.slices, -1, -1).clone())
        grid, pixel = model.scope.grid, (model.scope.object_pixel_m,) * 2
        ky, kx = frequency_grid(grid, pixel, centred=False)
        model.register_buffer("ky", ky.float(), persistent=False)
        model.register_buffer("kx", kx.float(), persistent=False)
        y, x = coordinate_grid(grid)
        model.register_buffer("y", (y / grid[0]).float(), persistent=False)
        model.register_buffer("x", (x / grid[1]).float(), persistent=False)
        return model.to(device)

    @classmethod
    def param_defaults(cls, config: FourierPtychoConfig) -> dict[str, ParamSpec]:
        specs = super().param_defaults(config)
        specs["object"] = ParamSpec(lr=0.02)
        return specs

    def exit_wave(self, index: Tensor) -> Tensor:
        leds = self.groups[index]
        centres = self.led_centres()[leds.flatten()].to(self.y.dtype)  # (B*K, 2) pixels
        phase = -2 * torch.pi * (centres[:, 0, None, None] * self.y + centres[:, 1, None, None]
                                 * self.x)
        tilt = torch.polar(torch.ones_like(phase), phase).to(self.object.dtype)[:, None]
        config = self.config
        thickness = torch.tensor(config.slice_thickness_m, dtype=self.ky.dtype,
                                 device=self.ky.device)
        kernels = fresnel_kernels(self.ky, self.kx, self.scope.wavelength_m, thickness)
        field = multislice(tilt, self.object, kernels.to(self.object.dtype))
        if config.focus_m:
            focus = torch.tensor(config.focus_m, dtype=self.ky.dtype, device=self.ky.device)
            refocus = fresnel_kernels(self.ky, self.kx, self.scope.wavelength_m, focus)
            field = torch.fft.ifft2(torch.fft.fft2(field) * refocus.to(field.dtype))
        spectrum = fft2c(field)[:, 0]  # (B*K, H, W), DC-centred
        (h, w), (big_h, big_w) = self.scope.frame, self.scope.grid
        top, left = big_h // 2 - h // 2, big_w // 2 - w // 2
        window = spectrum[:, top : top + h, left : left + w] * self.current_pupil()
        weights = self.led_intensity[leds].clamp(min=1e-12).sqrt() * self.lit[index]
        return window.reshape(*weights.shape, h, w) * weights[..., None, None]

    def partner_intensities(self, index: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError("PIE updates need a thin (fourier_ptycho) object; use the "
                                  "gradient algorithm for multislice FP")

    def transmission(self) -> Tensor:
        """The slices (S, H, W) complex."""
        return self.object

    def comparable(self, array: np.ndarray) -> np.ndarray:
        """The projected transmission: the product of the slices (S, H, W) -> (H, W)."""
        return np.prod(array.reshape(-1, *array.shape[-2:]), axis=0)

    def results(self) -> dict[str, Any]:
        out = super().results()
        with torch.no_grad():
            out["spectrum"] = fft2c(self.object.prod(0)).cpu().numpy()[None]
        out["slice_thickness_m"] = self.config.slice_thickness_m
        return out
