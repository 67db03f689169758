"""Fourier-ptychography data: the LED table of a data set, and FP files (HDF5, NPY, TIFFs).

In memory (and in the CXI files ``simulate`` writes) an FP data set is a ``DiffractionData``:

    ``patterns``               camera images (N, h, w), counts
    ``wavelength_m``           illumination wavelength, metres
    ``distance_m``             height of the LED-array plane below the sample, metres
    ``detector_pixel_size_m``  camera pixel pitch (y, x), metres (object side = pitch / M)
    ``positions_m``            (N, 2) (y, x) of each image's LED in the array plane relative to
                               the optical axis, metres (the mean of its LEDs if several)
    ``metadata``               ``numerical_aperture`` and ``magnification`` of the objective;
                               with several LEDs per image, ``fp_leds``: JSON
                               ``{"positions_m": [[y, x], ...], "groups": [[i, j, ...], ...]}``
                               (every LED, then the LEDs lit in each image)

``load_fp`` reads three source layouts into that:

* an HDF5 file with ``images`` (N, h, w), ``led_positions_m`` ((N or L), 2 or 3; (y, x[, z])),
  optional ``groups`` (N, K) integer LED indices (-1 = none) and root attributes
  ``wavelength_m``, ``numerical_aperture``, ``magnification``, ``camera_pixel_m``,
  ``led_height_m``;
* a TOML or JSON description holding those scalar keys plus ``images`` (an ``.npy`` stack
  or a folder of TIFFs, relative to the description), ``led_positions_m`` (a list of pairs or
  an ``.npy``/``.csv`` file) and optional ``groups``;
* a folder holding ``fp.toml`` or ``fp.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import tomllib

from diffrecon.data.checks import positive, real_counts
from diffrecon.data.container import DiffractionData
from diffrecon.data.hdf5 import dataset, open_hdf5
from diffrecon.errors import DataFormatError

SCALARS = ("wavelength_m", "numerical_aperture", "magnification", "camera_pixel_m",
           "led_height_m")
DESCRIPTIONS = ("fp.toml", "fp.json")
#: where each ``DiffractionData`` field comes from in an FP source, for error messages
SOURCE_KEYS = {"patterns": "images", "positions_m": "led_positions_m",
               "wavelength_m": "wavelength_m", "distance_m": "led_height_m",
               "y_pixel_size_m": "camera_pixel_m", "x_pixel_size_m": "camera_pixel_m"}


@dataclasses.dataclass
class LEDTable:
    """Every LED of a data set and which are lit in each image.

    Attributes:
        positions_m: (L, 2) nominal (y, x) LED positions in the array plane, metres.
        groups: (N, K) LED indices lit in each image, -1 where an image has fewer than K.
        numerical_aperture: objective NA.
        magnification: objective (system) magnification.
    """

    positions_m: np.ndarray
    groups: np.ndarray
    numerical_aperture: float
    magnification: float


def _metadata_float(data: DiffractionData, key: str) -> float:
    if key not in data.metadata:
        raise DataFormatError(data.source, f"entry_1@{key}",
                              f"the objective's {key.replace('_', ' ')} (metadata)", "missing")
    try:
        value = float(data.metadata[key])
    except ValueError:
        value = float("nan")
    if not (np.isfinite(value) and value > 0):
        raise DataFormatError(data.source, f"entry_1@{key}", "a positive number",
                              repr(data.metadata[key])[:40])
    return value


def led_table(data: DiffractionData) -> LEDTable:
    """The LED table of an FP data set (module docstring); DataFormatError if incomplete."""
    na, magnification = (_metadata_float(data, k) for k in ("numerical_aperture",
                                                              "magnification"))
    if "fp_leds" not in data.metadata:
        if data.positions_m is None:
            raise DataFormatError(data.source, "entry_1/sample_1/geometry_1/translation",
                                  "the LED position (y, x) of each image", "nothing")
        positions = np.asarray(data.positions_m, dtype=np.float64)
        groups = np.arange(len(positions))[:, None]
    else:
        try:
            table = json.loads(data.metadata["fp_leds"])
            positions = np.asarray(table["positions_m"], dtype=np.float64)
            groups = np.asarray(table["groups"], dtype=np.int64)
        except (ValueError, KeyError, TypeError) as error:
            raise DataFormatError(data.source, "entry_1@fp_leds",
                                  "JSON {positions_m: [[y, x]...], groups: [[i...]...]}",
                                  str(error)[:80]) from None
    _check_leds(data.source, positions, groups, data.num_patterns)
    return LEDTable(positions, groups, na, magnification)


def _check_leds(src: str, positions: np.ndarray, groups: np.ndarray, n: int) -> None:
    if positions.ndim != 2 or positions.shape[1] != 2 or not np.all(np.isfinite(positions)):
        raise DataFormatError(src, "led_positions_m", "finite (L, 2) (y, x) metres",
                              f"shape {positions.shape}")
    if groups.ndim != 2 or groups.shape[0] != n:
        raise DataFormatError(src, "groups", f"({n}, K) LED indices, one row per image",
                              f"shape {groups.shape}")
    if groups.size and (groups.max() >= len(positions) or groups.min() < -1):
        raise DataFormatError(src, "groups", f"indices in [-1, {len(positions) - 1}]",
                              f"range [{groups.min()}, {groups.max()}]")
    if np.any((groups >= 0).sum(1) == 0):
        raise DataFormatError(src, "groups", "at least one LED per image",
                              f"{int(np.sum((groups >= 0).sum(1) == 0))} images without")


def with_leds(data: DiffractionData, positions_m: np.ndarray, groups: np.ndarray,
              numerical_aperture: float, magnification: float) -> DiffractionData:
    """``data`` carrying an LED table: positions (N, 2) per image, metadata as documented."""
    positions = np.asarray(positions_m, dtype=np.float64)
    groups = np.asarray(groups, dtype=np.int64).reshape(len(groups), -1)
    lit = groups >= 0
    centroid = (positions[np.where(lit, groups, 0)] * lit[..., None]).sum(1) / lit.sum(1)[:, None]
    metadata = {**data.metadata, "numerical_aperture": repr(float(numerical_aperture)),
                "magnification": repr(float(magnification))}
    single = groups.shape[1] == 1 and np.array_equal(groups[:, 0], np.arange(len(positions)))
    if not single:
        metadata["fp_leds"] = json.dumps({"positions_m": positions.round(9).tolist(),
                                          "groups": groups.tolist()}, separators=(",", ":"))
    else:
        metadata.pop("fp_leds", None)
    return dataclasses.replace(data, positions_m=centroid, metadata=metadata)


def is_fp_source(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an FP description, a folder holding one, or an FP HDF5 file."""
    p = Path(path)
    if p.is_dir():
        return any((p / name).exists() for name in DESCRIPTIONS)
    if p.suffix.lower() in (".toml", ".json"):
        return True
    if p.is_file() and h5py.is_hdf5(p):
        with open_hdf5(p) as handle:
            return "images" in handle
    return False


