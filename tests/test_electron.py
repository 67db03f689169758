"""Electron optics, multislice physics and the multislice model, tested against physics."""

from __future__ import annotations

import dataclasses
import math

import h5py
import numpy as np
import pytest
import torch

from diffrecon.api import reconstruct
from diffrecon.data.container import DiffractionData
from diffrecon.data.simulate_stem import STEMSimulation, simulate_stem
from diffrecon.data.stem import STEMCalibration, load_4dstem, read_empad, write_empad
from diffrecon.errors import DataFormatError
from diffrecon.losses.regularizers import regularizers
from diffrecon.models.base import models
from diffrecon.models.multislice import Multislice, MultisliceConfig
from diffrecon.models.ptycho import Ptycho, PtychoConfig
from diffrecon.physics import aberrations as ab
from diffrecon.physics.multislice import SliceGrid, fresnel_kernels, multislice
from diffrecon.physics.optics import (
    electron_voltage_v,
    electron_wavelength_m,
    interaction_constant,
)
from diffrecon.physics.overlap import overlap
from diffrecon.physics.propagators import AngularSpectrum, angular_spectrum_kernel
from diffrecon.physics.shifts import translate
from diffrecon.recon.evaluation import truth_evaluator

VOLTAGE = 80e3
WAVELENGTH = electron_wavelength_m(VOLTAGE)
PIXEL = (0.3e-10, 0.3e-10)


@pytest.mark.parametrize(("kv", "pm"), [(300, 1.9687), (200, 2.5079), (80, 4.1757)])
def test_relativistic_wavelength_table(kv, pm):
    assert electron_wavelength_m(kv * 1e3) * 1e12 == pytest.approx(pm, abs=1e-4)
    assert electron_voltage_v(electron_wavelength_m(kv * 1e3)) == pytest.approx(kv * 1e3)


def test_interaction_constant():
    # sigma = 2 pi m e lambda / h^2 with the relativistic mass, written independently
    for voltage in (80e3, 300e3):
        m0, e, c, h = 9.1093837015e-31, 1.602176634e-19, 299792458.0, 6.62607015e-34
        mass = m0 * (1 + e * voltage / (m0 * c**2))
        expected = 2 * math.pi * mass * e * electron_wavelength_m(voltage) / h**2
        assert interaction_constant(voltage) == pytest.approx(expected, rel=1e-9)
    assert interaction_constant(300e3) * 1e-10 == pytest.approx(6.526e-4, rel=1e-3)


def test_defocus_phase_equals_fresnel_propagator_phase():
    shape, dz = (32, 32), 5e-9
    coefficients = ab.aberration_vector({"C10": dz})
    alpha, phi = ab.polar_grid(shape, PIXEL, WAVELENGTH, centred=False)
    chi = ab.aberration_phase(coefficients, ab.angular_basis(alpha, phi), WAVELENGTH)
    kernel = angular_spectrum_kernel(shape, PIXEL, WAVELENGTH, dz, paraxial=True)
    torch.testing.assert_close(torch.exp(-1j * chi), kernel, rtol=0, atol=1e-9)
    # and so the defocused probe is the focused probe propagated over C10
    focus = ab.electron_probe(shape, PIXEL, WAVELENGTH, 0.025, ab.aberration_vector({}))
    defocused = ab.electron_probe(shape, PIXEL, WAVELENGTH, 0.025, coefficients)
    propagated = AngularSpectrum(shape, PIXEL, WAVELENGTH, dz, paraxial=True)(
        focus.to(torch.complex64))
    torch.testing.assert_close(defocused.to(torch.complex64), propagated, rtol=0, atol=1e-5)


