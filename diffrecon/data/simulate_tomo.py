"""Simulated 4D-STEM tilt series of a two-species nanoparticle (the ``ptycho_tomo`` simulator).

One raster scan (``data.simulate_stem.STEMScan``) is recorded at each of ``tilts`` angles
evenly spread over +-``max_tilt_deg`` about the y axis; ``dose_e_per_A2`` is the dose of each
tilt (the total is ``tilts`` times more). The sample is an fcc particle (``data.particles``)
whose potential volume is rotated and traversed slice by slice by the ``ptycho_tomo`` model
itself, one voxel per slice, on the reconstruction's own grid (no finer sampling, no thermal
diffuse scattering, no partial coherence). Patterns are stored tilt after tilt; the file's
angles may carry a random error (``angle_error_deg`` rms about each of y and x per tilt), the
truth keeps the per-voxel transmission exp(i phi) (D, H, W) of the volume of phases phi.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from diffrecon.config import doc
from diffrecon.data.container import DiffractionData, Truth
from diffrecon.data.particles import fcc_particle, potential_volume
from diffrecon.data.simulate import Simulator, simulate_patterns, simulators
from diffrecon.data.simulate_stem import STEMScan, scan_geometry
from diffrecon.losses.likelihoods import make_likelihood
from diffrecon.physics.optics import interaction_constant


@dataclasses.dataclass
class TomoSimulation(STEMScan):
    modality: str = doc("ptycho_tomo", "registered modality to simulate")
    frame_px: int = doc(24, "detector frame (square), pixels")
    pixel_size_m: float = doc(0.5e-10, "sample-plane pixel = voxel size, metres")
    scan_shape: list[int] = doc([8, 8], "scan points (rows, columns) at every tilt")
    scan_step_m: float = doc(2e-10, "scan step, metres")
    defocus_m: float = doc(15e-9, "C10, metres (> 0: overfocus, focus above the sample)")
    dose_e_per_A2: float = doc(2e4, "electron dose per square angstrom, per tilt")
    tilts: int = doc(9, "number of tilts")
    max_tilt_deg: float = doc(60.0, "tilts span -max .. +max degrees about y")
    angle_error_deg: float = doc(0.0, "rms error of the angles written to the file, degrees")
    particle_radius_m: float = doc(6e-10, "particle radius, metres")
    lattice_m: float = doc(4.0e-10, "fcc lattice constant, metres")
    species: list[str] = doc(["Mo", "S"], "core and shell elements (data.atoms)")
    core_fraction: float = doc(0.6, "core radius / particle radius")
    jitter_m: float = doc(0.05e-10, "rms random displacement of the atoms, metres")
    depth_px: int = doc(0, "volume depth, voxels (0: the object width)")
    padding_px: int = doc(8, "object margin around the scan, pixels (as the model's)")


def tilt_angles(config: TomoSimulation) -> tuple[np.ndarray, np.ndarray]:
    """True and recorded (file) orientations (T, 3) radians of every tilt."""
    alpha = np.radians(np.linspace(-config.max_tilt_deg, config.max_tilt_deg, config.tilts))
    true = np.stack([alpha, np.zeros_like(alpha), np.zeros_like(alpha)], 1)
    rng = np.random.default_rng(config.seed + 1)
    error = np.radians(config.angle_error_deg) * rng.normal(size=(config.tilts, 2))
    recorded = true.copy()
    recorded[:, :2] += error
    return true, recorded


def particle(config: TomoSimulation) -> tuple[np.ndarray, list[str]]:
    """The atoms (N, 3) (z, y, x) metres from the volume centre, and their elements."""
    rng = np.random.default_rng(config.seed)
    species = (config.species[0], config.species[1])
    return fcc_particle(config.particle_radius_m, config.lattice_m, species,
                        config.core_fraction, rng, config.jitter_m)


def simulate_tomo(config: TomoSimulation) -> DiffractionData:
    """A tilt series (``tilts`` scans, stored one after another) with its ground truth."""
    from diffrecon.models.ptycho_tomo import PtychoTomo, PtychoTomoConfig

    scan, probe = scan_geometry(config, "4D-STEM tilt series, fcc particle")
    true, recorded = tilt_angles(config)
    count = len(scan.positions_m)
    geometry = dataclasses.replace(
        scan, patterns=np.zeros((config.tilts * count, *scan.frame_shape), np.float32),
        positions_m=np.tile(scan.positions_m, (config.tilts, 1)),
        angles_rad=np.repeat(true, count, axis=0))
    model = PtychoTomo.from_data(geometry, PtychoTomoConfig(depth_px=config.depth_px,
                                                           padding_px=config.padding_px))
    atoms, elements = particle(config)
    voxel = config.pixel_size_m
    potential = potential_volume(tuple(model.object.shape), voxel, atoms, elements)
    phase = interaction_constant(config.voltage_v) * voxel * potential
    with torch.no_grad():
        model.object.copy_(torch.as_tensor(phase, dtype=torch.float32))
    noise = None if config.noise == "none" else make_likelihood(config.noise)
    generator = torch.Generator().manual_seed(config.seed)
    patterns = simulate_patterns(model, noise, geometry.num_patterns, generator=generator)
    metadata = dict(geometry.metadata)
    metadata.update(tilts=str(config.tilts), atoms=str(len(elements)),
                    dose_total_e_per_A2=str(config.tilts * config.dose_e_per_A2),
                    angle_error_deg=str(config.angle_error_deg),
                    voxel_size_m=str(voxel))
    truth = Truth(object=np.exp(1j * phase).astype(np.complex64), probe=probe.numpy(),
                  positions_m=geometry.positions_m, pixel_size_m=model.pixel_size_m,
                  origin_m=model.origin_m)
    assert math.isclose(model.pixel_size_m[1], voxel, rel_tol=1e-6)
    return dataclasses.replace(geometry, patterns=patterns, probe_guess=None, truth=truth,
                               metadata=metadata, angles_rad=np.repeat(recorded, count, axis=0))


simulators.register("ptycho_tomo")(Simulator(TomoSimulation, simulate_tomo))
