"""The Fourier-ptychography hand-off to PtyLab (experiments/bench/fp_handoff.py): its file
layout, and that its conventions reproduce our images. Pure parts only: PtyLab is not needed
(the worker checks ``ptylab_corners`` against PtyLab's own positions at run time)."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from diffrecon.data.fpm import led_table
from diffrecon.data.simulate_fp import FPSimulation, simulate_fp
from diffrecon.models.fourier_ptycho import FourierPtycho, FourierPtychoConfig

sys.path.insert(0, str(Path(__file__).parents[1] / "experiments" / "bench"))
import fp_handoff  # noqa: E402


@pytest.fixture(scope="module")
def small():  # type: ignore[no-untyped-def]
    """A noise-free 5x5-LED scene of 32x32 images, our model of it and the LED of each image."""
    data = simulate_fp(FPSimulation(image_px=32, led_rows=5, led_columns=5, led_pitch_m=6e-3,
                                    noise="none"))
    model = FourierPtycho.from_data(data, FourierPtychoConfig())
    table = led_table(data)
    return data, model, table.positions_m[table.groups[:, 0]]


def test_file_holds_ptylab_fpm_fields(small, tmp_path: Path) -> None:
    data, _, leds = small
    path = tmp_path / "fpm.h5"
    fp_handoff.write_fpm_file(path, data.patterns, leds, data.wavelength_m, 6.5e-6, 4.0,
                              data.distance_m, 0.1)
    with h5py.File(path) as f:
        # PtyLab 0.3.7 ExperimentalData FPM requiredFields, plus NA and orientation
        assert {"ptychogram", "wavelength", "encoder", "dxd", "zled", "magnification",
                "NA", "orientation"} <= set(f)
        assert f["ptychogram"].shape == data.patterns.shape
        assert f["encoder"].shape == (25, 2)  # (N, 2): PtyLab transposes it otherwise
        np.testing.assert_allclose(f["encoder"][()], leds)
        assert f["zled"][()] == data.distance_m and f["dxd"][()] == 6.5e-6
    with pytest.raises(ValueError, match="square"):
        fp_handoff.write_fpm_file(path, np.zeros((2, 4, 6)), leds[:2], 1, 1, 1, 1, 0.1)


def test_spectrum_round_trip_keeps_the_object(small) -> None:
    truth = small[0].truth.object[0]
    for size in (298, 256, 300):  # PtyLab's grid larger, equal, even-odd offsets
        back = fp_handoff.object_from_spectrum(
            fp_handoff.spectrum_from_object(truth, size), truth.shape)
        np.testing.assert_allclose(back, truth, atol=2e-5 * np.abs(truth).max())


def test_ptylab_windows_reproduce_our_images(small) -> None:
    """PtyLab's window positions and forward model (|fft2c(S[window] P)|^2, S = ifft2c(o))
    on the truth give our images: exactly for the on-axis LED, within the rounding of its
    offsets to whole spectrum pixels for the rest; swapped or negated offsets do not."""
    data, model, leds = small
    frame, grid = data.frame_shape[0], model.scope.grid[0] + 42  # PtyLab: 298 for our 256
    spectrum = fp_handoff.spectrum_from_object(data.truth.object[0], grid)
    pupil = model.support.numpy()
    with torch.no_grad():
        ours = model.led_centres().numpy()
    misfits = {}
    for name in fp_handoff.ENCODER_VARIANTS:
        corners = fp_handoff.ptylab_corners(
            fp_handoff.encoder_variant(leds, name), data.wavelength_m, data.distance_m,
            model.scope.object_pixel_m * model.scope.grid[0] / frame, frame, grid)
        if name == "yx":  # the nominal windows sit at minus our offsets, rounded
            np.testing.assert_array_equal(corners - (grid // 2 - frame // 2),
                                          np.round(-ours))
        images = fp_handoff.window_images(spectrum, corners, pupil)
        misfits[name] = fp_handoff.geometry_misfit(images, data.patterns)
        if name == "yx":
            centre = int(np.argmin(np.abs(leds).sum(1)))
            assert fp_handoff.geometry_misfit(images[[centre]],
                                              data.patterns[[centre]]) < 1e-5
    assert misfits["yx"] < 0.1
    assert min(misfits["xy"], misfits["-xy"]) > 5 * misfits["yx"]
    assert misfits["-yx"] > misfits["yx"]  # the twin: only the phase tells them apart
