"""Simulation: a registered forward model plus likelihood noise gives (measurement, truth).

``simulate_patterns`` is modality-agnostic: it evaluates any ``ForwardModel`` batch by batch and
draws noise from a ``Likelihood``. Per-modality *scene builders* (registered in ``simulators``)
only decide what the truth is (object, probe, scan) and hand a model to it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch

from diffrecon.config import doc
from diffrecon.data import scans
from diffrecon.data.container import DiffractionData, Truth
from diffrecon.data.phantoms import blob_support, complex_phantom, complex_volume, smooth_noise
from diffrecon.losses.likelihoods import Likelihood, make_likelihood
from diffrecon.models.base import ForwardModel
from diffrecon.physics import optics
from diffrecon.physics.modes import orthogonalize_modes
from diffrecon.registry import Registry


@dataclasses.dataclass(frozen=True)
class Simulator:
    """A registered scene builder: its settings dataclass and the function that runs it."""

    Config: type
    run: Callable[[Any], DiffractionData]

    def __call__(self, settings: Any) -> DiffractionData:
        return self.run(settings)


simulators: Registry[Simulator] = Registry("simulator")


@torch.no_grad()
def simulate_patterns(
    model: ForwardModel, likelihood: Likelihood | None, num_patterns: int, *,
    generator: torch.Generator | None = None, batch_size: int = 128,
) -> np.ndarray:
    """Noisy (or noise-free when ``likelihood`` is None) counts (N, H, W), DC-centred, float32."""
    out = []
    for start in range(0, num_patterns, batch_size):
        index = torch.arange(start, min(start + batch_size, num_patterns))
        expected = model.propagator.from_native(model(index)).to(torch.float64)
        sampled = expected if likelihood is None else likelihood.sample(expected, generator)
        out.append(sampled.to(torch.float32).cpu().numpy())
    return np.concatenate(out)


@dataclasses.dataclass
class ProbeSpec:
    kind: Literal["zone_plate", "aperture", "gaussian", "diffuser"] = doc(
        "zone_plate", "probe shape (diffuser: Gaussian beam through a random phase screen)"
    )
    numerical_aperture: float = doc(4e-4, "zone plate NA (half-angle)")
    defocus_m: float = doc(2.5e-3, "zone plate: sample distance from the focus, metres")
    central_stop: float = doc(0.3, "zone plate: central stop, fraction of its diameter")
    size_px: float = doc(16.0, "aperture radius or Gaussian FWHM, pixels")
    modes: int = doc(1, "incoherent modes (partial coherence); >1 builds an extended source")
    mode_power_decay: float = doc(0.45, "power of mode k+1 relative to mode k")


@dataclasses.dataclass
class Beamline:
    """Settings every simulation shares: what, from which seed, and the detector geometry."""

    modality: str = doc("ptycho", "registered modality to simulate")
    seed: int = doc(0, "random seed (object, scan, noise)")
    energy_ev: float = doc(8000.0, "photon energy, eV")
    distance_m: float = doc(2.0, "sample-detector distance, metres")
    detector_pixel_m: float = doc(75e-6, "detector pixel size, metres")


@dataclasses.dataclass
class PtychoSimulation(Beamline):
    frame_px: int = doc(64, "detector frame size (square), pixels")
    scan: Literal["fermat", "raster", "jittered_raster", "concentric"] = doc("fermat", "scan")
    scan_points: int = doc(400, "number of scan positions (fermat)")
    overlap: float = doc(0.7, "linear overlap 1 - step / probe diameter")
    photons_per_pattern: float = doc(1e6, "mean total counts per pattern")
    position_error_px: float = doc(0.0, "rms error added to the positions written to the file")
    noise: Literal["poisson", "gaussian", "amplitude", "none"] = doc("poisson", "noise model")
    mask_beamstop_px: int = doc(0, "side of a central square beamstop (masked), pixels")
    geometry: Literal["far_field", "near_field"] = doc("far_field", "detection geometry")
    focus_to_sample_m: float | None = doc(
        None, "near field: focus-sample distance of a divergent beam (Fresnel scaling)"
    )
    probe: ProbeSpec = dataclasses.field(default_factory=ProbeSpec)


def beamstop_valid(shape: tuple[int, ...], side_px: int) -> np.ndarray:
    """Detector mask of ``shape`` (DC at index n // 2), True where trusted: False in a central
    square (cube) beamstop of ``side_px`` pixels per axis (0: no beamstop)."""
    valid = np.ones(shape, dtype=bool)
    if side_px:
        valid[tuple(slice(n // 2 - side_px // 2, n // 2 - side_px // 2 + side_px)
                    for n in shape)] = False
    return valid


def probe_diameter_px(probe: torch.Tensor, fraction: float = 0.9) -> float:
    """Diameter (pixels) of the disc holding ``fraction`` of the probe's intensity."""
    intensity = probe.abs().square().sum(0) if probe.dim() == 3 else probe.abs().square()
    h, w = intensity.shape
    y, x = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    radius = torch.sqrt((y.square() + x.square()).double()).flatten()
    order = torch.argsort(radius)
    cumulative = torch.cumsum(intensity.flatten()[order].double(), 0) / intensity.sum()
    return 2 * float(radius[order][torch.searchsorted(cumulative, fraction)])


def build_probe(spec: ProbeSpec, frame: int, pixel_m: float, wavelength_m: float,
                photons: float) -> torch.Tensor:
    """Probe modes (M, frame, frame) with total intensity ``photons``."""
    shape = (frame, frame)
    if spec.kind == "aperture":
        base = optics.circular_aperture_probe(shape, spec.size_px, photons)
    elif spec.kind == "gaussian":
        base = optics.gaussian_probe(shape, spec.size_px, photons)
    elif spec.kind == "diffuser":
        # structured illumination, as used in near-field ptychography: a smooth random
        # phase screen (2 rad rms, ~3 px correlation) on a wide Gaussian beam
        screen = torch.as_tensor(
            2.0 * smooth_noise((frame, frame), 3.0, np.random.default_rng(1))
        )
        envelope = optics.gaussian_probe(shape, spec.size_px, photons, dtype=torch.complex128)
        base = (envelope * torch.exp(1j * screen)).to(torch.complex64)
    else:
        focal = 0.1
        base = optics.zone_plate_probe(
            shape, pixel_m, wavelength_m, diameter_m=2 * spec.numerical_aperture * focal,
            focal_length_m=focal, defocus_m=spec.defocus_m, central_stop=spec.central_stop,
            photons=photons,
        )
    if spec.modes == 1:
        return base[None]
    # An extended source: copies tilted by a fraction of the probe's angular spread, weighted
    # by a geometric power sequence, then orthogonalised (modes of the mutual intensity).
    ky = torch.fft.fftfreq(frame).double()
    tilts = [(0.0, 0.0)] + [
        (math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, spec.modes, endpoint=False)
    ]
    copies = []
    for k, (ty, tx) in enumerate(tilts[: spec.modes]):
        ramp = torch.exp(2j * math.pi * 1.5 * (ty * torch.arange(frame)[:, None] / frame
                                              + tx * torch.arange(frame)[None, :] / frame))
        weight = math.sqrt(spec.mode_power_decay**k)
        copies.append(base * ramp.to(base.dtype) * weight)
    del ky
    modes = orthogonalize_modes(torch.stack(copies).to(torch.complex128))
    modes = modes * math.sqrt(photons / float(modes.abs().square().sum()))
    return modes.to(torch.complex64)


def _scan(config: PtychoSimulation, step_m: float, rng: np.random.Generator) -> np.ndarray:
    if config.scan == "fermat":
        return scans.fermat_spiral(config.scan_points, step_m)
    side = max(1, round(math.sqrt(config.scan_points)))
    if config.scan == "raster":
        return scans.raster(side, side, step_m)
    if config.scan == "jittered_raster":
        return scans.jittered_raster(side, side, step_m, 0.2, rng)
    rings = max(1, round((math.sqrt(1 + 4 * config.scan_points / 3) - 1) / 2))
    return scans.concentric(rings, step_m)


def simulation_probe(config: PtychoSimulation) -> tuple[torch.Tensor, float]:
    """The probe modes (M, n, n) complex64 of a ptychography simulation and the sample-plane
    pixel size in metres (shared with the training-data generators of ``diffrecon.learn``)."""
    wavelength = optics.xray_wavelength_m(config.energy_ev)
    n = config.frame_px
    if config.geometry == "far_field":
        pixel = optics.farfield_pixel_size_m(wavelength, config.distance_m, n,
                                             config.detector_pixel_m)
    elif config.focus_to_sample_m is not None:
        pixel, _ = optics.fresnel_scaling(config.focus_to_sample_m, config.distance_m,
                                          config.detector_pixel_m)
    else:
        pixel = config.detector_pixel_m
    probe = build_probe(config.probe, n, pixel, wavelength, config.photons_per_pattern)
    return probe, pixel


def simulate_ptycho(config: PtychoSimulation) -> DiffractionData:
    """A far-field ptychography data set with Poisson (or other) noise and its ground truth."""
    from diffrecon.models.ptycho import Ptycho, PtychoConfig

    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    wavelength = optics.xray_wavelength_m(config.energy_ev)
    n = config.frame_px
    probe, pixel = simulation_probe(config)
    step = probe_diameter_px(probe) * (1 - config.overlap) * pixel
    true_positions = _scan(config, step, rng)
    written = true_positions + rng.standard_normal(true_positions.shape) * (
        config.position_error_px * pixel / math.sqrt(2)
    )
    valid = beamstop_valid((n, n), config.mask_beamstop_px)
    geometry = DiffractionData(
        patterns=np.zeros((len(true_positions), n, n), np.float32), wavelength_m=wavelength,
        distance_m=config.distance_m, detector_pixel_size_m=(config.detector_pixel_m,) * 2,
        positions_m=true_positions, probe_guess=probe.numpy(),
    )
    model = Ptycho.from_data(geometry, PtychoConfig(
        probe_modes=config.probe.modes, geometry=config.geometry,
        focus_to_sample_m=config.focus_to_sample_m))
    shape = tuple(model.object.shape[-2:])
    truth_object = complex_phantom(shape, rng)
    with torch.no_grad():
        model.object.copy_(torch.as_tensor(truth_object, dtype=torch.complex64)[None])
        model.probe.copy_(probe)
    noise = None if config.noise == "none" else make_likelihood(config.noise)
    patterns = simulate_patterns(model, noise, len(true_positions), generator=generator)
    patterns[:, ~valid] = 0
    truth = Truth(
        object=truth_object[None].astype(np.complex64), probe=probe.numpy(),
        positions_m=true_positions, pixel_size_m=model.pixel_size_m, origin_m=model.origin_m,
    )
    return dataclasses.replace(
        geometry, patterns=patterns, positions_m=written, valid=valid, probe_guess=None,
        truth=truth, metadata={"simulation": "ptycho", "seed": str(config.seed)},
    )


simulators.register("ptycho")(Simulator(PtychoSimulation, simulate_ptycho))


@dataclasses.dataclass
class CDISimulation(Beamline):
    modality: str = doc("cdi", "registered modality to simulate")
    distance_m: float = doc(1.0, "sample-detector distance, metres")
    dimensions: Literal[2, 3] = doc(2, "2D pattern or 3D intensity volume")
    array_px: int = doc(256, "detector (array) size per axis, pixels")
    object_px: int = doc(64, "object extent per axis, pixels (compact irregular support)")
    photons: float = doc(1e8, "total counts in the pattern (or volume); fresnel: the counts "
                         "of the sample alone in a plane wave of the beam's central fluence")
    noise: Literal["poisson", "gaussian", "amplitude", "none"] = doc("poisson", "noise model")
    beamstop_px: int = doc(7, "side of a central square beamstop (masked, 2D only), pixels")
    variant: Literal["plane", "fresnel", "holographic"] = doc(
        "plane", "plane wave; fresnel: curved illumination; holographic: pinhole reference"
    )
    edge_frequency: float = doc(
        0.3, "fresnel: wavefront curvature, as the local frequency of the illumination's "
        "quadratic phase at the beam edge, a fraction of the Nyquist frequency (< 1: sampled)")
    beam_radius: float = doc(
        1.0, "fresnel: radius of the (soft-edged, defocused-aperture) beam / object_px; the "
        "beam around the sample is the holographic reference of Fresnel CDI")
    reference_radius_px: float = doc(3.0, "holographic: pinhole radius, pixels")
    reference_offset_px: float = doc(56.0, "holographic: pinhole distance from the centre (x)")
    reference_amplitude: float = doc(4.0, "holographic: pinhole amplitude / max object amplitude")


@dataclasses.dataclass
class CDIScene:
    """A CDI ground truth on the full array (see ``cdi_scene``); for Fresnel CDI the reference
    is the unit transmission of the thin sample's surroundings."""

    object: np.ndarray
    support: np.ndarray
    illumination: np.ndarray | None
    reference: np.ndarray | None


def cdi_scene(config: CDISimulation) -> CDIScene:
    """Object (zero outside its support), illumination and reference of a CDI simulation.

    Scaled so that the exit wave carries ``config.photons`` in total (Parseval); deterministic
    in ``config.seed``, so a known reference can be rebuilt for reconstruction.
    """
    rng = np.random.default_rng(config.seed)
    m, n, d = config.object_px, config.array_px, config.dimensions
    small = (m,) * d
    support = blob_support(small, rng)
    if d == 2:  # the phantom needs some room for its features: crop the centre of a larger one
        big = max(m, 32)
        values = complex_phantom((big, big), rng)[(big - m) // 2 :, (big - m) // 2 :][:m, :m]
    else:
        values = complex_volume((m, m, m), rng)
    start = n // 2 - m // 2
    window = tuple(slice(start, start + m) for _ in range(d))
    obj = np.zeros((n,) * d, np.complex128)
    obj[window] = values * support
    full_support = np.zeros((n,) * d, bool)
    full_support[window] = support
    grids = np.meshgrid(*[np.arange(n) - n // 2 for _ in range(d)], indexing="ij")
    r2 = sum(g**2 for g in grids)
    illumination = reference = None
    if config.variant == "fresnel":
        # a defocused aperture: a soft-edged disc wider than the object with a quadratic phase;
        # the object is the transmission minus one; ``photons`` is the sample's share at the
        # fluence of the plane-wave case (the beam around it carries more)
        radius = config.beam_radius * m
        edge_phase = config.edge_frequency * math.pi * radius / 2  # d(phase)/dr = f pi at r=R
        envelope = 0.5 * (1 - np.tanh(np.sqrt(r2) - radius))
        illumination = envelope * np.exp(1j * edge_phase * r2 / radius**2)
        scale = math.sqrt(config.photons / float(np.sum(np.abs(obj) ** 2)))
        obj = np.where(full_support, obj - 1, 0)
        return CDIScene(obj.astype(np.complex64), full_support,
                        (illumination * scale).astype(np.complex64),
                        np.ones_like(obj, dtype=np.complex64))
    if config.variant == "holographic":
        offset = sum(g**2 for g in grids[:-1]) + (grids[-1] - config.reference_offset_px) ** 2
        reference = config.reference_amplitude * (offset <= config.reference_radius_px**2)
        reference = reference.astype(np.complex128)
    exit_wave = obj + (0 if reference is None else reference)
    if illumination is not None:
        exit_wave = exit_wave * illumination
    scale = math.sqrt(config.photons / float(np.sum(np.abs(exit_wave) ** 2)))
    return CDIScene(
        (obj * scale).astype(np.complex64), full_support,
        None if illumination is None else illumination.astype(np.complex64),
        None if reference is None else (reference * scale).astype(np.complex64),
    )


def simulate_cdi(config: CDISimulation) -> DiffractionData:
    """A 2D pattern (1, H, W) or 3D volume (D, H, W) of one isolated object, with its truth."""
    from diffrecon.models.cdi import CDI, CDIConfig

    scene = cdi_scene(config)
    n = config.array_px
    wavelength = optics.xray_wavelength_m(config.energy_ev)
    pixel = optics.farfield_pixel_size_m(wavelength, config.distance_m, n,
                                         config.detector_pixel_m)
    model = CDI(
        torch.as_tensor(scene.object), torch.as_tensor(scene.support), (pixel, pixel),
        CDIConfig(),
        illumination=None if scene.illumination is None else torch.as_tensor(scene.illumination),
        reference=None if scene.reference is None else torch.as_tensor(scene.reference),
    )
    noise = None if config.noise == "none" else make_likelihood(config.noise)
    generator = torch.Generator().manual_seed(config.seed)
    patterns = simulate_patterns(model, noise, 1, generator=generator)
    patterns = patterns.reshape(-1, n, n)
    valid = beamstop_valid((n, n), config.beamstop_px if config.dimensions == 2 else 0)
    patterns[:, ~valid] = 0
    return DiffractionData(
        patterns=patterns, wavelength_m=wavelength, distance_m=config.distance_m,
        detector_pixel_size_m=(config.detector_pixel_m,) * 2,
        valid=None if valid.all() else valid, probe_guess=scene.illumination,
        truth=Truth(object=scene.object, pixel_size_m=(pixel, pixel)),
        metadata={"simulation": f"cdi {config.dimensions}D {config.variant}",
                  "seed": str(config.seed)},
    )


simulators.register("cdi")(Simulator(CDISimulation, simulate_cdi))
