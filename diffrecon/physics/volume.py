"""Rotation and projection of 3D volumes, and SIRT tomography, all differentiable.

A volume ``v`` has shape (D, H, W) = (z, y, x) with the beam along +z (the D axis) and cubic
voxels. Voxel (k, i, j) sits at r = (k - (D-1)/2, i - (H-1)/2, j - (W-1)/2) voxels from the
rotation centre (the volume centre). An orientation is three angles (radians):

    angles = (a, b, c):  R = R_y(a) @ R_x(b) @ R_z(c)

acting on (z, y, x) column vectors: ``a`` is the tilt about the y axis (the usual tilt axis,
it mixes z and x), ``b`` a tilt about x (mixes z and y) and ``c`` a rotation about the beam.
The rotated volume is v_R(r) = v(R^T (r - s)) with ``s`` an in-plane shift (y, x) in voxels,
evaluated by trilinear interpolation (``torch.nn.functional.grid_sample``), zero outside.
Gradients flow to the volume, the angles and the shifts.

``project`` sums the rotated volume along z (times the voxel size for a line integral);
``sirt`` inverts it (simultaneous iterative reconstruction technique, Gilbert 1972) with the
adjoint obtained by autograd, so projector and back-projector are matched exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def rotation_matrix(angles: Tensor) -> Tensor:
    """Rotation matrices (..., 3, 3) in (z, y, x) order for ``angles`` (..., 3) radians.

    R = R_y(a) R_x(b) R_z(c) (module docstring); R_y(a) maps (z, x) -> (z cos a - x sin a,
    z sin a + x cos a), i.e. a right-handed rotation about y.
    """
    a, b, c = angles.unbind(-1)
    one, zero = torch.ones_like(a), torch.zeros_like(a)

    def matrix(rows: list[list[Tensor]]) -> Tensor:
        return torch.stack([torch.stack(row, -1) for row in rows], -2)

    ca, sa, cb, sb, cc, sc = a.cos(), a.sin(), b.cos(), b.sin(), c.cos(), c.sin()
    r_y = matrix([[ca, zero, -sa], [zero, one, zero], [sa, zero, ca]])
    r_x = matrix([[cb, -sb, zero], [sb, cb, zero], [zero, zero, one]])
    r_z = matrix([[one, zero, zero], [zero, cc, -sc], [zero, sc, cc]])
    return r_y @ r_x @ r_z


def _sampling_grid(shape: tuple[int, int, int], angles: Tensor, shift_px: Tensor | None,
                   dtype: torch.dtype) -> Tensor:
    """``grid_sample`` grid (T, D, H, W, 3) in normalised (x, y, z) input coordinates."""
    angles = angles.reshape(-1, 3).to(dtype)
    half = torch.tensor([(n - 1) / 2 for n in shape], dtype=dtype, device=angles.device)
    # source = R^T (r - s), in voxels about the centre, mapped to [-1, 1] per axis
    inverse = rotation_matrix(angles).transpose(-1, -2)  # (T, 3, 3), (z, y, x)
    theta = inverse * half[None, None, :] / half[None, :, None]
    offset = torch.zeros(angles.shape[0], 3, dtype=dtype, device=angles.device)
    if shift_px is not None:
        shift = shift_px.reshape(-1, 2).to(dtype).expand(angles.shape[0], 2)
        offset = torch.cat([offset[:, :1], shift], -1)
    translation = -(inverse @ offset[..., None])[..., 0] / half
    affine = torch.cat([theta, translation[..., None]], -1)  # (T, 3, 4) in (z, y, x)
    affine = affine.flip(-2)  # rows (x, y, z)
    affine = torch.cat([affine[..., :3].flip(-1), affine[..., 3:]], -1)  # columns (x, y, z)
    size = (affine.shape[0], 1, *shape)
    return F.affine_grid(affine, list(size), align_corners=True)


def rotate_volume(volume: Tensor, angles: Tensor, shift_px: Tensor | None = None) -> Tensor:
    """The volume rotated by ``angles`` (and shifted in-plane), trilinear, zero outside.

    Args:
        volume: (D, H, W) real, float32 or float64, any units.
        angles: (3,) or (T, 3) radians (module docstring).
        shift_px: (2,) or (T, 2) in-plane shift (y, x) after rotation, voxels, or None.

    Returns:
        (D, H, W) for a single orientation, else (T, D, H, W); same dtype as ``volume``.
    """
    grid = _sampling_grid(tuple(volume.shape), angles, shift_px, volume.dtype)
    source = volume[None, None].expand(grid.shape[0], 1, *volume.shape)
    out = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=True)[:, 0]
    return out[0] if angles.dim() == 1 else out


def project(volume: Tensor, angles: Tensor, shift_px: Tensor | None = None,
            voxel_m: float = 1.0) -> Tensor:
    """Line integrals along the beam of the rotated volume: (H, W) or (T, H, W).

    Args:
        volume: (D, H, W) real, e.g. a potential in volts.
        angles, shift_px: as :func:`rotate_volume`.
        voxel_m: voxel size (the integration step), metres (1 gives plain sums).
    """
    return rotate_volume(volume, angles, shift_px).sum(-3) * voxel_m


def sirt(projections: Tensor, angles: Tensor, depth: int, *, iterations: int = 50,
         relaxation: float = 1.0, positivity: bool = True,
         shift_px: Tensor | None = None) -> Tensor:
    """SIRT reconstruction (D, H, W) from projections (T, H, W) at ``angles`` (T, 3).

    x <- x + relaxation * C^-1 A^T R^-1 (p - A x), with R = A 1 (row sums) and C = A^T 1
    (column sums); A is :func:`project` (voxel_m = 1) and A^T its autograd adjoint. With
    ``positivity`` the iterate is clamped at 0 after each step.
    """
    shape = (depth, *projections.shape[-2:])
    x = torch.zeros(shape, dtype=projections.dtype, device=projections.device)

    def adjoint(residual: Tensor) -> Tensor:
        probe = torch.zeros_like(x, requires_grad=True)
        with torch.enable_grad():
            forward = project(probe, angles, shift_px)
            (grad,) = torch.autograd.grad(forward, probe, residual)
        return grad

    ones = torch.ones_like(x)
    rows = project(ones, angles, shift_px).clamp(min=1e-6)
    columns = adjoint(torch.ones_like(projections)).clamp(min=1e-6)
    for _ in range(iterations):
        residual = (projections - project(x, angles, shift_px)) / rows
        x = x + relaxation * adjoint(residual) / columns
        if positivity:
            x = x.clamp(min=0)
    return x
