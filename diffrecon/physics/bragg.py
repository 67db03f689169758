"""Bragg CDI geometry and strain analysis (pure functions; SI units at the boundary).

Laboratory frame and diffractometer convention
----------------------------------------------
Every 3-vector is written in **(z, y, x)** component order, the axis order of the lab-frame
arrays (D, H, W): ``z`` along the incident beam (downstream), ``y`` vertical up,
``x = y cross z`` horizontal (right-handed; pointing left when looking downstream).

- Incident wavevector ``k_i = k z`` with ``k = 2 pi / lambda``.
- Detector arm: out-of-plane angle ``delta`` (rotation about -x, detector moves up) then in-plane
  angle ``gamma`` (rotation about y): ``k_f = k (cos d cos g, sin d, cos d sin g)``; scattering
  vector ``Q = k_f - k_i`` (|Q| = 4 pi sin(theta) / lambda).
- Detector plane normal to ``k_f`` at ``distance_m``; unit vectors ``e_v = R(up)`` and
  ``e_h = R(x)`` (the arm rotation applied to y and x). Detector **rows** increase along
  ``-e_v`` (downwards), **columns** along ``-e_h`` (to the right seen from the sample).
- Rocking curve: the sample turns by ``step`` radians per frame about a lab axis ``x`` (the
  vertical-geometry eta/theta circle) or ``y`` (the in-plane phi circle), right-handed; frames
  are the first array axis.

The detector voxel (frame n0, row n1, column n2), centred indices, probes the reciprocal-space
point ``q = Q + B n`` in the crystal frame at the central rocking angle, with columns of ``B``
(1/m) ``b_rock = -step * (axis cross Q)``, ``b_row = -k p_y / D e_v``, ``b_col = -k p_x / D e_h``
(first order in the small angles of a Bragg peak). With the physical sign of the phase,
``rho = |rho| exp(i Q . u)`` (Robinson & Harder, Nat. Mater. 8, 291 (2009)), and the centred
forward FFT of the model, object voxel m (centred indices) sits at ``r = A m`` with
``A = -2 pi (B^T)^-1 diag(1/N)`` (metres): q . r = -2 pi sum n_k m_k / N_k.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from diffrecon.physics.filters import erode

Tensor = torch.Tensor
AXES = {"x": np.array([0.0, 0.0, 1.0]), "y": np.array([0.0, 1.0, 0.0])}


@dataclasses.dataclass(frozen=True)
class BraggGeometry:
    """A Bragg CDI measurement geometry (see the module docstring for the convention).

    Attributes:
        wavelength_m: X-ray wavelength, metres.
        distance_m: sample-detector distance, metres.
        pixel_size_m: detector pixel (rows, columns), metres.
        rocking_step_rad: sample rotation between frames, radians.
        rocking_axis: lab axis of the rocking rotation, "x" or "y".
        delta_rad: detector out-of-plane angle, radians.
        gamma_rad: detector in-plane angle, radians.
    """

    wavelength_m: float
    distance_m: float
    pixel_size_m: tuple[float, float]
    rocking_step_rad: float
    rocking_axis: Literal["x", "y"] = "x"
    delta_rad: float = 0.0
    gamma_rad: float = 0.0

    @property
    def wavenumber(self) -> float:
        """k = 2 pi / lambda, 1/m."""
        return 2 * math.pi / self.wavelength_m

    def arm(self) -> np.ndarray:
        """Rotation (3, 3) of the detector arm, acting on (z, y, x) vectors."""
        d, g = self.delta_rad, self.gamma_rad
        # R_y(gamma) R_x(-delta), written directly in (z, y, x) component order
        rx = np.array([[math.cos(d), -math.sin(d), 0.0], [math.sin(d), math.cos(d), 0.0],
                       [0.0, 0.0, 1.0]])
        ry = np.array([[math.cos(g), 0.0, -math.sin(g)], [0.0, 1.0, 0.0],
                       [math.sin(g), 0.0, math.cos(g)]])
        return ry @ rx

    def q_bragg(self) -> np.ndarray:
        """Scattering vector Q = k_f - k_i at the detector centre, (z, y, x), 1/m."""
        k = self.wavenumber
        return k * self.arm()[:, 0] - np.array([k, 0.0, 0.0])

    def reciprocal_basis(self) -> np.ndarray:
        """B (3, 3), 1/m: column j is the q step of one voxel along array axis j."""
        k, arm = self.wavenumber, self.arm()
        rock = -self.rocking_step_rad * np.cross(AXES[self.rocking_axis][::-1],
                                                 self.q_bragg()[::-1])[::-1]
        row = -k * self.pixel_size_m[0] / self.distance_m * arm[:, 1]
        col = -k * self.pixel_size_m[1] / self.distance_m * arm[:, 2]
        return np.stack([rock, row, col], axis=1)

    def real_basis(self, shape: tuple[int, int, int]) -> np.ndarray:
        """A (3, 3), metres: column j is the lab position step of one object voxel along axis j
        of an array of ``shape`` (rocking, rows, columns)."""
        inverse = np.linalg.inv(self.reciprocal_basis().T)
        return -2 * math.pi * inverse / np.asarray(shape, dtype=np.float64)[None, :]


def centred_positions(shape: tuple[int, ...], basis: np.ndarray, *,
                      dtype: torch.dtype = torch.float64) -> Tensor:
    """Lab positions r = basis @ m of every voxel (centred indices m), shape (*shape, 3)."""
    axes = [torch.arange(n, dtype=dtype) - n // 2 for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    return grid @ torch.as_tensor(basis, dtype=dtype).T


def lab_voxel_size_m(basis: np.ndarray) -> float:
    """Edge of the cube with the volume of one voxel of ``basis``, metres."""
    return float(abs(np.linalg.det(basis)) ** (1 / 3))


def resample(volume: Tensor, basis: np.ndarray, positions_m: Tensor) -> Tensor:
    """Trilinear values of ``volume`` at lab positions (zero outside its box).

    Args:
        volume: (D, H, W) real or complex, voxel m at lab position ``basis @ m``
            (centred indices).
        basis: (3, 3) metres, see :meth:`BraggGeometry.real_basis`.
        positions_m: (..., 3) lab positions (z, y, x), metres.

    Returns:
        (...) values, the dtype of ``volume``.
    """
    shape = torch.tensor(volume.shape, dtype=torch.float64)
    inverse = torch.as_tensor(np.linalg.inv(basis), dtype=torch.float64)
    index = positions_m.to(torch.float64) @ inverse.T + torch.floor(shape / 2)
    grid = (2 * index / (shape - 1) - 1).flip(-1)  # grid_sample wants (x, y, z) = (W, H, D)
    channels = torch.view_as_real(volume).movedim(-1, 0) if volume.is_complex() else volume[None]
    real = channels.to(torch.float32 if volume.dtype in (torch.float32, torch.complex64)
                       else torch.float64)
    out = F.grid_sample(real[None], grid.reshape(1, 1, 1, -1, 3).to(real.dtype),
                        mode="bilinear", padding_mode="zeros", align_corners=True)
    out = out.reshape(channels.shape[0], *positions_m.shape[:-1])
    return torch.complex(out[0], out[1]) if volume.is_complex() else out[0]


def lab_grid(shape: tuple[int, int, int], voxel_m: float, origin_m: np.ndarray) -> Tensor:
    """Lab positions (z, y, x) of an orthonormal grid, shape (*shape, 3), metres:
    voxel [i, j, l] at ``origin_m + voxel_m * (i, j, l)``."""
    axes = [torch.arange(n, dtype=torch.float64) * voxel_m for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    return grid + torch.as_tensor(origin_m, dtype=torch.float64)


def remove_phase_ramp(obj: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Remove the mean phase gradient and the mean phase inside ``mask``.

    The slope along each axis is the angle of sum(conj(o[i]) o[i+1]) over neighbouring pairs
    inside the mask (insensitive to wrapping); the global phase is that of the mask's sum.

    Args:
        obj: (D, H, W) complex.
        mask: (D, H, W) bool.

    Returns:
        The de-ramped object and the slopes (3,) in radians per voxel.
    """
    slopes = []
    for axis in range(3):
        pair = obj.narrow(axis, 1, obj.shape[axis] - 1) * obj.narrow(
            axis, 0, obj.shape[axis] - 1).conj()
        both = mask.narrow(axis, 1, mask.shape[axis] - 1) & mask.narrow(
            axis, 0, mask.shape[axis] - 1)
        slopes.append(torch.angle(torch.where(both, pair, 0).sum()))
    slope = torch.stack(slopes).to(torch.float64)
    positions = centred_positions(tuple(obj.shape), np.eye(3))
    out = obj * torch.polar(torch.ones_like(positions[..., 0]), -(positions @ slope)).to(obj.dtype)
    offset = torch.angle(torch.where(mask, out, 0).sum())
    return out * torch.exp(-1j * offset).to(obj.dtype), slope


