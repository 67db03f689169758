"""CXI and plain-HDF5 diffraction data: load, save and a human summary.

Two layouts are read; :func:`load` dispatches on content, not on the file extension.

CXI (https://www.cxidb.org/cxi.html; what :func:`save` writes):
    ``entry_1/data_1/data``                           counts (N, H, W), or (H, W) for one pattern
                                                      (``entry_1/instrument_1/detector_1/data``
                                                      is accepted instead)
    ``entry_1/sample_1/geometry_1/translation``       (N, 3) x, y, z metres (note: x first!);
                                                      ``entry_1/data_1/translation`` is accepted
    ``entry_1/sample_1/geometry_1/angles``            optional (N, 3) sample orientation per
                                                      pattern, radians (a tilt series: tilt
                                                      about y, about x, about the beam)
    ``entry_1/instrument_1/source_1/energy``          photon energy in joules (a value > 1 is
                                                      taken as eV, noted in metadata); or
    ``entry_1/instrument_1/source_1/wavelength``      wavelength in metres
    ``entry_1/instrument_1/source_1/illumination``    optional complex probe guess (M, H, W)
    ``entry_1/instrument_1/detector_1/distance``      metres
    ``entry_1/instrument_1/detector_1/{x,y}_pixel_size``  metres (one may stand for both)
    ``entry_1/instrument_1/detector_1/mask``          optional (H, W), non-zero = bad pixel
    ``entry_1/truth``                                 optional ground truth (see below)
    attributes of ``entry_1``                         free-form metadata strings

Plain HDF5 (for quick hand-made files):
    ``patterns`` (N, H, W); ``positions_m`` (N, 2) y, x metres; optional ``mask`` (H, W),
    non-zero = bad; optional ``probe``; optional ``angles_rad`` (N, 3) radians; optional
    ``truth`` group; root attributes ``wavelength_m`` or ``energy_ev``, ``distance_m``,
    ``pixel_size_m`` (scalar or (y, x)).

Truth group (written by the simulator): datasets ``object``, optional ``probe`` and
``positions_m`` (N, 2) y, x metres; attributes ``pixel_size_m`` (2,) and ``origin_m`` (2,).
"""

from __future__ import annotations

import operator
import os
from typing import Any

import h5py
import numpy as np

from diffrecon.data.container import DiffractionData, Truth
from diffrecon.data.results import as_numpy, atomic_hdf5, read_attr, write_array
from diffrecon.errors import DataFormatError
from diffrecon.physics.optics import ELEMENTARY_CHARGE_C, farfield_pixel_size_m

HC_J_M = 1.98644586e-25  # Planck constant times speed of light, J m
DATA = "entry_1/data_1/data"
DETECTOR_DATA = "entry_1/instrument_1/detector_1/data"
TRANSLATION = "entry_1/sample_1/geometry_1/translation"
DATA_TRANSLATION = "entry_1/data_1/translation"
ANGLES = "entry_1/sample_1/geometry_1/angles"
SOURCE = "entry_1/instrument_1/source_1"
DETECTOR = "entry_1/instrument_1/detector_1"
ILLUMINATION = f"{SOURCE}/illumination"
TRUTH = "entry_1/truth"


