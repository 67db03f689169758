"""Fourier ptychography: Zernike and LED physics, the forward model against independent
computations, gradients, data files, and a reconstruction against ground truth."""

from __future__ import annotations

import dataclasses
import math

import h5py
import numpy as np
import pytest
import torch

import diffrecon
from diffrecon.data.dataset import PatternBatches
from diffrecon.data.fpm import led_table, load_fp
from diffrecon.data.simulate_fp import FPSimulation, simulate_fp
from diffrecon.errors import ConfigError, DataFormatError
from diffrecon.losses.likelihoods import make_likelihood
from diffrecon.losses.metrics import nrmse
from diffrecon.models.base import models
from diffrecon.models.fourier_ptycho import FourierPtycho, FourierPtychoConfig
from diffrecon.models.fp_pupil import (
    ZernikeFit,
    brightfield_images,
    fit_aberrations,
    free_coefficients,
    hop_aberrations,
    images_loss,
)
from diffrecon.models.fp_search import grid_starts, profile_misfit, search_aberrations
from diffrecon.physics import led_array
from diffrecon.physics.fft import fft2c
from diffrecon.physics.zernike import fit_zernike, noll_to_nm, zernike_basis, zernike_phase
from diffrecon.recon.optim import ParameterPlan


def small_settings(**changes: object) -> FPSimulation:
    """5x5 LEDs (9 bright-field), 32-pixel images, a 128-pixel object."""
    base = FPSimulation(image_px=32, led_rows=5, led_columns=5, led_pitch_m=4e-3,
                        led_height_m=40e-3, photons_per_pixel=1e4)
    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="module")
def small_fp():
    return simulate_fp(small_settings())


def test_registered():
    assert models.get("fourier_ptycho") is FourierPtycho


def test_noll_indices():
    expected = {1: (0, 0), 2: (1, 1), 3: (1, -1), 4: (2, 0), 5: (2, -2), 6: (2, 2),
                7: (3, -1), 8: (3, 1), 11: (4, 0)}
    assert {j: noll_to_nm(j) for j in expected} == expected


