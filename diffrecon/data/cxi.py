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
    ``entry_1/instrument_1/source_1/energy``          photon energy in joules, or in the units
                                                      its ``units`` attribute names ('eV',
                                                      'keV'); without one a value > 1 is
                                                      taken as eV (noted in metadata); must
                                                      lie within 1e-21 to 1e-11 J; or
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

import os
import warnings
from typing import Any

import h5py
import numpy as np

from diffrecon.data.checks import (
    PROBE_EXPECTED,
    DataWarning,
    describe,
    positive,
    positive_pair,
    real_counts,
)
from diffrecon.data.container import DiffractionData, Truth
from diffrecon.data.hdf5 import LazyPatterns, check_filters, dataset, open_hdf5, read_array
from diffrecon.data.results import atomic_hdf5, read_attr, write_array
from diffrecon.data.scans import mean_nearest_step
from diffrecon.errors import DataFormatError
from diffrecon.physics.optics import (
    ELEMENTARY_CHARGE_C,
    electron_voltage_v,
    farfield_pixel_size_m,
)

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
ENERGY_RANGE_J = (1e-21, 1e-11)  # photons and electrons, 6 meV to 60 MeV


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
    with open_hdf5(src) as handle:
        if "entry_1" in handle:
            fields = _read_cxi(handle, src, truth)
        elif "patterns" in handle:
            fields = _read_plain(handle, src, truth)
        else:
            raise DataFormatError(
                src,
                DATA,
                "a CXI file or the plain layout ('patterns')",
                f"neither; top-level keys {sorted(handle.keys())}",
            )
        key = fields["source_keys"]["patterns"]
        real_counts(src, key, handle[key].dtype)
        check_filters(handle[key], src, key)
        shape = handle[key].shape
        if len(shape) not in (2, 3):
            raise DataFormatError(src, key, "an (N, H, W) or (H, W) array", f"shape {shape}")
        if len(shape) == 2 or not lazy:
            patterns = np.asarray(handle[key][()], dtype=np.float32).reshape((-1, *shape[-2:]))
    if lazy and len(shape) == 3:
        patterns = LazyPatterns(src, key)
    return DiffractionData(patterns=patterns, source=src, **fields)


def _pair(value: Any) -> tuple[float, float]:
    """A (y, x) pair of floats from a scalar or a 2-sequence."""
    values = np.broadcast_to(np.asarray(value, dtype=np.float64).ravel(), (2,))
    return float(values[0]), float(values[1])


def _optional(handle: h5py.File, src: str, key: str, expected: str,
              kinds: str = "biuf") -> np.ndarray | None:
    """The numeric array at ``key``, or None where the file has none."""
    return read_array(handle, src, key, expected, kinds) if key in handle else None


def _read_shared(handle: h5py.File, src: str, keys: dict[str, str],
                 truth: str | None) -> dict[str, Any]:
    """The optional fields both layouts store alike, from the keys ``keys`` names."""
    mask = _optional(handle, src, keys["valid"], "a detector mask (H, W), non-zero = bad")
    probe = _optional(handle, src, keys["probe_guess"], PROBE_EXPECTED, kinds="biufc")
    angles = _optional(handle, src, keys["angles_rad"], "(N, 3) tilt angles in radians")
    return {
        "valid": None if mask is None else mask == 0,
        "probe_guess": None if probe is None else probe.astype(np.complex64),
        "angles_rad": None if angles is None else angles.astype(np.float64),
        "truth": None if truth is None else _read_truth(handle, src, truth),
        "source_keys": keys,
    }