def load_fp(path: str | os.PathLike[str]) -> DiffractionData:
    """Read an FP data set from HDF5, a TOML/JSON description or a folder (module docstring)."""
    p = Path(path)
    if p.is_dir():
        p = next(p / name for name in DESCRIPTIONS if (p / name).exists())
    src = os.fspath(p)
    if not p.exists():
        raise DataFormatError(src, "<file>", "an existing FP file or description", "no such file")
    if p.suffix.lower() in (".toml", ".json"):
        values = _read_description(src)
        images = _read_images(src, p.parent, values.get("images"))
        leds = _array_value(src, p.parent, values, "led_positions_m")
        groups = values.get("groups")
    else:
        with open_hdf5(p) as handle:
            if "led_positions_m" not in handle:
                raise DataFormatError(src, "led_positions_m", "(N or L, 2) LED (y, x) metres",
                                      f"missing; top-level keys {sorted(handle.keys())}")
            values = {k: handle.attrs[k] for k in handle.attrs}
            stack = dataset(handle, src, ("images",), "an (N, h, w) image stack")[1]
            real_counts(src, "images", stack.dtype)
            images = np.asarray(stack[()], dtype=np.float32)
            leds = np.asarray(handle["led_positions_m"][()], dtype=np.float64)
            groups = handle["groups"][()] if "groups" in handle else None
    scalars = {k: _positive(src, values, k) for k in SCALARS}
    if images.ndim != 3:
        raise DataFormatError(src, "images", "an (N, h, w) image stack", f"shape {images.shape}")
    if leds.ndim == 2 and leds.shape[1] == 3:
        leds = leds[:, :2]
    groups = np.arange(len(leds))[:, None] if groups is None else np.asarray(groups, np.int64)
    groups = groups.reshape(len(groups), -1) if groups.ndim == 1 else groups
    _check_leds(src, leds, groups, images.shape[0])
    data = DiffractionData(
        patterns=images, wavelength_m=scalars["wavelength_m"], distance_m=scalars["led_height_m"],
        detector_pixel_size_m=(scalars["camera_pixel_m"],) * 2, source=src,
        metadata={"format": "fourier_ptycho " + p.suffix.lstrip(".")},
        source_keys=dict(SOURCE_KEYS))
    return with_leds(data, leds, groups, scalars["numerical_aperture"], scalars["magnification"])


def _read_description(src: str) -> dict[str, Any]:
    try:
        with open(src, "rb") as handle:
            return tomllib.load(handle) if src.lower().endswith(".toml") else json.load(handle)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataFormatError(src, "<file>", "valid TOML/JSON", str(error)[:80]) from None


def _positive(src: str, values: dict[str, Any], key: str) -> float:
    if key not in values:
        raise DataFormatError(src, key, "a positive number (SI units)", "missing")
    return positive(src, key, values[key], "a positive number (SI units)")


def _array_value(src: str, folder: Path, values: dict[str, Any], key: str) -> np.ndarray:
    value = values.get(key)
    if value is None:
        raise DataFormatError(src, key, "a list of (y, x) pairs or an .npy/.csv file", "missing")
    if isinstance(value, str):
        file = folder / value
        if not file.exists():
            raise DataFormatError(src, key, "an existing .npy/.csv file", f"no file {file}")
        return (np.load(file) if file.suffix == ".npy"
                else np.loadtxt(file, delimiter=",", ndmin=2)).astype(np.float64)
    return np.asarray(value, dtype=np.float64)


def _read_images(src: str, folder: Path, value: Any) -> np.ndarray:
    if not isinstance(value, str):
        raise DataFormatError(src, "images", "an .npy stack or a folder of TIFFs", repr(value))
    target = folder / value
    if target.is_dir():
        files = sorted(f for f in target.iterdir() if f.suffix.lower() in (".tif", ".tiff"))
        if not files:
            raise DataFormatError(src, "images", "a folder of .tif images", f"none in {target}")
        try:
            import tifffile
        except ImportError:
            raise DataFormatError(src, "images", "a TIFF reader: pip install tifffile",
                                  "tifffile not installed") from None
        return np.stack([np.asarray(tifffile.imread(f), np.float32) for f in files])
    if not target.exists() or target.suffix.lower() != ".npy":
        raise DataFormatError(src, "images", "an existing .npy stack or TIFF folder",
                              f"{target}")
    return np.asarray(np.load(target, allow_pickle=False), dtype=np.float32)