def test_aberration_orders_and_symmetries():
    alpha = torch.tensor([[0.01, 0.02]], dtype=torch.float64)
    phi = torch.tensor([[0.3, 0.3]], dtype=torch.float64)
    basis = ab.angular_basis(alpha, phi)
    cs = ab.aberration_phase(ab.aberration_vector({"C30": 1e-6}), basis, WAVELENGTH)
    expected = 2 * math.pi / WAVELENGTH * 1e-6 * alpha**4 / 4
    torch.testing.assert_close(cs, expected)
    # two-fold astigmatism of magnitude A at angle t: chi = 2 pi / lambda A a^2 / 2 cos 2(phi - t)
    a, b = ab.polar_to_components(3e-9, 0.5, 2)
    astig = ab.aberration_phase(ab.aberration_vector({"C12a": a, "C12b": b}), basis, WAVELENGTH)
    expected = 2 * math.pi / WAVELENGTH * 3e-9 * alpha**2 / 2 * torch.cos(2 * (phi - 0.5))
    torch.testing.assert_close(astig, expected)
    assert ab.ABERRATION_NAMES[:8] == ("C10", "C12a", "C12b", "C21a", "C21b", "C23a", "C23b",
                                       "C30")
    assert {"C32a", "C34b", "C50"} <= set(ab.ABERRATION_NAMES)


def test_probe_energy_and_aperture():
    shape = (64, 64)
    probe = ab.electron_probe(shape, PIXEL, WAVELENGTH, 0.02, ab.aberration_vector({}),
                              electrons=1234.0)
    assert float(probe.abs().square().sum()) == pytest.approx(1234.0, rel=1e-9)
    alpha, _ = ab.polar_grid(shape, PIXEL, WAVELENGTH)
    spectrum = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(probe)))
    assert float(spectrum[alpha > 0.0201].abs().max()) < 1e-9 * float(spectrum.abs().max())


def random_slices(shape, count, seed=0, dtype=torch.complex128):
    g = torch.Generator().manual_seed(seed)
    phase = 0.5 * torch.rand((count, *shape), generator=g, dtype=torch.float64)
    return torch.exp(1j * phase).to(dtype)


def random_wave(shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.complex128)


def test_unit_slices_equal_free_propagation_over_total_thickness():
    shape = (32, 32)
    grid = SliceGrid(shape, PIXEL, WAVELENGTH)
    thickness = torch.tensor([1e-9, 2.5e-9, 3e-9], dtype=torch.float64)
    probe = random_wave((2, 3, *shape))
    exit_wave = multislice(probe, torch.ones((2, 4, *shape), dtype=torch.complex128),
                           grid.kernels(thickness))
    free = AngularSpectrum(shape, PIXEL, WAVELENGTH, float(thickness.sum()), paraxial=True)
    torch.testing.assert_close(exit_wave.to(torch.complex64), free(probe.to(torch.complex64)),
                               rtol=0, atol=2e-5)


def test_tilt_walks_the_wave_by_thickness_times_tan_theta():
    shape = (32, 32)
    grid = SliceGrid(shape, PIXEL, WAVELENGTH)
    dz, tilt = 2e-9, torch.tensor([3e-3, -1.5e-3], dtype=torch.float64)
    probe = random_wave((1, 1, *shape))
    exit_wave = multislice(probe, torch.ones((1, 3, *shape), dtype=torch.complex128),
                           grid.kernels(torch.tensor(dz, dtype=torch.float64), tilt))
    walked = translate(probe, (2 * dz * torch.tan(tilt) / PIXEL[0])[None, None])
    expected = AngularSpectrum(shape, PIXEL, WAVELENGTH, 2 * dz, paraxial=True)(
        walked.to(torch.complex64))
    torch.testing.assert_close(exit_wave.to(torch.complex64), expected, rtol=0, atol=2e-5)


def test_phase_slices_conserve_energy():
    shape = (24, 24)
    kernels = fresnel_kernels(*[k.double() for k in SliceGrid(shape, PIXEL, WAVELENGTH)
                                .buffers()], WAVELENGTH, torch.tensor([1e-9, 3e-9]),
                              torch.tensor([1e-3, 2e-3]))
    probe = random_wave((2, 2, *shape))
    out = multislice(probe, random_slices(shape, 3), kernels)
    assert float(out.abs().square().sum()) == pytest.approx(float(probe.abs().square().sum()),
                                                            rel=1e-10)


def test_single_slice_multislice_is_the_overlap_product():
    shape = (16, 16)
    obj = random_slices((40, 40), 1).to(torch.complex64)
    probe = random_wave((2, *shape)).to(torch.complex64)
    corners = torch.tensor([[0, 3], [10, 7]])
    patches = torch.stack([obj[0, c[0]:c[0] + 16, c[1]:c[1] + 16] for c in corners])[:, None]
    kernel = torch.ones(shape, dtype=torch.complex64)
    torch.testing.assert_close(multislice(probe[None], patches, kernel),
                               overlap(obj, probe, corners, None))


