"""Multislice (electron) ptychography: a probe scanned over a thick object of S slices.

Exit wave for pattern n and probe mode m (Maiden et al., JOSA A 29, 1606 (2012); Chen et al.,
Science 372, 826 (2021)):

    psi_nm = t_{S-1} F^-1 K ... F^-1 K F[ t_0 (r + c_n) * P_m(r - f_n) ]

with the slice transmissions t_s cut out at the probe window (``physics.multislice``) and the
Fresnel kernel K over the learnable ``slice_thickness`` with a learnable sample tilt ``tilts``.
S = 1 is single-slice (electron) ptychography and reduces exactly to the ``ptycho`` model,
whose scan layout, positions, flux/background, PIE hooks and results it inherits. The probe is
either pixel-wise (``probe_model = "pixels"``, started from the aberrated aperture when the
convergence angle is known) or parameterised by Krivanek aberrations
(``probe_model = "aberrations"``: P = F^-1[A exp(-i chi)], ``physics.aberrations``).

Electron data are far-field 4D-STEM patterns: the reconstruction pixel is 1 / (N dk) with dk
the reciprocal pixel (1/m); files written by ``data.stem`` store dk as
``detector_pixel_size_m = lambda * dk`` at ``distance_m = 1`` (a nominal camera length), so the
far-field relation lambda z / (N dx) gives it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from diffrecon.config import doc, positive
from diffrecon.data.container import DiffractionData
from diffrecon.models.base import ParamSpec, models
from diffrecon.models.ptycho import (
    Ptycho,
    PtychoConfig,
    add_modes,
    curved_probe,
    detector_geometry,
    file_probe,
    mean_pattern,
    scan_grid,
)
from diffrecon.physics import aberrations as ab
from diffrecon.physics.multislice import SliceGrid, multislice
from diffrecon.physics.optics import electron_voltage_v, interaction_constant
from diffrecon.physics.overlap import overlap
from diffrecon.physics.propagators import Propagator
from diffrecon.physics.shifts import extract_patches, phase_ramps, shift_modes

Tensor = torch.Tensor


@dataclasses.dataclass
class MultisliceConfig(PtychoConfig):
    slices: int = doc(1, "number of object slices S (1: single-slice ptychography)")
    slice_thickness_m: float = doc(
        2e-9, "distance between consecutive slices, metres", check=positive)
    thickness_per_gap: bool = doc(False, "one learnable thickness per gap instead of one in all")
    object_kind: Literal["transmission", "phase"] = doc(
        "transmission", "complex transmission per slice, or a real phase sigma*v_z (radians)")
    positivity: bool = doc(False, "phase objects: clamp the phase (potential) at >= 0")
    probe_model: Literal["pixels", "aberrations"] = doc(
        "pixels", "pixel-wise probe, or aperture * exp(-i chi) with learnable aberrations")
    convergence_mrad: float | None = doc(
        None, "probe semi-angle, mrad (none: file metadata, else the bright-field disc)",
        minimum=0)
    soft_edge_px: float = doc(1.0, "aperture edge width, reciprocal pixels (0: hard)", minimum=0)
    defocus_m: float | None = doc(
        None, "initial C10, metres, > 0 = overfocus (none: file metadata, else 0)")
    aberrations_m: dict[str, float] = doc({}, "other initial Krivanek coefficients {C30 = ...}")
    fit_aberrations: list[str] = doc(
        ["C10", "C12a", "C12b", "C21a", "C21b", "C23a", "C23b", "C30"],
        "coefficients refined when probe_model = aberrations")


def convergence_rad(data: DiffractionData, config: MultisliceConfig, mean: Tensor,
                    pixel_m: float) -> float:
    """Probe semi-angle: the config, the file's metadata, or the bright-field disc radius."""
    if config.convergence_mrad is not None:
        return config.convergence_mrad * 1e-3
    if "convergence_mrad" in data.metadata:
        return float(data.metadata["convergence_mrad"]) * 1e-3
    area = float((mean > 0.5 * mean.max()).sum())
    dk = 1.0 / (data.frame_shape[1] * pixel_m)
    return math.sqrt(area / math.pi) * dk * data.wavelength_m