class LazyPatterns:
    """An (N, H, W) HDF5 dataset read on demand as float32; keeps its file open.

    Indexing accepts an int, a slice, a tuple starting with either, or an integer array
    (any order, duplicates allowed): h5py needs increasing unique indices, so the rows are
    sorted, read once and put back in the requested order. Picklable (reopens the file), so
    it can cross into DataLoader worker processes.
    """

    def __init__(self, path: str, key: str) -> None:
        self.path, self.key = path, key
        self._file = h5py.File(path, "r")
        self._dataset: h5py.Dataset = self._file[key]
        self.shape: tuple[int, ...] = tuple(self._dataset.shape)
        self.dtype = np.dtype(np.float32)  # what reading returns
        self.stored_dtype = np.dtype(self._dataset.dtype)  # what the file holds

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        rest: tuple[Any, ...] = ()
        if isinstance(index, tuple):
            index, rest = (index[0] if index else slice(None)), index[1:]
        n = self.shape[0]
        if isinstance(index, slice) and (index.step or 1) > 0:
            block = self._dataset[(index, *rest)]
        elif isinstance(index, int | np.integer):
            row = operator.index(index)
            if not -n <= row < n:
                raise IndexError(f"index {row} out of range for {n} patterns")
            block = self._dataset[(row % n, *rest)]
        else:
            rows = np.arange(n)[index] if isinstance(index, slice) else self._rows(index)
            block = self._read_rows(rows)[(slice(None), *rest)]
        return np.asarray(block, dtype=np.float32)

    def _rows(self, index: Any) -> np.ndarray:
        rows = as_numpy(index)
        if rows.dtype == bool:
            return np.flatnonzero(rows)
        if rows.size and not np.issubdtype(rows.dtype, np.integer):
            raise IndexError(f"pattern indices must be integers, got {rows.dtype}")
        rows = rows.astype(np.int64)
        n = self.shape[0]
        if rows.size and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"pattern index out of range for {n} patterns")
        return np.where(rows < 0, rows + n, rows)

    def _read_rows(self, rows: np.ndarray) -> np.ndarray:
        if rows.size == 0:
            return np.empty((*rows.shape, *self.shape[1:]), dtype=np.float32)
        unique, inverse = np.unique(rows, return_inverse=True)
        first, last = int(unique[0]), int(unique[-1])
        if last - first + 1 <= 2 * unique.size:  # dense: one contiguous read is faster
            block = self._dataset[first : last + 1][unique - first]
        else:
            block = self._dataset[unique]
        return block[inverse.reshape(rows.shape)]

    def read_into(self, start: int, out: np.ndarray) -> None:
        """Read patterns ``start : start + len(out)`` into ``out`` (K, H, W) float32, converted
        by HDF5 from the stored type, with no intermediate array."""
        self._dataset.read_direct(out, np.s_[start : start + out.shape[0]])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self[:], dtype=dtype)

    def close(self) -> None:
        """Close the underlying HDF5 file; later reads fail."""
        self._file.close()

    def __enter__(self) -> LazyPatterns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, str]:
        return {"path": self.path, "key": self.key}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.__init__(state["path"], state["key"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"LazyPatterns({self.path!r}, {self.key!r}, shape={self.shape})"


def load(path: str | os.PathLike[str], *, lazy: bool = False,
         truth: bool = True) -> DiffractionData:
    """Read diffraction data from a CXI file or the plain-HDF5 layout (module docstring).

    Args:
        path: the file.
        lazy: keep the patterns in the file (a :class:`LazyPatterns`, read batch by batch)
            instead of reading them into a float32 array. A single (H, W) pattern is always
            read eagerly, as (1, H, W).
        truth: read the ground truth the file may hold (simulations); False skips it (its
            object is as large as a reconstruction's: 45 MiB for 2000 x 256^2 frames).

    Raises:
        DataFormatError: naming the file, the HDF5 key, what was expected and what was found.
    """
    src = os.fspath(path)
    if not os.path.exists(src):
        raise DataFormatError(src, "<file>", "an existing HDF5/CXI file", "no such file")
    if not h5py.is_hdf5(src):
        raise DataFormatError(src, "<file>", "an HDF5/CXI file", "not an HDF5 file")
    with h5py.File(src, "r") as handle:
        if "entry_1" in handle:
            fields, key = _read_cxi(handle, src, truth)
        elif "patterns" in handle:
            fields, key = _read_plain(handle, src, truth)
        else:
            raise DataFormatError(
                src,
                DATA,
                "a CXI file or the plain layout ('patterns')",
                f"neither; top-level keys {sorted(handle.keys())}",
            )
        shape = handle[key].shape
        if len(shape) not in (2, 3):
            raise DataFormatError(src, key, "an (N, H, W) or (H, W) array", f"shape {shape}")
        if len(shape) == 2 or not lazy:
            patterns = np.asarray(handle[key][()], dtype=np.float32).reshape((-1, *shape[-2:]))
    if lazy and len(shape) == 3:
        patterns = LazyPatterns(src, key)
    return DiffractionData(patterns=patterns, source=src, **fields)


def _node(handle: h5py.File, src: str, keys: tuple[str, ...], expected: str) -> Any:
    """The first of ``keys`` present in the file, or a DataFormatError naming the first."""
    for key in keys:
        if key in handle:
            return handle[key]
    raise DataFormatError(src, keys[0], expected, "missing")


def _scalar(src: str, node: h5py.Dataset, expected: str) -> float:
    try:
        values = np.asarray(node[()], dtype=np.float64).ravel()
    except (TypeError, ValueError):
        values = np.empty(0)
    if values.size == 0 or not np.all(values == values[0]) or not np.isfinite(values[0]):
        found = f"shape {node.shape}" if values.size != 1 else f"{node[()]!r}"
        raise DataFormatError(src, node.name.lstrip("/"), expected, found[:80])
    return float(values[0])


def _pair(value: Any) -> tuple[float, float]:
    """A (y, x) pair of floats from a scalar or a 2-sequence."""
    values = np.broadcast_to(np.asarray(value, dtype=np.float64).ravel(), (2,))
    return float(values[0]), float(values[1])


def _read_cxi(handle: h5py.File, src: str, truth: bool) -> tuple[dict[str, Any], str]:
    expected = "the diffraction patterns (N, H, W)"
    key = _node(handle, src, (DATA, DETECTOR_DATA), expected).name.lstrip("/")
    metadata = {name: str(read_attr(value)) for name, value in handle["entry_1"].attrs.items()}
    wavelength = _cxi_wavelength(handle, src, metadata)
    expected = "the sample-detector distance in metres"
    distance = _scalar(src, _node(handle, src, (f"{DETECTOR}/distance",), expected), expected)
    pixel_keys = (f"{DETECTOR}/y_pixel_size", f"{DETECTOR}/x_pixel_size")
    expected = "the detector pixel size in metres"
    y_pixel = _scalar(src, _node(handle, src, pixel_keys, expected), expected)
    x_pixel = _scalar(src, _node(handle, src, pixel_keys[::-1], expected), expected)
    positions = None
    if TRANSLATION in handle or DATA_TRANSLATION in handle:
        node = _node(handle, src, (TRANSLATION, DATA_TRANSLATION), "")
        translation = np.asarray(node[()], dtype=np.float64)
        if translation.shape == (3,):
            translation = translation[None]
        if translation.ndim != 2 or translation.shape[1] != 3:
            raise DataFormatError(
                src,
                node.name.lstrip("/"),
                "an (N, 3) array of x, y, z in metres",
                f"shape {translation.shape}",
            )
        positions = translation[:, [1, 0]].copy()  # CXI x, y, z -> our (y, x)
    valid = None
    if f"{DETECTOR}/mask" in handle:
        valid = np.asarray(handle[f"{DETECTOR}/mask"][()]) == 0
    probe = handle[ILLUMINATION][()].astype(np.complex64) if ILLUMINATION in handle else None
    fields = dict(wavelength_m=wavelength, distance_m=distance, positions_m=positions)
    fields.update(detector_pixel_size_m=(y_pixel, x_pixel), valid=valid, probe_guess=probe)
    fields["angles_rad"] = _angles(handle, ANGLES)
    fields["truth"] = _read_truth(handle, src, TRUTH) if truth else None
    return {**fields, "metadata": metadata}, key


def _cxi_wavelength(handle: h5py.File, src: str, metadata: dict[str, str]) -> float:
    expected = "photon energy in J (or .../source_1/wavelength in m)"
    node = _node(handle, src, (f"{SOURCE}/energy", f"{SOURCE}/wavelength"), expected)
    value = _scalar(src, node, "a positive number")
    if value <= 0:
        raise DataFormatError(src, node.name.lstrip("/"), "a positive number", f"{value}")
    if node.name.endswith("wavelength"):
        return value
    units = str(read_attr(node.attrs.get("units", ""))).strip().lower()
    if units in ("ev", "kev") or (not units and value > 1):
        energy_ev = value * (1000.0 if units == "kev" else 1.0)
        if not units:
            metadata["energy_note"] = f"energy {value:g} > 1 taken as eV (CXI expects joules)"
        return HC_J_M / (energy_ev * ELEMENTARY_CHARGE_C)
    return HC_J_M / value


def _read_plain(handle: h5py.File, src: str, truth: bool) -> tuple[dict[str, Any], str]:
    attrs = handle.attrs
    if "wavelength_m" in attrs:
        wavelength = float(attrs["wavelength_m"])
    elif "energy_ev" in attrs:
        wavelength = HC_J_M / (float(attrs["energy_ev"]) * ELEMENTARY_CHARGE_C)
    else:
        raise DataFormatError(
            src, "@wavelength_m", "root attribute wavelength_m or energy_ev", "neither"
        )
    for name in ("distance_m", "pixel_size_m"):
        if name not in attrs:
            raise DataFormatError(src, f"@{name}", "a root attribute in metres", "missing")
    positions = None
    if "positions_m" in handle:
        positions = np.asarray(handle["positions_m"][()], dtype=np.float64)
        if positions.ndim != 2 or positions.shape[1] != 2:
            raise DataFormatError(
                src, "positions_m", "an (N, 2) array of (y, x) metres", f"shape {positions.shape}"
            )
    known = {"wavelength_m", "energy_ev", "distance_m", "pixel_size_m"}
    fields = {
        "wavelength_m": wavelength,
        "distance_m": float(attrs["distance_m"]),
        "detector_pixel_size_m": _pair(attrs["pixel_size_m"]),
        "positions_m": positions,
        "valid": np.asarray(handle["mask"][()]) == 0 if "mask" in handle else None,
        "probe_guess": handle["probe"][()].astype(np.complex64) if "probe" in handle else None,
        "truth": _read_truth(handle, src, "truth") if truth else None,
        "angles_rad": _angles(handle, "angles_rad"),
        "metadata": {k: str(read_attr(v)) for k, v in attrs.items() if k not in known},
    }
    return fields, "patterns"


def _angles(handle: h5py.File, key: str) -> np.ndarray | None:
    """Per-pattern orientations (N, 3) in radians, or None; shapes are checked by
    ``DiffractionData.validate``."""
    if key not in handle:
        return None
    try:
        return np.asarray(handle[key][()], dtype=np.float64)
    except (TypeError, ValueError):
        raise DataFormatError(handle.filename, key, "(N, 3) tilt angles in radians",
                              f"a {handle[key].dtype} array") from None


def _read_truth(handle: h5py.File, src: str, key: str) -> Truth | None:
    if key not in handle:
        return None
    group = handle[key]
    if "object" not in group:
        raise DataFormatError(src, f"{key}/object", "the true complex object", "missing")
    return Truth(
        object=group["object"][()],
        probe=group["probe"][()] if "probe" in group else None,
        positions_m=group["positions_m"][()] if "positions_m" in group else None,
        pixel_size_m=_pair(group.attrs.get("pixel_size_m", 1.0)),
        origin_m=_pair(group.attrs.get("origin_m", 0.0)),
    )


def save(data: DiffractionData, path: str | os.PathLike[str]) -> None:
    """Write ``data`` as a CXI file (module docstring), atomically (temp file + rename).

    Patterns are stored float32, one gzip chunk per frame, copied in ``data.blocks()`` so
    lazy data are never read whole.
    """
    n, h, w = data.num_patterns, *data.frame_shape
    with atomic_hdf5(path) as handle:
        handle.attrs["cxi_version"] = 150
        handle.create_dataset("cxi_version", data=150)
        entry = handle.create_group("entry_1")
        for name, value in data.metadata.items():
            entry.attrs[name] = str(value)
        options = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
        options.update(chunks=(1, h, w), maxshape=(None, h, w))  # maxshape allows N = 0
        patterns = handle.create_dataset(DATA, (n, h, w), np.float32, **options)
        for start, block in data.blocks():
            patterns[start : start + block.shape[0]] = block
        if data.positions_m is not None:
            positions = np.asarray(data.positions_m, dtype=np.float64)
            translation = np.zeros((positions.shape[0], 3))
            translation[:, 0], translation[:, 1] = positions[:, 1], positions[:, 0]
            handle.create_dataset(TRANSLATION, data=translation)
        if data.angles_rad is not None:
            handle.create_dataset(ANGLES, data=np.asarray(data.angles_rad, dtype=np.float64))
            handle[ANGLES].attrs["units"] = "rad"
        handle.create_dataset(f"{SOURCE}/energy", data=HC_J_M / data.wavelength_m)
        handle[f"{SOURCE}/energy"].attrs["units"] = "J"
        handle.create_dataset(f"{DETECTOR}/distance", data=float(data.distance_m))
        handle.create_dataset(f"{DETECTOR}/y_pixel_size", data=data.detector_pixel_size_m[0])
        handle.create_dataset(f"{DETECTOR}/x_pixel_size", data=data.detector_pixel_size_m[1])
        if data.valid is not None:
            bad = ~np.asarray(data.valid, dtype=bool)
            handle.create_dataset(f"{DETECTOR}/mask", data=bad.astype(np.uint8))
        if data.probe_guess is not None:
            write_array(handle, ILLUMINATION, data.probe_guess)
        if data.truth is not None:
            truth = handle.create_group(TRUTH)
            for name in ("object", "probe", "positions_m"):
                if getattr(data.truth, name) is not None:
                    write_array(truth, name, getattr(data.truth, name))
            truth.attrs["pixel_size_m"] = np.asarray(data.truth.pixel_size_m, dtype=np.float64)
            truth.attrs["origin_m"] = np.asarray(data.truth.origin_m, dtype=np.float64)


def _count_stats(data: DiffractionData) -> tuple[float, float]:
    """Mean total counts per pattern and maximum pixel count, over trusted pixels."""
    total, peak = 0.0, 0.0
    for start, block in data.blocks():
        block = block[data.frames_valid(start, start + block.shape[0])]
        if block.size:
            total += float(np.nansum(block, dtype=np.float64))
            peak = max(peak, float(np.nanmax(block)))
    return total / max(data.num_patterns, 1), peak


def _mean_step_m(positions: np.ndarray, chunk: int = 1024) -> float:
    """Mean nearest-neighbour distance between scan positions (metres), chunked for large N."""
    if len(positions) < 2:
        return 0.0
    nearest = []
    for start in range(0, len(positions), chunk):
        block = positions[start : start + chunk]
        distance = np.linalg.norm(block[:, None, :] - positions[None, :, :], axis=-1)
        distance[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf
        nearest.append(distance.min(axis=1))
    return float(np.mean(np.concatenate(nearest)))


def inspect_text(data: DiffractionData) -> str:
    """A human multi-line summary of a data set (what ``diffrecon inspect`` prints)."""
    (h, w), (dy, dx) = data.frame_shape, data.detector_pixel_size_m
    lam, z = data.wavelength_m, data.distance_m
    valid = data.valid_mask()
    mean_total, peak = _count_stats(data)
    lines = [
        f"file:             {data.source}",
        f"patterns:         {data.num_patterns} frames of {h} x {w} pixels",
        f"energy:           {data.energy_ev / 1e3:.4g} keV (wavelength {lam * 1e9:.4g} nm)",
        f"distance:         {z:.4g} m",
        f"detector pixel:   {dy * 1e6:.4g} x {dx * 1e6:.4g} um (y, x)",
        "recon pixel:      lambda z / (N dx) = "
        f"{farfield_pixel_size_m(lam, z, h, dy) * 1e9:.4g} x "
        f"{farfield_pixel_size_m(lam, z, w, dx) * 1e9:.4g} nm (y, x)",
    ]
    if data.positions_m is None:
        lines.append("scan:             no positions (single-pattern CDI?)")
    else:
        positions = np.asarray(data.positions_m, dtype=np.float64)
        extent = np.ptp(positions, axis=0) * 1e6 if len(positions) else np.zeros(2)
        lines.append(
            f"scan:             {len(positions)} positions, extent {extent[0]:.4g} x "
            f"{extent[1]:.4g} um (y, x), mean step {_mean_step_m(positions) * 1e6:.4g} um"
        )
    if data.angles_rad is not None:
        tilts = np.unique(np.asarray(data.angles_rad), axis=0)
        degrees = np.degrees(tilts[:, 0])
        lines.append(f"tilt series:      {len(tilts)} tilts, {degrees.min():.4g} to "
                     f"{degrees.max():.4g} deg about y")
    masked = int(valid.size - valid.sum())
    lines += [
        f"masked pixels:    {100 * masked / max(valid.size, 1):.3g} % ({masked} of {valid.size})",
        f"counts:           mean total per pattern {mean_total:.4g}, max pixel {peak:.4g}",
        "probe guess:      "
        + ("no" if data.probe_guess is None else f"yes, shape {np.shape(data.probe_guess)}"),
        "truth:            "
        + ("no" if data.truth is None else f"yes, object {np.shape(data.truth.object)}"),
    ]
    lines += [f"meta {name}: {value}" for name, value in sorted(data.metadata.items())]
    return "\n".join(lines)