def wrap(phase: Tensor) -> Tensor:
    """Phase wrapped into [-pi, pi)."""
    return torch.remainder(phase + math.pi, 2 * math.pi) - math.pi


def _divergence(fields: list[Tensor]) -> Tensor:
    """Backward-difference divergence of forward-difference edge fields (periodic)."""
    return sum((f - torch.roll(f, 1, axis) for axis, f in enumerate(fields)),
               torch.zeros_like(fields[0]))


def _poisson(source: Tensor) -> Tensor:
    """x with (periodic, unweighted) Laplacian(x) = source, zero mean, by FFT."""
    eigen = torch.zeros((), dtype=torch.float64, device=source.device)
    for axis, n in enumerate(source.shape):
        k = torch.arange(n, dtype=torch.float64, device=source.device)
        eigen = eigen + (2 * torch.cos(2 * math.pi * k / n) - 2).reshape(
            [-1 if a == axis else 1 for a in range(source.dim())])
    spectrum = torch.fft.fftn(source) / torch.where(eigen == 0, 1.0, eigen)
    spectrum.view(-1)[0] = 0
    return torch.fft.ifftn(spectrum).real


def unwrap_phase(phase: Tensor, mask: Tensor, *, iterations: int = 100,
                 tolerance: float = 1e-9) -> Tensor:
    """3D phase unwrapping: weighted least squares, then congruence with the wrapped phase.

    The wrapped differences between neighbours that are both inside ``mask`` are integrated
    by preconditioned conjugate gradients on the mask's weighted Laplacian, with the FFT
    Poisson solver as preconditioner (Ghiglia & Romero, JOSA A 11, 107 (1994)); the result
    is moved by whole turns onto the wrapped phase, so it equals ``phase`` mod 2 pi. Where
    no phase field has these differences (a dislocation's vortex) a branch cut remains.

    Args:
        phase: (D, H, W) wrapped phase, radians.
        mask: (D, H, W) bool, where the phase is meaningful.
        iterations: at most this many conjugate-gradient steps.
        tolerance: stop when the residual norm falls below this fraction of the source's.

    Returns:
        (D, H, W) float64 unwrapped phase, radians, zero mean-turns offset (zero outside).
    """
    phase, inside = phase.to(torch.float64), mask.to(torch.float64)
    weights = [inside * torch.roll(inside, -1, axis) for axis in range(3)]

    def laplacian(x: Tensor) -> Tensor:  # minus the weighted Laplacian: positive semidefinite
        return -_divergence([w * (torch.roll(x, -1, a) - x) for a, w in enumerate(weights)])

    source = -_divergence([w * wrap(torch.roll(phase, -1, a) - phase)
                           for a, w in enumerate(weights)])
    x, residual = torch.zeros_like(phase), source.clone()
    z = -_poisson(residual)
    direction, rz = z.clone(), float((residual * z).sum())
    scale = float(source.norm())
    for _ in range(iterations):
        if float(residual.norm()) <= tolerance * scale or rz == 0:
            break
        product = laplacian(direction)
        step = rz / float((direction * product).sum())
        x, residual = x + step * direction, residual - step * product
        z = -_poisson(residual)
        rz_new = float((residual * z).sum())
        direction, rz = z + (rz_new / rz) * direction, rz_new
    unwrapped = x + wrap(phase - x)
    mean = (unwrapped * inside).sum() / inside.sum().clamp(min=1)
    return (unwrapped - 2 * math.pi * torch.round(mean / (2 * math.pi))) * inside


