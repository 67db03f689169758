"""The ptycho forward model: shapes, energy, gradients, PIE equivalence, near field, trials on
a cropped object."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from diffrecon.algorithms.base import AlgorithmConfig, Batch
from diffrecon.algorithms.pie import EPIE
from diffrecon.algorithms.recipe import make_algorithm
from diffrecon.data.container import DiffractionData
from diffrecon.data.dataset import PatternBatches
from diffrecon.data.simulate import simulate_ptycho
from diffrecon.losses.likelihoods import Amplitude
from diffrecon.models.base import models
from diffrecon.models.ptycho import Ptycho, PtychoConfig
from diffrecon.physics.propagators import AngularSpectrum, FarField
from diffrecon.recon.initialize import central_patterns
from diffrecon.recon.objective import LossConfig, Objective
from diffrecon.recon.optim import ParameterPlan
from diffrecon.recon.reconstructor import Reconstructor
from diffrecon.runconfig import build_config
from tests.conftest import small_ptycho_settings


def tiny_data(frame=8, positions=((0.0, 0.0), (2.5e-8, 1.2e-8), (-1.1e-8, 3.3e-8))):
    n = len(positions)
    rng = np.random.default_rng(0)
    return DiffractionData(
        patterns=rng.uniform(0, 10, (n, frame, frame)).astype(np.float32),
        wavelength_m=1e-10, distance_m=1.0, detector_pixel_size_m=(1e-3, 1e-3),
        positions_m=np.asarray(positions),
    )


def tiny_model(dtype=torch.complex64, config=None, data=None):
    data = data or tiny_data()
    model = Ptycho.from_data(data, config or PtychoConfig(probe_modes=2, padding_px=2))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.object.copy_(torch.randn(model.object.shape, generator=g, dtype=torch.complex64))
    if dtype == torch.complex128:
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.to(torch.complex128 if tensor.is_complex() else
                                         torch.float64 if tensor.is_floating_point() else None)
    return model


def test_registered():
    assert models.get("ptycho") is Ptycho


def test_shapes_dtypes_and_positivity():
    model = tiny_model()
    index = torch.tensor([0, 2])
    intensity = model(index)
    assert intensity.shape == (2, 8, 8) and intensity.dtype == torch.float32
    assert torch.all(intensity >= 0)
    assert model.exit_wave(index).shape == (2, 2, 8, 8)


@pytest.mark.parametrize("geometry", ["far_field", "near_field"])
def test_energy_conservation(geometry):
    config = PtychoConfig(geometry=geometry, padding_px=2)
    data = dataclasses.replace(tiny_data(), distance_m=1e-7, detector_pixel_size_m=(1e-8, 1e-8))
    model = tiny_model(config=config, data=data)
    assert isinstance(model.propagator, FarField if geometry == "far_field" else AngularSpectrum)
    index = torch.arange(3)
    exit_energy = model.exit_wave(index).abs().square().sum(dim=(1, 2, 3))
    assert torch.allclose(model(index).sum(dim=(1, 2)), exit_energy, rtol=1e-4)


def test_near_field_fresnel_scaling_geometry():
    data = tiny_data()
    model = Ptycho.from_data(data, PtychoConfig(geometry="near_field", focus_to_sample_m=0.01,
                                                padding_px=2))
    magnification = (0.01 + 1.0) / 0.01
    assert model.pixel_size_m[0] == pytest.approx(1e-3 / magnification)
    assert model.propagator.distance_m == pytest.approx(1.0 / magnification)


@pytest.mark.parametrize("name", ["object", "probe", "positions", "flux", "background"])
def test_gradcheck(name):
    """Autograd gradients of every named parameter against finite differences (complex128)."""
    check_gradient(tiny_model(torch.complex128), name)


@pytest.mark.parametrize("subpixel", [True, False])
@pytest.mark.parametrize("name", ["object", "probe"])
def test_gradcheck_single_mode(name, subpixel):
    """The single-mode fast paths (no mode sums) of the overlap and intensity backwards."""
    config = PtychoConfig(probe_modes=1, padding_px=2, subpixel=subpixel)
    check_gradient(tiny_model(torch.complex128, config=config), name)


def check_gradient(model, name):
    full_names = {"flux": "measurement.flux", "background": "measurement.background"}
    key = full_names.get(name, name)
    value = dict(model.named_parameters())[key].detach().clone()
    if name == "background":
        value.fill_(0.5)
    if name == "positions":
        value += 0.37  # keep away from integer corners, where floor() jumps
    index = torch.tensor([1, 2])
    generator = torch.Generator().manual_seed(3)
    measured = torch.rand(2, 8, 8, dtype=torch.float64, generator=generator)

    def loss(parameter):
        predicted = torch.func.functional_call(model, {key: parameter}, (index,))
        return ((predicted - measured) ** 2).sum()

    assert torch.autograd.gradcheck(loss, (value.requires_grad_(True),), eps=1e-6, atol=1e-5,
                                    rtol=1e-3)


def test_state_dict_round_trip():
    model = tiny_model()
    other = tiny_model()
    with torch.no_grad():
        other.object.mul_(2)
    other.load_state_dict(model.state_dict())
    assert torch.equal(other.object, model.object)
    assert torch.equal(other(torch.arange(3)), model(torch.arange(3)))


def test_epie_equals_hand_written_update():
    """Batch of one: our ePIE (a preconditioned gradient step) equals Maiden & Rodenburg 2009:
    O += alpha conj(P) (psi' - psi) / max|P|^2 and P += beta conj(O) (psi' - psi) / max|O|^2."""
    data = tiny_data(positions=((0.0, 0.0), (3e-8, 2e-8)))
    model = tiny_model(config=PtychoConfig(padding_px=2, subpixel=False), data=data)
    with torch.no_grad():
        model.positions.round_()
    index = torch.tensor([1])
    measured = torch.fft.ifftshift(torch.as_tensor(data.patterns[1:2]), dim=(-2, -1))  # native
    valid = torch.ones(8, 8, dtype=torch.bool)

    # hand-written ePIE from the same starting point
    corner = model.positions[1].detach().long()
    sl = (slice(None), slice(corner[0], corner[0] + 8), slice(corner[1], corner[1] + 8))
    obj, probe = model.object.detach().clone(), model.probe.detach()[0].clone()
    patch = obj[sl][0]
    psi = patch * probe
    field = torch.fft.fft2(psi, norm="ortho")
    corrected = torch.sqrt(measured[0]) * torch.exp(1j * field.angle())
    diff = torch.fft.ifft2(corrected, norm="ortho") - psi
    alpha, beta = 0.7, 0.9
    expected_obj = obj.clone()
    expected_obj[sl] += alpha * probe.conj() * diff / probe.abs().square().max()
    expected_probe = probe + beta * patch.conj() * diff / patch.abs().square().max()

    with torch.no_grad():
        model.probe.data = model.probe.data[:1].clone()
    algorithm = EPIE(AlgorithmConfig(name="epie", alpha=alpha, beta=beta))
    specs = algorithm.adjust_specs(model.param_specs())
    specs["probe"] = dataclasses.replace(specs["probe"], start=0)
    plan = ParameterPlan(model.named_fields(), specs)
    objective = Objective(LossConfig(likelihood="amplitude"), 2)
    objective.likelihood = Amplitude(eps=0.0)
    prepared = objective.likelihood.prepare(measured)
    algorithm.step(model, Batch(index, prepared, valid), objective, plan, ["object", "probe"], {})
    assert torch.allclose(model.object.detach(), expected_obj, atol=1e-4)
    assert torch.allclose(model.probe.detach()[0], expected_probe, atol=1e-3)


def test_restricted_model_crops_the_object_and_restores_it():
    """Trials on the centre of a scan run on the object cropped to its windows: the exit waves
    of those patterns are the full model's, the losses of a trial equal those on the full
    object, and on exit the full object and positions are back, untouched."""
    settings = dataclasses.replace(small_ptycho_settings(), scan_points=300, frame_px=16)
    data = simulate_ptycho(settings)
    config = build_config({"recon": {"epochs": 3}}, modality="ptycho")

    def trial(model: Ptycho) -> list[float]:
        objective = Objective(config.loss, data.num_patterns)
        batches = PatternBatches(data, model.propagator, prepare=objective.likelihood.prepare_)
        algorithm, _ = make_algorithm(config.algorithm, config.recon.epochs)
        specs = algorithm.adjust_specs(config.param_specs(model.param_specs()))
        run = Reconstructor(model, batches, objective, algorithm,
                            ParameterPlan(model.named_fields(), specs), config.recon)
        run.restrict(patterns)
        return run.run()["loss/total"]

    full = Ptycho.from_data(data, config.model)
    with torch.no_grad():
        full.object.mul_(torch.polar(torch.ones(()), torch.tensor(0.3)))
    patterns = central_patterns(full)
    assert patterns is not None and len(patterns) == 128
    cropped = Ptycho.from_data(data, config.model)
    cropped.load_state_dict(full.state_dict())
    whole_object, whole_positions = cropped.object, cropped.positions
    kept = (whole_object.detach().clone(), whole_positions.detach().clone())
    expected_waves = full.exit_wave(patterns).detach()

    on_full = trial(full)
    with cropped.restricted(patterns):
        assert cropped.object.numel() < 0.5 * whole_object.numel()
        torch.testing.assert_close(cropped.exit_wave(patterns).detach(), expected_waves,
                                   rtol=0, atol=0)
        on_crop = trial(cropped)
        torch.testing.assert_close(cropped.probe, full.probe, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(on_crop, on_full, rtol=1e-5, atol=0)
    assert cropped.object is whole_object and cropped.positions is whole_positions
    assert torch.equal(whole_object.detach(), kept[0])
    assert torch.equal(whole_positions.detach(), kept[1])