def test_zernike_orthonormal_on_unit_disc():
    n = 256
    y, x = torch.meshgrid(*(((torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 - 1,) * 2),
                          indexing="ij")
    rho, theta = torch.hypot(y, x), torch.atan2(y, x)
    basis = zernike_basis(list(range(1, 16)), rho, theta).flatten(1)
    inside = (rho <= 1).flatten().double()
    gram = (basis * inside) @ basis.T / inside.sum()
    assert torch.allclose(gram, torch.eye(15, dtype=torch.float64), atol=0.01)
    # and the least-squares fit reads back a known wavefront
    coefficients = torch.linspace(-0.1, 0.1, 15, dtype=torch.float64)
    phase = zernike_phase(coefficients, basis.reshape(15, n, n))
    fitted = fit_zernike(phase, basis.reshape(15, n, n), (rho <= 1).double())
    assert torch.allclose(fitted, coefficients, atol=1e-6)


def test_brightfield_classification_by_na():
    height = 50e-3
    inside = height * math.tan(math.asin(0.099))
    outside = height * math.tan(math.asin(0.101))
    positions = torch.tensor([[0.0, inside], [outside, 0.0], [0.0, 0.0]], dtype=torch.float64)
    assert led_array.is_brightfield(positions, height, 0.1).tolist() == [True, False, True]
    na = led_array.illumination_na(positions, height)
    assert na[0].item() == pytest.approx(0.099) and na[1].item() == pytest.approx(0.101)


def test_pupil_cutoff_and_real_without_aberrations(small_fp):
    model = FourierPtycho.from_data(small_fp, FourierPtychoConfig())
    pupil = model.current_pupil().detach()
    assert torch.all(pupil.imag == 0)
    h = model.scope.frame[0]
    k = np.fft.fftshift(np.fft.fftfreq(h, model.scope.object_pixel_m * model.scope.grid[0] / h))
    radius = np.hypot(k[:, None], k[None, :])
    cutoff = small_fp.wavelength_m and 0.1 / small_fp.wavelength_m
    assert np.array_equal(pupil.abs().numpy() > 0, radius <= cutoff)
    with torch.no_grad():
        model.aberrations[0] = 0.3  # defocus: the pupil turns complex inside the support only
    pupil = model.current_pupil().detach()
    assert pupil.imag.abs().max() > 0 and torch.all(pupil[torch.as_tensor(radius > cutoff)] == 0)


def test_brightfield_image_is_band_limited_object(small_fp):
    """The on-axis LED's image equals |low-pass(object)|^2, computed here with numpy."""
    model = FourierPtycho.from_data(small_fp, FourierPtychoConfig())
    truth = small_fp.truth.object[0].astype(np.complex128)
    with torch.no_grad():
        centred = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(truth), norm="ortho"))
        model.object.copy_(torch.as_tensor(centred)[None])
    centre = int(np.argmin(np.abs(led_table(small_fp).positions_m).sum(1)))
    with torch.no_grad():
        image = model.propagator.from_native(model(torch.tensor([centre])))[0].double().numpy()
    big, small = model.scope.grid[0], model.scope.frame[0]
    k = np.fft.fftfreq(big, model.scope.object_pixel_m)
    low = np.fft.fft2(truth) * (np.hypot(k[:, None], k[None, :]) <= 0.1 / small_fp.wavelength_m)
    field = np.fft.ifft2(low)[:: big // small, :: big // small]  # sampled at camera pixels
    expected = model.amplitude**2 * (big / small) ** 2 * np.abs(field) ** 2
    assert np.allclose(image, expected, rtol=1e-3, atol=1e-3 * expected.max())


def test_energy_conservation_and_multiplexing(small_fp):
    model = FourierPtycho.from_data(small_fp, FourierPtychoConfig())
    index = torch.arange(6)
    exit_energy = model.exit_wave(index).abs().square().sum(dim=(1, 2, 3))
    assert torch.allclose(model(index).sum(dim=(1, 2)), exit_energy, rtol=1e-4)
    # two LEDs in one image: the incoherent sum of their single-LED images
    table = led_table(small_fp)
    pair = diffrecon.data.fpm.with_leds(
        dataclasses.replace(small_fp, patterns=np.asarray(small_fp.patterns)[:1]),
        table.positions_m, np.array([[3, 7]]), table.numerical_aperture, table.magnification)
    multiplexed = FourierPtycho.from_data(pair, FourierPtychoConfig())
    with torch.no_grad():
        for name in ("object", "pupil"):
            getattr(multiplexed, name).copy_(getattr(model, name))
        multiplexed.amplitude = model.amplitude
    both = multiplexed(torch.tensor([0]))[0]
    assert torch.allclose(both, model(torch.tensor([3]))[0] + model(torch.tensor([7]))[0],
                          rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", ["object", "pupil", "aberrations", "led_geometry",
                                  "illumination_angles", "led_intensity"])
def test_gradient_matches_finite_difference(small_fp, name):
    model = FourierPtycho.from_data(small_fp, FourierPtychoConfig())
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_complex():
            tensor.data = tensor.data.to(torch.complex128)
        elif tensor.is_floating_point():
            tensor.data = tensor.data.to(torch.float64)
    with torch.no_grad():
        model.aberrations.copy_(torch.linspace(-0.1, 0.1, len(model.noll)))
        model.led_geometry.copy_(torch.tensor([0.2, -0.1, 1.0, 0.5]))
        model.illumination_angles.add_(0.3)
    index = torch.tensor([2, 7, 12])
    target = torch.rand((3, 32, 32), generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64) * 50

    def loss() -> torch.Tensor:
        return (model(index) - target).square().sum()

    parameter = dict(model.named_fields())[name]
    loss().backward()
    g = torch.Generator().manual_seed(1)
    direction = torch.randn(parameter.shape, generator=g, dtype=parameter.dtype)
    analytic = float((parameter.grad.conj() * direction).real.sum())
    eps = 1e-6 * max(float(parameter.detach().abs().max()), 1.0)
    with torch.no_grad():
        parameter.add_(eps * direction)
        plus = float(loss())
        parameter.sub_(2 * eps * direction)
        minus = float(loss())
        parameter.add_(eps * direction)
    assert analytic == pytest.approx((plus - minus) / (2 * eps), rel=1e-4, abs=1e-6)


