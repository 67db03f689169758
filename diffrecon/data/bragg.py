"""Bragg CDI data: the rocking-curve geometry beside a 3D intensity stack, and peak centring.

A Bragg data set is a (D, H, W) intensity volume (rocking frames, detector rows, detector
columns) in any readable layout (CXI, plain HDF5, NPZ) plus four geometry values, stored as
metadata (CXI: attributes of ``entry_1``; plain HDF5: root attributes; NPZ: scalar arrays)::

    bragg_delta_deg          detector out-of-plane angle, degrees
    bragg_gamma_deg          detector in-plane angle, degrees (default 0)
    bragg_rocking_step_deg   sample rotation between frames, degrees
    bragg_rocking_axis       "x" (vertical-geometry eta/theta circle) or "y" (phi circle)

(see :mod:`diffrecon.physics.bragg` for the convention). Values given in the model config
(``model.delta_deg`` ...) take precedence, so a bare ``.npy`` stack works with ``--set``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from diffrecon.data.container import DiffractionData
from diffrecon.errors import DataFormatError
from diffrecon.physics.bragg import BraggGeometry

KEYS = {"delta_deg": "bragg_delta_deg", "gamma_deg": "bragg_gamma_deg",
        "rocking_step_deg": "bragg_rocking_step_deg", "rocking_axis": "bragg_rocking_axis"}
DEFAULTS = {"gamma_deg": "0", "rocking_axis": "x"}


def geometry_metadata(geometry: BraggGeometry) -> dict[str, str]:
    """The metadata strings that describe ``geometry`` in a data file."""
    return {KEYS["delta_deg"]: repr(math.degrees(geometry.delta_rad)),
            KEYS["gamma_deg"]: repr(math.degrees(geometry.gamma_rad)),
            KEYS["rocking_step_deg"]: repr(math.degrees(geometry.rocking_step_rad)),
            KEYS["rocking_axis"]: geometry.rocking_axis}


def read_geometry(data: DiffractionData, given: dict[str, float | str | None]) -> BraggGeometry:
    """The Bragg geometry of ``data``: ``given`` values (config) over the file's metadata.

    Raises:
        DataFormatError: naming the file and metadata key of a missing or malformed value.
    """
    values: dict[str, str] = {}
    for name, key in KEYS.items():
        value = given.get(name)
        if value is not None:
            values[name] = str(value)
        elif key in data.metadata:
            values[name] = str(data.metadata[key]).strip()
        elif name in DEFAULTS:
            values[name] = DEFAULTS[name]
        else:
            raise DataFormatError(
                data.source, key, f"the Bragg geometry value {key} (file metadata: CXI "
                f"entry_1 attribute, HDF5 root attribute or NPZ array; or model.{name})",
                "missing")
    angles = {}
    for name in ("delta_deg", "gamma_deg", "rocking_step_deg"):
        try:
            angles[name] = float(values[name])
        except ValueError:
            angles[name] = math.nan
        if not math.isfinite(angles[name]):
            raise DataFormatError(data.source, KEYS[name], "an angle in degrees",
                                  repr(values[name])[:40])
    if angles["rocking_step_deg"] == 0:
        raise DataFormatError(data.source, KEYS["rocking_step_deg"], "a non-zero step", "0")
    axis = values["rocking_axis"].lower()
    if axis not in ("x", "y"):
        raise DataFormatError(data.source, KEYS["rocking_axis"], "'x' or 'y'", repr(axis))
    return BraggGeometry(
        wavelength_m=data.wavelength_m, distance_m=data.distance_m,
        pixel_size_m=data.detector_pixel_size_m,
        rocking_step_rad=math.radians(angles["rocking_step_deg"]),
        rocking_axis=axis,  # type: ignore[arg-type]
        delta_rad=math.radians(angles["delta_deg"]), gamma_rad=math.radians(angles["gamma_deg"]))


def center_on_peak(data: DiffractionData, shape: tuple[int, int, int] | None = None
                   ) -> DiffractionData:
    """Crop (or pad) the volume to ``shape`` with its brightest valid voxel at the centre
    (rolled circularly when ``shape`` is the volume's own).

    Args:
        data: a (D, H, W) intensity volume.
        shape: output (D, H, W); None keeps the volume's shape. Voxels from outside the
            measured volume are zero and masked.

    Returns:
        A copy with ``patterns`` (shape) and a per-voxel ``valid`` mask when any voxel is
        padded or masked; the original data when nothing moves.
    """
    volume = np.asarray(data.patterns, dtype=np.float32)
    if volume.ndim != 3 or volume.shape[0] < 2:
        raise DataFormatError(data.source, "entry_1/data_1/data",
                              "a (D, H, W) Bragg intensity volume", f"shape {volume.shape}")
    valid = np.broadcast_to(data.valid_mask(), volume.shape)
    out_shape = tuple(volume.shape) if shape is None else tuple(int(n) for n in shape)
    peak = np.unravel_index(int(np.argmax(np.where(valid, volume, -1))), volume.shape)
    starts = [p - n // 2 for p, n in zip(peak, out_shape, strict=True)]
    if out_shape == volume.shape:
        if not any(starts):
            return data
        # same shape: a circular shift, exact for the periodic FFT model (it multiplies the
        # object by a phase ramp) and lossless; padding would mask whole slabs (12 % of a
        # 128^3 volume whose peak a 1e-3 strain moves by 7 voxels) and free their values
        shift = tuple(-start for start in starts)
        mask = None if data.valid is None else np.roll(valid, shift, (0, 1, 2))
        metadata = dict(data.metadata, bragg_crop=f"peak {tuple(int(p) for p in peak)} -> "
                        f"centre of {out_shape} (circular shift)")
        return dataclasses.replace(data, patterns=np.roll(volume, shift, (0, 1, 2)),
                                   valid=mask, metadata=metadata)
    out = np.zeros(out_shape, np.float32)
    out_valid = np.zeros(out_shape, bool)
    source, target = [], []
    for start, n, total in zip(starts, out_shape, volume.shape, strict=True):
        low, high = max(start, 0), min(start + n, total)
        source.append(slice(low, high))
        target.append(slice(low - start, high - start))
    out[tuple(target)] = volume[tuple(source)]
    out_valid[tuple(target)] = valid[tuple(source)]
    metadata = dict(data.metadata, bragg_crop=f"peak {tuple(int(p) for p in peak)} -> centre "
                    f"of {out_shape}")
    return dataclasses.replace(data, patterns=out, valid=None if out_valid.all() else out_valid,
                               metadata=metadata)
