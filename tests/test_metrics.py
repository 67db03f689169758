"""Tests for diffrecon.losses.metrics: ambiguity-removed errors, FRC, PRTF, R-factor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffrecon.losses.metrics import (
    align,
    frc,
    frc_resolution,
    nrmse,
    phase_rmse,
    position_error,
    prtf,
    r_factor,
    radial_average,
    ring_index,
)

SHAPE = (64, 64)


def axis_frequencies(shape: tuple[int, ...]) -> list[torch.Tensor]:
    """fftfreq of each axis, shaped to broadcast along that axis only."""
    axes = range(len(shape))
    return [
        torch.fft.fftfreq(n, dtype=torch.float64).reshape([-1 if a == i else 1 for a in axes])
        for i, n in enumerate(shape)
    ]


def band_limited(seed: int, shape: tuple[int, ...] = SHAPE, cutoff: float = 0.15) -> torch.Tensor:
    """Random complex128 field whose spectrum is zero beyond ``cutoff`` cycles/pixel."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(shape, dtype=torch.complex128, generator=generator)
    radius = sum(k**2 for k in axis_frequencies(shape)).sqrt()
    return torch.fft.ifftn(torch.fft.fftn(noise) * (radius < cutoff))


def fourier_shift(field: torch.Tensor, shift: tuple[float, ...]) -> torch.Tensor:
    """Independent reference shift: out(r) = field(r - shift), circular."""
    frequencies = axis_frequencies(field.shape)
    phase = sum(-2 * math.pi * s * k for s, k in zip(shift, frequencies, strict=True))
    return torch.fft.ifftn(torch.fft.fftn(field) * torch.exp(1j * phase))


def ramp(shape: tuple[int, int], slope: tuple[float, float]) -> torch.Tensor:
    y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in shape), indexing="ij")
    return torch.exp(2j * math.pi * (slope[0] * y + slope[1] * x))


@pytest.fixture(scope="module")
def truth() -> torch.Tensor:
    return band_limited(0)


def test_identical_is_zero(truth: torch.Tensor) -> None:
    assert nrmse(truth, truth) < 1e-9
    assert nrmse(truth.numpy(), truth.numpy(), align_first=False) < 1e-12


def test_invariant_to_global_phase_and_scale(truth: torch.Tensor) -> None:
    assert nrmse(2.5 * truth * np.exp(1.3j), truth) < 1e-9


def test_invariant_to_phase_ramp(truth: torch.Tensor) -> None:
    estimate = truth * ramp(SHAPE, (0.031, -0.0417)) * np.exp(0.4j)
    assert nrmse(estimate, truth) < 1e-6
    assert nrmse(estimate, truth, remove_ramp=False) > 0.5


def test_invariant_to_integer_shift(truth: torch.Tensor) -> None:
    assert nrmse(torch.roll(truth, (3, -5), (0, 1)), truth) < 1e-6


def test_invariant_to_subpixel_shift(truth: torch.Tensor) -> None:
    estimate = fourier_shift(truth, (2.3, -1.7))
    assert nrmse(estimate, truth) < 1e-3
    assert nrmse(estimate, truth, subpixel=False) > 1e-2


def test_invariant_to_shift_ramp_and_phase_together(truth: torch.Tensor) -> None:
    # A non-periodic ramp in the estimate's own frame, as a misplaced diffraction centre gives.
    estimate = fourier_shift(truth, (-4.6, 7.25)) * ramp(SHAPE, (-0.052, 0.0233)) * np.exp(2j)
    assert nrmse(estimate, truth) < 1e-5


def test_twin_image(truth: torch.Tensor) -> None:
    twin = torch.flip(fourier_shift(truth, (1.4, 0.6)), (0, 1)).conj()
    assert nrmse(twin, truth, allow_twin=True) < 1e-5
    assert nrmse(twin, truth) > 0.5


def test_align_3d_and_dtype() -> None:
    volume = band_limited(1, (16, 16, 16), cutoff=0.2)
    shifted = fourier_shift(volume, (1.25, -2.5, 0.75)).to(torch.complex64)
    aligned = align(shifted, volume)
    assert aligned.dtype == torch.complex64 and aligned.shape == volume.shape
    assert nrmse(aligned, volume, align_first=False) < 1e-4


def test_mask_limits_the_comparison(truth: torch.Tensor) -> None:
    mask = torch.zeros(SHAPE, dtype=torch.bool)
    mask[16:48, 16:48] = True
    corrupted = truth.clone()
    corrupted[~mask] = 0  # only the unilluminated part is wrong
    assert nrmse(corrupted, truth, mask=mask, align_first=False) < 1e-12
    assert nrmse(corrupted, truth, align_first=False) > 0.1


