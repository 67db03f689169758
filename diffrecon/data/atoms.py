"""Built-in atomic structures and their projected potentials (for electron simulations).

**Parameterisation (an approximation, not Kirkland's fit).** Each atom's projected potential
is a sum of two round Gaussians whose integral is fixed by the electron scattering factor at
zero angle, f_e(0):

    integral v_z d^2r = 2 pi a0 e f_e(0) = 47.878 V A^2 * f_e(0)       (Kirkland, Eq. 5.9)

split equally between a core of rms width 0.2 A and a tail of 0.6 A. The f_e(0) used
(Mo 8.0 A, S 4.0 A) are rounded values of the right magnitude (tabulated Doyle-Turner /
Kirkland values are within about 20% of them); peak phases and contrast are therefore right in
order of magnitude (a Mo column gives ~0.8 rad at 80 kV), but not quantitatively. The
potential is built in Fourier space (analytic Gaussian transforms times structure-factor
phases), so it is band-limited and sampled without aliasing.
"""

from __future__ import annotations

import math

import numpy as np

#: 2 pi a0 e in V m^2 (47.878 V A^2): integral of v_z per metre of f_e(0)
POTENTIAL_PER_SCATTERING_LENGTH = 47.878e-20
#: approximate zero-angle electron scattering factors f_e(0), metres
SCATTERING_LENGTH_M = {"Mo": 8.0e-10, "S": 4.0e-10}
#: (weight, rms width in metres) of the two Gaussians of every atom
GAUSSIANS = ((0.5, 0.2e-10), (0.5, 0.6e-10))
MOS2_LATTICE_M = 3.16e-10


def hexagonal_layer(extent_m: tuple[float, float], lattice_m: float, basis: list[tuple[
        str, float, float]], rotation_deg: float = 0.0, centre_m: tuple[float, float] = (0, 0),
) -> tuple[np.ndarray, list[str]]:
    """Atoms of a hexagonal layer covering a (y, x) rectangle ``extent_m`` about ``centre_m``.

    ``basis`` lists (element, u, v) in fractional coordinates of a1 = (0, a), a2 = (a sqrt3/2,
    a/2) ((y, x) order). Returns positions (N, 2) (y, x) in metres and the element names.
    """
    a1 = np.array([0.0, lattice_m])
    a2 = np.array([lattice_m * math.sqrt(3) / 2, lattice_m / 2])
    turn = math.radians(rotation_deg)
    rotation = np.array([[math.cos(turn), math.sin(turn)], [-math.sin(turn), math.cos(turn)]])
    reach = int(math.ceil(max(extent_m) / lattice_m)) + 2
    i, j = np.meshgrid(np.arange(-reach, reach + 1), np.arange(-reach, reach + 1), indexing="ij")
    cells = i.reshape(-1, 1) * a1 + j.reshape(-1, 1) * a2
    positions, names = [], []
    for element, u, v in basis:
        sites = (cells + u * a1 + v * a2) @ rotation.T
        inside = np.all(np.abs(sites) <= np.asarray(extent_m) / 2, axis=1)
        positions.append(sites[inside] + np.asarray(centre_m))
        names += [element] * int(inside.sum())
    return np.concatenate(positions), names


def mos2_layer(extent_m: tuple[float, float], rotation_deg: float = 0.0,
               centre_m: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, list[str]]:
    """A 2H-MoS2 monolayer seen along c: Mo columns and S2 columns (two S atoms each)."""
    third = 1.0 / 3.0
    basis = [("Mo", 0.0, 0.0), ("S", third, third), ("S", third, third)]
    return hexagonal_layer(extent_m, MOS2_LATTICE_M, basis, rotation_deg, centre_m)


def projected_potential(shape: tuple[int, int], pixel_size_m: tuple[float, float],
                        origin_m: tuple[float, float], positions_m: np.ndarray,
                        elements: list[str], chunk: int = 256) -> np.ndarray:
    """Projected potential v_z (H, W) in V m of atoms at ``positions_m`` (N, 2), (y, x) metres.

    Pixel [0, 0] sits at ``origin_m``; the grid is periodic, so atoms closer than ~1 A to an
    edge spill over to the opposite one.
    """
    return potential_grid(shape, pixel_size_m, origin_m, positions_m, elements, chunk)


def potential_grid(shape: tuple[int, ...], pixel_size_m: tuple[float, ...],
                   origin_m: tuple[float, ...], positions_m: np.ndarray, elements: list[str],
                   chunk: int = 256) -> np.ndarray:
    """Atom potentials on a periodic grid of any dimension d (2: projected, 3: volume).

    Each atom is the module's two Gaussians (rms width s on every axis), whose integral over
    the d axes is 2 pi a0 e f_e(0): the result is v_z in V m for d = 2 and V in volts for
    d = 3. Pixel [0, ..., 0] sits at ``origin_m``; ``positions_m`` is (N, d) in axis order.
    """
    frequencies = [np.fft.fftfreq(n, d=p) for n, p in zip(shape, pixel_size_m, strict=True)]
    k2 = sum(np.meshgrid(*[f**2 for f in frequencies], indexing="ij"))
    spectrum = np.zeros(shape, dtype=np.complex128)
    relative = np.asarray(positions_m, dtype=np.float64) - np.asarray(origin_m)
    axes = "abcdefgh"[: len(shape)]
    rule = ",".join(f"n{a}" for a in axes) + "->" + axes
    for element in sorted(set(elements)):
        form = sum(w * np.exp(-2 * math.pi**2 * s**2 * k2) for w, s in GAUSSIANS)
        form = form * POTENTIAL_PER_SCATTERING_LENGTH * SCATTERING_LENGTH_M[element]
        sites = relative[[e == element for e in elements]]
        phases = np.zeros(shape, dtype=np.complex128)
        for start in range(0, len(sites), chunk):
            block = sites[start : start + chunk]
            factors = [np.exp(-2j * math.pi * f[None, :] * block[:, axis, None])
                       for axis, f in enumerate(frequencies)]
            phases += np.einsum(rule, *factors)
        spectrum += form * phases
    # the inverse DFT sums to a density per pixel; divide by the pixel area (volume)
    return np.fft.ifftn(spectrum).real / float(np.prod(pixel_size_m))
