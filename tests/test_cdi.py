"""CDI: projections, classical algorithms, the forward model, and small end-to-end runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffrecon
from diffrecon import api
from diffrecon.algorithms.base import AlgorithmConfig, Batch, algorithms
from diffrecon.algorithms.projections import fourier_projection, support_projection
from diffrecon.algorithms.recipe import Recipe, make_algorithm, parse_recipe
from diffrecon.data import cxi
from diffrecon.data.dataset import PatternBatches
from diffrecon.data.simulate import CDISimulation, cdi_scene, simulate_cdi
from diffrecon.errors import ConfigError
from diffrecon.losses.likelihoods import make_likelihood
from diffrecon.losses.metrics import nrmse
from diffrecon.models.cdi import CDI, CDIConfig
from diffrecon.physics.filters import cross_term_support
from diffrecon.runconfig import build_config

QUIET = ["log.progress=false", "log.tensorboard=false"]
SMALL = dict(array_px=64, object_px=16, beamstop_px=0, noise="none", photons=1e6)
VARIANTS = ["plane", "fresnel", "holographic"]


def small_settings(**changes: object) -> CDISimulation:
    small = dict(SMALL)
    if changes.get("variant") == "holographic":
        small.update(reference_offset_px=16.0, reference_radius_px=2.0)
    small.update(changes)
    return CDISimulation(**small)  # type: ignore[arg-type]


def true_model(settings: CDISimulation, dtype=torch.complex64) -> tuple[CDI, Batch, object]:
    """A CDI model at the true object and support, its measurement batch and likelihood."""
    scene = cdi_scene(settings)
    data = simulate_cdi(settings)

    def as_tensor(array: np.ndarray | None) -> torch.Tensor | None:
        return None if array is None else torch.as_tensor(array).to(dtype)

    model = CDI(as_tensor(scene.object), torch.as_tensor(scene.support), (1.0, 1.0), CDIConfig(),
                illumination=as_tensor(scene.illumination), reference=as_tensor(scene.reference))
    likelihood = make_likelihood("amplitude")
    batches = PatternBatches(data, model.propagator, prepare=likelihood.prepare)
    index = torch.zeros(1, dtype=torch.long)
    return model, Batch(index, batches(index), batches.valid), likelihood


@pytest.mark.parametrize("variant", VARIANTS)
def test_projections_are_idempotent(variant):
    model, batch, likelihood = true_model(small_settings(variant=variant, beamstop_px=5))
    if model.illumination is not None:  # nowhere dark: there the object step is damped on purpose
        model.illumination += 0.01 * model.illumination.abs().max()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(model.object.shape, dtype=torch.complex64, generator=generator)
    once, _ = fourier_projection(model, x, batch.measured, batch.valid, likelihood)
    twice, _ = fourier_projection(model, once, batch.measured, batch.valid, likelihood)
    with torch.no_grad():  # P_M acts on exit waves; where the beam is dark the object is free
        once, twice = model.transmission(once), model.transmission(twice)
    assert torch.linalg.norm(twice - once) < 1e-4 * torch.linalg.norm(once)
    for constraint in ("none", "real", "positive"):
        once = support_projection(x, model.support, constraint)
        assert torch.equal(support_projection(once, model.support, constraint), once)


@pytest.mark.parametrize("name", ["er", "hio", "dm", "raar", "oss"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_true_solution_is_a_fixed_point(name, variant):
    model, batch, likelihood = true_model(small_settings(variant=variant))
    truth = model.object.detach().clone()
    algorithm = Recipe(AlgorithmConfig(name=name), [(name, 10)])
    objective = type("Objective", (), {"likelihood": likelihood})()
    state = algorithm.init_state(model)
    for _ in range(3):
        algorithm.step(model, batch, objective, None, [], state)
    scale = torch.linalg.norm(truth)
    assert torch.linalg.norm(model.object.detach() - truth) < 1e-4 * scale
    # the iterate, compared as exit waves: 1/illumination amplifies rounding where it is dark
    with torch.no_grad():
        psi, iterate = model.transmission(truth), model.transmission(state["iterate"])
    assert torch.linalg.norm(iterate - psi) < 1e-4 * torch.linalg.norm(psi)


def run_steps(model: CDI, batch: Batch, name: str, steps: int, **config: float
              ) -> tuple[list[float], list[torch.Tensor]]:
    algorithm = Recipe(AlgorithmConfig(name=name, **config), [(name, steps)])
    objective = type("Objective", (), {"likelihood": make_likelihood("amplitude")})()
    state = algorithm.init_state(model)
    errors, iterates = [], []
    for _ in range(steps):
        errors.append(algorithm.step(model, batch, objective, None, [], state)["fourier_error"])
        iterates.append(state["iterate"].clone())
    return errors, iterates


def random_start(model: CDI, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(model.object.shape, dtype=torch.complex64, generator=generator)
    with torch.no_grad():
        model.object.copy_(torch.where(model.support, noise, 0.0) * model.object.abs().max())


def test_error_reduction_decreases_fourier_error_monotonically():
    model, batch, _ = true_model(small_settings(beamstop_px=5))
    random_start(model)
    errors, _ = run_steps(model, batch, "er", 60)
    assert all(b <= a * (1 + 1e-5) for a, b in zip(errors, errors[1:], strict=False))
    assert errors[-1] < 0.5 * errors[0]


def test_hio_with_zero_feedback_equals_error_reduction():
    model, batch, _ = true_model(small_settings())
    random_start(model)
    start = model.object.detach().clone()
    _, er = run_steps(model, batch, "er", 15)
    with torch.no_grad():
        model.object.copy_(start)
    _, hio = run_steps(model, batch, "hio", 15, feedback=0.0)
    for a, b in zip(er, hio, strict=True):
        assert torch.allclose(a, b, atol=1e-5 * float(a.abs().max()))


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_model_conformance(variant):
    model, _, _ = true_model(small_settings(variant=variant))
    index = torch.zeros(1, dtype=torch.long)
    trace = model.trace(index)
    assert trace.exit_wave.shape == (1, 1, 64, 64)
    assert trace.intensity.shape == (1, 64, 64) and trace.intensity.dtype == torch.float32
    assert float(trace.intensity.detach().min()) >= 0
    energy = float(trace.exit_wave.detach().abs().square().sum())
    assert float(trace.intensity.detach().sum()) == pytest.approx(energy, rel=1e-4)
    results = model.results()
    assert {"object", "support", "pattern_predicted", "pixel_size_m"} <= set(results)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck_complex128(variant):
    settings = small_settings(variant=variant, array_px=16, object_px=6, reference_offset_px=6.0,
                              reference_radius_px=1.0, photons=100.0)  # O(1) values: FD-exact
    model, _, _ = true_model(settings, dtype=torch.complex128)
    model.measurement.double()
    index = torch.zeros(1, dtype=torch.long)
    for name in ("object", "reference"):
        field = model.named_fields().get(name)
        if field is None:
            continue
        value = field.detach().clone().requires_grad_(True)

        weights = torch.rand(16, 16, dtype=torch.float64,
                             generator=torch.Generator().manual_seed(0))

        def intensity(v: torch.Tensor, name: str = name, weights=weights) -> torch.Tensor:
            # a random projection of the intensities: one backward pass instead of 256
            return (torch.func.functional_call(model, {name: v}, (index,)) * weights).sum()

        assert torch.autograd.gradcheck(intensity, (value,), eps=1e-6, atol=1e-5)


def test_small_2d_reconstruction_reaches_truth():
    data = simulate_cdi(small_settings())
    result = diffrecon.reconstruct(data, "cdi", overrides=[
        'algorithm.name="hio:300,er:50"', "model.shrinkwrap_every=10", *QUIET])
    assert result.history["loss/total"][-1] < 1e-3
    assert nrmse(result.results["object"], data.truth.object, allow_twin=True) < 0.1
    assert result.metrics["nrmse"] < 0.1  # the generic evaluator removes the twin too


def test_3d_volume_runs_and_improves():
    data = simulate_cdi(small_settings(dimensions=3, array_px=24, object_px=8))
    assert data.patterns.shape == (24, 24, 24)
    result = diffrecon.reconstruct(data, "cdi", overrides=[
        'algorithm.name="hio:150,er:50"', "model.shrinkwrap_every=10", "log.metric_every=50",
        *QUIET])
    assert result.results["object"].shape == (24, 24, 24)
    errors = [v for v in result.history["metric/nrmse"] if np.isfinite(v)]
    assert errors[-1] < 0.5 and errors[-1] < errors[0]


def variant_run(variant: str, tmp_path, iterations: int = 200) -> list[float]:
    """NRMSE every 10 HIO iterations (NaN between) of the small scene's ``variant``."""
    settings = small_settings(variant=variant)
    overrides = [f'algorithm.name="hio:{iterations}"', "log.metric_every=10", *QUIET]
    if variant == "fresnel":
        overrides += ["model.transmission_offset=1.0"]
    if variant == "holographic":
        np.save(tmp_path / "reference.npy", cdi_scene(settings).reference)
        overrides += [f'model.reference_file="{tmp_path / "reference.npy"}"']
    result = diffrecon.reconstruct(simulate_cdi(settings), "cdi", overrides=overrides)
    return list(result.history["metric/nrmse"])


