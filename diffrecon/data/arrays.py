"""Bare intensity arrays (NPY, NPZ, TIFF stacks) as DiffractionData, for single-pattern CDI.

Such files carry no geometry. An ``.npz`` may carry it beside the array:

    ``data``          the intensity: (H, W) pattern or (D, H, W) volume (also ``intensity``)
    ``mask``          optional, same shape as ``data`` or (H, W); non-zero = bad (as CXI)
    ``energy_ev`` or ``wavelength_m``, ``distance_m``, ``pixel_size_m`` (scalar or (y, x))
    any other scalar  kept as a metadata string (e.g. the Bragg angles, ``data.bragg``)

otherwise nominal values are used (8 keV, 1 m, 75 um), noted in the metadata, so lengths in
the results are in those nominal units. Non-finite or negative values are taken as bad pixels
(detector gaps are often written as -1 or NaN), counted in the metadata.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from diffrecon.data.checks import positive, positive_pair
from diffrecon.data.container import DiffractionData
from diffrecon.errors import DataFormatError
from diffrecon.physics.optics import xray_wavelength_m

SUFFIXES = (".npy", ".npz", ".tif", ".tiff")
NOMINAL = {"energy_ev": 8000.0, "distance_m": 1.0, "pixel_size_m": 75e-6}


def is_array_file(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in SUFFIXES


def _read(src: str) -> tuple[np.ndarray, dict[str, Any], str]:
    """The array, the side values of an .npz, and the key the array came from."""
    suffix = Path(src).suffix.lower()
    if suffix in (".tif", ".tiff"):
        try:
            import tifffile
        except ImportError:
            raise DataFormatError(src, "<file>", "a TIFF reader: pip install tifffile",
                                  "tifffile not installed") from None
        return np.asarray(tifffile.imread(src)), {}, "<tiff>"
    try:
        loaded = np.load(src, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataFormatError(src, "<file>", f"a readable {suffix} file", str(error)) from None
    if suffix == ".npy":
        return np.asarray(loaded), {}, "<array>"
    with loaded:
        keys = [k for k in ("data", "intensity") if k in loaded.files]
        if not keys:
            raise DataFormatError(src, "data", "the intensity array ('data' or 'intensity')",
                                  f"keys {sorted(loaded.files)}")
        side = {k: loaded[k] for k in loaded.files if k not in keys}
        return np.asarray(loaded[keys[0]]), side, keys[0]


def load_array(path: str | os.PathLike[str]) -> DiffractionData:
    """Read an (H, W) pattern or (D, H, W) intensity volume from NPY/NPZ/TIFF (module docstring).

    Returns:
        DiffractionData with ``patterns`` (1, H, W) or (D, H, W) float32, masked pixels zero.
    """
    src = os.fspath(path)
    if not os.path.exists(src):
        raise DataFormatError(src, "<file>", "an existing file", "no such file")
    array, side, key = _read(src)
    if array.ndim not in (2, 3) or not np.issubdtype(array.dtype, np.number):
        raise DataFormatError(src, key, "a real (H, W) pattern or (D, H, W) volume",
                              f"{array.dtype} array of shape {array.shape}")
    if np.iscomplexobj(array):
        raise DataFormatError(src, key, "measured intensities (real)", "complex values")
    patterns = np.asarray(array, dtype=np.float32).reshape((-1, *array.shape[-2:]))
    valid = np.isfinite(patterns) & (patterns >= 0)
    if "mask" in side:
        mask = np.asarray(side["mask"]) == 0
        if mask.shape not in (patterns.shape, patterns.shape[-2:]):
            raise DataFormatError(src, "mask", f"shape {array.shape} or {array.shape[-2:]}",
                                  f"shape {mask.shape}")
        valid &= mask
    metadata = {"format": Path(src).suffix.lower().lstrip(".")}
    known = {"mask", "wavelength_m", *NOMINAL}
    metadata.update({name: str(np.asarray(value).ravel()[0]) for name, value in side.items()
                     if name not in known and np.size(value) == 1})  # e.g. Bragg angles
    if not valid.all():
        metadata["bad_pixels"] = f"{int((~valid).sum())} non-finite, negative or masked"
    patterns = np.where(valid, patterns, 0.0).astype(np.float32)
    if valid.all():
        mask_out = None
    elif patterns.shape[0] == 1 or (valid == valid[:1]).all():
        mask_out = valid[0]
    else:
        mask_out = valid
    geometry = {name: _value(src, side, name) for name in ("distance_m", "pixel_size_m")}
    energy_key = "wavelength_m" if "wavelength_m" in side else "energy_ev"
    if "wavelength_m" in side:
        wavelength = _value(src, side, "wavelength_m")
    else:
        wavelength = xray_wavelength_m(_value(src, side, "energy_ev"))
    missing = [k for k in ("energy_ev", "distance_m", "pixel_size_m") if k not in side]
    if "wavelength_m" in side:
        missing = [k for k in missing if k != "energy_ev"]
    if missing:
        metadata["geometry_note"] = (
            f"not in the file, nominal values used: {', '.join(missing)}; "
            "lengths in the results are in these nominal units")
    pixel = np.broadcast_to(np.asarray(geometry["pixel_size_m"], dtype=np.float64).ravel(), (2,))
    return DiffractionData(
        patterns=patterns, wavelength_m=float(wavelength), distance_m=float(geometry["distance_m"]),
        detector_pixel_size_m=(float(pixel[0]), float(pixel[1])), valid=mask_out, source=src,
        metadata=metadata, source_keys={
            "patterns": key, "valid": "mask", "wavelength_m": energy_key,
            "distance_m": "distance_m", "y_pixel_size_m": "pixel_size_m",
            "x_pixel_size_m": "pixel_size_m"},
    )


def _value(src: str, side: dict[str, Any], name: str) -> Any:
    """A positive geometry value from the .npz side arrays, or its nominal value."""
    if name not in side:
        return NOMINAL[name]
    if name == "pixel_size_m":
        return positive_pair(src, name, side[name], "a positive number or a (y, x) pair")
    return positive(src, name, side[name], "a positive number")