def test_masked_phase_object_with_garbage_outside() -> None:
    """Ptychography-like: only the illuminated square of the estimate is meaningful."""
    shape = (96, 96)
    phase = band_limited(4, shape, cutoff=0.1).real
    obj = torch.exp(1j * phase / phase.std())
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[20:76, 20:76] = True
    # smooth illumination window: 1 (to ~1e-5) over the mask, falling to 0 ~8 px outside it
    wide = torch.zeros(shape, dtype=torch.float64)
    wide[12:84, 12:84] = 1
    window = fourier_shift(wide, (0, 0)).real
    gauss = torch.exp(-2 * math.pi**2 * 2.0**2 * sum(k**2 for k in axis_frequencies(shape)))
    window = torch.fft.ifftn(torch.fft.fftn(window) * gauss).real
    garbage = band_limited(5, shape, cutoff=0.1)
    blend = window * obj + (1 - window) * garbage
    estimate = fourier_shift(blend, (3.3, -6.8)) * ramp(shape, (0.012, -0.02)) * 1.7j
    # the garbage outside the mask leaks slightly into the mean-free shift estimate
    assert nrmse(estimate.to(torch.complex64), obj, mask=mask) < 3e-3
    assert nrmse(estimate, obj) > 0.3  # the garbage does count without the mask


def test_independent_noise_is_large(truth: torch.Tensor) -> None:
    assert 0.5 < nrmse(band_limited(7), truth) < 1.01


def test_phase_rmse_constant_offset(truth: torch.Tensor) -> None:
    assert phase_rmse(truth * np.exp(0.7j), truth) < 1e-6


def test_phase_rmse_known_noise(truth: torch.Tensor) -> None:
    sigma = 0.05
    generator = torch.Generator().manual_seed(3)
    noise = sigma * torch.randn(SHAPE, dtype=torch.float64, generator=generator)
    estimate = truth * torch.exp(1j * noise)
    assert phase_rmse(estimate, truth) == pytest.approx(sigma, rel=0.05)
    assert phase_rmse(estimate, truth, weighted_by_amplitude=True) == pytest.approx(sigma, rel=0.1)


def test_frc_self_is_one(truth: torch.Tensor) -> None:
    _, values, _ = frc(truth, truth)
    assert torch.allclose(values, torch.ones_like(values), atol=1e-9)


def test_frc_independent_noise_below_threshold() -> None:
    generator = torch.Generator().manual_seed(5)
    a, b = torch.randn((2, *SHAPE), generator=generator)
    frequencies, values, threshold = frc(a, b)
    assert frequencies[0] == 0 and frequencies[-1] == 0.5
    assert values[1:].abs().mean() < 0.1
    assert (values[1:] < threshold[1:]).float().mean() > 0.9


def test_half_bit_threshold_formula() -> None:
    _, _, threshold = frc(torch.ones(SHAPE), torch.ones(SHAPE))
    ky, kx = np.meshgrid(*(np.fft.fftshift(np.fft.fftfreq(n)) for n in SHAPE), indexing="ij")
    ring = 10
    n = np.count_nonzero(np.round(np.hypot(ky, kx) * SHAPE[0]) == ring)
    expected = (0.2071 + 1.9102 / np.sqrt(n)) / (1.2071 + 0.9102 / np.sqrt(n))
    assert float(threshold[ring]) == pytest.approx(expected, rel=1e-12)


def test_frc_resolution_crossing() -> None:
    frequencies = torch.linspace(0, 0.5, 51, dtype=torch.float64)
    assert frc_resolution(frequencies, 1 - 2 * frequencies, 0.5) == pytest.approx(0.25)
    assert frc_resolution(frequencies, torch.ones(51), 0.5) == 0.5


def test_r_factor() -> None:
    measured = torch.tensor([4.0, 4.0, 9.0])
    assert r_factor(measured, measured) == 0
    assert r_factor(torch.tensor([1.0, 4.0, 9.0]), measured) == pytest.approx(1 / 7)
    mask = torch.tensor([False, True, True])
    assert r_factor(torch.tensor([1.0, 4.0, 9.0]), measured, mask) == 0


def test_prtf_consistent_fields_is_one(truth: torch.Tensor) -> None:
    far_field = torch.fft.fftshift(torch.fft.fft2(truth, norm="ortho"))
    phases = torch.tensor([0.0, 1.0, -2.5, 3.0], dtype=torch.float64)
    fields = far_field * torch.exp(1j * phases)[:, None, None]
    frequencies, values = prtf(fields, far_field.abs() ** 2)
    assert len(frequencies) == len(values) == SHAPE[0] // 2 + 1
    valid = ~torch.isnan(values)
    assert valid.sum() > 5
    assert torch.allclose(values[valid], torch.ones_like(values[valid]), atol=1e-9)


def test_radial_average_of_constant_and_rings() -> None:
    frequencies, values = radial_average(torch.full(SHAPE, 3.0))
    assert torch.allclose(values, torch.full_like(values, 3.0))
    index, _ = ring_index(SHAPE)
    assert index[SHAPE[0] // 2, SHAPE[1] // 2] == 0 and index.max() == len(frequencies)


def test_position_error_ignores_global_translation() -> None:
    generator = torch.Generator().manual_seed(2)
    truth = 50 * torch.rand((30, 2), generator=generator, dtype=torch.float64)
    jitter = 0.3 * torch.randn((30, 2), generator=generator, dtype=torch.float64)
    assert position_error(truth + torch.tensor([3.5, -2.0]), truth) < 1e-12
    assert position_error(truth + jitter + torch.tensor([3.5, -2.0]), truth) == pytest.approx(
        position_error(truth + jitter, truth)
    )
    assert position_error(truth + jitter, truth) > 0.1
