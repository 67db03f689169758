"""Figures: complex fields as colour, and the one-page ``report.png`` of a reconstruction.

Only ``matplotlib.figure.Figure`` is used (no pyplot state), so figures can be made from any
thread or process without touching a global backend.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import hsv_to_rgb
from matplotlib.figure import Figure


def complex_to_rgb(z: np.ndarray, *, amplitude_max: float | None = None) -> np.ndarray:
    """Complex (H, W) -> RGB (H, W, 3) in [0, 1]: hue = phase, value = amplitude."""
    z = np.asarray(z)
    amplitude = np.abs(z)
    top = amplitude_max or float(np.percentile(amplitude, 99.9)) or 1.0
    hsv = np.stack([(np.angle(z) + np.pi) / (2 * np.pi), np.ones_like(amplitude),
                    np.clip(amplitude / top, 0, 1)], axis=-1)
    return hsv_to_rgb(hsv)


def _crop_to(mask: np.ndarray | None, *images: np.ndarray) -> list[np.ndarray]:
    if mask is None or not mask.any():
        return list(images)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return [image[sl] for image in images]


def _image(ax: Any, image: np.ndarray, title: str, cmap: str = "gray",
           colorbar: bool = True) -> None:
    limits = {}
    if image.ndim == 2 and np.isfinite(image).any():
        # robust colour limits: a few unconstrained edge pixels must not wash out the image
        limits = dict(zip(("vmin", "vmax"), np.nanpercentile(image, [0.5, 99.5]), strict=True))
    shown = ax.imshow(image, cmap=cmap, **limits)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if colorbar and image.ndim == 2:
        ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)


def _object_panels(results: Mapping[str, Any]) -> list[Callable[[Any], None]]:
    obj = np.asarray(results["object"])
    obj = obj.reshape(-1, *obj.shape[-2:])
    illumination = results.get("illumination")
    mask = None if illumination is None else illumination > 0.05 * np.max(illumination)
    first, summed = _crop_to(mask, obj[0], np.angle(obj).sum(0))
    panels = [lambda ax: _image(ax, np.abs(first), "object amplitude"),
              lambda ax: _image(ax, np.angle(first), "object phase (rad)", "twilight")]
    if obj.shape[0] > 1:
        panels.append(lambda ax: _image(ax, summed, "phase summed over slices", "twilight"))
    if "positions_px" in results:
        def scan(ax: Any) -> None:
            ax.imshow(np.abs(obj[0]), cmap="gray")
            positions = np.asarray(results["positions_px"])
            offset = np.asarray(results["probe"]).shape[-1] / 2 if "probe" in results else 0
            if "positions_initial_px" in results:
                start = np.asarray(results["positions_initial_px"]) + offset
                ax.plot(start[:, 1], start[:, 0], ".", color="tab:orange", ms=2,
                        label="initial")
                end = positions + offset
                ax.plot(np.stack([start[:, 1], end[:, 1]]), np.stack([start[:, 0], end[:, 0]]),
                        "-", color="tab:red", lw=0.5)
            ax.plot(positions[:, 1] + offset, positions[:, 0] + offset, ".", color="tab:cyan",
                    ms=2, label="refined")
            ax.set_title(f"scan positions ({len(positions)})", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        panels.append(scan)
    return panels


def _probe_panels(results: Mapping[str, Any]) -> list[Callable[[Any], None]]:
    probe = np.asarray(results["probe"])
    probe = probe.reshape(-1, *probe.shape[-2:])
    power = np.sum(np.abs(probe) ** 2, axis=(-2, -1))
    power = power / power.sum()
    return [
        (lambda ax, m=m: _image(ax, complex_to_rgb(probe[m]),
                                f"probe mode {m} ({100 * power[m]:.1f}%)", colorbar=False))
        for m in range(min(4, probe.shape[0]))
    ]


def _curves(history: Mapping[str, Sequence[float]]) -> list[Callable[[Any], None]]:
    panels: list[Callable[[Any], None]] = []
    if history.get("loss"):
        def loss(ax: Any) -> None:
            ax.semilogy(np.arange(1, len(history["loss"]) + 1), history["loss"])
            ax.set_xlabel("epoch")
            ax.set_title("loss per pattern", fontsize=9)
        panels.append(loss)
    metrics = {k: np.asarray(v, float) for k, v in history.items() if k.startswith("metric/")}
    if metrics:
        def metric(ax: Any) -> None:
            for name, values in metrics.items():
                epochs = np.flatnonzero(np.isfinite(values)) + 1
                ax.semilogy(epochs, values[epochs - 1], "o-", ms=3, label=name.split("/", 1)[1])
            ax.legend(fontsize=7)
            ax.set_xlabel("epoch")
            ax.set_title("errors vs ground truth", fontsize=9)
        panels.append(metric)
    return panels


def save_report(path: str | Path, results: Mapping[str, Any],
                history: Mapping[str, Sequence[float]], *, title: str = "") -> None:
    """One PNG with the panels whose keys are present in ``results`` and ``history``.

    Keys: ``object`` (S, H, W) complex (cropped to where ``illumination`` > 1% of its max),
    ``positions_px`` (N, 2), ``probe`` (M, h, w), ``support``, ``pattern`` (log scale),
    ``pupil`` complex; history ``loss`` and ``metric/<name>`` curves.
    """
    panels: list[Callable[[Any], None]] = []
    if "object" in results:
        panels += _object_panels(results)
    if "probe" in results:
        panels += _probe_panels(results)
    if "support" in results:
        panels.append(lambda ax: _image(ax, np.asarray(results["support"]), "support"))
    if "pattern" in results:
        panels.append(lambda ax: _image(ax, np.log10(1 + np.asarray(results["pattern"])),
                                        "log10(1 + counts)", "magma"))
    if "pupil" in results:
        panels.append(lambda ax: _image(ax, complex_to_rgb(np.asarray(results["pupil"])),
                                        "pupil", colorbar=False))
    panels += _curves(history)
    columns = min(4, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / columns))
    figure = Figure(figsize=(4 * columns, 3.6 * rows), dpi=100, layout="constrained")
    for k, draw in enumerate(panels):
        draw(figure.add_subplot(rows, columns, k + 1))
    if title:
        figure.suptitle(title, fontsize=11)
    _save_atomic(figure, Path(path))


def save_image_grid(path: str | Path, images: Sequence[np.ndarray],
                    titles: Sequence[str]) -> None:
    """Save images side by side (complex ones as colour), one title each."""
    figure = Figure(figsize=(3 * len(images), 3.2), dpi=100, layout="constrained")
    for k, (image, text) in enumerate(zip(images, titles, strict=True)):
        shown = complex_to_rgb(image) if np.iscomplexobj(image) else image
        _image(figure.add_subplot(1, len(images), k + 1), shown, text, colorbar=False)
    _save_atomic(figure, Path(path))


def _save_atomic(figure: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".png")
    os.close(handle)
    try:
        figure.savefig(temporary, format="png")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
