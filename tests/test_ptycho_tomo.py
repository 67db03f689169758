"""pAET: the ptycho_tomo model against multislice, tilt-angle gradients and refinement,
tilt-series data I/O, atom tracing, and simulate -> reconstruct from the API and the CLI."""

from __future__ import annotations

import dataclasses
import math

import h5py
import numpy as np
import pytest
import torch
from torch.func import functional_call

import diffrecon
from diffrecon.algorithms.recipe import make_algorithm
from diffrecon.cli import main
from diffrecon.data import cxi
from diffrecon.data.atoms import projected_potential
from diffrecon.data.dataset import PatternBatches
from diffrecon.data.particles import (
    fcc_particle,
    match_atoms,
    potential_volume,
    read_xyz,
    trace_atoms,
    write_xyz,
)
from diffrecon.data.simulate_tomo import TomoSimulation, simulate_tomo, tilt_angles
from diffrecon.errors import DataFormatError
from diffrecon.models.multislice import Multislice, MultisliceConfig
from diffrecon.models.ptycho_tomo import PtychoTomo, PtychoTomoConfig
from diffrecon.physics.volume import project
from diffrecon.recon.objective import Objective
from diffrecon.recon.optim import ParameterPlan
from diffrecon.recon.reconstructor import Reconstructor
from diffrecon.recon.tomography import per_tilt_phases, two_step
from diffrecon.runconfig import build_config