def phase_vortices(obj: Tensor, mask: Tensor) -> Tensor:
    """Winding numbers of the phase round every elementary plaquette (dislocation cores).

    Args:
        obj: (D, H, W) complex.
        mask: (D, H, W) bool; a plaquette counts when its four corners are inside.

    Returns:
        (3, D, H, W) int64: entry [a, i] is the phase winding (turns) round the square with
        corner i spanned by the two axes other than a (a phase vortex line along axis a
        pierces it when non-zero).
    """
    out = []
    for axis in range(3):
        b, c = [k for k in range(3) if k != axis]

        def step(x: Tensor, shift: int, dim: int) -> Tensor:
            return torch.roll(x, -shift, dim)

        corners = [obj, step(obj, 1, b), step(step(obj, 1, b), 1, c), step(obj, 1, c)]
        inside = mask & step(mask, 1, b) & step(step(mask, 1, b), 1, c) & step(mask, 1, c)
        total = sum(torch.angle(corners[(k + 1) % 4] * corners[k].conj()) for k in range(4))
        out.append(torch.where(inside, torch.round(total / (2 * math.pi)), 0).long())
    return torch.stack(out)


def phase_gradient(obj: Tensor, voxel_m: float) -> Tensor:
    """Central-difference phase gradient of a complex volume, (D, H, W, 3) (z, y, x), rad/m.

    Uses angle(o[i+1] conj(o[i-1])) / (2 voxel), so no unwrapping is needed.
    """
    parts = [torch.angle(torch.roll(obj, -1, axis) * torch.roll(obj, 1, axis).conj())
             for axis in range(3)]
    return torch.stack(parts, dim=-1).to(torch.float64) / (2 * voxel_m)


