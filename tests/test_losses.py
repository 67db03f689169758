"""Likelihoods and regularizers: minima, Poisson log-probability, gradients, noise, masks."""

from __future__ import annotations

import math

import pytest
import torch

from diffrecon.losses.likelihoods import (
    Amplitude,
    Gaussian,
    Likelihood,
    Poisson,
    likelihoods,
    magnitude_projection,
    make_likelihood,
    zero_invalid_,
)
from diffrecon.losses.regularizers import (
    amplitude_above_one,
    regularizers,
    sparsity,
    total_variation,
)
from diffrecon.models.measurement import Measurement, _DetectorNLL, mode_intensity

NAMES = ["amplitude", "gaussian", "poisson"]


def counts(shape: tuple[int, ...] = (3, 8, 8), seed: int = 0, scale: float = 50.0) -> torch.Tensor:
    """Integer-valued float64 counts, some of them zero."""
    generator = torch.Generator().manual_seed(seed)
    rates = scale * torch.rand(shape, generator=generator, dtype=torch.float64)
    values = torch.poisson(rates, generator=generator)
    values[0, 0, :3] = 0.0
    return values


def test_registry_holds_the_three_likelihoods():
    assert likelihoods.names() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_prepare_in_place_matches_prepare(name):
    """``prepare_`` (used when the data are loaded) overwrites its argument with ``prepare``'s
    result; ``prepare`` leaves the counts alone."""
    likelihood = likelihoods.get(name)()
    measured = counts()
    measured[1, 2, 3] = -1.0  # clamped to zero by the amplitude likelihood
    kept = measured.clone()
    expected = likelihood.prepare(measured)
    assert torch.equal(measured, kept)
    buffer = measured.clone()
    assert likelihood.prepare_(buffer) is buffer
    torch.testing.assert_close(buffer, expected, rtol=0, atol=0)


class _ReturnsNew(Likelihood):
    def prepare(self, counts: torch.Tensor) -> torch.Tensor:
        return 2 * counts


def test_prepare_in_place_default_copies_a_new_result():
    buffer = counts()
    expected = 2 * buffer
    assert _ReturnsNew().prepare_(buffer) is buffer
    torch.testing.assert_close(buffer, expected, rtol=0, atol=0)


# --- nll: minimum at equality ---------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_nll_is_zero_at_equality_and_positive_elsewhere(name):
    likelihood: Likelihood = likelihoods.get(name)()
    measured = counts()
    prepared = likelihood.prepare(measured)
    at_truth = likelihood.nll(measured.clone(), prepared)
    # zero up to the eps that keeps logs and square roots finite (<= 1e-6 per pixel)
    assert abs(float(at_truth)) < 1e-6 * measured.numel()
    for factor in (0.5, 0.9, 1.1, 2.0):
        predicted = measured * factor + (factor - 1) ** 2  # also moves the zero-count pixels
        assert float(likelihood.nll(predicted, prepared)) > 1e-3
    # elementwise too: no pixel can do better than equality
    perturbed = measured + 3.0 * torch.rand(measured.shape, dtype=torch.float64)
    assert bool((likelihood.elementwise(perturbed, prepared) >= -1e-6).all())


@pytest.mark.parametrize("name", NAMES)
def test_nll_minimum_along_a_scale(name):
    """Scanning the prediction's scale, the nll is smallest at predicted == measured."""
    likelihood = likelihoods.get(name)()
    measured = counts(scale=80.0)
    prepared = likelihood.prepare(measured)
    factors = torch.linspace(0.8, 1.2, 41, dtype=torch.float64)
    values = torch.stack([likelihood.nll(measured * f, prepared) for f in factors])
    assert float(factors[int(values.argmin())]) == pytest.approx(1.0, abs=1e-9)


# --- Poisson nll is -log pmf up to a term in the data alone --------------------------------


