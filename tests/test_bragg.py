"""Bragg CDI: geometry against hand-computed kinematics, displacement -> peak shift and strain,
unwrapping, data layouts and errors, and small end-to-end runs (API and CLI)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from xml.etree import ElementTree

import h5py
import numpy as np
import pytest
import torch

import diffrecon
from diffrecon.algorithms.cdi import Shrinkwrap
from diffrecon.cli import main
from diffrecon.data import cxi
from diffrecon.data.bragg import center_on_peak, read_geometry
from diffrecon.data.container import DiffractionData
from diffrecon.data.results import read_results
from diffrecon.data.simulate_bragg import BraggSimulation, bragg_scene, simulate_bragg
from diffrecon.errors import DataFormatError
from diffrecon.losses.metrics import align
from diffrecon.models.bragg import Bragg, BraggConfig
from diffrecon.physics.bragg import (
    BraggGeometry,
    centred_positions,
    lab_frame_maps,
    lab_grid,
    strain_along,
    unwrap_phase,
)
from diffrecon.physics.fft import fftnc

QUIET = ["log.progress=false", "log.tensorboard=false"]
GEOMETRY = BraggGeometry(wavelength_m=1.3776e-10, distance_m=1.0, pixel_size_m=(55e-6, 75e-6),
                         rocking_step_rad=1e-4, rocking_axis="x", delta_rad=math.radians(35.0),
                         gamma_rad=math.radians(8.0))
SMALL = dict(array_px=32, crystal_px=10, photons=1e8, peak_strain=3e-4)


def rotation_xyz(axis: str, angle: float) -> np.ndarray:
    """Right-handed rotation about lab axis x or y, acting on (x, y, z) vectors."""
    c, s = math.cos(angle), math.sin(angle)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def exact_q_xyz(geometry: BraggGeometry, frame: float, row: float, col: float) -> np.ndarray:
    """Hand computation, in (x, y, z) components: the pixel's position in space, the exact
    k_f through it, and Q turned into the crystal frame of the central rocking angle."""
    d, g = geometry.delta_rad, geometry.gamma_rad
    direction = np.array([math.cos(d) * math.sin(g), math.sin(d), math.cos(d) * math.cos(g)])
    up = np.array([-math.sin(d) * math.sin(g), math.cos(d), -math.sin(d) * math.cos(g)])
    side = np.array([math.cos(g), 0.0, -math.sin(g)])
    pixel = (geometry.distance_m * direction - row * geometry.pixel_size_m[0] * up
             - col * geometry.pixel_size_m[1] * side)
    k = 2 * math.pi / geometry.wavelength_m
    q_lab = k * pixel / np.linalg.norm(pixel) - np.array([0.0, 0.0, k])
    # the sample turned by +frame * step; in its own frame Q turns the other way
    return rotation_xyz(geometry.rocking_axis, -frame * geometry.rocking_step_rad) @ q_lab


@pytest.mark.parametrize("axis", ["x", "y"])
def test_geometry_matches_exact_kinematics(axis):
    geometry = BraggGeometry(**{**GEOMETRY.__dict__, "rocking_axis": axis})
    q, basis = geometry.q_bragg(), geometry.reciprocal_basis()
    k = 2 * math.pi / geometry.wavelength_m
    two_theta = math.acos(math.cos(geometry.delta_rad) * math.cos(geometry.gamma_rad))
    assert np.linalg.norm(q) == pytest.approx(2 * k * math.sin(two_theta / 2), rel=1e-12)
    np.testing.assert_allclose(q[::-1], exact_q_xyz(geometry, 0, 0, 0), rtol=1e-12)
    for n in [(3, 0, 0), (0, -4, 0), (0, 0, 5), (2, -3, 4)]:
        exact = exact_q_xyz(geometry, *n)[::-1]
        step = basis @ np.asarray(n, dtype=np.float64)
        # linear in the pixel and rocking angles: the error is second order (~1e-3 of a step)
        assert np.linalg.norm(q + step - exact) < 2e-3 * np.linalg.norm(step)


def test_real_basis_is_dual_to_the_reciprocal_basis():
    shape = (16, 20, 24)
    product = GEOMETRY.reciprocal_basis().T @ GEOMETRY.real_basis(shape)
    np.testing.assert_allclose(product, -2 * math.pi * np.diag(1 / np.asarray(shape)), atol=1e-12)


def crystal_peak(geometry: BraggGeometry, shape: tuple[int, int, int], displacement) -> np.ndarray:
    """q of the intensity maximum (zoomed DFT, to 1e-3 voxel) of a ball-shaped
    crystal with ``displacement(r)`` (..., 3) -> (..., 3) metres, rho = exp(i Q . u)."""
    positions = centred_positions(shape, geometry.real_basis(shape))
    radius = 0.2 * min(np.linalg.norm(geometry.real_basis(shape), axis=0) * np.asarray(shape))
    inside = positions.norm(dim=-1) < radius
    phase = displacement(positions) @ torch.as_tensor(geometry.q_bragg())
    rho = torch.polar(inside.double(), phase)
    index = np.unravel_index(int(fftnc(rho, 3).abs().argmax()), shape)
    index = np.asarray(index, dtype=np.float64) - np.asarray(shape) // 2
    for width in (1.0, 0.1, 0.01):  # zoom in: the centred DFT on finer and finer grids
        grids = [torch.as_tensor(c + np.linspace(-width, width, 11)) for c in index]
        amplitude = rho
        for axis, (n, k) in enumerate(zip(shape, grids, strict=True)):
            m = torch.arange(n, dtype=torch.float64) - n // 2
            kernel = torch.exp(-2j * math.pi * k[:, None] * m[None, :] / n)
            amplitude = torch.tensordot(kernel, amplitude, dims=([1], [axis])).movedim(0, axis)
        best = np.unravel_index(int(amplitude.abs().argmax()), amplitude.shape)
        index = np.array([float(k[b]) for k, b in zip(grids, best, strict=True)])
    return geometry.q_bragg() + geometry.reciprocal_basis() @ index


def test_linear_displacement_shifts_the_bragg_peak_to_the_strained_lattice():
    shape = (32, 32, 32)
    q = GEOMETRY.q_bragg()
    q_hat = torch.as_tensor(q / np.linalg.norm(q))
    tolerance = 0.02 * np.linalg.norm(GEOMETRY.reciprocal_basis(), axis=0).min()
    # an unstrained crystal diffracts at Q
    found = crystal_peak(GEOMETRY, shape, lambda r: torch.zeros_like(r))
    assert np.linalg.norm(found - q) < tolerance
    # uniform strain eps along Q, u = eps (r . q_hat) q_hat: the lattice spacing grows by eps,
    # the reciprocal lattice vector shrinks to (1 - eps) Q (first order)
    eps = 3 * tolerance / 0.02 / np.linalg.norm(q)
    found = crystal_peak(GEOMETRY, shape, lambda r: eps * (r @ q_hat)[..., None] * q_hat)
    assert np.linalg.norm(found - (1 - eps) * q) < tolerance
    # a small rotation of the crystal, u = omega x r, turns its reciprocal lattice:
    # G = Q + omega x Q
    omega = np.array([1e-4, -2e-4, 1.5e-4])  # (z, y, x) radians

    def rotated(r: torch.Tensor) -> torch.Tensor:
        return torch.linalg.cross(torch.as_tensor(omega[::-1].copy()).expand_as(r),
                                  r.flip(-1)).flip(-1)

    expected = q + np.cross(omega[::-1], q[::-1])[::-1]
    assert np.linalg.norm(crystal_peak(GEOMETRY, shape, rotated) - expected) < tolerance


def test_known_displacement_gives_its_strain_analytically():
    shape, voxel = (24, 24, 24), 10e-9
    q = GEOMETRY.q_bragg()
    q_norm, q_hat = np.linalg.norm(q), torch.as_tensor(q / np.linalg.norm(q))
    r = lab_grid(shape, voxel, -np.full(3, 12 * voxel))
    s = r @ q_hat  # distance along Q
    a, b = 2e-3 / (12 * voxel), 3e-4
    u = a * s.square() / 2 + b * s + 1e-3 * r[..., 2] * 1e-2  # + a component normal to Q
    rho = torch.polar(torch.ones(shape, dtype=torch.float64), q_norm * u)
    strain = strain_along(rho, q, voxel)
    expected = a * s + b + 1e-5 * q_hat[2]
    inner = (slice(1, -1),) * 3  # central differences are exact for a quadratic
    torch.testing.assert_close(strain[inner], expected[inner], atol=1e-9, rtol=1e-6)


def test_unwrapping_recovers_a_phase_many_turns_deep():
    r = centred_positions((32, 32, 32), np.eye(3))
    mask = r.norm(dim=-1) < 12
    truth = 0.05 * r[..., 0].square() - 0.6 * r[..., 1] + 0.03 * r[..., 2] * r[..., 0]
    wrapped = torch.angle(torch.polar(torch.ones_like(truth), truth))
    unwrapped = unwrap_phase(wrapped, mask)
    difference = (unwrapped - truth)[mask]
    assert abs(float(difference.mean()) / (2 * math.pi) - round(
        float(difference.mean()) / (2 * math.pi))) < 1e-9
    assert float(difference.std()) < 1e-9


def test_lab_maps_of_a_known_crystal_give_its_displacement_and_strain():
    """Resampling + ramp removal + unwrapping + strain of the true object against the
    analytic fields (the mean strain and rotation are removed from both: not measured)."""
    settings = BraggSimulation(**{**SMALL, "array_px": 48, "crystal_px": 14, "noise": "none"})
    data = simulate_bragg(settings)
    geometry, crystal = bragg_scene(settings)
    obj = torch.as_tensor(data.truth.object)
    maps = lab_frame_maps(obj, obj.abs() > 0.5 * obj.abs().max(), geometry)
    r = lab_grid(maps["strain"].shape, maps["lab_voxel_size_m"][0], maps["lab_origin_m"])
    inside = torch.as_tensor(maps["strain_mask"])
    true_u, true_strain = crystal.displacement(r)[inside], crystal.strain(r)[inside]
    u = torch.as_tensor(maps["displacement_m"], dtype=torch.float64)[inside]
    strain = torch.as_tensor(maps["strain"], dtype=torch.float64)[inside]
    # remove the best linear displacement (mean strain, rotation) and constant from both
    design = torch.cat([r[inside], torch.ones(int(inside.sum()), 1, dtype=torch.float64)], 1)
    residual = [v - design @ torch.linalg.lstsq(design, v[:, None]).solution[:, 0]
                for v in (u, true_u)]
    assert float((residual[0] - residual[1]).square().mean().sqrt()) < 0.01 * crystal.spacing_m
    mean_free = [v - v.mean() for v in (strain, true_strain)]
    assert float((mean_free[0] - mean_free[1]).square().mean().sqrt()) < 0.1 * settings.peak_strain
    assert float(true_strain.abs().max()) > 0.5 * settings.peak_strain  # a real strain field


def test_geometry_round_trips_through_cxi_hdf5_and_npz(tmp_path):
    data = simulate_bragg(BraggSimulation(array_px=16, crystal_px=4, photons=1e6))
    expected = read_geometry(data, {})
    cxi.save(data, tmp_path / "d.cxi")
    assert read_geometry(diffrecon.load(tmp_path / "d.cxi"), {}) == pytest.approx(expected)
    with h5py.File(tmp_path / "plain.h5", "w") as handle:
        handle["patterns"] = data.patterns
        handle.attrs.update(wavelength_m=data.wavelength_m, distance_m=data.distance_m,
                            pixel_size_m=data.detector_pixel_size_m[0],
                            **{k: v for k, v in data.metadata.items() if k.startswith("bragg")})
    assert read_geometry(diffrecon.load(tmp_path / "plain.h5"), {}) == pytest.approx(expected)
    np.savez(tmp_path / "d.npz", data=data.patterns, wavelength_m=data.wavelength_m,
             distance_m=data.distance_m, pixel_size_m=data.detector_pixel_size_m[0],
             **{k: np.asarray(v) for k, v in data.metadata.items() if k.startswith("bragg")})
    assert read_geometry(diffrecon.load(tmp_path / "d.npz"), {}) == pytest.approx(expected)


def test_missing_or_bad_geometry_names_the_file_and_key(tmp_path):
    data = simulate_bragg(BraggSimulation(array_px=16, crystal_px=4, photons=1e6))
    np.save(tmp_path / "bare.npy", data.patterns)
    bare = diffrecon.load(tmp_path / "bare.npy")
    with pytest.raises(DataFormatError, match=r"bare\.npy.*bragg_delta_deg"):
        read_geometry(bare, {})
    given = {"delta_deg": 30.0, "rocking_step_deg": 0.01}
    assert read_geometry(bare, given).delta_rad == pytest.approx(math.radians(30.0))
    bad = DiffractionData(**{**data.__dict__, "metadata": {**data.metadata,
                                                           "bragg_rocking_axis": "z"}})
    with pytest.raises(DataFormatError, match="bragg_rocking_axis.*'x' or 'y'"):
        read_geometry(bad, {})
    flat = DiffractionData(**{**data.__dict__, "patterns": data.patterns[:1]})
    with pytest.raises(DataFormatError, match=r"entry_1/data_1/data.*\(D, H, W\).*\(1, 16, 16\)"):
        Bragg.prepare(flat, BraggConfig())
    bad.metadata["bragg_rocking_axis"], bad.metadata["bragg_delta_deg"] = "x", "thirty"
    with pytest.raises(DataFormatError, match="bragg_delta_deg.*thirty"):
        read_geometry(bad, {})


def test_centring_moves_the_peak_to_the_centre_and_masks_the_padding():
    volume = np.ones((10, 12, 12), np.float32)
    volume[2, 9, 3] = 100
    data = DiffractionData(patterns=volume, wavelength_m=1e-10, distance_m=1.0,
                           detector_pixel_size_m=(55e-6, 55e-6))
    out = center_on_peak(data, (8, 8, 8))
    assert np.unravel_index(np.argmax(out.patterns), (8, 8, 8)) == (4, 4, 4)
    valid = out.valid_mask()
    assert valid.shape == (8, 8, 8) and not valid[0].any() and valid[4, 4, 4]
    assert np.all(out.patterns[~valid] == 0) and np.all(out.patterns[valid] >= 1)


def test_centring_in_place_is_a_lossless_circular_shift_whose_object_is_ramped():
    rng = np.random.default_rng(0)
    obj = np.zeros((16, 16, 16), np.complex64)
    obj[5:11, 6:10, 4:12] = np.exp(1j * rng.uniform(0, 6, (6, 4, 8)))
    volume = np.abs(fftnc(torch.as_tensor(obj), 3).numpy()) ** 2
    data = DiffractionData(patterns=np.roll(volume, (3, -2, 1), (0, 1, 2)), wavelength_m=1e-10,
                           distance_m=1.0, detector_pixel_size_m=(55e-6, 55e-6))
    out = center_on_peak(data)
    assert out.valid is None  # nothing masked: no measured voxel is lost
    peak = np.unravel_index(np.argmax(out.patterns), out.patterns.shape)
    assert peak == (8, 8, 8)
    ramp = np.exp(2j * np.pi * sum(  # the shift that centres the peak, as an object phase ramp
        (8 - p) * (np.arange(16) - 8).reshape([-1 if a == k else 1 for k in range(3)]) / 16
        for a, p in enumerate(np.unravel_index(np.argmax(volume), volume.shape))))
    expected = np.abs(fftnc(torch.as_tensor(obj * ramp), 3).numpy()) ** 2
    np.testing.assert_allclose(out.patterns, expected, rtol=1e-3, atol=1e-3 * expected.max())


def test_border_limited_shrinkwrap_trims_the_edge_but_cuts_no_hole():
    support = torch.zeros(20, 20, 20, dtype=torch.bool)
    support[2:18, 2:18, 2:18] = True
    obj = torch.zeros(20, 20, 20, dtype=torch.complex64)
    obj[5:15, 5:15, 5:15] = 1.0
    obj[9:11, 9:11, 9:11] = 0.0  # a dip inside, as in a half-converged strained crystal
    model = SimpleNamespace(support=support.clone(), object=obj)
    run = SimpleNamespace(model=model, config=SimpleNamespace(epochs=10))
    Shrinkwrap(1, 0.5, (0.5, 0.5), 1.0, "max", border_px=2).on_epoch_end(run, 0, {})
    assert model.support[10, 10, 10]  # the dip stays in the support
    assert not model.support[2, 10, 10] and not model.support[3, 10, 10]  # edge trimmed...
    assert model.support[4, 10, 10]  # ...by at most border_px voxels per update
    free = SimpleNamespace(support=support.clone(), object=obj)
    Shrinkwrap(1, 0.5, (0.5, 0.5), 1.0, "max").on_epoch_end(
        SimpleNamespace(model=free, config=run.config), 0, {})
    assert not free.support[10, 10, 10]  # unrestricted, the dip would be cut out


def aligned_displacement_error(result, settings: BraggSimulation, truth: np.ndarray) -> float:
    """RMS displacement error (lattice spacings) inside the eroded crystal after removing the
    phase-retrieval ambiguities (shift, twin, ramp, global phase) against the true object."""
    geometry, crystal = bragg_scene(settings)
    obj = align(result.results["object"], truth, allow_twin=True, mask=np.abs(truth) > 0)
    support = torch.as_tensor(np.abs(truth) > 0)
    maps = lab_frame_maps(obj.to(torch.complex64), support, geometry)
    r = lab_grid(maps["strain"].shape, maps["lab_voxel_size_m"][0], maps["lab_origin_m"])
    inside = torch.as_tensor(maps["strain_mask"])
    u = torch.as_tensor(maps["displacement_m"], dtype=torch.float64)[inside]
    true_u = crystal.displacement(r)[inside]
    design = torch.cat([r[inside], torch.ones(int(inside.sum()), 1, dtype=torch.float64)], 1)
    residual = [v - design @ torch.linalg.lstsq(design, v[:, None]).solution[:, 0]
                for v in (u, true_u)]
    return float((residual[0] - residual[1]).square().mean().sqrt()) / crystal.spacing_m


def test_api_reconstruction_of_a_strained_crystal_reaches_the_truth(tmp_path):
    settings = BraggSimulation(**{**SMALL, "peak_strain": 1e-4})
    data = simulate_bragg(settings)
    # a 10-voxel, weakly strained crystal: the default initial support (loose, for 40-voxel
    # crystals whose 1e-3 strain shrinks the autocorrelation) is 5x its volume here and 200
    # HIO steps often stall in it; the tighter autocorrelation support suits this case
    result = diffrecon.reconstruct(data, "bragg", out=tmp_path / "run", overrides=[
        *QUIET, 'algorithm.name="hio:200,er:50,gradient:20"', "log.metric_every=1000",
        "log.report=false", "model.support_threshold=0.003", "model.support_margin_px=1"])
    assert result.metrics["nrmse"] < 0.15
    assert aligned_displacement_error(result, settings, data.truth.object) < 0.05
    arrays, attrs = read_results(tmp_path / "run" / "reconstruction.h5")
    for key in ("amplitude", "phase", "displacement_m", "strain", "lab_voxel_size_m"):
        assert key in arrays
    voxel = float(arrays["lab_voxel_size_m"][0])
    basis = read_geometry(data, {}).real_basis((32, 32, 32))
    assert voxel == pytest.approx(abs(np.linalg.det(basis)) ** (1 / 3))
    assert 10e-9 < voxel < 200e-9  # metres, not pixels
    strain = arrays["strain"][arrays["strain_mask"]]
    assert np.all(np.isfinite(strain)) and np.abs(strain).max() < 10 * settings.peak_strain
    xdmf = ElementTree.parse(tmp_path / "run" / "reconstruction.xdmf").getroot()
    items = {item.text: item.get("Dimensions") for item in xdmf.iter("DataItem")
             if item.get("Format") == "HDF"}
    shape = " ".join(str(n) for n in arrays["strain"].shape)
    assert items["reconstruction.h5:/strain"] == shape
    assert items["reconstruction.h5:/displacement_m"] == shape
    spacing = [float(v) for v in list(xdmf.iter("DataItem"))[1].text.split()]
    assert spacing == pytest.approx([voxel] * 3)


def test_cli_simulate_inspect_reconstruct(tmp_path, capsys):
    path = tmp_path / "bragg.cxi"
    assert main(["-q", "simulate", "--modality", "bragg", "--out", str(path), "--set",
                 "array_px=32", "--set", "crystal_px=10", "--set", "peak_strain=1e-4"]) == 0
    assert main(["inspect", str(path), "--modality", "bragg"]) == 0
    text = capsys.readouterr().out
    assert "validation: OK" in text
    line = next(x for x in text.splitlines() if "oversampling per axis" in x)
    estimated = np.array([float(v) for v in line.split(")")[-1].split(",")])
    amplitude = np.abs(diffrecon.load(path).truth.object)
    crystal = amplitude > 0.5 * amplitude.max()
    extents = [np.ptp(np.nonzero(crystal)[axis]) + 1 for axis in range(3)]
    true_ratio = 32 / np.asarray(extents)  # array / crystal extent along each array axis
    assert np.all(estimated > 0.8 * true_ratio) and np.all(estimated < 1.3 * true_ratio)
    assert main(["-q", "reconstruct", str(path), "--modality", "bragg", "--out",
                 str(tmp_path / "run"), "--set", 'algorithm.name="hio:60,er:20"',
                 "--set", "log.tensorboard=false"]) == 0
    arrays, _ = read_results(tmp_path / "run" / "reconstruction.h5")
    assert arrays["displacement_m"].ndim == 3
    assert (tmp_path / "run" / "report.png").stat().st_size > 10_000
    np.save(tmp_path / "bare.npy", diffrecon.load(path).patterns)
    assert main(["-q", "reconstruct", str(tmp_path / "bare.npy"), "--modality", "bragg"]) == 2
    assert "bragg_delta_deg" in capsys.readouterr().err
