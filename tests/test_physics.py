"""Physics kernels against analytic results."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from diffrecon.physics import optics
from diffrecon.physics.fft import fft2c, ifft2c, ifftshift_into
from diffrecon.physics.modes import mode_powers, orthogonalize_modes
from diffrecon.physics.propagators import AngularSpectrum, FarField, SamplingWarning
from diffrecon.physics.shifts import extract_patches, insert_patches, shifted_copies, translate


def random_field(shape, seed=0, dtype=torch.complex128):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype)


def test_parseval_centred_fft():
    x = random_field((3, 32, 48))
    assert torch.allclose(fft2c(x).abs().square().sum(), x.abs().square().sum())
    assert torch.allclose(ifft2c(fft2c(x)), x)


def test_centred_fft_puts_dc_at_centre():
    x = torch.ones(16, 16, dtype=torch.complex128)
    spectrum = fft2c(x)
    assert spectrum[8, 8].abs() == pytest.approx(16.0)
    assert spectrum.abs().sum() == pytest.approx(16.0)


@pytest.mark.parametrize("shape", [(2, 8, 8), (2, 7, 9), (5, 6, 3)])
def test_ifftshift_into_equals_ifftshift(shape):
    x = torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)
    for dims in [(-2, -1), (-3, -2, -1)]:
        out = torch.full_like(x, float("nan"))
        assert ifftshift_into(x, out, dims) is out
        assert torch.equal(out, torch.fft.ifftshift(x, dim=dims))
    # the native layout of a far-field propagator, written into a slice of a larger tensor
    store = torch.zeros((shape[0] + 2, *shape[1:]))
    FarField().to_native(x, out=store[1:-1])
    assert torch.equal(store[1:-1], torch.fft.ifftshift(x, dim=(-2, -1)))
    assert not store[0].any() and not store[-1].any()
    with pytest.raises(ValueError, match="shapes differ"):
        ifftshift_into(x, torch.empty(1, 2, 3), (-1,))


@pytest.mark.parametrize("propagator", [
    FarField(),
    AngularSpectrum((32, 32), (1e-6, 1e-6), 1e-9, 1e-3),
    AngularSpectrum((32, 32), (1e-6, 1e-6), 1e-9, 1e-3, paraxial=True),
])
def test_propagators_are_unitary_and_adjoint(propagator):
    x = random_field((2, 32, 32), 1).to(torch.complex64)
    y = random_field((2, 32, 32), 2).to(torch.complex64)
    fx = propagator(x)
    assert torch.allclose(fx.abs().square().sum(), x.abs().square().sum(), rtol=1e-4)
    lhs = (fx.conj() * y).sum()
    rhs = (x.conj() * propagator.adjoint(y)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-4, atol=1e-3)
    assert torch.allclose(propagator.adjoint(fx), x, atol=1e-5)


def test_angular_spectrum_composition_and_reciprocity():
    args = ((64, 64), (0.5e-6, 0.5e-6), 0.5e-9)
    x = random_field((64, 64), 3).to(torch.complex64)
    one = AngularSpectrum(*args, 2e-3)
    two = AngularSpectrum(*args, 3e-3)
    total = AngularSpectrum(*args, 5e-3)
    assert torch.allclose(two(one(x)), total(x), atol=1e-4)
    back = AngularSpectrum(*args, -5e-3)
    assert torch.allclose(back(total(x)), x, atol=1e-4)


def test_angular_spectrum_warns_when_it_aliases():
    with pytest.warns(SamplingWarning, match="aliases"):
        AngularSpectrum((32, 32), (1e-6, 1e-6), 1e-9, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AngularSpectrum((32, 32), (1e-6, 1e-6), 1e-9, 1e-3)


def test_far_field_native_layout_round_trip():
    propagator = FarField()
    x = random_field((4, 16, 16), 4)
    intensity = fft2c(x).abs().square()
    native = propagator(x).abs().square()
    assert torch.allclose(propagator.to_native(intensity), native)
    assert torch.allclose(propagator.from_native(native), intensity)


def test_airy_first_zero_at_1_22_lambda_over_d():
    """A circular aperture of diameter D: far-field first zero at 1.22 lambda/D, i.e. at a
    radius of 1.22 N/D frequency pixels on an N-pixel grid."""
    n, diameter = 1024, 64
    aperture = optics.circular_aperture_probe((n, n), diameter / 2, dtype=torch.complex128)
    cut = fft2c(aperture).abs().square()[n // 2, n // 2:].numpy()
    expected = 1.22 * n / diameter
    lo, hi = int(expected * 0.8), int(expected * 1.2)
    i = lo + int(np.argmin(cut[lo:hi]))
    # parabolic refinement of the minimum
    a, b, c = cut[i - 1], cut[i], cut[i + 1]
    zero = i + 0.5 * (a - c) / (a - 2 * b + c)
    assert zero == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("voltage, expected_pm", [(300e3, 1.9687), (200e3, 2.5079),
                                                  (80e3, 4.1757)])
def test_relativistic_electron_wavelength(voltage, expected_pm):
    assert optics.electron_wavelength_m(voltage) * 1e12 == pytest.approx(expected_pm, abs=1e-4)


def test_xray_wavelength_and_pixel_size():
    assert optics.xray_wavelength_m(12398.42) == pytest.approx(1e-10, rel=1e-6)
    pixel = optics.farfield_pixel_size_m(1e-10, 5.0, 256, 75e-6)
    assert pixel == pytest.approx(1e-10 * 5.0 / (256 * 75e-6))


def test_fresnel_scaling_magnification():
    pixel, distance = optics.fresnel_scaling(0.01, 0.99, 1e-6)
    assert pixel == pytest.approx(1e-8)  # magnification 100
    assert distance == pytest.approx(0.0099)


def test_integer_fourier_shift_equals_roll():
    x = random_field((3, 20, 24), 5)
    shifted = translate(x, torch.tensor([3.0, -5.0], dtype=torch.float64))
    assert torch.allclose(shifted, torch.roll(x, (3, -5), (-2, -1)), atol=1e-10)


def test_shifted_copies_match_translate_and_compose():
    x = random_field((2, 16, 16), 6)
    shifts = torch.tensor([[0.3, -1.7], [2.5, 0.25]], dtype=torch.float64)
    copies = shifted_copies(x, shifts)
    for b in range(2):
        assert torch.allclose(copies[b], translate(x, shifts[b]), atol=1e-10)
    there_and_back = translate(translate(x, shifts[0]), -shifts[0])
    assert torch.allclose(there_and_back, x, atol=1e-10)


def test_insert_is_adjoint_of_extract():
    obj = random_field((2, 30, 40), 7)
    corners = torch.tensor([[0, 0], [5, 7], [20, 30], [5, 7]])
    patches = extract_patches(obj, corners, (10, 10))
    assert torch.equal(patches[1, 1], obj[1, 5:15, 7:17])
    other = random_field(patches.shape, 8)
    lhs = (patches.conj() * other).sum()
    rhs = (obj.conj() * insert_patches(other, corners, obj.shape)).sum()
    assert torch.allclose(lhs, rhs)


def test_insert_patches_traces_under_torch_compile():
    """Compiled code cannot write into the overlapping window view the CPU path uses
    (functionalization refuses it); traced, the flat ``index_add_`` path gives the same sums."""
    patches = random_field((4, 1, 6, 6), 9)
    corners = torch.tensor([[0, 0], [2, 3], [2, 3], [10, 9]])
    traced = torch.compile(insert_patches, backend="aot_eager", fullgraph=True)
    assert torch.allclose(traced(patches, corners, (1, 16, 16)),
                          insert_patches(patches, corners, (1, 16, 16)), atol=1e-12)


def test_zone_plate_focus_size():
    """In focus, the intensity FWHM of a lens of numerical aperture NA is ~0.51 lambda/NA."""
    wavelength, na, pixel = 1e-10, 2e-3, 2e-9
    probe = optics.zone_plate_probe((256, 256), pixel, wavelength, diameter_m=2 * na * 0.1,
                                    focal_length_m=0.1, dtype=torch.complex128)
    cut = probe.abs().square()[128].numpy()
    above = np.flatnonzero(cut >= cut.max() / 2)
    fwhm = (above[-1] - above[0] + 1) * pixel
    assert fwhm == pytest.approx(0.51 * wavelength / na, rel=0.15)


def test_mode_orthogonalisation_keeps_the_intensity():
    modes = random_field((3, 16, 16), 9)
    ortho = orthogonalize_modes(modes)
    gram = torch.einsum("ahw,bhw->ab", ortho.conj(), ortho)
    off_diagonal = gram - torch.diag(torch.diagonal(gram))
    assert off_diagonal.abs().max() < 1e-10
    # the mutual intensity sum_m |P_m><P_m| is invariant
    def mutual(m):
        flat = m.reshape(3, -1)
        return flat.T @ flat.conj()
    assert torch.allclose(mutual(ortho), mutual(modes), atol=1e-10)
    powers = mode_powers(ortho)
    assert torch.all(powers[:-1] >= powers[1:]) and math.isclose(float(powers.sum()), 1.0)


def test_far_field_sampling_warning():
    from diffrecon.physics.propagators import check_farfield_sampling

    with pytest.warns(SamplingWarning, match="alias"):
        check_farfield_sampling(torch.ones(32, 32, dtype=torch.complex64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_farfield_sampling(optics.gaussian_probe((32, 32), 4.0))


def test_illumination_map_is_chunk_independent_and_conserves_energy():
    """The overlap map accumulated a few positions at a time (bounded memory) equals the
    all-at-once sum, and holds every window's probe energy."""
    from diffrecon.physics.shifts import illumination_map

    generator = torch.Generator().manual_seed(0)
    intensity = torch.rand(8, 8, generator=generator)
    corners = torch.randint(0, 24, (37, 2), generator=generator)
    whole = insert_patches(intensity.expand(37, 8, 8), corners, (32, 32))
    for chunk in (1, 5, 64):
        chunked = illumination_map(intensity, corners, (32, 32), chunk=chunk)
        torch.testing.assert_close(chunked, whole)
    assert torch.isclose(whole.sum(), 37 * intensity.sum())


