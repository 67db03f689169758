"""Hand-off files between ``bench_electron.py`` and the peer runners (4D-STEM, HDF5).

Pure NumPy + h5py, no diffrecon and no peer package: the writer runs in our environment, the
reader inside a peer's own virtual environment (``ptyrad_electron.py``).

Hand-off layout (one HDF5 file, SI units):
    measurements      (N, K, K) float32 counts, DC-centred (as on the detector)
    positions_m       (N, 2) float64 probe centres (y, x), metres, raster order (slow, fast)
    our_corners_px    (N, 2) float64 probe-window corners on diffrecon's object grid, pixels
    ptyrad_corners_px (N, 2) float64 the same windows on PtyRAD's object canvas (its
                      ``crop_pos + probe_pos_shifts``: window corner, (y, x), pixels)
    attrs: format, voltage_v, convergence_mrad, pixel_size_m, defocus_m (C10, > 0 =
        overfocus), cs_m (C30), slices, slice_thickness_m, scan_shape, iterations,
        object_offset_px (integer (y, x): PtyRAD canvas pixel = ours + offset), ptyrad_extent_px

Peer result layout: ``phase`` (S, H, W) radians and ``amplitude`` (S, H, W) on the peer's
canvas, ``iteration_s`` (I,) seconds per iteration, ``loss`` (I,), attrs (package, version,
settings as JSON).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

FORMAT = "diffrecon-electron-handoff/1"


@dataclasses.dataclass
class HandOff:
    """Everything a peer needs to reconstruct one simulated 4D-STEM file (SI units)."""

    measurements: np.ndarray
    positions_m: np.ndarray
    our_corners_px: np.ndarray
    voltage_v: float
    convergence_mrad: float
    pixel_size_m: float
    defocus_m: float
    cs_m: float
    slices: int
    slice_thickness_m: float
    scan_shape: tuple[int, int]
    iterations: int
    ptyrad_corners_px: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2)))
    object_offset_px: tuple[int, int] = (0, 0)
    ptyrad_extent_px: tuple[int, int] = (0, 0)


def ptyrad_canvas(positions_px: np.ndarray, frame_px: int) -> tuple[np.ndarray, np.ndarray]:
    """PtyRAD's object canvas (Ny, Nx) and the corner shift that centres the scan on it.

    PtyRAD sizes its object as 1.2 x (scan span + probe window), rounded up, and places the
    probe window of the mean scan position so that its centre lands on the canvas centre
    (``extent // 2``); corners are then ``positions_px - mean + extent // 2 - frame // 2``.
    (PtyRAD sizes its canvas after jittering the positions, so its own may be a pixel or two
    larger; only the corners, which it takes as given, fix the registration.)

    Args:
        positions_px: probe centres (N, 2), (y, x), pixels (any origin).
        frame_px: probe window side K, pixels.

    Returns:
        extent (2,) int canvas shape, and shift (2,) int added to the mean-centred positions.
    """
    span = positions_px.max(axis=0) - positions_px.min(axis=0)
    extent = (1.2 * np.ceil(span + frame_px)).astype(int)
    return extent, extent // 2 - frame_px // 2


def ptyrad_corners(positions_m: np.ndarray, pixel_size_m: float, frame_px: int,
                   our_corners_px: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probe-window corners in PtyRAD's convention, on a canvas commensurate with ours.

    The corners follow PtyRAD's own layout (``ptyrad_canvas``) up to a sub-pixel constant, which
    is chosen so that PtyRAD's canvas pixels coincide with diffrecon's object pixels: canvas
    pixel p covers the same sample point as our object pixel p - offset.

    Args:
        positions_m: probe centres (N, 2), (y, x), metres.
        pixel_size_m: sample-plane pixel, metres.
        frame_px: probe window side K, pixels.
        our_corners_px: our probe-window corners (N, 2) on our object grid, pixels.

    Returns:
        corners (N, 2) float64 pixels, integer offset (2,), canvas extent (2,).
    """
    centres = np.asarray(positions_m, np.float64) / pixel_size_m
    extent, shift = ptyrad_canvas(centres, frame_px)
    conventional = centres - centres.mean(axis=0) + shift
    offset = np.round(np.mean(conventional - our_corners_px, axis=0)).astype(int)
    return our_corners_px + offset, offset, extent


def crop_to_grid(canvas: np.ndarray, offset: tuple[int, int], shape: tuple[int, int],
                 fill: float = 0.0) -> np.ndarray:
    """Our object grid (..., H, W) cut from a peer canvas (..., Hp, Wp).

    ``out[..., q] = canvas[..., q + offset]``; pixels outside the canvas are ``fill``.
    """
    out = np.full((*canvas.shape[:-2], *shape), fill, dtype=canvas.dtype)
    source = [slice(max(o, 0), min(o + n, c))
              for o, n, c in zip(offset, shape, canvas.shape[-2:], strict=True)]
    target = [slice(s.start - o, s.stop - o) for s, o in zip(source, offset, strict=True)]
    out[(..., *target)] = canvas[(..., *source)]
    return out


SCALARS = ("voltage_v", "convergence_mrad", "pixel_size_m", "defocus_m", "cs_m",
           "slice_thickness_m")
ARRAYS = ("measurements", "positions_m", "our_corners_px", "ptyrad_corners_px")


def with_ptyrad_layout(handoff: HandOff) -> HandOff:
    """``handoff`` with PtyRAD's window corners, canvas offset and extent filled in."""
    frame = int(handoff.measurements.shape[-1])
    corners, offset, extent = ptyrad_corners(handoff.positions_m, handoff.pixel_size_m, frame,
                                             handoff.our_corners_px)
    return dataclasses.replace(handoff, ptyrad_corners_px=corners,
                               object_offset_px=(int(offset[0]), int(offset[1])),
                               ptyrad_extent_px=(int(extent[0]), int(extent[1])))


def write_handoff(path: Path, handoff: HandOff) -> None:
    """Write ``handoff`` to ``path``, with PtyRAD's layout (``with_ptyrad_layout``)."""
    handoff = with_ptyrad_layout(handoff)
    with h5py.File(path, "w") as f:
        for name in ARRAYS:
            f.create_dataset(name, data=getattr(handoff, name))
        f.attrs["format"] = FORMAT
        for name in SCALARS:
            f.attrs[name] = float(getattr(handoff, name))
        for name in ("slices", "iterations"):
            f.attrs[name] = int(getattr(handoff, name))
        for name in ("scan_shape", "object_offset_px", "ptyrad_extent_px"):
            f.attrs[name] = np.asarray(getattr(handoff, name), dtype=np.int64)


def read_handoff(path: Path) -> HandOff:
    """Read a hand-off file; ValueError naming the file and key if it is not one."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path}: attribute 'format': expected {FORMAT!r}, "
                             f"found {f.attrs.get('format')!r}")
        missing = [name for name in ARRAYS if name not in f]
        if missing:
            raise ValueError(f"{path}: dataset {missing[0]!r}: expected an array, found nothing")
        arrays = {name: f[name][()] for name in ARRAYS}
        scalars: dict[str, Any] = {name: float(f.attrs[name]) for name in SCALARS}
        integers = {name: int(f.attrs[name]) for name in ("slices", "iterations")}
        tuples = {name: tuple(int(v) for v in f.attrs[name])
                  for name in ("scan_shape", "object_offset_px", "ptyrad_extent_px")}
    return HandOff(**arrays, **scalars, **integers, **tuples)


def write_result(path: Path, phase: np.ndarray, amplitude: np.ndarray, iteration_s: list[float],
                 loss: list[float], info: dict[str, Any]) -> None:
    """A peer's reconstruction: slices (S, H, W) on its canvas, timings and settings."""
    with h5py.File(path, "w") as f:
        f.create_dataset("phase", data=np.asarray(phase, np.float32))
        f.create_dataset("amplitude", data=np.asarray(amplitude, np.float32))
        f.create_dataset("iteration_s", data=np.asarray(iteration_s, np.float64))
        f.create_dataset("loss", data=np.asarray(loss, np.float64))
        f.attrs["info"] = json.dumps(info)


def read_result(path: Path) -> dict[str, Any]:
    """The arrays of ``write_result`` and its ``info`` dictionary."""
    with h5py.File(path, "r") as f:
        out: dict[str, Any] = {name: f[name][()] for name in
                               ("phase", "amplitude", "iteration_s", "loss")}
        out["info"] = json.loads(f.attrs["info"])
    return out