def first_below(history: list[float], threshold: float) -> int:
    return next((k + 1 for k, v in enumerate(history) if np.isfinite(v) and v <= threshold),
                len(history) + 1)


def test_fresnel_and_holographic_converge_in_fewer_iterations_than_plane_wave(tmp_path):
    """The reason the variants exist: a known reference (the beam around a thin sample, or
    a pinhole) makes phasing nearly linear, so fewer iterations reach the same error."""
    runs = {variant: variant_run(variant, tmp_path) for variant in VARIANTS}
    needed = {variant: first_below(history, 0.1) for variant, history in runs.items()}
    assert needed["fresnel"] < needed["plane"] and needed["holographic"] < needed["plane"]
    assert needed["plane"] <= 200  # the comparison is against a converging plane-wave run
    assert [v for v in runs["fresnel"] if np.isfinite(v)][-1] < 0.1
    assert [v for v in runs["holographic"] if np.isfinite(v)][-1] < 0.01


def test_fresnel_support_from_the_hologram_covers_the_sample():
    settings = small_settings(variant="fresnel")
    scene, data = cdi_scene(settings), simulate_cdi(settings)
    model = CDI.from_data(data, CDIConfig(transmission_offset=1.0))
    support = model.support.numpy()
    footprint = np.abs(scene.illumination) > 0.5 * np.abs(scene.illumination).max()
    assert (support & scene.support).sum() >= 0.98 * scene.support.sum()
    assert support.sum() < 0.7 * footprint.sum()  # tighter than the beam it starts from
    assert not model.object.detach().any()  # the start is the bare beam


