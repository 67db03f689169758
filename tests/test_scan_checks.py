"""Scan positions against the object pixel: units mistakes are caught before allocation."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

from diffrecon.data.scans import (
    ScanWarning,
    check_scan_sampling,
    fermat_spiral,
    jittered_raster,
    mean_nearest_step,
    raster,
)
from diffrecon.errors import DataFormatError
from diffrecon.models.multislice import Multislice, MultisliceConfig
from diffrecon.models.ptycho import Ptycho, PtychoConfig

KEY = "entry_1/sample_1/geometry_1/translation"


def brute_force_step(positions: np.ndarray) -> float:
    distance = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    np.fill_diagonal(distance, np.inf)
    return float(distance.min(axis=1).mean())


def test_mean_nearest_step_is_exact_for_small_scans() -> None:
    positions = jittered_raster(9, 11, 1e-7, 0.3, np.random.default_rng(3))
    assert mean_nearest_step(positions) == pytest.approx(brute_force_step(positions), rel=1e-9)
    assert mean_nearest_step(raster(4, 5, 2.5e-8)) == pytest.approx(2.5e-8, rel=1e-9)
    assert mean_nearest_step(np.zeros((1, 2))) == 0.0
    assert mean_nearest_step(np.zeros((7, 2))) == 0.0


def test_mean_nearest_step_samples_large_scans() -> None:
    # a 60 x 60 jittered raster: 3600 positions, above the 512 sampled; the estimate stays
    # within a few per cent of the exact mean, and a regular raster gives its step exactly
    positions = jittered_raster(60, 60, 1e-7, 0.3, np.random.default_rng(4))
    assert mean_nearest_step(positions) == pytest.approx(brute_force_step(positions), rel=0.03)
    assert mean_nearest_step(raster(64, 64, 3e-10)) == pytest.approx(3e-10, rel=1e-6)


def record(positions_m: np.ndarray, pixel_m: float, frame: int = 64) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_scan_sampling(positions_m, (pixel_m, pixel_m), (frame, frame), "scan.cxi", KEY)
    return [str(w.message) for w in caught if issubclass(w.category, ScanWarning)]


def test_a_sound_scan_passes_silently() -> None:
    assert record(fermat_spiral(200, 1e-6), 6e-8) == []  # steps of ~17 of 64 pixels


def test_positions_in_micrometres_are_rejected_before_allocation() -> None:
    with pytest.raises(DataFormatError) as error:
        record(fermat_spiral(200, 1e-6) * 1e6, 6e-8)
    message = str(error.value)
    assert "scan.cxi" in message and KEY in message
    assert "at most 65536 object pixels" in message and "SI units" in message


def test_a_repeated_scan_is_judged_by_its_distinct_positions() -> None:
    """A tilt series holds the same scan once per tilt: its duplicates are not a zero step."""
    scan = fermat_spiral(100, 1e-6)
    assert record(np.concatenate([scan, scan, scan]), 6e-8) == []


@pytest.mark.parametrize(
    ("positions", "pixel_m", "expected"),
    [
        (np.zeros((30, 2)), 6e-8, "all 30 scan positions are identical"),
        (fermat_spiral(200, 1e-6), 6e-5, "check the units"),  # distance in mm: 1000x pixel
        (fermat_spiral(200, 1e-5), 6e-8, "do not overlap"),  # steps of ~170 pixels
    ],
)
def test_implausible_scans_warn(positions: np.ndarray, pixel_m: float, expected: str) -> None:
    messages = record(positions, pixel_m)
    assert len(messages) == 1 and expected in messages[0] and KEY in messages[0]


def test_models_check_the_scan_of_their_file(small_ptycho) -> None:
    """Ptychography and multislice share ``scan_grid``: both refuse micrometre positions
    (the audit's 28 PB allocation) and warn on a distance given in millimetres."""
    wrong_units = dataclasses.replace(small_ptycho, positions_m=small_ptycho.positions_m * 1e6)
    with pytest.raises(DataFormatError, match="at most 65536 object pixels"):
        Ptycho.from_data(wrong_units, PtychoConfig())
    with pytest.raises(DataFormatError, match="at most 65536 object pixels"):
        Multislice.from_data(wrong_units, MultisliceConfig())
    millimetres = dataclasses.replace(small_ptycho, distance_m=small_ptycho.distance_m * 1e3)
    with pytest.warns(ScanWarning, match="check the units"):
        Ptycho.from_data(millimetres, PtychoConfig())
