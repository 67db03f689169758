"""4D-STEM data: (scan_y, scan_x, ky, kx) arrays from NPY, HDF5 or EMPAD ``.raw`` files.

The calibration is not in these files: it comes from ``STEMCalibration`` (config or CLI). The
result is a ``DiffractionData`` like any other, so the generic loop is unchanged. The
reciprocal pixel dk (1/m) is stored as ``detector_pixel_size_m = lambda * dk`` (the angle per
pixel) at a nominal camera length ``distance_m = 1``, which makes the far-field relation
lambda z / (N dx) give the reconstruction pixel 1 / (N dk).

EMPAD ``.raw``: little-endian float32 frames of 128 x 130 pixels, one per scan point in raster
order; the last two rows of each frame are metadata and are dropped.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import h5py
import numpy as np

from diffrecon.config import doc
from diffrecon.data.container import DiffractionData
from diffrecon.data.hdf5 import open_hdf5
from diffrecon.errors import DataFormatError
from diffrecon.physics.optics import electron_wavelength_m

EMPAD_FRAME = (130, 128)  # rows (128 detector + 2 metadata) x columns
EMPAD_ROWS = 128


@dataclasses.dataclass
class STEMCalibration:
    """What a 4D-STEM file does not say. Units in the names; (y, x) order for pairs."""

    voltage_v: float = doc(300e3, "accelerating voltage, volts")
    scan_step_m: list[float] = doc([1e-10, 1e-10], "scan step (y, x), metres")
    scan_shape: list[int] = doc([], "scan points (rows, columns): needed for .raw / 3D data")
    scan_rotation_deg: float = doc(0.0, "rotation of the scan axes against the detector, deg")
    reciprocal_pixel_per_m: float | None = doc(None, "detector pixel in 1/m (dk)")
    convergence_mrad: float | None = doc(None, "probe semi-angle, mrad")
    convergence_radius_px: float | None = doc(
        None, "bright-field disc radius in detector pixels (gives dk with convergence_mrad)")
    dose_e_per_A2: float | None = doc(None, "rescale counts to this dose (per scan-step area)")
    binning: int = doc(1, "sum b x b detector pixels")
    crop_px: int | None = doc(None, "crop the detector to this size about the disc centre")
    key: str | None = doc(None, "HDF5 dataset (default: the only 3D/4D dataset)")
    defocus_m: float | None = doc(None, "nominal C10, metres (written to the metadata)")


def write_empad(path: str | os.PathLike[str], frames: np.ndarray) -> None:
    """Write (scan_y, scan_x, 128, 128) frames as an EMPAD ``.raw`` (metadata rows zero)."""
    frames = np.asarray(frames, dtype="<f4")
    out = np.zeros((*frames.shape[:2], *EMPAD_FRAME), dtype="<f4")
    out[..., :EMPAD_ROWS, :] = frames
    out.tofile(os.fspath(path))


def read_empad(path: str | os.PathLike[str], scan_shape: tuple[int, int]) -> np.ndarray:
    """EMPAD frames as (scan_y, scan_x, 128, 128) float32 (a memory map, metadata dropped)."""
    src = os.fspath(path)
    frame_bytes = EMPAD_FRAME[0] * EMPAD_FRAME[1] * 4
    size = os.path.getsize(src)
    rows, columns = scan_shape
    if size != rows * columns * frame_bytes:
        raise DataFormatError(
            src, "<raw>", f"{rows} x {columns} EMPAD frames of 128 x 130 float32 "
            f"({rows * columns * frame_bytes} bytes)",
            f"{size} bytes ({size / frame_bytes:.6g} frames)")
    raw = np.memmap(src, dtype="<f4", mode="r", shape=(rows, columns, *EMPAD_FRAME))
    return raw[..., :EMPAD_ROWS, :]


def read_array(path: str | os.PathLike[str], calibration: STEMCalibration) -> np.ndarray:
    """The 4D array (scan_y, scan_x, ky, kx) of a .npy, HDF5 or EMPAD .raw file."""
    src = os.fspath(path)
    if not os.path.exists(src):
        raise DataFormatError(src, "<file>", "an existing 4D-STEM file", "no such file")
    shape = tuple(calibration.scan_shape)
    suffix = Path(src).suffix.lower()
    if suffix == ".raw":
        if len(shape) != 2:
            raise DataFormatError(src, "scan_shape", "the scan shape (rows, columns) for an "
                                  "EMPAD .raw file", f"{list(shape)}")
        return read_empad(src, (shape[0], shape[1]))
    key = calibration.key or "<array>"
    if suffix == ".npy":
        array = np.load(src, mmap_mode="r")
    elif h5py.is_hdf5(src):
        with open_hdf5(src) as handle:
            key = calibration.key or _only_dataset(handle, src)
            if key not in handle:
                raise DataFormatError(src, key, "a 4D dataset (scan_y, scan_x, ky, kx)",
                                      "missing")
            array = handle[key][()]
    else:
        raise DataFormatError(src, "<file>", "a .npy, HDF5 or EMPAD .raw file",
                              f"a '{suffix}' file")
    if array.ndim == 3 and len(shape) == 2 and shape[0] * shape[1] == array.shape[0]:
        array = array.reshape(shape[0], shape[1], *array.shape[1:])
    if array.ndim != 4:
        raise DataFormatError(src, key, "a 4D array (scan_y, scan_x, ky, kx) (or 3D with "
                              "scan_shape)", f"shape {array.shape}")
    return array


def _only_dataset(handle: h5py.File, src: str) -> str:
    found: list[str] = []
    handle.visititems(lambda name, node: found.append(name)
                      if isinstance(node, h5py.Dataset) and node.ndim in (3, 4) else None)
    if len(found) != 1:
        raise DataFormatError(src, "<key>", "exactly one 3D/4D dataset (or name it: key)",
                              f"{found or 'none'}")
    return found[0]


def reciprocal_pixel(calibration: STEMCalibration, src: str) -> float:
    """dk in 1/m of the unbinned detector, from dk itself or the disc radius in pixels."""
    if calibration.reciprocal_pixel_per_m is not None:
        return calibration.reciprocal_pixel_per_m
    if calibration.convergence_mrad is not None and calibration.convergence_radius_px:
        wavelength = electron_wavelength_m(calibration.voltage_v)
        return calibration.convergence_mrad * 1e-3 / (wavelength
                                                      * calibration.convergence_radius_px)
    raise DataFormatError(src, "calibration", "reciprocal_pixel_per_m, or convergence_mrad "
                          "with convergence_radius_px", "neither")


def scan_positions(shape: tuple[int, int], step_m: tuple[float, float],
                   rotation_deg: float) -> np.ndarray:
    """Raster positions (N, 2), (y, x) metres, centred, scan axes turned by ``rotation_deg``.

    A positive angle turns the scan counter-clockwise (x towards y) on the detector frame.
    """
    y, x = np.meshgrid(np.arange(shape[0]) * step_m[0], np.arange(shape[1]) * step_m[1],
                       indexing="ij")
    y, x = y.ravel() - y.mean(), x.ravel() - x.mean()
    turn = math.radians(rotation_deg)
    return np.stack([x * math.sin(turn) + y * math.cos(turn),
                     x * math.cos(turn) - y * math.sin(turn)], axis=1)


def crop_and_bin(patterns: np.ndarray, crop_px: int | None, binning: int, src: str
                 ) -> np.ndarray:
    """Crop (N, H, W) about the centre of mass of the mean pattern, then sum b x b blocks."""
    mean = patterns.mean(0)
    if crop_px is not None:
        if crop_px > min(mean.shape):
            raise DataFormatError(src, "crop_px", f"at most {min(mean.shape)}", f"{crop_px}")
        weights = np.clip(mean, 0, None)
        centre = [int(round(float((weights.sum(1 - a) * np.arange(n)).sum() / weights.sum())))
                  for a, n in enumerate(mean.shape)]
        low = [min(max(c - crop_px // 2, 0), n - crop_px) for c, n in zip(centre, mean.shape,
                                                                          strict=True)]
        patterns = patterns[:, low[0] : low[0] + crop_px, low[1] : low[1] + crop_px]
    n, h, w = patterns.shape
    if h % binning or w % binning:
        raise DataFormatError(src, "binning", f"a divisor of the frame {h} x {w}", f"{binning}")
    return patterns.reshape(n, h // binning, binning, w // binning, binning).sum((2, 4))


def to_diffraction(array: np.ndarray, calibration: STEMCalibration, source: str = "<memory>"
                   ) -> DiffractionData:
    """A ``DiffractionData`` from a (scan_y, scan_x, ky, kx) array and its calibration."""
    scan = array.shape[:2]
    patterns = np.asarray(array, dtype=np.float32).reshape(-1, *array.shape[2:])
    patterns = crop_and_bin(patterns, calibration.crop_px, calibration.binning, source)
    metadata = {"voltage_v": str(calibration.voltage_v), "scan_shape": f"{scan[0]} {scan[1]}"}
    if (patterns < 0).any():
        metadata["clipped"] = f"{int((patterns < 0).sum())} negative pixels set to 0"
        patterns = np.clip(patterns, 0, None)
    step = (float(calibration.scan_step_m[0]), float(calibration.scan_step_m[-1]))
    if calibration.dose_e_per_A2 is not None:
        electrons = calibration.dose_e_per_A2 * step[0] * step[1] * 1e20
        patterns *= electrons / max(float(patterns.sum((1, 2)).mean()), 1e-30)
    wavelength = electron_wavelength_m(calibration.voltage_v)
    dk = reciprocal_pixel(calibration, source) * calibration.binning
    for name in ("convergence_mrad", "defocus_m", "dose_e_per_A2"):
        if getattr(calibration, name) is not None:
            metadata[name] = str(getattr(calibration, name))
    return DiffractionData(
        patterns=patterns, wavelength_m=wavelength, distance_m=1.0,
        detector_pixel_size_m=(wavelength * dk, wavelength * dk),
        positions_m=scan_positions((scan[0], scan[1]), step, calibration.scan_rotation_deg),
        source=source, metadata=metadata,
    )


def load_4dstem(path: str | os.PathLike[str], calibration: STEMCalibration) -> DiffractionData:
    """Read a 4D-STEM file (.npy, HDF5, EMPAD .raw) into a ``DiffractionData``."""
    return to_diffraction(read_array(path, calibration), calibration, os.fspath(path))