def test_reconstruction_against_truth(small_fp):
    torch.set_num_threads(1)  # many small FFTs: a second thread only adds contention
    result = diffrecon.reconstruct(small_fp, "fourier_ptycho", {
        "recon": {"epochs": 15}, "log": {"progress": False, "metric_every": 100}})
    start = FourierPtycho.from_data(small_fp, FourierPtychoConfig()).transmission()
    truth = small_fp.truth.object[0]
    initial = nrmse(start.detach()[0].numpy(), truth, remove_ramp=True)
    assert result.metrics["nrmse"] < 0.15 < initial


def test_hdf5_and_description_readers(tmp_path, small_fp):
    table = led_table(small_fp)
    images = np.asarray(small_fp.patterns)
    scalars = {"wavelength_m": small_fp.wavelength_m, "numerical_aperture": 0.1,
               "magnification": 4.0, "camera_pixel_m": 6.5e-6, "led_height_m": 40e-3}
    with h5py.File(tmp_path / "fp.h5", "w") as handle:
        handle["images"] = images
        handle["led_positions_m"] = table.positions_m
        handle.attrs.update(scalars)
    np.save(tmp_path / "stack.npy", images)
    np.save(tmp_path / "leds.npy", table.positions_m)
    lines = [f"{k} = {v!r}" for k, v in scalars.items()]
    (tmp_path / "fp.toml").write_text("\n".join(lines + ['images = "stack.npy"',
                                                         'led_positions_m = "leds.npy"']))
    for source in (tmp_path / "fp.h5", tmp_path / "fp.toml", tmp_path):
        data = diffrecon.load(source)
        assert np.array_equal(np.asarray(data.patterns), images)
        assert np.allclose(led_table(data).positions_m, table.positions_m)
        assert data.distance_m == pytest.approx(40e-3)
    (tmp_path / "bad.toml").write_text('images = "stack.npy"\nled_positions_m = "leds.npy"')
    with pytest.raises(DataFormatError, match="wavelength_m"):
        load_fp(tmp_path / "bad.toml")
    with h5py.File(tmp_path / "no_leds.h5", "w") as handle:
        handle["images"] = images
    with pytest.raises(DataFormatError, match="led_positions_m"):
        diffrecon.load(tmp_path / "no_leds.h5")
    with pytest.raises(DataFormatError, match="numerical_aperture"):
        led_table(dataclasses.replace(small_fp, metadata={}))


def test_multiplexed_cxi_round_trip(tmp_path):
    data = diffrecon.simulate(dataclasses.asdict(small_settings(leds_per_image=4)),
                              modality="fourier_ptycho", out=tmp_path / "fp.cxi")
    again = diffrecon.load(tmp_path / "fp.cxi")
    before, after = led_table(data), led_table(again)
    assert np.array_equal(before.groups, after.groups) and before.groups.shape[1] == 4
    assert np.allclose(before.positions_m, after.positions_m)
    assert "synthetic NA" in diffrecon.inspect(tmp_path / "fp.cxi", "fourier_ptycho")


def test_pose_fit_and_net_tilt_recover_known_values():
    nominal = led_array.grid_positions(7, 7, 4e-3)
    wavelength, height, pixel = 0.52e-6, 60e-3, 1 / 104e-6
    true = torch.tensor([0.3, -0.4, 2.0, 1.5], dtype=torch.float64)  # mm, mm, degrees, mm
    positions = led_array.transform_positions(nominal, true[:2] * 1e-3, torch.deg2rad(true[2]))
    offsets = led_array.spectrum_offsets(positions, height + true[3] * 1e-3, wavelength) / pixel
    pose = led_array.fit_pose(nominal, offsets, torch.zeros(4), height, wavelength, pixel)
    assert torch.allclose(pose, true, atol=1e-4)
    fixed = led_array.fit_pose(nominal, offsets, torch.zeros(4), height, wavelength, pixel,
                               free=(True, True, True, False))
    assert fixed[3] == 0
    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(48.0), indexing="ij")
    smooth = torch.sin(2 * math.pi * y / 64) + torch.cos(2 * math.pi * 2 * x / 48)  # periodic
    field = (1 + 0.3 * smooth) * torch.exp(1j * (0.5 * smooth + 2 * math.pi * (1.3 * y / 64
                                                                                - 0.7 * x / 48)))
    assert torch.allclose(led_array.net_tilt(field).float(), torch.tensor([1.3, -0.7]),
                          atol=0.02)


