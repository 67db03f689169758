"""Bragg CDI simulation: a faceted, strained nanocrystal measured around one Bragg peak.

Registered as the ``bragg`` simulator. The crystal (a cube truncated by {111} facets, randomly
oriented, edges anti-aliased over one voxel) and its displacement field are defined in the
laboratory frame and sampled at the object voxels' lab positions ``r = A m`` of the detector
geometry (:mod:`diffrecon.physics.bragg`); the vertical-geometry rocking curve (rocking about
x, detector at delta = 2 theta_B) is the ``bragg`` model's forward FFT of
``rho = |rho| exp(i Q . u)``, with Poisson noise. Displacement fields (component along Q):

- ``smooth``: a sum of three Gaussian bumps, scaled to a peak strain du_Q/ds of ``peak_strain``;
- ``dislocation``: one screw dislocation whose line runs along Q through a point off the
  centre, Burgers vector one lattice spacing along Q: the phase winds by 2 pi around the line;
- ``both`` or ``none``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Literal

import numpy as np
import torch

from diffrecon.config import doc
from diffrecon.data.bragg import geometry_metadata
from diffrecon.data.container import DiffractionData, Truth
from diffrecon.data.simulate import Beamline, Simulator, simulate_patterns, simulators
from diffrecon.errors import ConfigError
from diffrecon.losses.likelihoods import make_likelihood
from diffrecon.physics import optics
from diffrecon.physics.bragg import BraggGeometry, centred_positions, lab_voxel_size_m

Tensor = torch.Tensor


@dataclasses.dataclass
class BraggSimulation(Beamline):
    modality: str = doc("bragg", "registered modality to simulate")
    energy_ev: float = doc(9000.0, "photon energy, eV")
    distance_m: float = doc(1.0, "sample-detector distance, metres")
    detector_pixel_m: float = doc(55e-6, "detector pixel size, metres")
    array_px: int = doc(128, "rocking frames = detector rows = columns")
    crystal_px: float = doc(40.0, "crystal size across (cube edge), lab voxels")
    lattice_spacing_m: float = doc(2.265e-10, "d of the reflection (Pt 111), metres")
    rocking_step_deg: float | None = doc(
        None, "rocking step, degrees; none: the q step of one detector pixel")
    strain: Literal["smooth", "dislocation", "both", "none"] = doc("smooth", "displacement")
    peak_strain: float = doc(1e-3, "smooth: largest |du_Q/ds| inside the crystal")
    dislocation_offset: float = doc(0.15, "dislocation: line distance from the centre / size")
    photons: float = doc(1e9, "total counts in the volume")
    noise: Literal["poisson", "gaussian", "none"] = doc("poisson", "noise model")


def vertical_geometry(config: BraggSimulation) -> BraggGeometry:
    """Detector at delta = 2 theta_B (gamma = 0), rocking about x."""
    wavelength = optics.xray_wavelength_m(config.energy_ev)
    ratio = wavelength / (2 * config.lattice_spacing_m)
    if not 0 < ratio < 1:
        raise ConfigError(f"lattice_spacing_m {config.lattice_spacing_m:g} has no Bragg "
                          f"reflection at {config.energy_ev:g} eV")
    theta = math.asin(ratio)
    k = 2 * math.pi / wavelength
    step = config.rocking_step_deg
    step_rad = (k * config.detector_pixel_m / config.distance_m
                / (2 * math.pi / config.lattice_spacing_m) if step is None else math.radians(step))
    return BraggGeometry(wavelength, config.distance_m, (config.detector_pixel_m,) * 2,
                         step_rad, "x", 2 * theta, 0.0)


@dataclasses.dataclass
class Crystal:
    """A faceted crystal and its displacement along Q (lab frame, metres; see module doc).

    Attributes:
        normals: (F, 3) facet normals (z, y, x); half_widths: (F,) metres.
        q_m: (3,) scattering vector, 1/m.
        bumps: (J, 3) centres, (J,) amplitudes (metres), and the width (metres) of the smooth
            field; line: a point on the dislocation line (3,) or None.
        spacing_m: the lattice spacing 2 pi / |Q|.
    """

    normals: np.ndarray
    half_widths: np.ndarray
    q_m: np.ndarray
    centres: np.ndarray
    amplitudes: np.ndarray
    width_m: float
    line: np.ndarray | None
    spacing_m: float

    def signed_distance(self, r: Tensor) -> Tensor:
        """Distance outside the crystal (negative inside), (...) metres, for r (..., 3)."""
        normals = torch.as_tensor(self.normals)
        return (r @ normals.T - torch.as_tensor(self.half_widths)).amax(-1)

    def displacement(self, r: Tensor) -> Tensor:
        """u . q_hat, (...) metres."""
        u = torch.zeros(r.shape[:-1], dtype=torch.float64)
        for centre, amplitude in zip(self.centres, self.amplitudes, strict=True):
            d2 = (r - torch.as_tensor(centre)).square().sum(-1)
            u = u + amplitude * torch.exp(-d2 / (2 * self.width_m**2))
        if self.line is not None:
            first, second = self._plane()
            p = r - torch.as_tensor(self.line)
            u = u + self.spacing_m * torch.atan2(p @ second, p @ first) / (2 * math.pi)
        return u

    def strain(self, r: Tensor) -> Tensor:
        """du_Q/ds along q_hat, (...) dimensionless (the screw line adds nothing along Q)."""
        q_hat = torch.as_tensor(self.q_m / np.linalg.norm(self.q_m))
        out = torch.zeros(r.shape[:-1], dtype=torch.float64)
        for centre, amplitude in zip(self.centres, self.amplitudes, strict=True):
            offset = r - torch.as_tensor(centre)
            bump = amplitude * torch.exp(-offset.square().sum(-1) / (2 * self.width_m**2))
            out = out - bump * (offset @ q_hat) / self.width_m**2
        return out

    def _plane(self) -> tuple[Tensor, Tensor]:
        """Orthonormal (first, second) spanning the plane normal to Q (right-handed with Q)."""
        q_hat = self.q_m / np.linalg.norm(self.q_m)
        helper = np.array([0.0, 0.0, 1.0]) if abs(q_hat[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
        first = np.cross(helper[::-1], q_hat[::-1])[::-1]
        first /= np.linalg.norm(first)
        second = np.cross(q_hat[::-1], first[::-1])[::-1]
        return torch.as_tensor(first.copy()), torch.as_tensor(second.copy())


def make_crystal(config: BraggSimulation, geometry: BraggGeometry, voxel_m: float) -> Crystal:
    """The faceted crystal and displacement field of ``config`` (deterministic in the seed)."""
    rng = np.random.default_rng(config.seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    cube = np.concatenate([np.eye(3), -np.eye(3)])
    octahedron = np.array(list(itertools.product((1, -1), repeat=3))) / math.sqrt(3)
    half = config.crystal_px * voxel_m / 2
    normals = np.concatenate([cube, octahedron]) @ rotation.T
    widths = np.concatenate([np.full(6, half), np.full(8, 0.8 * half * math.sqrt(3))])
    q = geometry.q_bragg()
    spacing = 2 * math.pi / float(np.linalg.norm(q))
    crystal = Crystal(normals, widths, q, np.zeros((0, 3)), np.zeros(0), 0.35 * 2 * half, None,
                      spacing)
    if config.strain in ("smooth", "both"):
        crystal.centres = rng.uniform(-0.3, 0.3, (3, 3)) * 2 * half
        crystal.amplitudes = rng.choice([-1.0, 1.0], 3) * rng.uniform(0.5, 1.0, 3)
        box = centred_positions((32, 32, 32), np.eye(3) * (2.8 * half / 32))
        inside = crystal.signed_distance(box) < 0
        peak = float(crystal.strain(box)[inside].abs().max())
        crystal.amplitudes = crystal.amplitudes * config.peak_strain / peak
    if config.strain in ("dislocation", "both"):
        first, _ = crystal._plane()
        crystal.line = first.numpy() * config.dislocation_offset * 2 * half
    return crystal


def bragg_scene(config: BraggSimulation) -> tuple[BraggGeometry, Crystal]:
    """The geometry and the crystal (with its analytic displacement and strain) of a run."""
    geometry = vertical_geometry(config)
    basis = geometry.real_basis((config.array_px,) * 3)
    return geometry, make_crystal(config, geometry, lab_voxel_size_m(basis))


def simulate_bragg(config: BraggSimulation) -> DiffractionData:
    """A (D, H, W) Bragg rocking-curve volume with ground truth (object on the detector grid)."""
    from diffrecon.models.bragg import Bragg, BraggConfig

    geometry, crystal = bragg_scene(config)
    shape = (config.array_px,) * 3
    basis = geometry.real_basis(shape)
    voxel = lab_voxel_size_m(basis)
    positions = centred_positions(shape, basis)
    amplitude = (0.5 - crystal.signed_distance(positions) / voxel).clamp(0, 1)
    support = amplitude > 0
    index_extent = [int(np.ptp(np.nonzero(support.numpy())[a])) + 1 for a in range(3)]
    if max(index_extent) > config.array_px // 2:
        raise ConfigError(f"crystal_px {config.crystal_px:g} spans {index_extent} detector-grid "
                          f"voxels: under 2x oversampling in a {config.array_px}^3 array")
    phase = float(np.linalg.norm(geometry.q_bragg())) * crystal.displacement(positions)
    obj = torch.polar(amplitude, phase * (amplitude > 0))
    obj *= math.sqrt(config.photons / float(obj.abs().square().sum()))
    model = Bragg(obj.to(torch.complex64), support, (voxel, voxel), BraggConfig(),
                  geometry=geometry)
    noise = None if config.noise == "none" else make_likelihood(config.noise)
    generator = torch.Generator().manual_seed(config.seed)
    patterns = simulate_patterns(model, noise, 1, generator=generator).reshape(shape)
    metadata = {"simulation": f"bragg {config.strain}", "seed": str(config.seed),
                **geometry_metadata(geometry)}
    return DiffractionData(
        patterns=patterns, wavelength_m=geometry.wavelength_m, distance_m=config.distance_m,
        detector_pixel_size_m=geometry.pixel_size_m,
        truth=Truth(object=obj.to(torch.complex64).numpy(), pixel_size_m=(voxel, voxel)),
        metadata=metadata)


simulators.register("bragg")(Simulator(BraggSimulation, simulate_bragg))