def _read_cxi(handle: h5py.File, src: str, truth: bool) -> dict[str, Any]:
    """The ``DiffractionData`` fields of a CXI file (all but the patterns)."""
    keys = {"valid": f"{DETECTOR}/mask", "probe_guess": ILLUMINATION, "angles_rad": ANGLES}
    keys["patterns"] = dataset(handle, src, (DATA, DETECTOR_DATA),
                               "the diffraction patterns (N, H, W)")[0]
    metadata = {name: str(read_attr(value)) for name, value in handle["entry_1"].attrs.items()}
    wavelength, keys["wavelength_m"] = _cxi_wavelength(handle, src, metadata)
    geometry = {}
    pixel_keys = (f"{DETECTOR}/y_pixel_size", f"{DETECTOR}/x_pixel_size")
    for name, candidates, expected in (
        ("distance_m", (f"{DETECTOR}/distance",), "the sample-detector distance in metres"),
        ("y_pixel_size_m", pixel_keys, "the detector pixel size in metres"),
        ("x_pixel_size_m", pixel_keys[::-1], "the detector pixel size in metres"),
    ):
        keys[name], node = dataset(handle, src, candidates, expected)
        geometry[name] = positive(src, keys[name], node[()], f"{expected}, a positive number")
    positions = None
    if TRANSLATION in handle or DATA_TRANSLATION in handle:
        expected = "an (N, 3) array of x, y, z in metres"
        keys["positions_m"] = dataset(handle, src, (TRANSLATION, DATA_TRANSLATION),
                                      expected)[0]
        translation = read_array(handle, src, keys["positions_m"], expected).astype(np.float64)
        if translation.shape == (3,):
            translation = translation[None]
        if translation.ndim != 2 or translation.shape[1] != 3:
            raise DataFormatError(src, keys["positions_m"], expected,
                                  f"shape {translation.shape}")
        positions = translation[:, [1, 0]].copy()  # CXI x, y, z -> our (y, x)
    fields = dict(wavelength_m=wavelength, distance_m=geometry["distance_m"],
                  positions_m=positions, metadata=metadata)
    fields["detector_pixel_size_m"] = (geometry["y_pixel_size_m"], geometry["x_pixel_size_m"])
    return {**fields, **_read_shared(handle, src, keys, TRUTH if truth else None)}


def _cxi_wavelength(handle: h5py.File, src: str, metadata: dict[str, str]) -> tuple[float, str]:
    """The wavelength in metres from the source's energy (J, or eV/keV by its units
    attribute) or wavelength, and the key it came from."""
    expected = "photon energy in J (or .../source_1/wavelength in m)"
    key, node = dataset(handle, src, (f"{SOURCE}/energy", f"{SOURCE}/wavelength"), expected)
    value = positive(src, key, node[()], "a positive number")
    if key.endswith("wavelength"):
        return value, key
    units = str(read_attr(node.attrs.get("units", ""))).strip()
    if units.lower() in ("ev", "kev") or (not units and value > 1):
        energy_j = value * (1000.0 if units.lower() == "kev" else 1.0) * ELEMENTARY_CHARGE_C
        if not units:
            metadata["energy_note"] = f"energy {value:g} > 1 taken as eV (CXI expects joules)"
            warnings.warn(f"{src}: '{key}': energy {value:g} without a units attribute, taken "
                          f"as {value:g} eV (CXI stores joules); give the dataset units='eV' "
                          "or 'keV' to say which", DataWarning, stacklevel=4)
    elif units.lower() in ("", "j", "joule", "joules"):
        energy_j = value
    else:
        raise DataFormatError(src, f"{key}@units", "'J', 'eV' or 'keV'", describe(units))
    low, high = ENERGY_RANGE_J
    if not low <= energy_j <= high:
        raise DataFormatError(
            src, key, f"an energy between {low:g} and {high:g} J (is the units attribute "
            "right? 'eV' or 'keV' if the value is not in joules)",
            f"{value:g} {units or 'J (no units attribute)'}")
    return HC_J_M / energy_j, key


PLAIN_KEYS = {"patterns": "patterns", "positions_m": "positions_m", "valid": "mask",
              "probe_guess": "probe", "angles_rad": "angles_rad", "distance_m": "@distance_m",
              "y_pixel_size_m": "@pixel_size_m", "x_pixel_size_m": "@pixel_size_m"}