def test_recipe_parsing_and_epochs():
    assert parse_recipe("hio:600,er:100", 0) == [("hio", 600), ("er", 100)]
    assert parse_recipe("hio:10,er", 50) == [("hio", 10), ("er", 40)]
    algorithm, epochs = make_algorithm(AlgorithmConfig(name="hio:6,gradient:4"), 100)
    assert epochs == 10 and isinstance(algorithm, Recipe)
    assert make_algorithm(AlgorithmConfig(name="oss"), 30)[1] == 30
    assert isinstance(make_algorithm(AlgorithmConfig(name="gradient"), 7)[0],
                      algorithms.get("gradient"))
    with pytest.raises(ConfigError, match="did you mean"):
        parse_recipe("hoi:10", 0)
    with pytest.raises(ConfigError):
        parse_recipe("er,hio:10", 0)


def test_default_recipe_runs_from_a_file_with_multistart(tmp_path):
    data = simulate_cdi(small_settings(beamstop_px=3, noise="poisson", photons=1e7))
    cxi.save(data, tmp_path / "pattern.cxi")
    assert "oversampling" in api.inspect(tmp_path / "pattern.cxi", "cdi")
    result = diffrecon.reconstruct(
        tmp_path / "pattern.cxi", "cdi", out=tmp_path / "run",
        overrides=['algorithm.name="hio:200,er:30,gradient:5"', "recon.starts=3",
                   "recon.average_best=2", *QUIET])
    assert result.results["start_r_factor"].shape == (3,)
    assert np.isfinite(result.results["prtf"][3:]).all()  # inner rings: beamstop
    assert result.metrics["nrmse"] < 0.3
    assert (tmp_path / "run" / "reconstruction.h5").exists()
    assert (tmp_path / "run" / "report.png").exists()