def test_multislice_single_slice_equals_thin_model(small_fp):
    """S = 1 at focus: the same images as ``fourier_ptycho`` for integer LED offsets."""
    from diffrecon.models.fourier_ptycho_multislice import (
        FourierPtychoMultislice,
        MultisliceFPConfig,
    )

    thin = FourierPtycho.from_data(small_fp, FourierPtychoConfig())
    thick = FourierPtychoMultislice.from_data(small_fp, MultisliceFPConfig(slices=1))
    truth = torch.as_tensor(small_fp.truth.object).to(torch.complex64)
    with torch.no_grad():
        centres = thin.led_centres()
        for model in (thin, thick):
            model.illumination_angles.copy_(centres.round() - centres)
        thin.object.copy_(fft2c(truth))
        thick.object.copy_(truth)
        index = torch.arange(10)
        assert torch.allclose(thick(index), thin(index), rtol=1e-3, atol=1e-3 * float(
            thin(index).max()))
        # two slices with no gap between them act as their product
        split = FourierPtychoMultislice.from_data(small_fp, MultisliceFPConfig(
            slices=2, slice_thickness_m=0.0))
        split.illumination_angles.copy_(thick.illumination_angles)
        half = truth.abs().sqrt() * torch.exp(0.5j * truth.angle())
        split.object.copy_(torch.cat([half, half]))
        assert torch.allclose(split(index), thick(index), rtol=1e-3, atol=1e-3 * float(
            thick(index).max()))


def test_multislice_energy_and_gradient(small_fp):
    from diffrecon.models.fourier_ptycho_multislice import (
        FourierPtychoMultislice,
        MultisliceFPConfig,
    )

    model = FourierPtychoMultislice.from_data(small_fp, MultisliceFPConfig(
        slices=2, slice_thickness_m=8e-6, focus_m=-4e-6))
    index = torch.tensor([0, 12, 20])
    exit_energy = model.exit_wave(index).abs().square().sum(dim=(1, 2, 3))
    assert torch.allclose(model(index).sum(dim=(1, 2)), exit_energy, rtol=1e-4)
    for tensor in [*model.parameters(), *model.buffers()]:
        tensor.data = tensor.data.to(torch.complex128 if tensor.is_complex() else
                                     torch.float64 if tensor.is_floating_point() else None)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        model.object.mul_(1 + 0.1 * torch.randn(model.object.shape, generator=g,
                                                 dtype=torch.complex128))
    target = model(index).detach() * 1.1
    loss = (model(index) - target).square().sum()
    loss.backward()
    direction = torch.randn(model.object.shape, generator=g, dtype=torch.complex128)
    analytic = float((model.object.grad.conj() * direction).real.sum())
    eps = 1e-6
    with torch.no_grad():
        model.object.add_(eps * direction)
        plus = float((model(index) - target).square().sum())
        model.object.sub_(2 * eps * direction)
        minus = float((model(index) - target).square().sum())
    assert analytic == pytest.approx((plus - minus) / (2 * eps), rel=1e-4)


def test_led_calibration_refuses_multiplexed_images():
    data = simulate_fp(small_settings(leds_per_image=2))
    with pytest.raises(ConfigError, match="single-LED"):
        diffrecon.reconstruct(data, "fourier_ptycho", {
            "model": {"calibrate_leds": True}, "recon": {"epochs": 1},
            "log": {"progress": False}})


def test_led_calibration_recovers_a_shifted_rotated_array():
    """A small case (9x9 LEDs, 32-pixel images): the shift to 0.1 mm and most of a 2-degree
    rotation (the full bench, 15x15 LEDs, recovers it to 0.1 degree)."""
    torch.set_num_threads(1)
    data = simulate_fp(small_settings(led_rows=9, led_columns=9, led_shift_m=[0.5e-3, -0.3e-3],
                                      led_rotation_deg=2.0))
    result = diffrecon.reconstruct(data, "fourier_ptycho", {
        "model": {"calibrate_leds": True}, "params": {"aberrations": {"enabled": False}},
        "recon": {"epochs": 40}, "log": {"progress": False, "metric_every": 100}})
    shift = result.results["led_shift_m"]
    assert np.hypot(*(shift - np.array([0.5e-3, -0.3e-3]))) < 0.1e-3
    assert abs(np.degrees(result.results["led_rotation_rad"]) - 2.0) < 0.75