@models.register("multislice")
class Multislice(Ptycho):
    """Multislice ptychography; see the module docstring.

    Parameters (canonical names): ``object`` (S, H, W) complex transmission or real phase
    (rad); ``probe`` (M, h, w); ``aberrations`` (F,) the fitted coefficients as phase at the
    aperture edge (radians; ``results`` gives metres); ``slice_thickness`` (1,) or (S-1,)
    metres; ``tilts`` (2,) (y, x) mrad; ``positions``, ``flux``, ``background`` as ``ptycho``.
    """

    Config = MultisliceConfig

    def __init__(
        self, object_: Tensor, probe: Tensor, positions_px: Tensor, propagator: Propagator,
        pixel_size_m: tuple[float, float], origin_m: tuple[float, float],
        config: MultisliceConfig, *, wavelength_m: float, convergence: float,
        electrons: float, aberrations_m: Tensor,
    ) -> None:
        super().__init__(object_, probe, positions_px, propagator, pixel_size_m, origin_m, config)
        shape = tuple(probe.shape[-2:])
        self.wavelength_m, self.convergence_rad, self.electrons = (
            wavelength_m, convergence, electrons)
        self.grid = SliceGrid(shape, pixel_size_m, wavelength_m)
        gaps = max(config.slices - 1, 1) if config.thickness_per_gap else 1
        self.slice_thickness = nn.Parameter(torch.full((gaps,), config.slice_thickness_m))
        self.tilts = nn.Parameter(torch.zeros(2))
        alpha, phi = ab.polar_grid(shape, pixel_size_m, wavelength_m, dtype=torch.float32)
        step = wavelength_m / (shape[1] * pixel_size_m[1])
        self.register_buffer("pupil", ab.aperture(alpha, convergence, config.soft_edge_px, step))
        self.register_buffer("basis", ab.angular_basis(alpha, phi))
        fit = torch.tensor([ab.aberration_index(n) for n in config.fit_aberrations],
                           dtype=torch.long)
        orders = torch.tensor([ab.ABERRATIONS[i][1] for i in fit.tolist()], dtype=torch.float64)
        # metres per radian of phase at the aperture edge: puts every coefficient on one scale
        scale = wavelength_m * (orders + 1) / (2 * math.pi * convergence ** (orders + 1))
        fixed = aberrations_m.clone().to(torch.float32)
        fixed[fit] = 0.0
        self.register_buffer("fit_index", fit)
        self.register_buffer("aberration_scale", scale.to(torch.float32))
        self.register_buffer("aberrations_fixed", fixed)
        self.aberrations = nn.Parameter((aberrations_m[fit].double() / scale).to(torch.float32))

    @classmethod
    def from_data(
        cls, data: DiffractionData, config: MultisliceConfig, *,
        generator: torch.Generator | None = None, device: torch.device | str = "cpu",
    ) -> Multislice:
        propagator, pixel = detector_geometry(data, config)
        mean = mean_pattern(data)
        convergence = convergence_rad(data, config, mean, pixel[1])
        defocus = config.defocus_m
        if defocus is None:
            defocus = float(data.metadata.get("defocus_m", 0.0))
        aberrations_m = ab.aberration_vector({"C10": defocus, **config.aberrations_m})
        electrons = float(mean.sum())
        probe = file_probe(data)
        if probe is None and convergence > 0:
            probe = ab.electron_probe(data.frame_shape, pixel, data.wavelength_m, convergence,
                                      aberrations_m, soft_edge_px=config.soft_edge_px,
                                      electrons=electrons)[None].to(torch.complex64)
        elif probe is None:
            probe = curved_probe(mean, propagator, 0.0)
        probe = add_modes(probe, config.probe_modes, generator)
        corner, shape, origin = scan_grid(data, pixel, config.padding_px)
        if config.object_kind == "phase":
            obj = torch.zeros((config.slices, *shape))
        else:
            obj = torch.ones((config.slices, *shape), dtype=torch.complex64)
        model = cls(obj, probe, torch.as_tensor(corner, dtype=torch.float32), propagator,
                    pixel, origin, config, wavelength_m=data.wavelength_m,
                    convergence=convergence, electrons=electrons, aberrations_m=aberrations_m)
        return model.to(device)

    @classmethod
    def param_defaults(cls, config: MultisliceConfig) -> dict[str, ParamSpec]:
        specs = super().param_defaults(config)
        thick = config.slices > 1
        aberrated = config.probe_model == "aberrations"
        specs["probe"].enabled = not aberrated
        specs["aberrations"] = ParamSpec(enabled=aberrated, lr=0.05)
        specs["slice_thickness"] = ParamSpec(enabled=False, lr=2e-11, start=10)
        specs["tilts"] = ParamSpec(enabled=thick, lr=0.1, start=10)
        return specs

    def initial_guesses(self, data: DiffractionData) -> list[tuple[str, dict[str, Tensor]]]:
        return [] if self.convergence_rad > 0 else super().initial_guesses(data)

    # --- physics --------------------------------------------------------------------------
    def aberration_coefficients(self) -> Tensor:
        """All Krivanek coefficients (K,) in metres, the fitted ones from ``aberrations``."""
        fitted = self.aberrations * self.aberration_scale
        return self.aberrations_fixed.index_add(0, self.fit_index, fitted)

    def current_probe(self) -> Tensor:
        """The probe modes (M, h, w) in use: pixels, or the aberrated aperture (M = 1)."""
        if self.config.probe_model == "pixels":
            return self.probe
        chi = ab.aberration_phase(self.aberration_coefficients(), self.basis, self.wavelength_m)
        return ab.probe_from_pupil(torch.polar(self.pupil, -chi), self.electrons)[None]

    def transmission(self) -> Tensor:
        """Slice transmissions (S, H, W) complex."""
        if self.config.object_kind == "phase":
            return torch.polar(torch.ones_like(self.object), self.object)
        return self.object

    def exit_wave(self, index: Tensor) -> Tensor:
        corners, fraction = self._placement(index)
        probe = self.current_probe()
        fraction = fraction if self.config.subpixel else None
        if self.object.shape[0] == 1 and self.config.object_kind == "transmission":
            return overlap(self.object, probe, corners, fraction)  # the fast single-slice path
        shape = tuple(probe.shape[-2:])
        ramps = None if fraction is None else phase_ramps(fraction, shape, probe.dtype)
        patches = extract_patches(self.transmission(), corners, shape)  # (B, S, h, w)
        tilt = self.tilts * 1e-3
        return multislice(shift_modes(probe, ramps), patches,
                          self.grid.kernels(self.slice_thickness, tilt))

    def partner_intensities(self, index: Tensor) -> dict[str, Tensor]:
        if self.object.shape[0] > 1 or self.config.object_kind != "transmission":
            raise NotImplementedError("PIE updates need a single-slice transmission object")
        return super().partner_intensities(index)

    @torch.no_grad()
    def constrain(self) -> None:
        super().constrain()
        if self.config.positivity and self.config.object_kind == "phase":
            self.object.clamp_(min=0)
        self.slice_thickness.clamp_(min=1e-12)

    def comparable(self, array: np.ndarray) -> np.ndarray:
        """The projected transmission: the product of the slices (S, H, W) -> (H, W)."""
        return np.prod(array.reshape(-1, *array.shape[-2:]), axis=0)

    def results(self) -> dict[str, Any]:
        out = super().results()
        with torch.no_grad():
            transmission = self.transmission().cpu().numpy()
            coefficients = self.aberration_coefficients().double().cpu().numpy()
            out["probe"] = self.current_probe().cpu().numpy()
        sigma = interaction_constant(electron_voltage_v(self.wavelength_m))
        out.update(
            object=transmission,
            phase=np.angle(transmission) if self.config.object_kind == "transmission"
            else self.object.detach().cpu().numpy(),
            slice_thickness_m=self.slice_thickness.detach().double().cpu().numpy(),
            tilts_mrad=self.tilts.detach().double().cpu().numpy(),
            aberrations_m=coefficients,
            convergence_rad=float(self.convergence_rad),
            interaction_constant=float(sigma),
        )
        for index in self.fit_index.tolist():
            out[f"{ab.ABERRATION_NAMES[index]}_m"] = float(coefficients[index])
        return out
