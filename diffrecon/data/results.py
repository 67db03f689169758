"""Reconstruction result files (``reconstruction.h5``): atomic write and read back.

Layout of ``reconstruction.h5`` (all SI units; complex arrays are native complex64 datasets,
which h5py, NumPy and MATLAB read as complex numbers):

``/object``
    complex64, shape (S, H, W): the object, S slices (1 for a thin object).
``/probe``
    complex64, shape (M, h, w): the probe, incoherent modes first (largest power first).
``/positions_m``
    float, shape (N, 2): refined scan positions, (y, x) order, metres.
``/history/<name>``
    optional 1D arrays indexed by epoch, e.g. ``/history/loss``, ``/history/metric_error``.
other datasets
    model-specific arrays under their canonical parameter names (``aberrations``, ``pupil``,
    ``illumination_angles``, ``tilts``, ``flux``, ``background``, ...).
root attributes
    ``pixel_size_m`` (2,) (y, x) object pixel size in metres; ``origin_m`` (2,) sample
    coordinates (y, x) in metres of object pixel [0, 0]; plus free scalars and strings
    (modality, algorithm, wavelength_m, version, ...).

:func:`read_results` returns every dataset keyed by its path without the leading slash
(``"object"``, ``"history/loss"``), and the root attributes with arrays turned into tuples.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import h5py
import numpy as np

from diffrecon.errors import DataFormatError

#: Arrays with at least this many elements are gzip-compressed.
COMPRESS_MIN_SIZE = 4096

AttrValue = float | int | str | tuple


@contextlib.contextmanager
def atomic_hdf5(path: str | os.PathLike[str]) -> Iterator[h5py.File]:
    """Open a temporary HDF5 file beside ``path`` for writing; move it onto ``path`` on success.

    A crash or exception mid-write leaves any existing ``path`` untouched and no temp file
    behind. The rename is atomic because the temp file is in the same directory.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def as_numpy(value: Any) -> np.ndarray:
    """A NumPy array from an array-like, detaching and moving torch tensors to the CPU."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def write_array(group: h5py.Group, name: str, value: Any) -> h5py.Dataset:
    """Write one array; complex data become complex64, large arrays are gzip-compressed."""
    array = as_numpy(value)
    if np.iscomplexobj(array):
        array = array.astype(np.complex64)
    if array.size >= COMPRESS_MIN_SIZE and array.ndim > 0:
        return group.create_dataset(name, data=array, compression="gzip", compression_opts=4)
    return group.create_dataset(name, data=array)


def _attr_value(value: AttrValue) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, tuple | list):
        return np.asarray(value)
    return as_numpy(value)


def write_results(
    path: str | os.PathLike[str],
    arrays: Mapping[str, Any],
    attrs: Mapping[str, AttrValue],
    *,
    groups: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Write a reconstruction result file atomically (see the module docstring for the layout).

    Args:
        path: destination file; replaced atomically if it exists.
        arrays: root datasets by name (NumPy arrays or CPU/GPU tensors); a name may contain
            ``/`` to create intermediate groups.
        attrs: root attributes: numbers, strings, or tuples (stored as 1D arrays).
        groups: optional groups of arrays, e.g. ``{"history": {"loss": losses}}``.
    """
    with atomic_hdf5(path) as handle:
        for name, value in arrays.items():
            write_array(handle, name, value)
        for group_name, members in (groups or {}).items():
            group = handle.require_group(group_name)
            for name, value in members.items():
                write_array(group, name, value)
        for name, value in attrs.items():
            handle.attrs[name] = _attr_value(value)


def read_attr(value: Any) -> AttrValue:
    """Turn an HDF5 attribute value into a Python str, float, int, bool or tuple."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return read_attr(value[()])
        return tuple(read_attr(item) for item in value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_results(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a file written by :func:`write_results`.

    Returns:
        ``(arrays, attrs)``: every dataset as a NumPy array keyed by its path without the
        leading slash (``"object"``, ``"history/loss"``), and the root attributes.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataFormatError(path, "<file>", "an existing HDF5 result file", "no such file")
    if not h5py.is_hdf5(path):
        raise DataFormatError(path, "<file>", "an HDF5 result file", "not an HDF5 file")
    from diffrecon.data.hdf5 import open_hdf5  # hdf5 imports this module

    arrays: dict[str, np.ndarray] = {}
    with open_hdf5(path) as handle:

        def visit(name: str, node: Any) -> None:
            if isinstance(node, h5py.Dataset):
                arrays[name] = node[()]

        handle.visititems(visit)
        attrs = {name: read_attr(value) for name, value in handle.attrs.items()}
    return arrays, attrs