def test_squared_modulus_is_exact_and_differentiable() -> None:
    """|z|^2 as Re(z conj z): real, equal to re^2 + im^2 bit for bit, gradient 2 z."""
    squared_modulus = optics.squared_modulus
    field = torch.randn(3, 5, 7, dtype=torch.complex64, generator=torch.Generator().manual_seed(1))
    value = squared_modulus(field)
    assert value.dtype == torch.float32 and value.shape == field.shape
    assert torch.equal(value, field.real.square() + field.imag.square())
    torch.testing.assert_close(value, field.abs().square(), rtol=1e-6, atol=1e-6)
    leaf = field.clone().requires_grad_(True)
    squared_modulus(leaf).sum().backward()
    torch.testing.assert_close(leaf.grad, 2 * field)


@pytest.mark.parametrize("object_px", [40, 24])  # batch of patches smaller / larger
@pytest.mark.parametrize("position_gradients", [False, True])
def test_overlap_keeps_two_batch_arrays_for_its_backward(position_gradients, object_px):
    """What the overlap kernel saves for the backward pass: the patches and the shifted probes
    (two (B, M, h, w) arrays) and the separable ramp factors, plus the shifted spectrum only
    when the shifts need gradients; its gradients equal plain autograd's, whether the object
    gradient is conjugated before (small batch) or after (small object) the insertion."""
    from diffrecon.physics.overlap import overlap, overlap_autograd

    batch, size = 6, 16
    obj = random_field((1, object_px, object_px), seed=1,
                       dtype=torch.complex64).requires_grad_()
    probe = random_field((1, size, size), seed=2, dtype=torch.complex64).requires_grad_()
    generator = torch.Generator().manual_seed(4)
    corners = torch.randint(0, object_px - size, (batch, 2), generator=generator)
    shifts = torch.rand(batch, 2, generator=generator).requires_grad_(position_gradients)
    saved: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        psi = overlap(obj, probe, corners, shifts)
    array = batch * size * size * 8  # bytes of one complex64 (B, 1, h, w) array
    big = sorted(n for n in saved if n >= array)
    assert big == [array] * (3 if position_gradients else 2)
    assert sum(saved) - sum(big) < array / 4
    weights = random_field(psi.shape, seed=3, dtype=torch.complex64)
    inputs = [obj, probe] + ([shifts] if position_gradients else [])
    ours = torch.autograd.grad((psi * weights.conj()).real.sum(), inputs)
    plain = overlap_autograd(obj, probe, corners, shifts)
    reference = torch.autograd.grad((plain * weights.conj()).real.sum(), inputs)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-4)