# --- the model ----------------------------------------------------------------------------
def electron_data(frame=16, positions=((0.0, 0.0), (0.9e-10, 0.4e-10), (-0.5e-10, 1.3e-10)),
                  convergence_mrad=25.0):
    rng = np.random.default_rng(0)
    return DiffractionData(
        patterns=rng.uniform(0, 10, (len(positions), frame, frame)).astype(np.float32),
        wavelength_m=WAVELENGTH, distance_m=1.0,
        detector_pixel_size_m=(WAVELENGTH / (frame * PIXEL[0]),) * 2,
        positions_m=np.asarray(positions),
        metadata={"convergence_mrad": str(convergence_mrad), "defocus_m": "3e-9"},
    )


def to_double(model):
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_complex():
            tensor.data = tensor.data.to(torch.complex128)
        elif tensor.is_floating_point():
            tensor.data = tensor.data.to(torch.float64)
    return model


def test_registered_and_pixel_size():
    assert models.get("multislice") is Multislice
    model = Multislice.from_data(electron_data(), MultisliceConfig())
    assert model.pixel_size_m == pytest.approx(PIXEL)
    assert model.convergence_rad == pytest.approx(0.025)
    assert float(model.aberration_coefficients().detach()[0]) == pytest.approx(3e-9)


def test_single_slice_model_equals_ptycho():
    data = electron_data()
    ptycho = Ptycho.from_data(data, PtychoConfig(probe_modes=2, padding_px=2))
    model = Multislice.from_data(data, MultisliceConfig(probe_modes=2, padding_px=2))
    g = torch.Generator().manual_seed(3)
    obj = torch.exp(1j * torch.rand(ptycho.object.shape, generator=g)).to(torch.complex64)
    with torch.no_grad():
        ptycho.object.copy_(obj)
        model.object.copy_(obj)
        ptycho.probe.copy_(model.probe)
    index = torch.arange(3)
    torch.testing.assert_close(model(index), ptycho(index))
    # the general multislice path (a phase object) agrees too
    phase = Multislice.from_data(data, MultisliceConfig(probe_modes=2, padding_px=2,
                                                        object_kind="phase"))
    with torch.no_grad():
        phase.object.copy_(torch.angle(obj))
        phase.probe.copy_(model.probe)
    torch.testing.assert_close(phase(index), ptycho(index), rtol=1e-4, atol=1e-3)


def test_shapes_energy_and_results():
    config = MultisliceConfig(slices=3, padding_px=2, object_kind="phase",
                              probe_model="aberrations", thickness_per_gap=True)
    model = Multislice.from_data(electron_data(), config)
    assert model.object.shape[0] == 3 and not model.object.is_complex()
    assert model.slice_thickness.shape == (2,)
    with torch.no_grad():
        model.object.uniform_(0, 0.5)
        model.tilts.fill_(2.0)
    index = torch.arange(3)
    wave = model.exit_wave(index)
    assert wave.shape == (3, 1, 16, 16) and wave.dtype == torch.complex64
    intensity = model(index)
    assert torch.all(intensity >= 0)
    # a phase object and unitary propagation keep the probe's electrons
    torch.testing.assert_close(intensity.sum((1, 2)),
                               torch.full((3,), model.electrons), rtol=1e-4, atol=0)
    results = model.results()
    assert results["object"].shape == (3, *model.object.shape[-2:])
    assert results["C10_m"] == pytest.approx(3e-9, rel=1e-5)
    assert results["aberrations_m"].shape == (len(ab.ABERRATION_NAMES),)
    specs = model.param_specs()
    assert specs["aberrations"].enabled and not specs["probe"].enabled