@pytest.mark.parametrize(("eps", "tolerance"), [(0.0, 1e-9), (1e-6, 1e-5)])
def test_poisson_nll_differences_equal_log_probability_differences(eps, tolerance):
    likelihood = Poisson(eps=eps)
    measured = counts(scale=30.0)
    generator = torch.Generator().manual_seed(1)
    first = 0.5 + 40 * torch.rand(measured.shape, generator=generator, dtype=torch.float64)
    second = 0.5 + 40 * torch.rand(measured.shape, generator=generator, dtype=torch.float64)

    def minus_log_pmf(rate: torch.Tensor) -> torch.Tensor:
        return -torch.distributions.Poisson(rate).log_prob(measured).sum()

    ours = likelihood.nll(first, measured) - likelihood.nll(second, measured)
    reference = minus_log_pmf(first) - minus_log_pmf(second)
    assert float(ours) == pytest.approx(float(reference), rel=tolerance)
    # and the offset nll - (-log pmf) depends on the data only
    offset_first = likelihood.nll(first, measured) - minus_log_pmf(first)
    offset_second = likelihood.nll(second, measured) - minus_log_pmf(second)
    assert float(offset_first) == pytest.approx(float(offset_second), rel=tolerance)


# --- closed-form gradients equal autograd ---------------------------------------------------


