"""Scan patterns for ptychography: positions (N, 2), (y, x) in metres, centred on zero."""

from __future__ import annotations

import math
import warnings

import numpy as np

from diffrecon.errors import DataFormatError

GOLDEN_ANGLE = math.pi * (3 - math.sqrt(5))
#: largest object grid side a scan may need (a 65536^2 complex64 object takes 32 GiB); beyond
#: it the positions or the geometry are almost certainly in the wrong units
MAX_OBJECT_SIDE_PX = 2**16


class ScanWarning(UserWarning):
    """Scan positions that cannot give a ptychographic reconstruction as they are."""


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


def mean_nearest_step(positions: np.ndarray, sample: int = 512) -> float:
    """Mean distance from a scan position to its nearest neighbour (units of ``positions``).

    Exact for up to ``sample`` positions; above that, the mean over a fixed random sample of
    ``sample`` of them (a 256 x 256 4D-STEM scan would otherwise compare 65536^2 pairs). The
    distances are computed in blocks of about 2 M pairs.
    """
    count = len(positions)
    if count < 2:
        return 0.0
    points = np.asarray(positions, dtype=np.float64)
    chosen = np.arange(count)
    if count > sample:
        chosen = np.sort(np.random.default_rng(0).choice(count, sample, replace=False))
    points = points - points.mean(axis=0)  # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b, centred
    norms = (points**2).sum(axis=1)
    nearest = []
    for rows in np.array_split(chosen, max(1, len(chosen) * count // 2**21)):
        squared = norms[rows, None] + norms[None, :] - 2 * points[rows] @ points.T
        squared[np.arange(len(rows)), rows] = np.inf
        nearest.append(np.sqrt(np.clip(squared.min(axis=1), 0, None)))
    return float(np.mean(np.concatenate(nearest)))


def check_scan_sampling(
    positions_m: np.ndarray, pixel_size_m: tuple[float, float], frame_shape: tuple[int, int],
    source: str, key: str,
) -> None:
    """Check scan positions against the object pixel before an object grid is allocated.

    Raises DataFormatError when the scan spans more than ``MAX_OBJECT_SIDE_PX`` object pixels
    (positions in micrometres instead of metres, an energy in eV labelled as joules, ...).
    Warns (``ScanWarning``) when all positions coincide, when neighbours are on average less
    than 0.05 pixel apart (a distance in mm, an energy or a pixel size in the wrong units make
    the object pixel far too large), or when they are farther apart than the probe window
    (no overlap).

    Args:
        positions_m: (N, 2) probe positions (y, x) in metres.
        pixel_size_m: object pixel (y, x) in metres, as derived from the file's geometry.
        frame_shape: probe window (H, W) in pixels.
        source, key: the file and the positions' key, for the messages.
    """
    pixel = np.asarray(pixel_size_m, dtype=np.float64)
    extent_m = np.ptp(positions_m, axis=0) if len(positions_m) else np.zeros(2)
    span_px = extent_m / pixel + np.asarray(frame_shape)
    size = f"{pixel[0]:.3g}" if pixel[0] == pixel[1] else f"{pixel[0]:.3g} x {pixel[1]:.3g}"
    geometry = (f"object pixels of {size} m (from the file's energy, detector distance and "
                "detector pixel size)")
    if np.any(span_px > MAX_OBJECT_SIDE_PX):
        raise DataFormatError(
            source, key,
            f"a scan spanning at most {MAX_OBJECT_SIDE_PX} object pixels (positions in metres, "
            "geometry in SI units)",
            f"{extent_m[0]:.3g} x {extent_m[1]:.3g} m = {span_px[0]:.3g} x {span_px[1]:.3g} "
            f"{geometry}")
    if len(positions_m) < 2:
        return
    distinct = np.unique(positions_m, axis=0)  # a tilt series repeats its scan per tilt
    if len(distinct) < 2:
        warnings.warn(f"{source}: '{key}': all {len(positions_m)} scan positions are "
                      "identical; ptychography needs distinct, overlapping positions",
                      ScanWarning, stacklevel=3)
        return
    step_px = mean_nearest_step(distinct / pixel)
    if step_px < 0.05:
        warnings.warn(f"{source}: '{key}': neighbouring scan positions are on average "
                      f"{step_px:.2g} {geometry} apart; check the units of the positions, "
                      "energy, distance and pixel size", ScanWarning, stacklevel=3)
    elif step_px > min(frame_shape):
        warnings.warn(f"{source}: '{key}': neighbouring scan positions are on average "
                      f"{step_px:.3g} {geometry} apart, more than the {min(frame_shape)}-pixel "
                      "probe window: the illuminated areas do not overlap", ScanWarning,
                      stacklevel=3)
