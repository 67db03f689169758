"""Conventional CDI: one isolated object inside an oversampled array, 2D or 3D.

Exit wave (one pattern, one mode):
    psi(r) = illumination(r) * (S(r) O(r) + R(r))
with O the complex object, S its support, ``illumination`` a known incident field (ones for
plane-wave CDI; a curved wavefront for Fresnel CDI, read from the data's ``probe_guess``) and R
a known (optionally learnable) reference beside the sample (holographic CDI; zero otherwise,
read from ``model.reference_file``). Detection is far-field, ``FarField(ndim)``.

Data layout: a 2D pattern is ``data.patterns`` of shape (1, H, W); a 3D intensity volume is
``data.patterns`` of shape (D, H, W) with D > 1 (CDI never has several 2D patterns), and the
propagator is then 3D, so the loop sees a single (D, H, W) measurement.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from diffrecon.config import doc
from diffrecon.data.container import DiffractionData
from diffrecon.errors import ConfigError, DataFormatError
from diffrecon.models.base import ForwardModel, ParamSpec, models
from diffrecon.models.measurement import Measurement
from diffrecon.physics.filters import (
    autocorrelation_support,
    cross_term_support,
    gaussian_blur,
)
from diffrecon.physics.optics import farfield_pixel_size_m
from diffrecon.physics.propagators import FarField

Tensor = torch.Tensor


@dataclasses.dataclass
class CDIConfig:
    support_threshold: float = doc(
        0.04, "initial support: autocorrelation threshold, fraction of its maximum",
        minimum=0, maximum=1)
    support_margin_px: float = doc(
        1.0, "initial support: grown by about this many pixels", minimum=0)
    support_from: Literal["auto", "autocorrelation", "illumination", "hologram",
                          "cross_term"] = doc(
        "auto", "initial support: from the pattern's autocorrelation; the footprint of the "
        "known illumination (|I| above half its maximum); the holographic first estimate "
        "(Fresnel CDI of a thin sample: the data back-propagated with the beam's phases, "
        "shrinkwrapped, inside the footprint); or the object-reference cross-correlation "
        "lobes (holographic CDI); auto: the hologram with an illumination and a transmission "
        "offset, the footprint with an illumination alone, the cross term with a reference "
        "file, else the autocorrelation")
    constraint: Literal["none", "real", "positive"] = doc(
        "none", "pointwise object constraint inside the support"
    )
    reference_file: str | None = doc(
        None, "holographic CDI: .npy complex known reference (array shape, zero elsewhere)"
    )
    transmission_offset: float = doc(
        0.0, "known transmission added everywhere: 1 for Fresnel CDI of a thin sample in a "
        "finite beam (transmission = 1 + object, the unscattered beam is the reference)"
    )
    shrinkwrap_every: int = doc(
        20, "update the support every n epochs (0: never)", minimum=0)
    shrinkwrap_threshold: float | None = doc(
        None, "shrinkwrap threshold, fraction of the max; none: 0.2, or 0.08 with a "
        "transmission offset (transmission - 1 is faint where the sample is nearly clear)",
        minimum=0, maximum=1)
    shrinkwrap_sigma_px: tuple[float, float] | None = doc(
        None, "shrinkwrap Gaussian sigma (start, end), pixels, decaying geometrically; none: "
        "(3, 0.5) in 2D, (3, 1) in 3D (fewer counts per voxel need a smoother support)"
    )
    shrinkwrap_stop: float = doc(
        0.7, "freeze the support after this fraction of the epochs", minimum=0, maximum=1)


def initial_support(intensity: Tensor, valid: Tensor, threshold: float, margin_px: float = 2.0
                    ) -> Tensor:
    """Autocorrelation support, high-passed at the beamstop size, grown by ``margin_px``.

    The beamstop size is the square root of the masked area of the central half of the array
    (per frame in 3D): masked borders (detector edges, the padding of a re-centred Bragg
    volume) are no missing centre, and counting them high-passed the pattern away.
    """
    centre = tuple(slice(n // 4, n - n // 4) for n in valid.shape)
    masked = int((~valid[centre]).sum()) / (
        valid[centre].shape[0] if valid.dim() == 3 else 1)
    support = autocorrelation_support(intensity, threshold, 2.0, math.sqrt(masked))
    return gaussian_blur(support.float(), margin_px, support.dim()) > 0.1


def measured_intensity(data: DiffractionData) -> tuple[Tensor, Tensor]:
    """The measured intensity (H, W) or (D, H, W), DC-centred, masked pixels zero, and the mask."""
    patterns = torch.as_tensor(np.asarray(data.patterns), dtype=torch.float32)
    intensity = patterns if patterns.shape[0] > 1 else patterns[0]
    valid = torch.as_tensor(np.broadcast_to(data.valid_mask(), intensity.shape).copy())
    return torch.where(valid, intensity.nan_to_num(0.0), 0.0), valid


def load_reference(path: str, shape: tuple[int, ...]) -> Tensor:
    """The known holographic reference from an .npy file: complex, the data's array shape."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ConfigError(f"model.reference_file '{path}': cannot read an .npy array "
                          f"({error})") from None
    if tuple(array.shape) != shape:
        raise ConfigError(f"model.reference_file '{path}': expected an array of the data's "
                          f"shape {shape}, found {tuple(array.shape)}")
    return torch.as_tensor(array, dtype=torch.complex64)


