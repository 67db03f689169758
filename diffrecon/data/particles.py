"""3D atomic models for tomography: a two-species nanoparticle, its potential volume, atom
tracing (local maxima refined to sub-voxel positions, species from peak height), matching
with ground truth, and XYZ export.

The 3D potential of an atom is the same two-Gaussian model as ``data.atoms`` (whose projection
along any axis gives that module's projected potential): each Gaussian of rms width s per axis
and weight w contributes w * 47.878 V A^2 * f_e(0) to the volume integral of V (V m^3). It is
built in Fourier space, so it is band-limited and sampled without aliasing.
"""

from __future__ import annotations

import math
import os

import numpy as np

from diffrecon.data.atoms import potential_grid


def fcc_particle(radius_m: float, lattice_m: float, species: tuple[str, str],
                 core_fraction: float, rng: np.random.Generator,
                 jitter_m: float = 0.0) -> tuple[np.ndarray, list[str]]:
    """A spherical fcc cluster about the origin: a core of ``species[0]`` and a shell of
    ``species[1]``.

    Args:
        radius_m: particle radius, metres.
        lattice_m: cubic fcc lattice constant, metres.
        species: (core element, shell element), keys of ``atoms.SCATTERING_LENGTH_M``.
        core_fraction: radius of the core as a fraction of ``radius_m``.
        rng: random generator (the lattice orientation and the jitter).
        jitter_m: rms random displacement of every atom, metres (a non-ideal lattice).

    Returns:
        positions (N, 3) (z, y, x) metres and the element of each atom.
    """
    reach = int(math.ceil(radius_m / lattice_m)) + 1
    cells = np.stack(np.meshgrid(*[np.arange(-reach, reach + 1)] * 3, indexing="ij"), -1)
    basis = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    sites = (cells.reshape(-1, 1, 3) + basis[None]).reshape(-1, 3) * lattice_m
    # a random orientation, so that no lattice direction lines up with the tilt axis
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    sites = sites @ q.T
    sites = sites[np.linalg.norm(sites, axis=1) <= radius_m]
    sites = sites + jitter_m * rng.normal(size=sites.shape)
    core = np.linalg.norm(sites, axis=1) <= core_fraction * radius_m
    return sites, [species[0] if c else species[1] for c in core]


def potential_volume(shape: tuple[int, int, int], voxel_m: float, positions_m: np.ndarray,
                     elements: list[str]) -> np.ndarray:
    """Electrostatic potential V (D, H, W) in volts of atoms at ``positions_m`` (N, 3).

    Positions are (z, y, x) metres from the volume centre (voxel index (n - 1) / 2 on each
    axis, the rotation centre of ``physics.volume``); the grid is periodic.
    """
    origin = tuple(-(n - 1) / 2 * voxel_m for n in shape)
    return potential_grid(shape, (voxel_m,) * 3, origin, positions_m, elements, chunk=64)


def trace_atoms(volume: np.ndarray, voxel_m: float, *, threshold: float = 0.2,
                min_distance_m: float = 1.5e-10,
                species: tuple[str, ...] = ("Mo", "S")) -> tuple[np.ndarray, list[str]]:
    """Atoms found in a volume: local maxima refined to sub-voxel positions.

    A voxel is a candidate when it is the maximum of its 3x3x3 neighbourhood and above
    ``threshold`` times the volume's maximum; candidates closer than ``min_distance_m`` to a
    stronger one are dropped. Each peak is refined by a separable parabola through its
    neighbours (sub-voxel), and the species is guessed from its height: peaks are split into
    ``len(species)`` groups by 1D k-means of the heights, the strongest group getting
    ``species[0]`` (the element with the largest scattering factor first).

    Args:
        volume: (D, H, W) potential (any positive units).
        voxel_m: voxel size, metres.

    Returns:
        positions (N, 3) (z, y, x) metres from the volume centre, and the element guesses.
    """
    v = np.asarray(volume, dtype=np.float64)
    padded = np.pad(v, 1, mode="constant", constant_values=-np.inf)
    neighbours = np.stack([padded[1 + dz : 1 + dz + v.shape[0], 1 + dy : 1 + dy + v.shape[1],
                                  1 + dx : 1 + dx + v.shape[2]]
                           for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                           if (dz, dy, dx) != (0, 0, 0)])
    peaks = (v >= neighbours.max(0)) & (v > threshold * v.max())
    index = np.argwhere(peaks)
    heights = v[peaks]
    order = np.argsort(-heights)
    index, heights = index[order], heights[order]
    refined = index.astype(np.float64)
    for axis in range(3):
        step = np.zeros(3, dtype=int)
        step[axis] = 1
        low = np.clip(index - step, 0, np.array(v.shape) - 1)
        high = np.clip(index + step, 0, np.array(v.shape) - 1)
        minus, plus = v[tuple(low.T)], v[tuple(high.T)]
        curvature = minus - 2 * heights + plus
        offset = np.where(curvature < 0, 0.5 * (minus - plus) / np.where(
            curvature < 0, curvature, -1.0), 0.0)
        refined[:, axis] += np.clip(offset, -0.5, 0.5)
    positions = (refined - (np.array(v.shape) - 1) / 2) * voxel_m
    keep: list[int] = []
    for i, p in enumerate(positions):
        if all(np.linalg.norm(p - positions[j]) >= min_distance_m for j in keep):
            keep.append(i)
    positions, heights = positions[keep], heights[keep]
    return positions, species_by_height(heights, species)


