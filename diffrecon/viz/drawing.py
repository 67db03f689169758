"""Drawing primitives: complex fields as colour, image panels with robust limits and masks,
block-averaged display of large images, image grids, atomic PNG writes.

Only ``matplotlib.figure.Figure`` is used (no pyplot state): ``Figure.savefig`` renders with the
Agg canvas, so figures can be made from any thread or process without touching a global backend.
Every function takes numpy arrays; callers convert tensors (``tensor.detach().cpu().numpy()``).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import hsv_to_rgb
from matplotlib.figure import Figure

COLUMNS = 4
#: Images wider or taller than this are drawn block-averaged to at most this many pixels per
#: side (a panel is about 400 pixels wide): the report of a 2435^2 object added 820 MiB
#: resident when drawn whole, 120 MiB block-averaged.
MAX_SHOWN = 1024


def complex_to_rgb(z: np.ndarray, *, amplitude_max: float | None = None) -> np.ndarray:
    """Map a complex field to colour: hue = phase, value = amplitude, full saturation.

    Args:
        z: complex field, shape (H, W) (any shape works), arbitrary unit.
        amplitude_max: amplitude shown at full brightness, in the unit of ``z``. Default: the
            99.9th percentile of ``|z|``, so a few hot pixels do not darken the whole image.

    Returns:
        RGB image, shape (*z.shape, 3), float64 in [0, 1]. Phase -pi maps to hue 0 (red) and hue
        runs once round the colour circle over the 2 pi phase range.
    """
    z = np.nan_to_num(np.asarray(z, dtype=np.complex128))
    amplitude = np.abs(z)
    top = amplitude_max
    if top is None:
        top = float(np.percentile(amplitude, 99.9)) if amplitude.size else 0.0
    top = top if top > 0 else 1.0
    hue = (np.angle(z) + np.pi) / (2 * np.pi) % 1.0
    value = np.clip(amplitude / top, 0.0, 1.0)
    return hsv_to_rgb(np.stack([hue, np.ones_like(value), value], axis=-1))


def robust_limits(image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Robust colour limits (0.5-99.5 percentile) over finite pixels inside ``mask``."""
    values = image if mask is None else image[mask]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {}
    low, high = np.percentile(values, [0.5, 99.5])
    return {"vmin": float(low), "vmax": float(high)} if high > low else {}


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Means over ``factor`` x ``factor`` blocks of the first two axes (any trailing ones, e.g.
    RGB, kept); edge rows and columns that do not fill a block are dropped."""
    if factor <= 1:
        return image
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    blocks = image[:h, :w].reshape(h // factor, factor, w // factor, factor, *image.shape[2:])
    return blocks.mean(axis=(1, 3))


def shrink_factor(shape: Sequence[int]) -> int:
    return max(1, math.ceil(max(shape[:2]) / MAX_SHOWN))


def for_display(image: np.ndarray) -> np.ndarray:
    """``image`` (H, W, ...) block-averaged to at most ``MAX_SHOWN`` pixels per side (complex
    fields average as complex numbers), or itself if already that small."""
    return block_mean(image, shrink_factor(image.shape))


def draw_image(
    ax: Axes,
    image: np.ndarray,
    title: str,
    cmap: str = "gray",
    *,
    mask: np.ndarray | None = None,
    colorbar: bool = True,
    factor: int = 1,
) -> None:
    """Draw one image panel; real images get robust limits from the pixels inside ``mask``.

    Pixels outside ``mask`` (shape of ``image``) are drawn dimmed so they stay visible but do
    not set the colour scale. Each pixel of ``image`` stands for ``factor`` x ``factor``
    original pixels (an image reduced by the caller): axes keep original pixel coordinates.
    An image larger than ``MAX_SHOWN`` per side is block-averaged here.
    """
    extra = shrink_factor(image.shape)
    if extra > 1:
        image = block_mean(image, extra)
        mask = None if mask is None else block_mean(mask.astype(np.float32), extra) > 0.5
        factor *= extra
    extent = None if factor == 1 else (
        -0.5, image.shape[1] * factor - 0.5, image.shape[0] * factor - 0.5, -0.5)
    real = image.ndim == 2
    shown = ax.imshow(image, cmap=cmap if real else None, extent=extent,
                      **(robust_limits(image, mask) if real else {}))
    if mask is not None and not mask.all():
        shade = np.zeros((*mask.shape, 4), dtype=np.float32)
        shade[..., 3] = np.where(mask, 0.0, 0.6)
        ax.imshow(shade, extent=extent)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if colorbar and real:
        ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)


def bounding_box(mask: np.ndarray) -> tuple[slice, slice] | None:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def orthogonal_slices(volume: np.ndarray) -> np.ndarray:
    """The central (H, W), (D, W) and (D, H) slices of a (D, H, W) volume side by side, float64,
    separated and padded by NaN (drawn blank)."""
    d, h, w = volume.shape
    cuts = [volume[d // 2], volume[:, h // 2], volume[:, :, w // 2]]
    rows = max(cut.shape[0] for cut in cuts)
    padded = [np.pad(np.asarray(cut, dtype=np.float64), ((0, rows - cut.shape[0]), (0, 1)),
                     constant_values=np.nan) for cut in cuts]
    return np.concatenate(padded, axis=1)[:, :-1]


def save_image_grid(path: str | Path, images: Sequence[np.ndarray], titles: Sequence[str]) -> None:
    """Save images in one row (at most 4 per row), one title each, as PNG (atomically).

    Args:
        path: output PNG file.
        images: each (H, W) real (grey with colour bar), (H, W) complex (``complex_to_rgb``) or
            (H, W, 3) RGB in [0, 1].
        titles: one per image.
    """
    if len(images) != len(titles):
        raise ValueError(f"save_image_grid: {len(images)} images but {len(titles)} titles")
    columns = min(COLUMNS, max(1, len(images)))
    rows = max(1, math.ceil(len(images) / columns))
    figure = Figure(figsize=(3.2 * columns, 3.2 * rows), dpi=100, layout="constrained")
    for k, (image, text) in enumerate(zip(images, titles, strict=True)):
        image = np.asarray(image)
        shown = complex_to_rgb(image) if np.iscomplexobj(image) else image.astype(np.float64)
        draw_image(figure.add_subplot(rows, columns, k + 1), shown, text)
    save_atomic(figure, Path(path))


def save_atomic(figure: Figure, path: Path) -> None:
    """Render ``figure`` as PNG to a temporary file beside ``path``, then rename it over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".png")
    os.close(handle)
    try:
        figure.savefig(temporary, format="png", dpi=100)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