def test_zernike_fit_recovers_the_pupil_with_the_object_held():
    """``fit_aberrations`` on the bright-field images, the true object held, finds the
    true Zernike coefficients from zero, coarse to fine (Noll 4-6, 4-8, then all)."""
    truth = {"Z4": 0.2, "Z5": -0.1, "Z7": 0.1}
    data = simulate_fp(small_settings(zernike_waves=truth, noise="none", led_height_m=60e-3))
    model = FourierPtycho.from_data(data, FourierPtychoConfig())
    scale = math.sqrt(1e4 * 32 * 32 / (model.scope.grid[0] * model.scope.grid[1]))
    with torch.no_grad():  # the simulator's scaling: pupil amplitude and true spectrum
        model.object.copy_(fft2c(torch.as_tensor(data.truth.object)).to(torch.complex64))
        model.amplitude = scale
        model.pupil.copy_((model.support * scale).to(torch.complex64)[None])
    likelihood = make_likelihood("amplitude")
    index = brightfield_images(model)
    assert len(index) == 9  # the central 3 x 3 LEDs at this height
    measured = PatternBatches(data, model.propagator, prepare=likelihood.prepare)(index)
    start = fit_aberrations(model, index, measured, likelihood,
                            torch.zeros(len(model.noll)), iterations=1)
    for done in (0, 4, 10):  # coarse to fine, as the loop callback does
        final = fit_aberrations(model, index, measured, likelihood,
                                free_coefficients(model.noll, done), iterations=20)
    expected = torch.zeros(len(model.noll))
    for name, value in truth.items():
        expected[model.noll.index(int(name[1:]))] = value
    assert torch.allclose(model.aberrations.detach(), expected, atol=0.01)
    assert final < 1e-3 * start
    assert [int(free_coefficients(model.noll, done).sum()) for done in (0, 4, 10)] == [3, 5, 12]


def test_basin_hopping_leaves_a_local_minimum_of_the_zernike_fit():
    """At ~1 wave rms the pupil fit alone has local minima: with the true object held, from
    0.1 wave off in defocus, astigmatism, coma and trefoil, L-BFGS stays 0.1 wave off at
    >1e4x the data error of the truth; one round of ``hop_aberrations`` reaches the truth."""
    torch.set_num_threads(1)  # many small L-BFGS fits: thread hand-offs would dominate
    truth = {"Z4": 0.6, "Z5": 0.4, "Z6": 0.3, "Z7": 0.45, "Z8": 0.4}
    data = simulate_fp(small_settings(zernike_waves=truth, noise="none", led_height_m=60e-3))
    model = FourierPtycho.from_data(data, FourierPtychoConfig())
    scale = math.sqrt(1e4 * 32 * 32 / (model.scope.grid[0] * model.scope.grid[1]))
    expected = torch.zeros(len(model.noll))
    for name, value in truth.items():
        expected[model.noll.index(int(name[1:]))] = value
    with torch.no_grad():  # the simulator's scaling: pupil amplitude and true spectrum
        model.object.copy_(fft2c(torch.as_tensor(data.truth.object)).to(torch.complex64))
        model.amplitude = scale
        model.pupil.copy_((model.support * scale).to(torch.complex64)[None])
        model.aberrations.copy_(expected)
        for name, value in {"Z4": -0.1, "Z5": -0.12, "Z7": -0.13, "Z10": 0.09}.items():
            model.aberrations[model.noll.index(int(name[1:]))] += value
    likelihood = make_likelihood("amplitude")
    index = brightfield_images(model)
    measured = PatternBatches(data, model.propagator, prepare=likelihood.prepare)(index)
    free = torch.ones(len(model.noll))
    trapped = fit_aberrations(model, index, measured, likelihood, free, iterations=40)
    assert float((model.aberrations.detach() - expected).abs().max()) > 0.05
    assert hop_aberrations(model, index, measured, likelihood, free, 0.15, iterations=20)
    assert torch.allclose(model.aberrations.detach(), expected, atol=1e-3)
    assert images_loss(model, index, measured, likelihood) < 1e-4 * trapped


