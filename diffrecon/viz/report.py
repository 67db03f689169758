"""The one-page ``report.png`` of a reconstruction: a panel for each result present (object,
probe modes, scan, support, pattern, pupil, LEDs, aberrations, loss and metric curves)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from diffrecon.viz.drawing import (
    COLUMNS,
    block_mean,
    bounding_box,
    complex_to_rgb,
    draw_image,
    orthogonal_slices,
    robust_limits,
    save_atomic,
    shrink_factor,
)

Panel = Callable[[Axes], None]

#: Object pixels with illumination below this fraction of its maximum are cropped or dimmed.
ILLUMINATION_THRESHOLD = 0.01
#: At most this many probe modes get a panel.
MAX_PROBE_MODES = 4
#: At most this many object slices get a phase panel.
MAX_SLICES = 8
#: Lab-frame maps of a volume reconstruction (Bragg CDI): title, colour map, display scale.
VOLUME_MAPS = {
    "amplitude": ("amplitude (lab frame)", "gray", 1.0),
    "phase": ("phase, ramp removed, unwrapped (rad)", "twilight", 1.0),
    "displacement_m": ("displacement along Q (pm)", "coolwarm", 1e12),
    "strain": ("strain along Q (1e-3)", "coolwarm", 1e3),
}


def _illuminated(
    results: Mapping[str, Any], shape: tuple[int, ...]
) -> tuple[tuple[slice, slice], np.ndarray | None]:
    """Bounding box and mask of object pixels lit above ``ILLUMINATION_THRESHOLD`` of the max."""
    full = (slice(None), slice(None))
    if "illumination" not in results:
        return full, None
    illumination = np.asarray(results["illumination"], dtype=np.float64)
    if illumination.shape != shape or not np.nanmax(illumination) > 0:
        return full, None
    mask = illumination > ILLUMINATION_THRESHOLD * np.nanmax(illumination)
    return bounding_box(mask) or full, mask


def _object_panels(results: Mapping[str, Any]) -> list[Panel]:
    """Amplitude and phase of slice 0, summed phase (S > 1) and scan positions. An object
    larger than ``MAX_SHOWN`` per side is shown block-averaged (complex means: the phase of
    the mean, not the mean of wrapped phases)."""
    obj = np.asarray(results["object"])
    obj = obj.reshape(-1, *obj.shape[-2:])
    full_box, full_mask = _illuminated(results, obj.shape[-2:])
    factor = shrink_factor(obj.shape[-2:])
    if factor > 1:
        obj = np.stack([block_mean(layer, factor) for layer in obj])
    mask = box = None
    if full_mask is not None:
        mask = block_mean(full_mask.astype(np.float32), factor) > 0.5 if factor > 1 else full_mask
        box = bounding_box(mask) if factor > 1 else full_box
    box = box or (slice(None), slice(None))
    inside = None if mask is None else mask[box]
    first, summed = obj[0][box], np.angle(obj).sum(0)[box]
    panels: list[Panel] = [
        lambda ax: draw_image(ax, np.abs(first), "object amplitude", mask=inside),
        lambda ax: draw_image(ax, np.angle(first), "object phase (rad)", "twilight", mask=inside),
    ]
    if obj.shape[0] > 1:
        panels.append(
            lambda ax: draw_image(
                ax,
                summed,
                f"phase summed over {obj.shape[0]} slices (rad)",
                "twilight",
                mask=inside,
            )
        )
    if "positions_px" in results:
        panels.append(lambda ax: _scan(ax, results, np.abs(obj[0]), mask, factor))
    if obj.shape[0] > 1:  # multislice: the phase of every slice (at most 8), on one scale
        phases = np.angle(obj)[(slice(None), *box)]
        within = None if inside is None else np.broadcast_to(inside, phases.shape)
        limits = robust_limits(phases, within)
        panels += [(lambda ax, s=s: _slice(ax, phases[s], f"slice {s} phase (rad)", limits))
                   for s in range(min(obj.shape[0], MAX_SLICES))]
    return panels


def _volume_panels(results: Mapping[str, Any]) -> list[Panel]:
    """Central orthogonal slices (z-, y- and x-normal) of a 3D reconstruction and its maps."""
    panels: list[Panel] = []
    if "object" in results:
        obj = np.asarray(results["object"])
        panels += [lambda ax: draw_image(ax, orthogonal_slices(np.abs(obj)), "object amplitude "
                                     "(detector grid; 3 central slices)"),
                   lambda ax: draw_image(ax, orthogonal_slices(np.angle(obj)), "object phase (rad)",
                                     "twilight")]
    for key, (title, cmap, scale) in VOLUME_MAPS.items():
        if key in results and np.ndim(results[key]) == 3:
            image = orthogonal_slices(np.asarray(results[key], dtype=np.float64) * scale)
            panels.append(lambda ax, i=image, t=title, c=cmap: draw_image(ax, i, t, c))
    return panels


def _slice(ax: Axes, image: np.ndarray, title: str, limits: dict[str, float]) -> None:
    shown = ax.imshow(image, cmap="twilight", **limits)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)


def _aberration_panel(results: Mapping[str, Any]) -> Panel:
    """Fitted probe aberrations (``<name>_m`` scalars) as a text table, nm / um."""
    rows = [(name[:-2], float(value)) for name, value in results.items()
            if name.startswith("C") and name.endswith("_m") and np.ndim(value) == 0]

    def draw(ax: Axes) -> None:
        ax.axis("off")
        ax.set_title("probe aberrations", fontsize=9)
        text = "\n".join(f"{name:>5} = {value * 1e9:10.3f} nm" for name, value in rows)
        ax.text(0.05, 0.95, text, family="monospace", fontsize=8, va="top",
                transform=ax.transAxes)

    return draw


def _scan(
    ax: Axes, results: Mapping[str, Any], amplitude: np.ndarray, mask: np.ndarray | None,
    factor: int = 1,
) -> None:
    """Scan positions over the full object amplitude; initial ones and displacements if given.

    With a ``probe`` present, positions are probe-window corners and are drawn at the window
    centre (corner + probe shape // 2); otherwise they are drawn as given. ``amplitude`` may
    be block-averaged by ``factor`` (positions stay in object pixels).
    """
    count = len(np.asarray(results["positions_px"]).reshape(-1, 2))
    draw_image(ax, amplitude, f"scan positions ({count})", mask=mask, colorbar=False,
           factor=factor)
    factor *= shrink_factor(amplitude.shape)
    offset = np.zeros(2)
    if "probe" in results:
        offset = np.asarray(np.shape(results["probe"])[-2:]) // 2
    end = np.asarray(results["positions_px"], dtype=np.float64).reshape(-1, 2) + offset
    if "positions_initial_px" in results:
        start = np.asarray(results["positions_initial_px"], np.float64).reshape(-1, 2) + offset
        if start.shape == end.shape:
            ax.plot(
                np.stack([start[:, 1], end[:, 1]]),
                np.stack([start[:, 0], end[:, 0]]),
                "-",
                color="tab:red",
                lw=0.6,
            )
        ax.plot(start[:, 1], start[:, 0], ".", color="tab:orange", ms=2, label="initial")
    ax.plot(end[:, 1], end[:, 0], ".", color="tab:cyan", ms=2, label="refined")
    if "positions_initial_px" in results:
        ax.legend(fontsize=7, loc="upper right", markerscale=3)
    ax.set_xlim(-0.5, amplitude.shape[1] * factor - 0.5)
    ax.set_ylim(amplitude.shape[0] * factor - 0.5, -0.5)


def _probe_panels(results: Mapping[str, Any]) -> list[Panel]:
    """One colour panel per probe mode (first ``MAX_PROBE_MODES``) titled with its power share.

    Each mode is scaled to its own maximum, so weak modes stay readable; the title gives power.
    """
    probe = np.asarray(results["probe"])
    probe = probe.reshape(-1, *probe.shape[-2:])
    power = np.sum(np.abs(probe) ** 2, axis=(-2, -1))
    share = 100 * power / power.sum() if power.sum() > 0 else np.zeros_like(power)
    return [
        (
            lambda ax, m=m: draw_image(
                ax,
                complex_to_rgb(probe[m]),
                f"probe mode {m} ({share[m]:.1f}%)",
                colorbar=False,
            )
        )
        for m in range(min(MAX_PROBE_MODES, probe.shape[0]))
    ]


def _led_panels(results: Mapping[str, Any]) -> list[Panel]:
    """Fourier ptychography: Zernike coefficients of the pupil, LEDs calibrated vs nominal."""
    noll = np.asarray(results["zernike_noll"])
    waves = np.asarray(results.get("pupil_zernike_waves", np.zeros(len(noll))))
    nominal = np.asarray(results["led_positions_nominal_m"]) * 1e3
    found = np.asarray(results["led_positions_m"]) * 1e3
    bright = np.asarray(results.get("brightfield", np.zeros(len(found), bool)), bool)

    def bars(ax: Axes) -> None:
        ax.bar(noll, waves)
        ax.set_xticks(noll)  # whole Noll indices, also when few coefficients are fitted
        ax.set_xlabel("Noll index", fontsize=8)
        ax.set_ylabel("waves rms", fontsize=8)
        ax.set_title("pupil Zernike coefficients", fontsize=9)

    def leds(ax: Axes) -> None:
        ax.scatter(nominal[:, 1], nominal[:, 0], s=12, facecolors="none", edgecolors="gray",
                   label="nominal")
        ax.scatter(found[~bright, 1], found[~bright, 0], s=5, c="tab:blue", label="dark-field")
        ax.scatter(found[bright, 1], found[bright, 0], s=5, c="tab:orange", label="bright-field")
        ax.set_aspect("equal")
        ax.legend(fontsize=6)
        na = float(results.get("synthetic_na", float("nan")))
        ax.set_title(f"LEDs (mm), synthetic NA {na:.3g}", fontsize=9)

    return [bars, leds]


def _curve_panels(history: Mapping[str, Sequence[float]]) -> list[Panel]:
    """Semilog-y ``loss`` vs epoch, and all ``metric/<name>`` curves in a second panel."""
    panels: list[Panel] = []
    loss = np.asarray(history.get("loss", []), dtype=np.float64)
    if loss.size:

        def draw_loss(ax: Axes) -> None:
            epochs = np.arange(1, loss.size + 1)
            keep = np.isfinite(loss) & (loss > 0)
            # a marker where a line cannot show (a single epoch)
            ax.semilogy(epochs[keep], loss[keep], marker="o" if keep.sum() < 2 else None, ms=3)
            ax.set_xlabel("epoch")
            ax.set_title("loss", fontsize=9)

        panels.append(draw_loss)
    metrics = {
        name.split("/", 1)[1]: np.asarray(values, dtype=np.float64)
        for name, values in history.items()
        if name.startswith("metric/") and len(values)
    }
    if metrics:

        def draw_metrics(ax: Axes) -> None:
            for name, values in metrics.items():
                # metrics may be computed every few epochs only: NaN marks the epochs without one
                keep = np.flatnonzero(np.isfinite(values) & (values > 0))
                ax.semilogy(keep + 1, values[keep], "o-", ms=3, label=name)
            ax.legend(fontsize=7)
            ax.set_xlabel("epoch")
            ax.set_title("metrics", fontsize=9)

        panels.append(draw_metrics)
    return panels


def _pupil_panels(pupil: np.ndarray) -> list[Panel]:
    """The pupil (H, W) complex as amplitude and phase (rad, where the amplitude is above 5%
    of its peak; outside it the phase means nothing and is dimmed)."""
    amplitude = np.abs(pupil)
    inside = amplitude > 0.05 * amplitude.max()
    phase = np.where(inside, np.angle(pupil), 0.0)
    return [lambda ax: draw_image(ax, amplitude, "pupil amplitude"),
            lambda ax: draw_image(ax, phase, "pupil phase (rad)", "twilight", mask=inside)]


def save_report(
    path: str | Path,
    results: Mapping[str, Any],
    history: Mapping[str, Sequence[float]],
    *,
    title: str = "",
) -> None:
    """Write one PNG summarising a reconstruction, with a panel for each key present.

    Args:
        path: output PNG file; written atomically (temp file in the same folder + ``os.replace``).
        results: numpy arrays; every key is optional.
            ``object`` complex (S, H, W) or (H, W): amplitude and phase of slice 0, and the phase
            summed over slices when S > 1. With a 3D ``support`` the object is a volume
            (D, H, W): it, the support, the pattern and any 3D ``VOLUME_MAPS`` (Bragg CDI
            amplitude, phase, displacement, strain) are shown as three central slices.
            ``illumination`` real (H, W): object panels are cropped
            to pixels lit above 1% of its max, and colour limits come from those pixels only.
            ``probe`` complex (M, h, w): up to 4 mode panels titled with their power share (%).
            Multislice: one phase panel per slice (at most 8, shared colour scale) and, with
            ``C<nm>_m`` scalars (Krivanek coefficients, metres), a table of aberrations.
            ``positions_px`` (N, 2) (y, x) in object pixels (probe-window corners when ``probe``
            is present): scatter over the object amplitude, with ``positions_initial_px`` and
            displacement lines if present. ``support`` (H, W), ``pattern`` (H, W) counts
            (shown as log10(1 + x)), ``pupil`` complex (H, W) (amplitude and phase panels).
            Fourier ptychography (with ``led_positions_m`` and ``zernike_noll``): a bar chart
            of ``pupil_zernike_waves`` and the calibrated vs ``led_positions_nominal_m`` LEDs.
        history: per-epoch curves; ``loss`` (semilog-y) and any ``metric/<name>`` (NaN = epoch
            without a value).
        title: figure title.
    """
    panels: list[Panel] = []
    volume = np.ndim(results.get("support", 0)) == 3  # a 3D CDI/Bragg volume, not slices
    if volume:
        panels += _volume_panels(results)
    elif "object" in results:
        panels += _object_panels(results)
    if "probe" in results:
        panels += _probe_panels(results)
    if any(name.startswith("C") and name.endswith("_m") for name in results):
        panels.append(_aberration_panel(results))
    if "support" in results:
        support = np.asarray(results["support"], dtype=np.float64)
        support = orthogonal_slices(support) if volume else support
        panels.append(lambda ax: draw_image(ax, support, "support", colorbar=False))
    if "pattern" in results:
        pattern = np.log10(1 + np.clip(np.asarray(results["pattern"], np.float64), 0, None))
        pattern = orthogonal_slices(pattern) if pattern.ndim == 3 else pattern
        panels.append(lambda ax: draw_image(ax, pattern, "pattern log10(1 + counts)", "magma"))
    if "pupil" in results:
        panels += _pupil_panels(np.asarray(results["pupil"]))
    if "led_positions_m" in results and "zernike_noll" in results:
        panels += _led_panels(results)
    panels += _curve_panels(history)
    columns = min(COLUMNS, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / columns))
    figure = Figure(
        figsize=(4 * columns, 3.5 * rows + (0.4 if title else 0)), dpi=100, layout="constrained"
    )
    for k, draw in enumerate(panels):
        draw(figure.add_subplot(rows, columns, k + 1))
    if title:
        figure.suptitle(title, fontsize=11)
    save_atomic(figure, Path(path))