def species_by_height(heights: np.ndarray, species: tuple[str, ...]) -> list[str]:
    """Element guesses: 1D k-means of peak heights into ``len(species)`` groups."""
    if len(heights) == 0:
        return []
    centres = np.quantile(heights, np.linspace(1, 0, len(species)))
    for _ in range(50):
        label = np.argmin(np.abs(heights[:, None] - centres[None]), axis=1)
        centres = np.array([heights[label == k].mean() if np.any(label == k) else centres[k]
                            for k in range(len(species))])
    order = np.argsort(-centres)  # strongest group -> species[0]
    rank = np.empty_like(order)
    rank[order] = np.arange(len(species))
    return [species[rank[k]] for k in label]


def match_atoms(found_m: np.ndarray, truth_m: np.ndarray, tolerance_m: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching of found to true atoms, closest pairs first.

    Returns, per true atom, the index of its matched found atom (-1: none within
    ``tolerance_m``) and the distance (inf when unmatched).
    """
    found, truth = np.asarray(found_m), np.asarray(truth_m)
    match = np.full(len(truth), -1)
    distance = np.full(len(truth), np.inf)
    if len(found) == 0:
        return match, distance
    pairs = np.linalg.norm(truth[:, None] - found[None], axis=-1)
    used = np.zeros(len(found), dtype=bool)
    for flat in np.argsort(pairs, axis=None):
        t, f = np.unravel_index(flat, pairs.shape)
        if pairs[t, f] > tolerance_m:
            break
        if match[t] < 0 and not used[f]:
            match[t], distance[t], used[f] = f, pairs[t, f], True
    return match, distance


def xyz_text(positions_m: np.ndarray, elements: list[str], comment: str = "") -> str:
    """Atoms as XYZ text: x y z in angstrom (our (z, y, x) metres reordered)."""
    lines = [str(len(elements)), comment.replace("\n", " ")]
    for element, (z, y, x) in zip(elements, np.asarray(positions_m) * 1e10, strict=True):
        lines.append(f"{element} {x:.4f} {y:.4f} {z:.4f}")
    return "\n".join(lines) + "\n"


def write_xyz(path: str | os.PathLike[str], positions_m: np.ndarray, elements: list[str],
              comment: str = "") -> None:
    """Write atoms as an XYZ file (:func:`xyz_text`)."""
    with open(path, "w") as handle:
        handle.write(xyz_text(positions_m, elements, comment))


def read_xyz(path: str | os.PathLike[str]) -> tuple[np.ndarray, list[str]]:
    """Read an XYZ file written by :func:`write_xyz`: positions (N, 3) (z, y, x) metres."""
    with open(path) as handle:
        rows = handle.read().splitlines()
    count = int(rows[0])
    parts = [row.split() for row in rows[2 : 2 + count]]
    xyz = np.array([[float(v) for v in p[1:4]] for p in parts]).reshape(-1, 3)
    return xyz[:, ::-1] * 1e-10, [p[0] for p in parts]
