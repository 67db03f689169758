"""Report figures (viz) and the TensorBoard run logger (tracking)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import rgb_to_hsv
from matplotlib.image import imread
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from diffrecon.tracking import Logger, NullLogger, RunLogger
from diffrecon.viz import complex_to_rgb, save_image_grid, save_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _field(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.uniform(0.5, 1.0, shape) * np.exp(1j * rng.uniform(-3, 3, shape))).astype(
        np.complex64
    )


def _check_png(path: Path, min_pixels: int = 200) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.ndim == 3 and min_pixels <= image.shape[0] <= 4000
    assert min_pixels <= image.shape[1] <= 4000
    assert not list(path.parent.glob(f".{path.stem}-*")), "temporary file left behind"
    return image


def test_complex_to_rgb_shape_range_and_hue():
    z = _field((16, 20))
    rgb = complex_to_rgb(z)
    assert rgb.shape == (16, 20, 3)
    assert rgb.min() >= 0 and rgb.max() <= 1
    zero, pi = complex_to_rgb(np.array([[1.0 + 0j, -1.0 + 0j]]))[0]
    assert not np.allclose(zero, pi)
    hue = rgb_to_hsv(np.stack([zero, pi]))[:, 0]
    assert abs(hue[0] - hue[1]) == pytest.approx(0.5, abs=1e-6)
    # amplitude sets the value: half amplitude at amplitude_max=1 is half as bright
    bright, dim = complex_to_rgb(np.array([1.0, 0.5j]), amplitude_max=1.0)
    assert bright.max() == pytest.approx(1.0) and dim.max() == pytest.approx(0.5)
    assert np.all(complex_to_rgb(np.zeros((3, 3), complex)) == 0)


def test_save_report_full(tmp_path):
    rng = np.random.default_rng(1)
    shape = (64, 72)
    illumination = np.zeros(shape)
    illumination[10:50, 12:60] = 1.0
    positions = rng.uniform(5, 30, (20, 2))
    results = {
        "object": _field((3, *shape)),
        "illumination": illumination,
        "probe": _field((3, 16, 16), seed=2) * np.array([1.0, 0.5, 0.1])[:, None, None],
        "positions_px": positions,
        "positions_initial_px": positions + rng.normal(0, 1, positions.shape),
        "support": np.abs(np.arange(64)[:, None] - 32) < 10,
        "pattern": rng.poisson(5.0, (32, 32)).astype(np.float32),
        "pupil": _field((32, 32), seed=3),
    }
    epochs = 12
    history = {
        "loss": list(np.geomspace(10, 0.1, epochs)),
        "metric/object_error": [0.5 if k % 3 == 0 else np.nan for k in range(epochs)],
        "metric/probe_error": list(np.geomspace(1, 0.2, epochs)),
    }
    path = tmp_path / "run" / "report.png"
    save_report(path, results, history, title="full report")
    image = _check_png(path, min_pixels=800)
    assert image.shape[1] > image.shape[0]  # 4 columns, 4 rows of wider-than-tall panels
    save_report(path, results, history)  # overwrite in place
    _check_png(path)


def test_save_report_minimal(tmp_path):
    path = tmp_path / "report.png"
    save_report(path, {"object": _field((32, 32))}, {"loss": [3.0, 2.0, 1.5]})
    image = _check_png(path)
    assert image.shape[1] < 1400  # three panels in one row
    save_report(tmp_path / "empty.png", {}, {})
    _check_png(tmp_path / "empty.png", min_pixels=50)


def test_save_image_grid(tmp_path):
    images = [_field((24, 24)), np.linspace(0, 1, 24 * 24).reshape(24, 24), np.ones((24, 24, 3))]
    save_image_grid(tmp_path / "grid.png", images, ["complex", "real", "rgb"])
    _check_png(tmp_path / "grid.png", min_pixels=150)
    with pytest.raises(ValueError):
        save_image_grid(tmp_path / "bad.png", images, ["one"])


def test_run_logger_tags(tmp_path):
    log_dir = tmp_path / "tensorboard"
    with RunLogger(log_dir) as logger:
        assert isinstance(logger, Logger)
        for step in (1, 2):
            logger.scalars({"loss/total": 1.0 / step, "lr/object": 0.1}, step)
            logger.scalar("metric/object_error", 0.5 / step, step)
        logger.complex_image("object", _field((16, 16)), 2)
        logger.image("probe/mode0/rgb", complex_to_rgb(_field((8, 8))), 2)
        logger.image("flat", np.ones((8, 8)), 2)
        logger.text("config", "```\nepochs = 2\n```")
        logger.hparams(
            {"modality": "ptycho", "epochs": np.int64(2), "subpixel": True, "lr": 0.1},
            {"final/loss/total": 0.5},
        )
        with pytest.raises(ValueError):
            logger.image("bad", np.ones((2, 2, 2, 2)), 0)
    assert list(log_dir.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert {"loss/total", "lr/object", "metric/object_error"} <= set(tags["scalars"])
    assert [e.value for e in events.Scalars("loss/total")] == [1.0, 0.5]
    assert {"object/amplitude", "object/phase", "probe/mode0/rgb", "flat"} <= set(tags["images"])
    amplitude = events.Images("object/amplitude")[-1]
    assert (amplitude.height, amplitude.width, amplitude.step) == (16, 16, 2)
    assert "config/text_summary" in tags["tensors"]
    plugins = events.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugins
    assert "_hparams_/experiment" in plugins


def test_null_logger_accepts_everything():
    logger = NullLogger()
    assert isinstance(logger, Logger)
    with logger as same:
        same.scalar("loss/total", 1.0, 0)
        same.scalars({"loss/total": 1.0}, 1)
        same.image("image", np.zeros((4, 4)), 1)
        same.complex_image("object", np.zeros((4, 4), complex), 1)
        same.text("config", "x")
        same.hparams({"epochs": 1}, {"final/loss/total": 0.0})
        same.flush()
    logger.close()


def test_block_means_of_a_reduced_image():
    from diffrecon.viz.drawing import block_mean

    image = np.arange(7 * 9, dtype=np.float64).reshape(7, 9)
    shown = block_mean(image, 3)  # the last row (7 = 2 * 3 + 1) does not fill a block
    assert shown.shape == (2, 3)
    assert shown[1, 2] == pytest.approx(image[3:6, 6:9].mean())
    z = _field((6, 6))
    assert block_mean(z, 2)[0, 0] == pytest.approx(z[:2, :2].mean())  # complex means
    rgb = np.random.default_rng(0).uniform(size=(4, 4, 3))
    assert block_mean(rgb, 2).shape == (2, 2, 3)
    assert block_mean(image, 1) is image


def test_large_object_is_drawn_reduced_in_object_pixel_coordinates(tmp_path):
    """A 2500^2 object (a 2000-position scan) is drawn block-averaged, at most MAX_SHOWN
    pixels per side, with axes and scan positions still in object pixels; the report's
    numpy memory stays far below a full-resolution RGBA shade (2500^2 x 4 float64 = 191 MiB)."""
    import tracemalloc

    from matplotlib.figure import Figure

    from diffrecon.viz import MAX_SHOWN
    from diffrecon.viz.report import _object_panels

    n = 2500
    obj = np.ones((n, n), np.complex64) * np.exp(0.3j)
    obj[: n // 2] *= 0.5  # top half darker
    illumination = np.zeros((n, n), np.float32)
    illumination[100:2300, 200:2400] = 1.0
    positions = np.array([[100.0, 200.0], [2100.0, 2200.0]])
    results = {"object": obj, "illumination": illumination, "positions_px": positions,
               "probe": _field((1, 64, 64))}
    figure = Figure()
    panels = _object_panels(results)
    axes = [figure.add_subplot(1, len(panels), k + 1) for k in range(len(panels))]
    for draw, ax in zip(panels, axes, strict=True):
        draw(ax)
    amplitude, phase, scan = axes
    shown = amplitude.images[0].get_array()
    assert max(shown.shape) <= MAX_SHOWN
    assert np.nanmax(shown) == pytest.approx(1.0) and np.nanmin(shown) == pytest.approx(0.5)
    assert np.allclose(phase.images[0].get_array(), 0.3, atol=1e-5)  # phase of the means
    left, right, bottom, top = scan.images[0].get_extent()
    assert (left, top) == (-0.5, -0.5) and right >= n - 3 and bottom >= n - 3
    assert scan.get_xlim() == pytest.approx((-0.5, right))
    centres = scan.lines[-1].get_xydata()  # refined positions, window centres, object pixels
    np.testing.assert_allclose(centres, positions[:, ::-1] + 32)

    tracemalloc.start()
    save_report(tmp_path / "large.png", results, {"loss": [2.0, 1.0]})
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 120 * 2**20, f"{peak / 2**20:.0f} MiB traced"
    _check_png(tmp_path / "large.png")


def test_tensorboard_logs_a_large_object_block_averaged():
    """An object above MAX_SHOWN per side reaches TensorBoard block-averaged (complex means),
    the probe untouched."""
    from types import SimpleNamespace

    from diffrecon.recon.callbacks import TensorBoard
    from diffrecon.viz import MAX_SHOWN, for_display

    logged = {}

    class Recorder(NullLogger):
        def complex_image(self, tag_prefix, field, step):
            logged[tag_prefix] = np.asarray(field)

    obj = np.full((1, 2100, 1500), np.exp(0.4j), np.complex64)
    probe = _field((1, 64, 64))
    model = SimpleNamespace(results=lambda: {"object": obj, "probe": probe})
    TensorBoard(Recorder(), {}).images(SimpleNamespace(model=model), step=10)
    assert logged["object"].shape == (700, 500)  # 3 x 3 blocks
    assert max(logged["object"].shape) <= MAX_SHOWN
    np.testing.assert_allclose(logged["object"], np.exp(0.4j), atol=1e-6)
    np.testing.assert_array_equal(logged["probe/mode0"], probe[0])
    small = _field((40, 30))
    assert for_display(small) is small
