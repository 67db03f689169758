"""Scan patterns for ptychography: positions (N, 2), (y, x) in metres, centred on zero."""

from __future__ import annotations

import math

import numpy as np

GOLDEN_ANGLE = math.pi * (3 - math.sqrt(5))


def raster(rows: int, cols: int, step_m: float) -> np.ndarray:
    """A rows x cols rectangular grid with spacing ``step_m``."""
    y, x = np.meshgrid(np.arange(rows) * step_m, np.arange(cols) * step_m, indexing="ij")
    positions = np.stack([y.ravel(), x.ravel()], axis=1)
    return positions - positions.mean(axis=0)


def jittered_raster(
    rows: int, cols: int, step_m: float, jitter: float, rng: np.random.Generator
) -> np.ndarray:
    """A raster whose points move uniformly by up to +-``jitter`` * step (breaks grid artefacts)."""
    return raster(rows, cols, step_m) + rng.uniform(-jitter, jitter, (rows * cols, 2)) * step_m


def fermat_spiral(count: int, step_m: float) -> np.ndarray:
    """Fermat spiral (Huang et al. 2014): r = c sqrt(n), theta = n * golden angle.

    Each point occupies an area pi c^2, so c = step / sqrt(pi) gives a mean spacing ``step_m``.
    """
    n = np.arange(count)
    radius = step_m / math.sqrt(math.pi) * np.sqrt(n + 0.5)
    theta = n * GOLDEN_ANGLE
    positions = np.stack([radius * np.sin(theta), radius * np.cos(theta)], axis=1)
    return positions - positions.mean(axis=0)


def concentric(rings: int, step_m: float, first_ring_points: int = 6) -> np.ndarray:
    """Concentric circles ``step_m`` apart, ring k holding k * first_ring_points points."""
    points = [np.zeros((1, 2))]
    for k in range(1, rings + 1):
        theta = np.arange(k * first_ring_points) * 2 * math.pi / (k * first_ring_points)
        points.append(k * step_m * np.stack([np.sin(theta), np.cos(theta)], axis=1))
    return np.concatenate(points)


def fermat_count_for_area(extent_m: float, step_m: float) -> int:
    """Number of Fermat-spiral points covering a disc of diameter ``extent_m`` at ``step_m``."""
    return max(1, int(math.pi * (extent_m / 2) ** 2 / step_m**2))