TINY = dict(frame_px=16, scan_shape=[4, 4], scan_step_m=1.5e-10, tilts=5, depth_px=16,
            particle_radius_m=3.2e-10, defocus_m=8e-9, dose_e_per_A2=1e5)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def tiny(**changes: object) -> TomoSimulation:
    return dataclasses.replace(TomoSimulation(**TINY), **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def clean() -> diffrecon.DiffractionData:
    torch.set_num_threads(1)
    return simulate_tomo(tiny(noise="none"))


def model_with_truth(data: diffrecon.DiffractionData) -> PtychoTomo:
    model = PtychoTomo.from_data(data, PtychoTomoConfig(depth_px=16))
    with torch.no_grad():
        model.object.copy_(torch.as_tensor(np.angle(data.truth.object)))
    return model


def to_double(module: torch.nn.Module) -> torch.nn.Module:
    return module._apply(lambda t: t.double() if t.is_floating_point()
                         else t.to(torch.complex128) if t.is_complex() else t)


@pytest.mark.parametrize("quarter", [False, True])
def test_volume_equals_multislice_of_its_slabs(clean, quarter):
    """At tilt 0 the volume's layers are the slices of a multislice model one voxel apart; a
    quarter turn about y is the same multislice through the transposed volume."""
    model = model_with_truth(clean)
    volume = model.object.detach().clone()
    if quarter:  # a cubic window: D = W
        volume = torch.rand(volume.shape[-1], *volume.shape[-2:],
                            generator=torch.Generator().manual_seed(0)) * 0.1
        model = PtychoTomo.from_data(clean, PtychoTomoConfig(depth_px=volume.shape[-1]))
        with torch.no_grad():
            model.object.copy_(volume)
            model.tilts[2] = torch.tensor([math.pi / 2, 0.0, 0.0])
        volume = volume.permute(2, 1, 0).flip(0)  # v_R(z, x) = v(x, -z)
    slabs = Multislice.from_data(clean, MultisliceConfig(
        slices=volume.shape[0], slice_thickness_m=model.pixel_size_m[1], object_kind="phase"))
    with torch.no_grad():
        slabs.object.copy_(volume)
    index = torch.arange(32, 48)  # the middle tilt, at 0 degrees
    with torch.no_grad():
        expected = slabs.exit_wave(index)
        got = model.exit_wave(index)
    assert float((got - expected).abs().max() / expected.abs().max()) < 1e-4


def test_rotated_volume_changes_the_patterns(clean):
    # the data must depend on the tilt: the same scan at -60 and +60 degrees differs
    model = model_with_truth(clean)
    with torch.no_grad():
        first, last = model(torch.arange(16)), model(torch.arange(64, 80))
    assert float((first - last).abs().sum() / first.abs().sum()) > 0.01


def test_gradients_reach_tilt_angles(clean):
    model = to_double(model_with_truth(clean))
    index = torch.tensor([16, 21, 26])  # the second tilt
    weights = torch.rand(3, 16, 16, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.tilts[1] += torch.tensor([0.03, -0.02, 0.01], dtype=torch.float64)

    def loss(tilts: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
        predicted = functional_call(model, {"tilts": tilts, "shifts": shifts}, (index,))
        return (predicted * weights).sum()

    tilts = model.tilts.detach().clone().requires_grad_(True)
    shifts = (model.shifts.detach().clone() + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(loss, (tilts, shifts), eps=1e-6, atol=1e-4, rtol=1e-3)


def fit(data: diffrecon.DiffractionData, model: PtychoTomo, values: dict) -> PtychoTomo:
    """Run the shared loop on ``model`` as it stands (e.g. started from the truth)."""
    config = build_config(values, modality="ptycho_tomo")
    objective = Objective(config.loss, data.num_patterns)
    batches = PatternBatches(data, model.propagator, prepare=objective.likelihood.prepare)
    algorithm, _ = make_algorithm(config.algorithm, config.recon.epochs)
    specs = algorithm.adjust_specs(config.param_specs(model.param_specs()))
    Reconstructor(model, batches, objective, algorithm, ParameterPlan(model.named_fields(),
                  specs), config.recon).run()
    return model


def test_tilt_angles_are_refined():
    """Errors of 2 degrees rms on the file's angles shrink when only the angles are fitted
    (volume and probe at their true values): the data pin the orientation of each tilt."""
    settings = tiny(noise="none", angle_error_deg=2.0)
    data = simulate_tomo(settings)
    true, recorded = tilt_angles(settings)
    model = fit(data, model_with_truth(data), {
        "model": {"depth_px": 16}, "recon": {"epochs": 40},
        "params": {"object": {"enabled": False}, "probe": {"enabled": False},
                   "shifts": {"enabled": False}, "tilts": {"start": 0, "lr": 3e-3}}})
    before = np.degrees(recorded - true)[:, :2]
    after = np.degrees(model.results()["tilts_rad"] - true)[:, :2]
    assert np.sqrt(np.mean(after**2)) < 0.2 * np.sqrt(np.mean(before**2))


def test_simulate_reconstruct_recovers_the_volume(tmp_path):
    data = simulate_tomo(tiny(seed=3))
    result = diffrecon.reconstruct(data, "ptycho_tomo", {
        "model": {"depth_px": 16}, "recon": {"epochs": 20},
        "params": {"probe": {"enabled": False}}, "log": {"progress": False}}, out=tmp_path)
    truth = np.angle(data.truth.object)
    estimate = result.results["phase"]
    # plain 3D NRMSE in physical units (no rescaling): the zero start scores 1
    assert np.linalg.norm(estimate - truth) / np.linalg.norm(truth) < 0.45
    assert "nrmse" in result.metrics
    assert result.history["loss/total"][-1] < 0.3 * result.history["loss/total"][0]
    positions, elements = read_xyz(tmp_path / "atoms.xyz")
    assert len(elements) == len(positions) > 0
    with h5py.File(tmp_path / "reconstruction.h5") as handle:
        assert handle["object"].shape == truth.shape
        assert handle["tilts_rad"].shape == (5, 3)


def test_tilt_series_file_round_trip_and_errors(tmp_path, clean):
    path = tmp_path / "series.cxi"
    cxi.save(clean, path)
    loaded = cxi.load(path)
    np.testing.assert_array_equal(loaded.angles_rad, clean.angles_rad)
    loaded.validate()
    assert "tilt series:      5 tilts, -60 to 60 deg" in cxi.inspect_text(loaded)
    with h5py.File(path, "r+") as handle:
        del handle[cxi.ANGLES]
        handle[cxi.ANGLES] = np.zeros((3, 3))
    with pytest.raises(DataFormatError, match="geometry_1/angles.*80, 3.*shape \\(3, 3\\)"):
        cxi.load(path).validate()
    with h5py.File(path, "r+") as handle:
        del handle[cxi.ANGLES]
        handle[cxi.ANGLES] = np.array([b"sixty"] * 80)
    with pytest.raises(DataFormatError, match="geometry_1/angles.*radians.*found"):
        cxi.load(path)
    with pytest.raises(DataFormatError, match="angles.*tilt angles.*missing"):
        PtychoTomo.from_data(dataclasses.replace(clean, angles_rad=None), PtychoTomoConfig())


def test_atom_tracing_finds_the_atoms_of_the_true_volume(tmp_path):
    rng = np.random.default_rng(4)
    atoms, elements = fcc_particle(7e-10, 4.0e-10, ("Mo", "S"), 0.6, rng, jitter_m=0.05e-10)
    volume = potential_volume((36, 36, 36), 0.5e-10, atoms, elements)
    found, species = trace_atoms(volume, 0.5e-10)
    match, distance = match_atoms(found, atoms, 0.5e-10)
    assert np.mean(match >= 0) >= 0.95 and len(found) <= 1.05 * len(atoms)
    assert np.median(distance[match >= 0]) < 0.1e-10  # sub-voxel: 1/5 of a voxel
    right = [species[m] == e for m, e in zip(match, elements, strict=True) if m >= 0]
    assert np.mean(right) >= 0.95
    write_xyz(tmp_path / "a.xyz", found, species)
    back, names = read_xyz(tmp_path / "a.xyz")
    np.testing.assert_allclose(back, found, atol=1e-14)
    assert names == species


def test_potential_volume_integrates_to_the_scattering_factor():
    # the volume integral of V is 2 pi a0 e f_e(0) per atom (Kirkland Eq. 5.9)
    volume = potential_volume((24, 24, 24), 0.4e-10, np.zeros((1, 3)), ["Mo"])
    assert volume.sum() * 0.4e-10**3 == pytest.approx(47.878e-20 * 8.0e-10, rel=1e-6)
    # and its projection along z is the projected potential of data.atoms
    projected = projected_potential((24, 24), (0.4e-10,) * 2, (-11.5 * 0.4e-10,) * 2,
                                    np.zeros((1, 2)), ["Mo"])
    np.testing.assert_allclose(volume.sum(0) * 0.4e-10, projected, atol=1e-3 * projected.max())


def test_cli_simulate_inspect_reconstruct(tmp_path, capsys):
    data = tmp_path / "series.cxi"
    sets = [f"{k}={v}" for k, v in TINY.items() if k not in ("scan_shape",)]
    args = [item for pair in (("--set", s) for s in sets) for item in pair]
    assert main(["-q", "simulate", "--modality", "ptycho_tomo", "--out", str(data), *args,
                 "--set", "scan_shape=[4, 4]"]) == 0
    assert main(["inspect", str(data), "--modality", "ptycho_tomo"]) == 0
    assert "tilt series:      5 tilts" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["-q", "reconstruct", str(data), "--modality", "ptycho_tomo", "--out", str(out),
                 "--set", "recon.epochs=2", "--set", "model.depth_px=16"]) == 0
    assert (out / "atoms.xyz").exists() and (out / "reconstruction.h5").exists()
    bad = tmp_path / "bad.cxi"
    loaded = cxi.load(data)
    cxi.save(dataclasses.replace(loaded, angles_rad=None), bad)
    assert main(["-q", "reconstruct", str(bad), "--modality", "ptycho_tomo"]) != 0
    assert "geometry_1/angles" in capsys.readouterr().err


def test_two_step_baseline_recovers_the_projected_phases(clean):
    """Per-tilt single-slice ptychography gives each tilt's projected phase (the projection
    approximation of the thin particle), on the volume's lateral grid, and SIRT inverts them."""
    config = {"recon": {"epochs": 25}, "params": {"probe": {"enabled": False}},
              "log": {"progress": False, "metrics": False}}
    phases, angles = per_tilt_phases(clean, config)
    truth = np.angle(clean.truth.object)
    expected = project(torch.as_tensor(truth), torch.as_tensor(angles, dtype=torch.float32))
    lit = np.abs(phases).sum(0) > 0
    for got, want in zip(phases, expected.numpy(), strict=True):
        assert np.corrcoef(got[lit], want[lit])[0, 1] > 0.85
    volume = two_step(clean, config, truth.shape[0], iterations=30)
    assert np.linalg.norm(volume - truth) / np.linalg.norm(truth) < 0.9