def test_multiplexed_groups_hold_no_facing_leds():
    """Each multiplexed image lights bright- or dark-field LEDs only, never a facing pair
    (k, -k would leave the twin of its band undetermined), and its LEDs lie farther apart
    than neighbours in NA order would (spread groups: disjoint spectrum windows)."""
    data = simulate_fp(small_settings(leds_per_image=4))
    table = led_table(data)
    positions = torch.as_tensor(table.positions_m)
    bright = led_array.is_brightfield(positions, data.distance_m, 0.1)
    pitch = 4e-3
    closest = []
    for row in table.groups:
        leds = row[row >= 0]
        assert len(set(bright[leds].tolist())) == 1
        sums = (positions[leds][:, None] + positions[leds][None]).norm(dim=-1)
        assert float((sums + torch.eye(len(leds)) * pitch).min()) >= pitch / 2  # no facing pair
        if len(leds) > 1:
            gaps = (positions[leds][:, None] - positions[leds][None]).norm(dim=-1)
            closest.append(float(gaps[gaps > 0].min()))
    assert np.median(closest) >= 2 * pitch - 1e-9
    assert sorted(np.concatenate([row[row >= 0] for row in table.groups]).tolist()) == list(
        range(len(positions)))
    assert len(table.groups) <= len(positions) // 4 + 4  # about 4x fewer images


@pytest.mark.parametrize("optimizer", ["callback", "adam"])
def test_zernike_coefficients_are_fitted_by_the_callback_or_stepped_per_minibatch(
        small_fp, optimizer):
    """The default plan gives the coefficients no per-minibatch optimiser (the ZernikeFit
    callback fits them after each epoch from params.aberrations.start); with "adam" they are
    stepped per minibatch and the callback stands aside. Either way they move from zero."""
    result = diffrecon.reconstruct(small_fp, "fourier_ptycho", overrides=[
        "recon.epochs=4", "params.aberrations.start=1", f"params.aberrations.optimizer={optimizer}",
        "algorithm.name=gradient", "log.progress=false", "log.tensorboard=false",
        "log.metrics=false", "model.zernike_search_waves=0"])
    model = result.model
    assert model.aberrations.detach().abs().sum() > 0
    plan = ParameterPlan(model.named_fields(), {"aberrations": dataclasses.replace(
        model.param_specs()["aberrations"], optimizer=optimizer)})
    assert ("aberrations" in plan.optimizers) == (optimizer == "adam")
    fit = ZernikeFit()
    fit.on_start(type("Run", (), {"plan": plan, "model": model})())
    assert (fit.spec is not None) == (optimizer == "callback")


def test_grid_search_finds_a_one_wave_pupil_from_the_brightfield_images():
    """At 1 wave rms the pupil and object grown together from the bright-field guess and a
    zero pupil (``profile_misfit``) stop far from the truth; the grid search over Noll 4-8
    (``search_aberrations``), no truth used, lands in the truth's basin: every coefficient
    within 0.15 wave (the epochs' fits then finish; bench_fp.py's 64-pixel images give 0.03),
    at a far lower bright-field misfit, and leaves the object at the bright-field guess."""
    torch.set_num_threads(1)  # many small fits: thread hand-offs would dominate
    truth = {"Z4": 0.6, "Z5": 0.4, "Z6": 0.3, "Z7": 0.45, "Z8": 0.4}
    data = simulate_fp(small_settings(zernike_waves=truth, led_height_m=60e-3))
    model = FourierPtycho.from_data(data, FourierPtychoConfig())
    expected = torch.zeros(len(model.noll))
    for name, value in truth.items():
        expected[model.noll.index(int(name[1:]))] = value
    likelihood = make_likelihood("amplitude")
    index = brightfield_images(model)
    measured = PatternBatches(data, model.propagator, prepare=likelihood.prepare)(index)
    local = profile_misfit(model, index, measured, likelihood, torch.zeros(len(model.noll)),
                           rounds=6)
    assert float((model.aberrations.detach() - expected).abs().max()) > 0.2
    found = search_aberrations(model, index, measured, likelihood, 0.5)
    assert torch.allclose(model.aberrations.detach(), expected, atol=0.15)
    assert found < 0.3 * local
    assert torch.equal(model.object.detach(), model.initial_spectrum)
    assert grid_starts(model.noll, 0.5).shape == (3**5, len(model.noll))