def _read_plain(handle: h5py.File, src: str, truth: bool) -> dict[str, Any]:
    """The ``DiffractionData`` fields of a plain-HDF5 file (all but the patterns)."""
    attrs, keys = handle.attrs, dict(PLAIN_KEYS)
    dataset(handle, src, ("patterns",), "the diffraction patterns (N, H, W)")
    if "energy_ev" in attrs:
        keys["wavelength_m"] = "@energy_ev"
        energy = positive(src, "@energy_ev", attrs["energy_ev"],
                          "the photon energy in eV, a positive number")
        wavelength = HC_J_M / (energy * ELEMENTARY_CHARGE_C)
    if "wavelength_m" in attrs:
        given = positive(src, "@wavelength_m", attrs["wavelength_m"],
                         "the wavelength in metres, a positive number")
        if "energy_ev" in attrs and abs(given / wavelength - 1) > 1e-3:
            raise DataFormatError(
                src, "@wavelength_m", f"the wavelength of @energy_ev = {energy:g} eV "
                f"({wavelength:.6g} m), or only one of the two", f"{given:g} m")
        keys["wavelength_m"], wavelength = "@wavelength_m", given
    if "energy_ev" not in attrs and "wavelength_m" not in attrs:
        raise DataFormatError(
            src, "@wavelength_m", "root attribute wavelength_m or energy_ev", "neither"
        )
    for name in ("distance_m", "pixel_size_m"):
        if name not in attrs:
            raise DataFormatError(src, f"@{name}", "a root attribute in metres", "missing")
    positions = None
    if "positions_m" in handle:
        expected = "an (N, 2) array of (y, x) metres"
        positions = read_array(handle, src, "positions_m", expected).astype(np.float64)
        if positions.ndim != 2 or positions.shape[1] != 2:
            raise DataFormatError(src, "positions_m", expected, f"shape {positions.shape}")
    known = {"wavelength_m", "energy_ev", "distance_m", "pixel_size_m"}
    fields = {
        "wavelength_m": wavelength,
        "distance_m": positive(src, "@distance_m", attrs["distance_m"],
                               "the sample-detector distance in metres, a positive number"),
        "detector_pixel_size_m": positive_pair(
            src, "@pixel_size_m", attrs["pixel_size_m"],
            "the detector pixel size in metres: a positive number or a (y, x) pair"),
        "positions_m": positions,
        "metadata": {k: str(read_attr(v)) for k, v in attrs.items() if k not in known},
    }
    return {**fields, **_read_shared(handle, src, keys, "truth" if truth else None)}


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


def _length(metres: float) -> str:
    """A length with the SI prefix that keeps 1-3 digits before the point: 4.18 pm, 75 um."""
    for unit, scale in (("km", 1e3), ("m", 1.0), ("mm", 1e-3), ("um", 1e-6), ("nm", 1e-9)):
        if abs(metres) >= scale:
            return f"{metres / scale:.4g} {unit}"
    return f"{metres / 1e-12:.4g} pm"


def _lengths(values: tuple[float, float]) -> str:
    return f"{_length(values[0])} x {_length(values[1])} (y, x)"


def inspect_text(data: DiffractionData) -> str:
    """A human multi-line summary of a data set (what ``diffrecon inspect`` prints)."""
    (h, w), (dy, dx) = data.frame_shape, data.detector_pixel_size_m
    lam, z = data.wavelength_m, data.distance_m
    valid = data.valid_mask()
    mean_total, peak = _count_stats(data)
    if "voltage_v" in data.metadata:  # electron data (4D-STEM import, simulation)
        beam = f"{electron_voltage_v(lam) / 1e3:.4g} keV electrons"
    else:
        beam = f"{data.energy_ev / 1e3:.4g} keV photons"
    lines = [
        f"file:             {data.source}",
        f"patterns:         {data.num_patterns} frames of {h} x {w} pixels",
        f"energy:           {beam} (wavelength {_length(lam)})",
        f"distance:         {_length(z)}",
        f"detector pixel:   {_lengths((dy, dx))}",
        "recon pixel:      lambda z / (N dx) = " + _lengths(
            (farfield_pixel_size_m(lam, z, h, dy), farfield_pixel_size_m(lam, z, w, dx))),
    ]
    if data.positions_m is None:
        lines.append("scan:             no positions (one pattern or one volume)")
    else:
        positions = np.asarray(data.positions_m, dtype=np.float64)
        extent = np.ptp(positions, axis=0) if len(positions) else np.zeros(2)
        lines.append(
            f"scan:             {len(positions)} positions, extent "
            f"{_lengths((extent[0], extent[1]))}, mean step {_length(mean_nearest_step(positions))}"
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