@pytest.mark.parametrize("name", ["aberrations", "slice_thickness", "tilts", "object"])
def test_gradcheck(name):
    config = MultisliceConfig(slices=3, padding_px=1, probe_model="aberrations",
                              thickness_per_gap=True, object_kind="phase")
    model = to_double(Multislice.from_data(electron_data(frame=8), config))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.object.copy_(torch.rand(model.object.shape, generator=g, dtype=torch.float64))
        model.tilts.copy_(torch.tensor([1.0, -2.0]))
        model.aberrations.add_(torch.rand(model.aberrations.shape, generator=g,
                                          dtype=torch.float64))
    parameter = dict(model.named_fields())[name]
    weights = torch.rand((2, 8, 8), generator=g, dtype=torch.float64)
    start = parameter.detach().clone()
    scale = 1e-9 if name == "slice_thickness" else 1.0

    def loss(values):
        replaced = {name: values * scale}
        return (torch.func.functional_call(model, replaced, (torch.tensor([0, 2]),))
                * weights).sum()

    # the object has hundreds of entries: check random directional derivatives (fast mode)
    assert torch.autograd.gradcheck(loss, (start / scale).requires_grad_(), eps=1e-6,
                                    atol=1e-5, rtol=1e-4, fast_mode=name == "object")


def test_depth_regularizers():
    flat = torch.ones((4, 6, 6), dtype=torch.complex128) * (1 + 1j)
    assert float(regularizers.get("depth_lowpass")(flat)) == pytest.approx(0, abs=1e-20)
    assert float(regularizers.get("depth_tv")(flat)) == pytest.approx(0, abs=1e-12)
    layered = flat.clone()
    layered[2] = 0
    # depth TV of one missing slice: two jumps of |1 + i| per pixel
    assert float(regularizers.get("depth_tv")(layered)) == pytest.approx(2 * 36 * math.sqrt(2),
                                                                         rel=1e-3)
    smooth = torch.linspace(0, 1, 8)[:, None, None].expand(8, 6, 6)
    alternating = (torch.arange(8) % 2).double()[:, None, None].expand(8, 6, 6)
    low = regularizers.get("depth_lowpass")
    assert float(low(alternating)) > 20 * float(low(smooth.double()))



# --- 4D-STEM data -------------------------------------------------------------------------
def test_empad_round_trip_crop_bin_and_calibration(tmp_path):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:128, :128] - 64
    disc = 100.0 * (y**2 + x**2 <= 20**2)  # a bright-field disc centred on pixel (64, 64)
    frames = (disc + rng.uniform(0, 5, (3, 4, 128, 128))).astype(np.float32)
    path = tmp_path / "scan.raw"
    write_empad(path, frames)
    assert path.stat().st_size == 3 * 4 * 128 * 130 * 4
    np.testing.assert_array_equal(read_empad(path, (3, 4)), frames)
    calibration = STEMCalibration(voltage_v=VOLTAGE, scan_step_m=[2e-10, 1e-10],
                                  scan_shape=[3, 4], reciprocal_pixel_per_m=1e9,
                                  crop_px=64, binning=2, scan_rotation_deg=90.0)
    data = load_4dstem(path, calibration)
    data.validate()
    assert data.frame_shape == (32, 32) and data.num_patterns == 12
    # binning keeps the counts of the cropped region
    np.testing.assert_allclose(data.patterns[5].sum(), frames[1, 1, 32:96, 32:96].sum(),
                               rtol=1e-5)
    # reciprocal pixel 2e9 1/m after binning: reconstruction pixel 1 / (32 * 2e9)
    model = Multislice.from_data(data, MultisliceConfig(convergence_mrad=20.0))
    assert model.pixel_size_m[0] == pytest.approx(1 / (32 * 2e9))
    # the scan turned by 90 degrees: the fast (x) axis runs along +y
    assert np.allclose(data.positions_m[1] - data.positions_m[0], [1e-10, 0.0])


