"""Ptychographic atomic electron tomography (pAET): one 3D potential from a 4D-STEM tilt series.

The sample is a volume of phases per voxel phi = sigma V dz (radians; V the potential in volts,
sigma the interaction constant, dz the voxel size), shape (D, H, W) = (z, y, x), beam along z.
For pattern n recorded at tilt t(n) (Lee et al., Nat. Commun. 14, 2023; Pelz et al., Nat.
Commun. 14, 7906 (2023)):

    psi_nm = multislice(P_m(r - f_n), exp(i phi_t)[window c_n], dz),
    phi_t = rotate_volume(phi, angles_t, shift_t)                       (physics.volume)

i.e. the volume is rotated by that tilt's orientation (trilinear resampling, differentiable in
the volume, the angles and the shift), each of its D layers is one multislice slice one voxel
thick, and the probe is propagated through them (``physics.multislice``). Probe, aberrations,
scan positions, flux and background are those of the ``multislice`` model (a subclass: same
probe handling and results); what is added are the per-tilt orientations ``tilts`` (T, 3)
radians and in-plane shifts ``shifts`` (T, 2) voxels, both learnable.

A common rotation (or shift) of all tilts is indistinguishable from a rotated (shifted)
volume, so while the volume is fitted ``constrain`` keeps the mean correction of each at
zero: refined angles are relative to the mean of the file's angles (with a fixed, known
volume the angles are absolute and no such gauge is imposed). Batches may mix tilts; the
volume is rotated once per tilt present in a batch (``recon.sampler = "compact"``, the
default here, groups a batch by tilt).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from diffrecon.config import doc
from diffrecon.data.container import DiffractionData
from diffrecon.data.dataset import compact_batches
from diffrecon.data.particles import trace_atoms, xyz_text
from diffrecon.errors import DataFormatError
from diffrecon.models.base import ParamSpec, models
from diffrecon.models.multislice import Multislice, MultisliceConfig
from diffrecon.models.ptycho import detector_geometry, scan_grid
from diffrecon.physics.multislice import multislice
from diffrecon.physics.optics import electron_voltage_v, interaction_constant
from diffrecon.physics.shifts import extract_patches, phase_ramps, shift_modes
from diffrecon.physics.volume import rotate_volume

Tensor = torch.Tensor


@dataclasses.dataclass
class PtychoTomoConfig(MultisliceConfig):
    depth_px: int = doc(
        0, "volume depth D along the beam, voxels (0: the object width W)", minimum=0)
    positivity: bool = doc(True, "clamp the potential at >= 0 after each step")
    atom_species: list[str] = doc(["Mo", "S"], "traced atoms: elements, strongest first")
    atom_threshold: float = doc(
        0.2, "traced atoms: peaks above this fraction of the maximum", minimum=0, maximum=1)


def tilt_groups(data: DiffractionData) -> tuple[np.ndarray, np.ndarray]:
    """The distinct orientations (T, 3) radians in order of appearance, and the tilt of every
    pattern (N,); raises DataFormatError when the data carry no angles."""
    if data.angles_rad is None:
        raise DataFormatError(data.source, "entry_1/sample_1/geometry_1/angles",
                              "(N, 3) tilt angles in radians for ptycho_tomo", "missing")
    angles = np.asarray(data.angles_rad, dtype=np.float64)
    unique, first, inverse = np.unique(angles, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return unique[order], rank[inverse.reshape(-1)]


@models.register("ptycho_tomo")
class PtychoTomo(Multislice):
    """pAET; see the module docstring.

    Parameters (canonical names): ``object`` (D, H, W) phase per voxel, radians (``results``
    gives it as ``phase``, its per-voxel transmission as ``object`` and the potential in
    volts as ``potential_v``); ``tilts``
    (T, 3) orientation per tilt, radians; ``shifts`` (T, 2) in-plane shift per tilt, voxels;
    ``probe``, ``aberrations``, ``positions``, ``flux``, ``background`` as ``multislice``.
    """

    Config = PtychoTomoConfig
    alignment: ClassVar[dict[str, bool]] = {"remove_ramp": False}
    #: batches of one tilt; an L1 prior on the potential: a constant potential inside the
    #: volume is (nearly) invisible in the data and Adam's normalised steps would drift it
    run_defaults: ClassVar[dict[str, Any]] = {
        "recon": {"sampler": "compact"},
        "loss": {"regularizers": [{"name": "sparsity", "param": "object", "weight": 300.0}]},
    }

    def set_tilt_series(self, angles_rad: Tensor, tilt_index: Tensor) -> None:
        """Install the per-tilt orientations (T, 3) and the tilt of each pattern (N,)."""
        device = self.object.device
        self.tilts = nn.Parameter(angles_rad.to(device, torch.float32))
        self.shifts = nn.Parameter(torch.zeros(angles_rad.shape[0], 2, device=device))
        self.register_buffer("initial_tilts", self.tilts.detach().clone())
        self.register_buffer("tilt_index", tilt_index.to(device, torch.long))

    @classmethod
    def from_data(
        cls, data: DiffractionData, config: PtychoTomoConfig, *,
        generator: torch.Generator | None = None, device: torch.device | str = "cpu",
    ) -> PtychoTomo:
        angles, tilt_index = tilt_groups(data)
        _, pixel = detector_geometry(data, config)
        if abs(pixel[0] - pixel[1]) > 1e-6 * pixel[0]:
            raise DataFormatError(data.source, "entry_1/instrument_1/detector_1/x_pixel_size",
                                  "square sample pixels (cubic voxels)", f"{pixel} m")
        _, shape, _ = scan_grid(data, pixel, config.padding_px)
        depth = config.depth_px or shape[1]
        config = dataclasses.replace(config, slices=depth, slice_thickness_m=pixel[1],
                                     object_kind="phase", thickness_per_gap=False)
        model = super().from_data(data, config, generator=generator, device=device)
        assert isinstance(model, PtychoTomo)
        model.set_tilt_series(torch.as_tensor(angles), torch.as_tensor(tilt_index))
        return model

    @classmethod
    def param_defaults(cls, config: PtychoTomoConfig) -> dict[str, ParamSpec]:
        specs = super().param_defaults(config)
        specs["object"] = ParamSpec(lr=1e-2)
        specs["tilts"] = ParamSpec(enabled=True, lr=2e-3, start=5)
        specs["shifts"] = ParamSpec(enabled=True, lr=0.05, start=10)
        specs["slice_thickness"] = ParamSpec(enabled=False, lr=0.0)
        return specs

    def compact_batches(self, batch_size: int, seed: int) -> list[Tensor] | None:
        """Batches of one tilt each (the volume is rotated once per tilt in a batch), compact
        in the scan within a tilt; used by ``recon.sampler = "compact"``."""
        positions = self.positions.detach().cpu().numpy()
        tilt_index = self.tilt_index.cpu().numpy()
        batches = []
        for tilt in range(self.tilts.shape[0]):
            rows = np.flatnonzero(tilt_index == tilt)
            batches += [torch.as_tensor(rows)[group]
                        for group in compact_batches(positions[rows], batch_size, seed)]
        return batches

    def rotated(self, tilt: int) -> Tensor:
        """The volume (D, H, W) seen at tilt ``tilt`` (rotated and shifted)."""
        return rotate_volume(self.object, self.tilts[tilt], self.shifts[tilt])

    def exit_wave(self, index: Tensor) -> Tensor:
        corners, fraction = self._placement(index)
        probe = self.current_probe()
        shape = tuple(probe.shape[-2:])
        ramps = phase_ramps(fraction, shape, probe.dtype) if self.config.subpixel else None
        probes = shift_modes(probe, ramps).expand(index.shape[0], *probe.shape)
        kernels = self.grid.kernels(self.slice_thickness)
        tilt_of = self.tilt_index[index]
        order = torch.argsort(tilt_of, stable=True)
        waves = []
        for tilt in torch.unique(tilt_of).tolist():
            rows = order[tilt_of[order] == tilt]
            phase = self.rotated(tilt)
            patches = extract_patches(torch.polar(torch.ones_like(phase), phase),
                                      corners[rows], shape)
            waves.append(multislice(probes[rows], patches, kernels))
        return torch.cat(waves)[torch.argsort(order)]

    def partner_intensities(self, index: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError("PIE updates need a single-slice transmission object")

    @torch.no_grad()
    def constrain(self) -> None:
        super().constrain()  # positivity of the potential, flux/background constraints
        if self.object.requires_grad:  # the volume is being fitted (the loop's plan says)
            # gauge: a common rotation / shift of every tilt is a rotated / shifted volume
            self.tilts.sub_((self.tilts - self.initial_tilts).mean(0, keepdim=True))
            self.shifts.sub_(self.shifts.mean(0, keepdim=True))

    def comparable(self, array: np.ndarray) -> np.ndarray:
        return array

    def truth_mask(self) -> None:
        return None

    def potential_v(self) -> np.ndarray:
        """The volume as an electrostatic potential (D, H, W), volts."""
        sigma = interaction_constant(electron_voltage_v(self.wavelength_m))
        voxel = float(self.slice_thickness.detach()[0])
        return self.object.detach().double().cpu().numpy() / (sigma * voxel)

    def results(self) -> dict[str, Any]:
        out = super(Multislice, self).results()  # the ptycho scan outputs
        phase = self.object.detach().cpu().numpy()
        out.update(
            object=np.exp(1j * phase).astype(np.complex64),  # per-voxel transmission
            phase=phase,
            potential_v=self.potential_v(),
            voxel_size_m=float(self.slice_thickness.detach()[0]),
            tilts_rad=self.tilts.detach().double().cpu().numpy(),
            tilts_initial_rad=self.initial_tilts.double().cpu().numpy(),
            shifts_px=self.shifts.detach().double().cpu().numpy(),
            probe=self.current_probe().detach().cpu().numpy(),
            aberrations_m=self.aberration_coefficients().detach().double().cpu().numpy(),
        )
        atoms, elements = trace_atoms(out["potential_v"], out["voxel_size_m"],
                                      threshold=self.config.atom_threshold,
                                      species=tuple(self.config.atom_species))
        out["atoms_m"] = atoms
        out["atoms_xyz"] = xyz_text(atoms, elements, "ptycho_tomo traced atoms (angstrom), "
                                    "origin at the volume centre")
        return out