def strain_along(obj: Tensor, q_m: np.ndarray, voxel_m: float) -> Tensor:
    """Strain component du_Q/ds along Q of a lab-frame complex density rho = |rho| exp(i Q.u).

    Args:
        obj: (D, H, W) complex on an orthonormal lab grid (z, y, x axes).
        q_m: (3,) scattering vector (z, y, x), 1/m.
        voxel_m: grid spacing, metres.

    Returns:
        (D, H, W) float64 dimensionless strain q_hat . grad(phi) / |Q| (meaningful where the
        voxel and its neighbours are in the crystal).
    """
    q = torch.as_tensor(q_m, dtype=torch.float64)
    norm = torch.linalg.norm(q)
    return phase_gradient(obj, voxel_m) @ (q / norm) / norm


def lab_frame_maps(obj: Tensor, support: Tensor, geometry: BraggGeometry, *,
                   erosion_px: int = 2, margin_px: int = 3, remove_ramp: bool = True
                   ) -> dict[str, np.ndarray]:
    """Amplitude, phase, displacement and strain of a Bragg reconstruction on a lab grid.

    The object (detector-conjugate grid) loses its mean phase ramp and phase (a ramp is a
    misplaced Bragg peak: the mean strain and rotation are not measured once the peak is
    centred), is resampled trilinearly onto an orthonormal lab grid of the same voxel volume
    around the support, and its phase is unwrapped (:func:`unwrap_phase`).

    Args:
        obj: (D, H, W) complex, the reconstructed object (detector-conjugate grid).
        support: (D, H, W) bool.
        geometry: the measurement geometry.
        erosion_px: lab voxels removed from the support edge where strain is reported.
        margin_px: lab voxels kept around the support's bounding box.
        remove_ramp: remove the mean phase gradient and phase (False for an object already
            aligned with a reference, e.g. the ground truth).

    Returns:
        NumPy arrays on the lab grid (z, y, x axes; NaN outside the crystal where noted):
        ``amplitude`` float32; ``phase`` unwrapped, radians (NaN outside); ``displacement_m``
        u . Q / |Q| = phase / |Q|, metres (NaN outside); ``strain`` du_Q/ds (NaN outside the
        eroded support); ``support_lab`` and ``strain_mask`` bool; ``lab_voxel_size_m`` (3,);
        ``lab_origin_m`` (3,) lab position of voxel [0, 0, 0] relative to the crystal centre;
        ``q_bragg`` (3,) 1/m (z, y, x).
    """
    basis = geometry.real_basis(tuple(obj.shape))  # type: ignore[arg-type]
    voxel = lab_voxel_size_m(basis)
    flat = remove_phase_ramp(obj, support)[0] if remove_ramp else obj
    inside = centred_positions(tuple(obj.shape), basis)[support.cpu()]
    low = inside.amin(0).numpy() - margin_px * voxel
    high = inside.amax(0).numpy() + margin_px * voxel
    shape = tuple(int(n) for n in np.ceil((high - low) / voxel) + 1)
    grid = lab_grid(shape, voxel, low)  # type: ignore[arg-type]
    lab = resample(flat.cpu(), basis, grid)
    lab_support = resample(support.cpu().float(), basis, grid) > 0.5
    if remove_ramp:
        lab, _ = remove_phase_ramp(lab, lab_support)
    q = geometry.q_bragg()
    norm = float(np.linalg.norm(q))
    phase = unwrap_phase(torch.angle(lab), lab_support)
    strain_mask = erode(lab_support, erosion_px)
    nan = torch.tensor(math.nan, dtype=torch.float64)
    return {
        "amplitude": lab.abs().numpy().astype(np.float32),
        "phase": torch.where(lab_support, phase, nan).numpy().astype(np.float32),
        "displacement_m": torch.where(lab_support, phase / norm, nan).numpy().astype(np.float32),
        "strain": torch.where(strain_mask, strain_along(lab, q, voxel), nan).numpy()
        .astype(np.float32),
        "support_lab": lab_support.numpy(), "strain_mask": strain_mask.numpy(),
        "lab_voxel_size_m": np.full(3, voxel), "lab_origin_m": low, "q_bragg": q,
    }
