"""4D-STEM simulation: an aberrated convergent probe scanned over built-in 2D materials.

Registered as the ``multislice`` simulator. Structures (``data.atoms``): ``mos2`` (a MoS2
monolayer) and ``mos2_gap`` (two MoS2 layers, the second rotated by ``twist_deg``, a distance
``layer_gap_m`` apart: two thin slices and free Fresnel propagation between them). The phase
of each layer is sigma * v_z (``physics.optics.interaction_constant``); patterns are the
``multislice`` model's far-field intensities with Poisson noise at ``dose_e_per_A2`` electrons
per square angstrom (per scan-step area). The simulation uses the reconstruction's own grid
and forward model (no finer sampling, no thermal diffuse scattering, no partial coherence).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import torch

from diffrecon.config import doc
from diffrecon.data import atoms, scans
from diffrecon.data.container import DiffractionData, Truth
from diffrecon.data.simulate import Simulator, simulate_patterns, simulators
from diffrecon.losses.likelihoods import make_likelihood
from diffrecon.physics import aberrations as ab
from diffrecon.physics.optics import electron_wavelength_m, interaction_constant


@dataclasses.dataclass
class STEMScan:
    """The beam, probe, scan, dose and noise of a simulated 4D-STEM scan."""

    modality: str = doc("multislice", "registered modality to simulate")
    seed: int = doc(0, "random seed (noise)")
    voltage_v: float = doc(80e3, "accelerating voltage, volts")
    convergence_mrad: float = doc(20.0, "probe semi-angle, mrad")
    defocus_m: float = doc(20e-9, "C10, metres (> 0: overfocus, focus above the sample)")
    cs_m: float = doc(0.0, "C30 (spherical aberration), metres")
    frame_px: int = doc(64, "detector frame (square), pixels")
    pixel_size_m: float = doc(0.3e-10, "sample-plane pixel, metres (dk = 1 / (N dx))")
    scan_shape: list[int] = doc([16, 16], "scan points (rows, columns)")
    scan_step_m: float = doc(2e-10, "scan step, metres")
    dose_e_per_A2: float = doc(1e5, "electron dose per square angstrom")
    noise: Literal["poisson", "none"] = doc("poisson", "noise model")


@dataclasses.dataclass
class STEMSimulation(STEMScan):
    structure: Literal["mos2", "mos2_gap"] = doc("mos2", "built-in sample")
    layer_gap_m: float = doc(10e-9, "mos2_gap: distance between the two layers, metres")
    twist_deg: float = doc(30.0, "mos2_gap: rotation of the second layer, degrees")


def layer_phases(config: STEMSimulation, shape: tuple[int, int],
                 pixel: tuple[float, float], origin: tuple[float, float]) -> np.ndarray:
    """Phase sigma v_z (S, H, W) in radians of each layer on the object grid."""
    # keep atoms ~1 A off the edges: the periodic potential grid would wrap them around
    extent = (shape[0] * pixel[0] - 2e-10, shape[1] * pixel[1] - 2e-10)
    centre = (origin[0] + shape[0] * pixel[0] / 2, origin[1] + shape[1] * pixel[1] / 2)
    rotations = [0.0] if config.structure == "mos2" else [0.0, config.twist_deg]
    sigma = interaction_constant(config.voltage_v)
    out = []
    for rotation in rotations:
        positions, names = atoms.mos2_layer(extent, rotation, centre)
        potential = atoms.projected_potential(shape, pixel, origin, positions, names)
        out.append(sigma * potential)
    return np.stack(out)


def scan_geometry(config: STEMScan, sample: str) -> tuple[DiffractionData, torch.Tensor]:
    """Zero patterns with the scan's geometry and metadata, and the true probe (1, n, n)."""
    wavelength = electron_wavelength_m(config.voltage_v)
    n, dx = config.frame_px, config.pixel_size_m
    rows, columns = config.scan_shape
    positions = scans.raster(rows, columns, config.scan_step_m)
    electrons = config.dose_e_per_A2 * (config.scan_step_m * 1e10) ** 2
    coefficients = ab.aberration_vector({"C10": config.defocus_m, "C30": config.cs_m})
    probe = ab.electron_probe((n, n), (dx, dx), wavelength, config.convergence_mrad * 1e-3,
                              coefficients, soft_edge_px=1.0, electrons=electrons)
    probe = probe.to(torch.complex64)[None]
    metadata = {
        "simulation": sample, "seed": str(config.seed),
        "voltage_v": str(config.voltage_v), "convergence_mrad": str(config.convergence_mrad),
        "defocus_m": str(config.defocus_m), "cs_m": str(config.cs_m),
        "dose_e_per_A2": str(config.dose_e_per_A2), "scan_shape": f"{rows} {columns}",
    }
    geometry = DiffractionData(
        patterns=np.zeros((len(positions), n, n), np.float32), wavelength_m=wavelength,
        distance_m=1.0, detector_pixel_size_m=(wavelength / (n * dx),) * 2,
        positions_m=positions, probe_guess=probe.numpy(), metadata=metadata,
    )
    return geometry, probe


def simulate_stem(config: STEMSimulation) -> DiffractionData:
    """A 4D-STEM data set (patterns flattened over the scan) with its ground truth."""
    from diffrecon.models.multislice import Multislice, MultisliceConfig

    geometry, probe = scan_geometry(config, f"4D-STEM {config.structure}")
    positions, metadata = geometry.positions_m, geometry.metadata
    layers = 1 if config.structure == "mos2" else 2
    model = Multislice.from_data(geometry, MultisliceConfig(
        slices=layers, slice_thickness_m=config.layer_gap_m, object_kind="phase"))
    phase = layer_phases(config, tuple(model.object.shape[-2:]), model.pixel_size_m,
                         model.origin_m)
    with torch.no_grad():
        model.object.copy_(torch.as_tensor(phase, dtype=torch.float32))
    noise = None if config.noise == "none" else make_likelihood(config.noise)
    generator = torch.Generator().manual_seed(config.seed)
    patterns = simulate_patterns(model, noise, len(positions), generator=generator)
    truth = Truth(object=np.exp(1j * phase).astype(np.complex64), probe=probe.numpy(),
                  positions_m=positions, pixel_size_m=model.pixel_size_m,
                  origin_m=model.origin_m)
    if layers > 1:
        metadata["layer_gap_m"] = str(config.layer_gap_m)
    return dataclasses.replace(geometry, patterns=patterns, probe_guess=None, truth=truth)


simulators.register("multislice")(Simulator(STEMSimulation, simulate_stem))