def test_poisson_gradient_is_one_minus_counts_over_intensity():
    likelihood = Poisson(eps=0.0)
    measured = counts()
    predicted = (measured + 1.0 + torch.rand(measured.shape, dtype=torch.float64))
    predicted.requires_grad_(True)
    likelihood.nll(predicted, measured).backward()
    expected = 1 - measured / predicted.detach()
    torch.testing.assert_close(predicted.grad, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sigma", [1.0, 2.5])
def test_gaussian_gradient_is_residual_over_variance(sigma):
    likelihood = Gaussian(sigma=sigma)
    measured = counts()
    predicted = (measured + 4 * torch.randn(measured.shape, dtype=torch.float64))
    predicted.requires_grad_(True)
    likelihood.nll(predicted, measured).backward()
    expected = (predicted.detach() - measured) / sigma**2
    torch.testing.assert_close(predicted.grad, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("modes", [1, 2])
def test_amplitude_gradient_is_twice_the_distance_to_the_magnitude_projection(modes):
    """For a complex Psi (B, M, H, W) with I = sum_m |Psi_m|^2, torch's gradient (the
    conjugate Wirtinger derivative times two) of sum (sqrt(I) - a)^2 is 2 (Psi - P_M Psi)."""
    likelihood = Amplitude()
    generator = torch.Generator().manual_seed(3)
    shape = (2, modes, 6, 6)
    psi = torch.complex(
        torch.randn(shape, generator=generator, dtype=torch.float64),
        torch.randn(shape, generator=generator, dtype=torch.float64),
    ).requires_grad_(True)
    measured = counts((2, 6, 6))
    prepared = likelihood.prepare(measured)
    intensity = psi.real.square().sum(1) + psi.imag.square().sum(1)
    likelihood.nll(intensity, prepared).backward()
    with torch.no_grad():
        expected = 2 * (psi - magnitude_projection(psi, prepared))
        projected = likelihood.project(psi, prepared)
    torch.testing.assert_close(psi.grad, expected, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(projected, expected.neg() / 2 + psi.detach(), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_vanishes_at_the_data(name):
    likelihood = likelihoods.get(name)()
    measured = counts() + 1.0  # strictly positive: the amplitude's sqrt is smooth there
    predicted = measured.clone().requires_grad_(True)
    likelihood.nll(predicted, likelihood.prepare(measured)).backward()
    assert float(predicted.grad.abs().max()) < 1e-5


# --- sample: mean and variance --------------------------------------------------------------

SAMPLES = 200_000


def sampled(likelihood: Likelihood, value: float) -> torch.Tensor:
    expected = torch.full((SAMPLES,), value, dtype=torch.float64)
    return likelihood.sample(expected, torch.Generator().manual_seed(7))


@pytest.mark.parametrize("rate", [3.0, 40.0])
def test_poisson_sample_mean_equals_variance(rate):
    values = sampled(Poisson(), rate)
    se = math.sqrt(rate / SAMPLES)
    assert float(values.mean()) == pytest.approx(rate, abs=5 * se)
    assert float(values.var()) == pytest.approx(rate, rel=0.02)
    assert torch.equal(values, values.round())  # counts are integers
    again = sampled(Poisson(), rate)
    assert torch.equal(values, again)  # seeded: reproducible


@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_gaussian_sample_has_sigma(sigma):
    values = sampled(Gaussian(sigma=sigma), 200.0)  # far from the clamp at zero
    assert float(values.mean()) == pytest.approx(200.0, abs=5 * sigma / math.sqrt(SAMPLES))
    assert float(values.std()) == pytest.approx(sigma, rel=0.01)


@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_amplitude_sample_has_sigma_in_the_sqrt_domain(sigma):
    values = sampled(Amplitude(sigma=sigma), 400.0)  # amplitude 20, far from zero
    amplitudes = values.sqrt()
    assert float(amplitudes.mean()) == pytest.approx(20.0, abs=5 * sigma / math.sqrt(SAMPLES))
    assert float(amplitudes.std()) == pytest.approx(sigma, rel=0.01)
    assert bool((values >= 0).all())


@pytest.mark.parametrize("name", NAMES)
def test_sample_is_non_negative_and_keeps_shape(name):
    likelihood = likelihoods.get(name)()
    expected = torch.rand((4, 5, 6), dtype=torch.float32) * 2
    values = likelihood.sample(expected, torch.Generator().manual_seed(0))
    assert values.shape == expected.shape and values.dtype == expected.dtype
    assert bool((values >= 0).all())


# --- mask -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_invalid_pixels_do_not_enter_the_nll(name):
    likelihood = likelihoods.get(name)()
    measured = counts()
    prepared = likelihood.prepare(measured)
    valid = torch.ones(measured.shape[-2:], dtype=torch.bool)
    valid[2:5, 3:6] = False
    predicted = measured * 1.3 + 0.5
    wild = predicted.clone()
    wild[..., ~valid] = 1e6  # whatever is predicted there must not matter
    masked = likelihood.nll(predicted, prepared, valid)
    assert float(likelihood.nll(wild, prepared, valid)) == pytest.approx(float(masked), rel=1e-12)
    reference = likelihood.elementwise(predicted, prepared)[..., valid].sum()
    assert float(masked) == pytest.approx(float(reference), rel=1e-12)
    assert float(likelihood.nll(predicted, prepared, valid)) < float(
        likelihood.nll(predicted, prepared))
    nothing = torch.zeros_like(valid)
    assert float(likelihood.nll(wild, prepared, nothing)) == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_masked_pixels_get_no_gradient(name):
    likelihood = likelihoods.get(name)()
    measured = counts()
    valid = torch.ones(measured.shape[-2:], dtype=torch.bool)
    valid[0, :] = False
    predicted = (measured * 1.3 + 0.5).requires_grad_(True)
    likelihood.nll(predicted, likelihood.prepare(measured), valid).backward()
    assert float(predicted.grad[..., 0, :].abs().max()) == 0.0
    assert float(predicted.grad[..., 1:, :].abs().max()) > 0.0


@pytest.mark.parametrize("shape", [(5, 6), (1, 5, 6), (3, 5, 6), (4, 3, 5, 6), (1, 1, 5, 6), ()])
def test_zero_invalid_equals_where_for_every_mask_shape(shape):
    values = torch.randn(4, 3, 5, 6, generator=torch.Generator().manual_seed(1))
    valid = torch.rand(shape, generator=torch.Generator().manual_seed(2)) > 0.4
    expected = torch.where(valid, values, 0.0)
    out = values.clone()
    assert zero_invalid_(out, valid) is out
    assert torch.equal(out, expected)
    # a non-contiguous array takes the generic path
    transposed = values.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not transposed.is_contiguous()
    assert torch.equal(zero_invalid_(transposed, valid), expected)


def test_zero_invalid_overwrites_nan_on_masked_pixels():
    values = torch.ones(2, 3, 4)
    values[:, 1, 2] = float("nan")
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[1, 2] = False
    assert torch.isfinite(zero_invalid_(values, valid)).all()
    assert float(values.sum()) == 2 * 11


# --- project --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_project_is_idempotent_sets_magnitudes_and_keeps_invalid_pixels(name):
    likelihood = likelihoods.get(name)()
    generator = torch.Generator().manual_seed(5)
    shape = (3, 2, 8, 8)
    field = torch.complex(torch.randn(shape, generator=generator, dtype=torch.float64),
                          torch.randn(shape, generator=generator, dtype=torch.float64))
    measured = counts()
    prepared = likelihood.prepare(measured)
    valid = torch.ones(shape[-2:], dtype=torch.bool)
    valid[::3, 1::2] = False
    once = likelihood.project(field, prepared, valid)
    twice = likelihood.project(once, prepared, valid)
    torch.testing.assert_close(twice, once, rtol=1e-6, atol=1e-6)
    # valid pixels: the incoherent sum of the modes carries the measured amplitude ...
    magnitude = once.abs().square().sum(1).sqrt()
    torch.testing.assert_close(magnitude[..., valid], measured.sqrt()[..., valid],
                               rtol=1e-6, atol=1e-5)
    # ... with phases and mode ratios kept; invalid pixels are untouched
    ratio = once[..., valid] / field[..., valid]
    torch.testing.assert_close(ratio.imag, torch.zeros_like(ratio.imag), atol=1e-9, rtol=0)
    assert torch.equal(once[..., ~valid], field[..., ~valid])
    # without a mask every pixel is projected
    full = likelihood.project(field, prepared)
    torch.testing.assert_close(full.abs().square().sum(1).sqrt(), measured.sqrt(),
                               rtol=1e-6, atol=1e-5)


# --- regularizers ---------------------------------------------------------------------------


def test_regularizer_registry():
    assert {"tv", "sparsity", "amplitude_max"} <= set(regularizers.names())
    assert regularizers.get("tv") is total_variation


def test_tv_of_a_constant_is_zero():
    field = torch.full((1, 16, 16), 0.7 + 0.2j, dtype=torch.complex128)
    assert float(total_variation(field, eps=0.0)) == 0.0
    # the default eps adds sqrt(eps) per difference pixel only
    assert float(total_variation(field)) == pytest.approx(15 * 15 * 1e-4, rel=1e-6)


@pytest.mark.parametrize("step", [0.5, 2.0j, 1 - 1j])
def test_tv_of_a_step_is_its_height_times_its_length(step):
    height, width = 12, 10
    field = torch.zeros((1, height, width), dtype=torch.complex128)
    field[..., :, 6:] = step  # a vertical edge
    # differences live on the (H-1, W-1) grid: the edge is H - 1 pixels long
    expected = abs(step) * (height - 1)
    assert float(total_variation(field, eps=0.0)) == pytest.approx(expected, rel=1e-12)
    horizontal = field.transpose(-1, -2)  # (1, width, height): the edge runs along x
    assert float(total_variation(horizontal, eps=0.0)) == pytest.approx(expected, rel=1e-12)


def test_tv_is_isotropic_on_a_diagonal_corner():
    field = torch.zeros((3, 3), dtype=torch.float64)
    field[1, 1] = 1.0  # dy = dx = 1 at [0, 0] -> sqrt(2); dy or dx -1 at [0,1], [1,0]
    assert float(total_variation(field, eps=0.0)) == pytest.approx(math.sqrt(2) + 2, rel=1e-12)


def test_sparsity_is_the_l1_norm():
    field = torch.tensor([[3 + 4j, 0.0, -1.0j]], dtype=torch.complex128)
    assert float(sparsity(field)) == pytest.approx(6.0)


def test_amplitude_max_penalises_only_gain():
    phases = torch.exp(1j * torch.linspace(0, 6, 50, dtype=torch.float64))
    inside = phases * torch.linspace(0, 1, 50, dtype=torch.float64)
    assert float(amplitude_above_one(inside)) == 0.0
    outside = torch.tensor([1.5, 1.5j, 0.3, -2.0], dtype=torch.complex128)
    assert float(amplitude_above_one(outside)) == pytest.approx(0.25 + 0.25 + 1.0)


@pytest.mark.parametrize("name", ["tv", "sparsity", "amplitude_max"])
def test_regularizers_are_differentiable_in_complex128(name):
    penalty = regularizers.get(name)
    generator = torch.Generator().manual_seed(2)
    field = torch.complex(1.2 * torch.rand((1, 5, 5), generator=generator, dtype=torch.float64),
                          torch.rand((1, 5, 5), generator=generator, dtype=torch.float64))
    field.requires_grad_(True)
    assert torch.autograd.gradcheck(penalty, (field,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", ["poisson", "gaussian", "amplitude"])
def test_closed_form_nll_gradient_matches_finite_differences(name):
    """The hand-written backward of nll (its ``derivative``) against central differences."""
    likelihood = make_likelihood(name)
    generator = torch.Generator().manual_seed(3)
    predicted = (torch.rand(2, 5, 5, generator=generator, dtype=torch.float64) + 0.5) * 20
    counts = torch.poisson(predicted.detach() * 1.1, generator=generator)
    measured = likelihood.prepare(counts)
    valid = torch.rand(5, 5, generator=generator) > 0.2
    predicted.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda p: likelihood.nll(p, measured, valid), (predicted,), eps=1e-6, atol=1e-6)


def test_mode_intensity_gradient_matches_finite_differences():
    generator = torch.Generator().manual_seed(4)
    field = torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.complex128,
                        requires_grad=True)
    intensity = mode_intensity(field)
    expected = field.detach().abs().square().sum(1)
    assert torch.allclose(intensity.detach(), expected)
    assert torch.autograd.gradcheck(mode_intensity, (field,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("masked", [False, True])
def test_amplitude_value_and_slope_equal_the_generic_ones(masked):
    """The amplitude likelihood's own value_and_slope (from one masked residual) against the
    base class's (elementwise values and derivative, masked apart)."""
    likelihood = Amplitude()
    generator = torch.Generator().manual_seed(5)
    predicted = torch.rand(3, 6, 6, generator=generator, dtype=torch.float64) * 40
    predicted[0, 0, 0] = 0.0  # a dark pixel: slope 1 - a / sqrt(eps)
    measured = likelihood.prepare(torch.poisson(predicted * 1.2, generator=generator))
    valid = (torch.rand(6, 6, generator=generator) > 0.3) if masked else None
    total, slope = likelihood.value_and_slope(predicted, measured, valid)
    expected_total, expected_slope = Likelihood.value_and_slope(
        likelihood, predicted, measured, valid)
    assert torch.allclose(total, expected_total, rtol=1e-12)
    assert torch.allclose(slope, expected_slope, rtol=1e-9, atol=1e-12)
    if masked:
        assert bool((slope[:, ~valid] == 0).all())


def _detector_case(modes: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    field = torch.randn(3, modes, 5, 5, generator=generator, dtype=torch.complex128) * 3
    measurement = Measurement(4, (5, 5)).double()
    with torch.no_grad():
        measurement.flux.copy_(torch.rand(4, generator=generator, dtype=torch.float64) + 0.5)
        measurement.background.copy_(torch.rand(5, 5, generator=generator,
                                                dtype=torch.float64))
    index = torch.tensor([2, 0, 3])
    counts = torch.poisson(measurement(field, index).detach() * 1.1, generator=generator)
    valid = torch.rand(5, 5, generator=generator) > 0.2
    return field, measurement, index, counts, valid


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("modes", [1, 3])
def test_fused_detector_nll_equals_the_separate_nodes(name, modes):
    """Measurement.nll (one node, closed-form backward) against the measurement followed by
    the likelihood's nll: same value, same gradients for field, flux and background."""
    field, measurement, index, counts, valid = _detector_case(modes, 6)
    likelihood = make_likelihood(name)
    measured = likelihood.prepare(counts)
    results = []
    for fused in (True, False):
        measurement.zero_grad()
        psi = field.clone().requires_grad_(True)
        if fused:
            total = measurement.nll(psi, index, measured, valid, likelihood)
        else:
            total = likelihood.nll(measurement(psi, index), measured, valid)
        total.backward()
        results.append((total.detach(), psi.grad, measurement.flux.grad.clone(),
                        measurement.background.grad.clone()))
    for fused_value, separate_value in zip(*results, strict=True):
        assert torch.allclose(fused_value, separate_value, rtol=1e-10, atol=1e-12)
    assert results[0][2][1] == 0  # a pattern outside the batch gets no flux gradient


@pytest.mark.parametrize("name", NAMES)
def test_fused_detector_nll_gradient_matches_finite_differences(name):
    """The closed-form backward of the fused node for field, flux and background."""
    field, measurement, index, counts, valid = _detector_case(2, 7)
    likelihood = make_likelihood(name)
    measured = likelihood.prepare(counts)
    flux = measurement.flux.detach()[index].reshape(-1, 1, 1).clone().requires_grad_(True)
    background = measurement.background.detach().clone().requires_grad_(True)
    psi = field.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda p, f, b: _DetectorNLL.apply(p, f, b, measured, valid, likelihood),
        (psi, flux, background), eps=1e-6, atol=1e-5)