@models.register("cdi")
class CDI(ForwardModel):
    """Plane-wave, Fresnel or holographic CDI of a 2D or 3D object.

    Parameters: ``object`` (H, W) or (D, H, W) complex, sqrt(photons) per pixel (zero outside
    the support); ``reference`` (same shape, only for holographic data, frozen by default);
    ``flux``/``background`` as for every model. Buffers: ``support`` (bool), ``illumination``
    (complex, only for Fresnel data).
    """

    Config = CDIConfig
    lr_scales = dict.fromkeys(("object", "reference"),
                              "the starting object's RMS amplitude inside the support")
    needs_positions = False
    alignment: ClassVar[dict[str, bool]] = {"allow_twin": True}
    run_defaults: ClassVar[dict[str, Any]] = {
        "algorithm": {"name": "hio:800,er:100,gradient:200"},
        "loss": {"likelihood": "poisson"},
        "recon": {"plateau_patience": 0, "checkpoint_every": 100},
        "log": {"metric_every": 25, "image_every": 100},
    }

    def __init__(
        self, object_: Tensor, support: Tensor, pixel_size_m: tuple[float, float],
        config: CDIConfig, *, illumination: Tensor | None = None,
        reference: Tensor | None = None, measured: np.ndarray | None = None,
    ) -> None:
        ndim = object_.dim()
        super().__init__(FarField(ndim), Measurement(1, tuple(object_.shape)))
        self.object = nn.Parameter(object_)
        self.register_buffer("support", support.to(torch.bool))
        self.register_buffer("illumination", illumination)
        self.reference = None if reference is None else nn.Parameter(reference)
        self.pixel_size_m = pixel_size_m
        self.config = config
        self.constraint = config.constraint
        self.measured = measured  # DC-centred counts, for results only

    @classmethod
    def from_data(
        cls, data: DiffractionData, config: CDIConfig, *,
        generator: torch.Generator | None = None, device: torch.device | str = "cpu",
    ) -> CDI:
        intensity, valid = measured_intensity(data)
        illumination = reference = None
        if data.probe_guess is not None:
            guess = np.asarray(data.probe_guess)
            if guess.size != intensity.numel():  # validate allows (M, H, W) probe modes
                raise DataFormatError(data.source, data.key("probe_guess"),
                                      f"one illumination of the data's shape "
                                      f"{tuple(intensity.shape)}", f"shape {guess.shape}")
            illumination = torch.as_tensor(guess.reshape(intensity.shape), dtype=torch.complex64)
        source = config.support_from
        if source == "auto":
            source = ("hologram" if illumination is not None and config.transmission_offset
                      else "illumination" if illumination is not None
                      else "cross_term" if config.reference_file is not None
                      else "autocorrelation")
        if config.reference_file is not None:
            reference = load_reference(config.reference_file, tuple(intensity.shape))
        if source == "cross_term":
            if reference is None:
                raise ConfigError("model.support_from='cross_term' needs model.reference_file")
            support = cross_term_support(intensity, reference, 0.1)
        elif source in ("illumination", "hologram"):
            if illumination is None:
                raise DataFormatError(data.source, data.key("probe_guess"),
                                      "the known illumination (model.support_from="
                                      "'illumination')", "no illumination")
            power = illumination.abs()
            support = power > 0.5 * power.max()
        else:
            support = initial_support(intensity, valid, config.support_threshold,
                                      config.support_margin_px)
        if reference is not None:
            support &= reference == 0
        if config.transmission_offset:
            offset = torch.full(intensity.shape, config.transmission_offset, dtype=torch.complex64)
            reference = offset if reference is None else reference + offset
        # random start inside the support carrying the measured energy (Parseval) less the
        # known part's
        energy = float(intensity.sum()) * intensity.numel() / max(int(valid.sum()), 1)
        if reference is not None:
            known = reference if illumination is None else reference * illumination
            energy = max(energy - float(known.abs().square().sum()), 1e-2 * energy)
        phase = 2 * math.pi * torch.rand(intensity.shape, generator=generator)
        amplitude = torch.rand(intensity.shape, generator=generator) * support
        obj = torch.polar(amplitude, phase)
        carried = obj if illumination is None else obj * illumination  # exit-wave energy
        obj *= math.sqrt(energy / float(carried.abs().square().sum().clamp(min=1e-30)))
        h, w = data.frame_shape
        pixel = (
            farfield_pixel_size_m(data.wavelength_m, data.distance_m, h,
                                  data.detector_pixel_size_m[0]),
            farfield_pixel_size_m(data.wavelength_m, data.distance_m, w,
                                  data.detector_pixel_size_m[1]),
        )
        model = cls(obj.to(torch.complex64), support, pixel, config, illumination=illumination,
                    reference=reference, measured=intensity.numpy())
        if source == "hologram":
            if not config.transmission_offset:
                raise ConfigError("model.support_from='hologram' needs "
                                  "model.transmission_offset (the unscattered beam)")
            model.start_from_hologram(intensity, valid)
        return model.to(device)

    @torch.no_grad()
    def start_from_hologram(self, intensity: Tensor, valid: Tensor, sigma_px: float = 2.0,
                            threshold: float = 0.2) -> None:
        """Fresnel CDI start: the object is zero (the exit wave is the bare beam), the support
        is that of the holographic first estimate, one Fourier projection of the beam (the
        data back-propagated with the beam's far-field phases, divided by the beam), blurred
        by ``sigma_px`` and thresholded at ``threshold`` of its maximum inside the footprint.
        The beam around the sample is a known reference, so this estimate already shows the
        sample (Williams et al., Phys. Rev. Lett. 97, 025506 (2006)).

        Args:
            intensity: measured counts, DC-centred, (H, W) or (D, H, W).
            valid: bool mask of the same shape (masked pixels keep the beam's field).
        """
        from diffrecon.algorithms.projections import fourier_projection, shrinkwrap
        from diffrecon.losses.likelihoods import Likelihood

        self.object.zero_()
        measured = self.propagator.to_native(intensity)[None]
        mask = self.propagator.to_native(valid)[None]
        first, _ = fourier_projection(self, self.object, measured, mask, Likelihood())
        support = shrinkwrap(torch.where(self.support, first, 0.0), sigma_px, threshold)
        if bool(support.any()):
            self.support.copy_(support & self.support)

    @classmethod
    def describe(cls, data: DiffractionData) -> str:
        """Oversampling and overdetermination ratios against the autocorrelation support."""
        intensity, valid = measured_intensity(data)
        support = int(initial_support(intensity, valid, CDIConfig.support_threshold).sum())
        oversampling = intensity.numel() / max(support, 1)
        overdetermination = int(valid.sum()) / max(2 * support, 1)
        return (f"cdi:              {intensity.dim()}D, support estimate {support} pixels\n"
                f"oversampling:     {oversampling:.3g} (array / support pixels)\n"
                f"overdetermination: {overdetermination:.3g} "
                "(valid intensities / real unknowns, complex object)")

    @classmethod
    def param_defaults(cls, config: CDIConfig) -> dict[str, ParamSpec]:
        specs = {
            "object": ParamSpec(lr=0.01),
            "flux": ParamSpec(enabled=False, lr=0.01),
            "background": ParamSpec(enabled=False, lr=0.1),
        }
        # from_data makes a reference exactly then
        if config.reference_file is not None or config.transmission_offset:
            specs["reference"] = ParamSpec(enabled=False, lr=0.01)
        return specs

    def data_scales(self) -> dict[str, float]:
        inside = self.object.detach()[self.support]
        scale = float(inside.abs().square().mean().sqrt()) if inside.numel() else 1.0
        return {"object": scale, "reference": scale}

    def callbacks(self) -> list[Any]:
        from diffrecon.algorithms.cdi import Shrinkwrap

        c = self.config
        threshold = c.shrinkwrap_threshold
        if threshold is None:
            threshold = 0.08 if c.transmission_offset else 0.2
        return [Shrinkwrap(c.shrinkwrap_every, threshold, self.shrinkwrap_sigma(),
                           c.shrinkwrap_stop)]

    def shrinkwrap_sigma(self) -> tuple[float, float]:
        """The configured shrinkwrap sigma schedule, or the default for the dimensionality:
        the 2D end value 0.5 px was chosen on the 2D benchmark (75% of random starts below
        NRMSE 0.1 against 15% with 1 px); in 3D the counts per voxel are lower and 0.5 px
        lets noise cut the support (3D benchmark NRMSE 0.109 against 0.010 with 1 px)."""
        sigma = self.config.shrinkwrap_sigma_px
        if sigma is not None:
            return (float(sigma[0]), float(sigma[1]))
        return (3.0, 0.5) if self.object.dim() == 2 else (3.0, 1.0)

    def transmission(self, obj: Tensor) -> Tensor:
        """Exit wave of an object-space array: illumination * (obj + reference)."""
        if self.reference is not None:
            obj = obj + self.reference
        return obj if self.illumination is None else obj * self.illumination

    def object_step(self, delta_psi: Tensor) -> Tensor:
        """Object change for an exit-wave change: delta conj(I) / max(|I|^2, floor).

        Exact (so the Fourier projection stays a projection) wherever the illumination
        amplitude is above 1e-3 of its peak; in darker parts, where the data say almost
        nothing about the object, the change is damped instead of amplified without bound.
        """
        if self.illumination is None:
            return delta_psi
        power = self.illumination.abs().square()
        return delta_psi * self.illumination.conj() / power.clamp(min=1e-6 * float(power.max()))

    def exit_wave(self, index: Tensor) -> Tensor:
        psi = self.transmission(torch.where(self.support, self.object, 0.0))
        return psi.expand(index.shape[0], 1, *psi.shape)

    @torch.no_grad()
    def constrain(self) -> None:
        from diffrecon.algorithms.projections import support_projection

        super().constrain()
        self.object.copy_(support_projection(self.object, self.support, self.constraint))

    def comparable(self, array: np.ndarray) -> np.ndarray:
        return array

    def truth_mask(self) -> np.ndarray | None:
        return None

    @torch.no_grad()
    def predicted_pattern(self) -> np.ndarray:
        """Predicted counts, DC-centred, (H, W) or (D, H, W)."""
        index = torch.zeros(1, dtype=torch.long, device=self.object.device)
        return self.propagator.from_native(self(index)[0]).cpu().numpy()

    def results(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "object": torch.where(self.support, self.object, 0.0).detach().cpu().numpy(),
            "support": self.support.cpu().numpy(),
            "pattern_predicted": self.predicted_pattern(),
            "pixel_size_m": np.asarray(self.pixel_size_m),
        }
        if self.measured is not None:
            out["pattern"] = self.measured
        if self.reference is not None:
            out["reference"] = self.reference.detach().cpu().numpy()
        return out
