"""3D rotation, projection and SIRT (physics/volume.py), tested against geometry."""

from __future__ import annotations

import math

import pytest
import torch

from diffrecon.physics.volume import project, rotate_volume, rotation_matrix, sirt

F64 = torch.float64


def blob(shape: tuple[int, int, int], centre: tuple[float, float, float],
         width: float) -> torch.Tensor:
    """A smooth Gaussian (D, H, W) centred at ``centre`` voxels from the volume centre."""
    axes = [torch.arange(n, dtype=F64) - (n - 1) / 2 - c
            for n, c in zip(shape, centre, strict=True)]
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    return torch.exp(-(z.square() + y.square() + x.square()) / (2 * width**2))


def angles(a: float, b: float = 0.0, c: float = 0.0) -> torch.Tensor:
    return torch.tensor([a, b, c], dtype=F64)


def test_rotation_matrix_is_orthonormal_and_right_handed():
    r = rotation_matrix(torch.tensor([[0.3, -0.2, 1.1], [1.0, 0.5, -0.4]], dtype=F64))
    eye = torch.eye(3, dtype=F64).expand(2, 3, 3)
    assert torch.allclose(r @ r.transpose(-1, -2), eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(r), torch.ones(2, dtype=F64))
    # 90 degrees about y sends the x axis (0, 0, 1) to -z ... (z, y, x) order
    r_y = rotation_matrix(angles(math.pi / 2))
    assert torch.allclose(r_y @ torch.tensor([0.0, 0, 1], dtype=F64),
                          torch.tensor([-1.0, 0, 0], dtype=F64), atol=1e-12)


def test_rotation_by_zero_is_identity():
    volume = torch.rand(6, 7, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(rotate_volume(volume, angles(0.0)), volume, atol=1e-12)


@pytest.mark.parametrize(("axis", "expected"), [
    (0, lambda v: v.permute(2, 1, 0).flip(0)),  # about y: v_R(z, x) = v(x, -z)
    (1, lambda v: v.permute(1, 0, 2).flip(0)),  # about x: v_R(z, y) = v(y, -z)
    (2, lambda v: v.transpose(1, 2).flip(1)),  # about z: v_R(y, x) = v(x, -y)
])
def test_quarter_turn_is_a_transpose(axis, expected):
    volume = torch.rand(7, 7, 7, dtype=F64, generator=torch.Generator().manual_seed(1))
    quarter = [0.0, 0.0, 0.0]
    quarter[axis] = math.pi / 2
    assert torch.allclose(rotate_volume(volume, angles(*quarter)), expected(volume), atol=1e-12)


def test_rotations_compose_and_conserve_mass():
    volume = blob((24, 24, 24), (3.0, -2.0, 4.0), 2.5)
    first, second = angles(0.35, 0.1), angles(0.25)
    twice = rotate_volume(rotate_volume(volume, first), second)
    # R_y(b) R_y(a) R_x(c) = R_y(a + b) R_x(c): one rotation by the summed tilt
    once = rotate_volume(volume, angles(0.6, 0.1))
    assert float((twice - once).norm() / once.norm()) < 0.03
    # the blob's centre moves as R r (an independent, analytic check of the direction)
    expected = rotation_matrix(angles(0.6, 0.1)) @ torch.tensor([3.0, -2.0, 4.0], dtype=F64)
    assert float((once - blob((24, 24, 24), tuple(expected.tolist()), 2.5)).norm()
                 / once.norm()) < 0.03
    assert float(once.sum()) == pytest.approx(float(volume.sum()), rel=5e-3)


def test_projection_of_a_rotated_rod():
    # a rod of blobs along x (centres x = -10 .. 10 voxels): tilted by a about y, its
    # projection shrinks to x cos a, and the line integral over the image stays the total mass
    shape = (33, 9, 33)
    volume = sum(blob(shape, (0.0, 0.0, float(x)), 1.2) for x in range(-10, 11))
    tilt = math.radians(40)
    image = project(volume, angles(tilt), voxel_m=0.5)
    assert float(image.sum()) == pytest.approx(0.5 * float(volume.sum()), rel=5e-3)
    row = image.sum(0)
    x = torch.arange(33, dtype=F64) - 16
    centre = float((row * x).sum() / row.sum())
    variance = float((row * (x - centre).square()).sum() / row.sum())
    # variance of the projected centres, (21^2 - 1) / 12 cos^2 a, plus the blob width^2
    expected = (21**2 - 1) / 12 * math.cos(tilt) ** 2 + 1.2**2
    assert centre == pytest.approx(0.0, abs=1e-6)
    assert variance == pytest.approx(expected, rel=0.03)


def test_shift_is_an_in_plane_translation():
    volume = blob((16, 16, 16), (0.0, 0.0, 0.0), 2.0)
    shifted = rotate_volume(volume, angles(0.0), torch.tensor([2.0, -3.0], dtype=F64))
    assert torch.allclose(shifted, blob((16, 16, 16), (0.0, 2.0, -3.0), 2.0), atol=1e-2)


def test_gradients_reach_angles_and_shifts():
    volume = blob((6, 6, 6), (0.5, -0.3, 0.2), 1.5)
    angle = torch.tensor([[0.2, -0.1, 0.05]], dtype=F64, requires_grad=True)
    shift = torch.tensor([[0.3, -0.2]], dtype=F64, requires_grad=True)
    weights = torch.rand(6, 6, dtype=F64, generator=torch.Generator().manual_seed(2))
    assert torch.autograd.gradcheck(
        lambda a, s: (project(volume, a, s) * weights).sum(), (angle, shift), eps=1e-6,
        atol=1e-5)


def test_sirt_recovers_a_blob_pair():
    truth = blob((16, 16, 16), (2.5, 0.0, -3.0), 1.5) + 0.5 * blob((16, 16, 16),
                                                                 (-3.0, 2.0, 2.5), 1.5)
    tilts = torch.stack([angles(a) for a in torch.linspace(-1.2, 1.2, 13).tolist()])
    projections = project(truth, tilts)
    estimate = sirt(projections, tilts, 16, iterations=20)
    assert float((estimate - truth).norm() / truth.norm()) < 0.25
    assert float((project(estimate, tilts) - projections).norm() / projections.norm()) < 0.05