def test_stem_reader_errors_name_file_and_key(tmp_path):
    path = tmp_path / "scan.raw"
    write_empad(path, np.zeros((2, 2, 128, 128), np.float32))
    with pytest.raises(DataFormatError, match=r"scan\.raw.*3 x 2 EMPAD frames"):
        load_4dstem(path, STEMCalibration(scan_shape=[3, 2], reciprocal_pixel_per_m=1e9))
    h5 = tmp_path / "scan.h5"
    with h5py.File(h5, "w") as handle:
        handle["frames"] = np.zeros((2, 2, 8, 8), np.float32)
    with pytest.raises(DataFormatError, match=r"scan\.h5: 'data'.*missing"):
        load_4dstem(h5, STEMCalibration(key="data", reciprocal_pixel_per_m=1e9))
    with pytest.raises(DataFormatError, match="reciprocal_pixel_per_m"):
        load_4dstem(h5, STEMCalibration())
    npy = tmp_path / "scan.npy"
    np.save(npy, np.ones((4, 8, 8), np.float32))
    data = load_4dstem(npy, STEMCalibration(scan_shape=[2, 2], reciprocal_pixel_per_m=1e9))
    assert data.num_patterns == 4


# --- simulation and reconstruction --------------------------------------------------------
def tiny_stem(**changes):
    settings = STEMSimulation(frame_px=32, scan_shape=[8, 8], scan_step_m=1.5e-10,
                              defocus_m=8e-9, pixel_size_m=0.3e-10)
    return simulate_stem(dataclasses.replace(settings, **changes))


def test_simulation_dose_and_truth():
    data = tiny_stem()
    electrons = 1e5 * 1.5**2
    assert float(np.mean(data.patterns.sum((1, 2)))) == pytest.approx(electrons, rel=0.01)
    assert data.truth.object.shape[0] == 1
    phase = np.angle(data.truth.object)
    assert 0.5 < phase.max() < 1.5  # a Mo / S2 column at 80 kV: order of a radian
    two = tiny_stem(structure="mos2_gap", noise="none")
    assert two.truth.object.shape[0] == 2


def test_reconstruction_improves_error_against_truth():
    # 12 epochs gave 0.597-0.606 of the start's error, across float rounding orders of the
    # same arithmetic; the error falls steadily to 0.48x at epoch 20
    data = tiny_stem()
    config = {"model": {"padding_px": 4}, "recon": {"epochs": 16},
              "log": {"progress": False, "tensorboard": False, "metrics": False}}
    evaluate = truth_evaluator(data.truth)
    before = evaluate(Multislice.from_data(data, MultisliceConfig(padding_px=4)))
    after = evaluate(reconstruct(data, "multislice", config).model)
    assert after["nrmse"] < 0.6 * before["nrmse"]
    assert after["phase_rmse"] < 0.6 * before["phase_rmse"]


def test_cli_import_stem_converts_empad_frames_to_a_calibrated_cxi_file(tmp_path, capsys):
    """`diffrecon import-stem` on EMPAD .raw frames: the CXI file holds the frames in scan
    order, the relativistic wavelength of the voltage and the scan-grid positions; `inspect`
    then reads it, and a missing scan shape is a one-line error naming the key."""
    import diffrecon
    from diffrecon.cli import main

    rng = np.random.default_rng(0)
    frames = rng.poisson(50.0, size=(3, 4, 128, 128)).astype(np.float32)
    raw = tmp_path / "scan.raw"
    write_empad(raw, frames)
    out = tmp_path / "scan.cxi"
    main(["import-stem", str(raw), "--out", str(out), "--set", "voltage_v=300e3",
          "--set", "scan_shape=[3, 4]", "--set", "scan_step_m=[2e-10, 2e-10]",
          "--set", "convergence_mrad=20.0", "--set", "convergence_radius_px=16.0"])
    data = diffrecon.load(out)
    assert data.patterns.shape == (12, 128, 128)
    np.testing.assert_allclose(np.asarray(data.patterns[5]), frames[1, 1])
    assert data.wavelength_m == pytest.approx(1.9687e-12, rel=1e-4)  # 300 kV
    steps = np.diff(np.unique(np.round(np.asarray(data.positions_m)[:, 1] / 1e-12)))
    np.testing.assert_allclose(steps * 1e-12, 2e-10, rtol=1e-6)
    capsys.readouterr()
    main(["inspect", str(out), "--modality", "multislice"])
    assert "12" in capsys.readouterr().out
    code = main(["import-stem", str(raw), "--out", str(tmp_path / "bad.cxi")])
    error = capsys.readouterr().err
    assert code != 0 and "scan.raw" in error and "scan_shape" in error
    assert len(error.strip().splitlines()) <= 2  # no traceback
