"""Hand-off files for the peer comparison (experiments/peers): round trip and PtyRAD's layout.

Pure parts only: no peer package is needed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from diffrecon.data import scans
from diffrecon.data.container import DiffractionData
from diffrecon.models.ptycho import scan_grid

sys.path.insert(0, str(Path(__file__).parents[1] / "experiments" / "peers"))
from electron_handoff import (  # noqa: E402
    HandOff,
    crop_to_grid,
    ptyrad_canvas,
    read_handoff,
    read_result,
    with_ptyrad_layout,
    write_handoff,
    write_result,
)
from ptyrad_electron import ptyrad_params  # noqa: E402

PIXEL = 0.3e-10
FRAME = 32
STEP = 2e-10


def stem_handoff(rows: int = 5, columns: int = 7, padding: int = 8) -> HandOff:
    """A small raster with our corners from diffrecon's own object grid (``scan_grid``)."""
    positions = scans.raster(rows, columns, STEP) + np.array([0.37e-10, -0.21e-10])
    rng = np.random.default_rng(0)
    patterns = rng.poisson(5.0, (rows * columns, FRAME, FRAME)).astype(np.float32)
    data = DiffractionData(patterns=patterns, wavelength_m=4.18e-12, distance_m=1.0,
                           detector_pixel_size_m=(4.18e-12 / (FRAME * PIXEL),) * 2,
                           positions_m=positions)
    corners, _, _ = scan_grid(data, (PIXEL, PIXEL), padding)
    return HandOff(measurements=patterns, positions_m=positions, our_corners_px=corners,
                   voltage_v=80e3, convergence_mrad=20.0, pixel_size_m=PIXEL,
                   defocus_m=20e-9, cs_m=1e-6, slices=5, slice_thickness_m=2.5e-9,
                   scan_shape=(rows, columns), iterations=7)


def test_handoff_round_trip(tmp_path: Path) -> None:
    handoff = stem_handoff()
    write_handoff(tmp_path / "h.h5", handoff)
    back = read_handoff(tmp_path / "h.h5")
    filled = with_ptyrad_layout(handoff)
    for name in ("measurements", "positions_m", "our_corners_px", "ptyrad_corners_px"):
        np.testing.assert_array_equal(getattr(back, name), getattr(filled, name))
    for name in ("voltage_v", "convergence_mrad", "pixel_size_m", "defocus_m", "cs_m",
                 "slices", "slice_thickness_m", "scan_shape", "iterations",
                 "object_offset_px", "ptyrad_extent_px"):
        assert getattr(back, name) == getattr(filled, name), name


def test_ptyrad_windows_cover_the_same_sample_points() -> None:
    """Every window sits at our corner + one integer offset, inside PtyRAD's canvas,
    with the mean window centred on the canvas as PtyRAD lays out its own scans."""
    handoff = with_ptyrad_layout(stem_handoff())
    difference = handoff.ptyrad_corners_px - handoff.our_corners_px
    np.testing.assert_allclose(difference, np.broadcast_to(handoff.object_offset_px,
                                                           difference.shape), atol=1e-9)
    extent = np.array(handoff.ptyrad_extent_px)
    assert np.all(handoff.ptyrad_corners_px >= 0)
    assert np.all(handoff.ptyrad_corners_px + FRAME <= extent)
    centre = handoff.ptyrad_corners_px.mean(axis=0) + FRAME // 2
    assert np.all(np.abs(centre - extent // 2) <= 0.5)
    # canvas: 1.2 x (scan span + window), the span being 4 x 6 steps of 2 A at 0.3 A/px
    span = np.array([4, 6]) * STEP / PIXEL
    np.testing.assert_array_equal(extent, (1.2 * np.ceil(span + FRAME)).astype(int))
    assert ptyrad_canvas(handoff.positions_m / PIXEL, FRAME)[0].tolist() == extent.tolist()


def test_crop_to_grid_maps_canvas_pixels_back() -> None:
    canvas = np.zeros((2, 30, 40))
    canvas[1, 12, 25] = 3.0
    out = crop_to_grid(canvas, (10, 20), (8, 30), fill=-1.0)
    assert out.shape == (2, 8, 30)
    assert out[1, 2, 5] == 3.0 and np.count_nonzero(out == 3.0) == 1
    assert np.all(out[:, :, 20:] == -1.0)  # beyond the canvas's 40 columns
    assert np.all(out[:, :, :20] != -1.0)


def test_result_round_trip_and_bad_file(tmp_path: Path) -> None:
    phase = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    write_result(tmp_path / "r.h5", phase, np.ones_like(phase), [0.5, 0.25], [3.0, 2.0],
                 {"version": "1.0.0"})
    back = read_result(tmp_path / "r.h5")
    np.testing.assert_array_equal(back["phase"], phase)
    assert back["iteration_s"].tolist() == [0.5, 0.25] and back["info"]["version"] == "1.0.0"
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "something else"
    with pytest.raises(ValueError, match="other.h5.*'format'"):
        read_handoff(tmp_path / "other.h5")


def test_ptyrad_params_units(tmp_path: Path) -> None:
    """SI hand-off -> PtyRAD's Angstrom, kV and mrad; Krivanek C10 > 0 = overfocus in both."""
    handoff = stem_handoff()
    params = ptyrad_params(handoff, tmp_path / "h.h5", tmp_path, probe_modes=1, iterations=3)
    init = params["init_params"]
    assert init["probe_kv"] == pytest.approx(80.0)
    assert init["probe_aberrations"] == pytest.approx({"C10": 200.0, "C30": 1e4})
    assert init["meas_calibration"] == {"mode": "dx", "value": pytest.approx(0.3)}
    assert init["pos_scan_step_size"] == pytest.approx(2.0)
    assert init["obj_slice_thickness"] == pytest.approx(25.0)
    assert (init["obj_Nlayer"], init["pos_N_scan_slow"], init["pos_N_scan_fast"]) == (5, 5, 7)
    assert init["meas_Npix"] == FRAME and init["pos_N_scans"] == 35
    assert params["recon_params"]["NITER"] == 3