def test_default_config_is_a_recipe():
    config = build_config(modality="cdi")
    assert ":" in config.algorithm.name and config.loss.likelihood == "poisson"
    assert config.model.constraint == "none"
    assert build_config(modality="ptycho").algorithm.name == "gradient"


def test_bare_arrays_load_as_patterns_or_volumes(tmp_path):
    volume = simulate_cdi(small_settings(dimensions=3, array_px=16, object_px=6)).patterns
    volume = volume.copy()
    volume[3, 4, 5], volume[0, 0, 0] = -1.0, np.nan  # a gap value and a dead pixel
    np.save(tmp_path / "vol.npy", volume)
    data = api.load(tmp_path / "vol.npy")
    assert data.patterns.shape == (16, 16, 16) and data.valid.shape == (16, 16, 16)
    assert not data.valid[3, 4, 5] and not data.valid[0, 0, 0] and data.valid.sum() == 16**3 - 2
    assert data.patterns[3, 4, 5] == 0 and "geometry_note" in data.metadata
    data.validate(needs_positions=False)
    np.savez(tmp_path / "pattern.npz", data=volume[8], mask=np.zeros((16, 16)), energy_ev=9000.0,
             distance_m=2.0, pixel_size_m=[55e-6, 60e-6])
    pattern = api.load(tmp_path / "pattern.npz")
    assert pattern.patterns.shape == (1, 16, 16) and pattern.distance_m == 2.0
    assert pattern.detector_pixel_size_m == (55e-6, 60e-6)
    assert pattern.energy_ev == pytest.approx(9000.0)
    assert "geometry_note" not in pattern.metadata


@pytest.mark.parametrize(("content", "message"), [
    ({"counts": np.ones((8, 8))}, "'data': expected the intensity array"),
    ({"data": np.ones((8, 8)), "mask": np.ones((4, 4))}, "'mask': expected shape"),
    ({"data": np.ones((8, 8)), "distance_m": -1.0}, "'distance_m': expected a positive number"),
    ({"data": np.ones((8, 8), complex)}, "expected measured intensities"),
])
def test_bad_array_files_name_the_file_and_key(tmp_path, content, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **content)
    with pytest.raises(diffrecon.errors.DataFormatError, match=message) as error:
        api.load(path)
    assert str(path) in str(error.value)


def test_holographic_support_from_the_cross_terms_covers_the_object():
    settings = small_settings(variant="holographic")
    scene, data = cdi_scene(settings), simulate_cdi(settings)
    intensity = torch.as_tensor(data.patterns[0])
    support = cross_term_support(intensity, torch.as_tensor(scene.reference)).numpy()
    assert (support & scene.support).sum() >= 0.98 * scene.support.sum()
    assert support.sum() < 4 * scene.support.sum()  # loose, not the whole array


def test_reference_file_errors_name_the_file(tmp_path):
    data = simulate_cdi(small_settings(variant="holographic"))
    np.save(tmp_path / "small.npy", np.zeros((8, 8), np.complex64))
    with pytest.raises(ConfigError, match="small.npy.*shape"):
        CDI.from_data(data, CDIConfig(reference_file=str(tmp_path / "small.npy")))
    with pytest.raises(ConfigError, match="missing.npy"):
        CDI.from_data(data, CDIConfig(reference_file=str(tmp_path / "missing.npy")))
