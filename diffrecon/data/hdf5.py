"""Reading HDF5 files: opening, reaching datasets, and patterns read on demand.

Every reader of data files (``cxi.load``, :class:`LazyPatterns`, ``fpm``) opens files with
:func:`open_hdf5` and fetches datasets with :func:`dataset`, so a truncated, locked or
missing file, a group where a dataset belongs, or a broken (external) link is reported as a
``DataFormatError`` naming the file and key, never as an h5py traceback.
"""

from __future__ import annotations

import operator
import os
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from diffrecon.data.checks import describe
from diffrecon.data.results import as_numpy
from diffrecon.errors import DataFormatError

LOCK_HINT = ("locked: another program holds it open for writing (start diffrecon with "
             "HDF5_USE_FILE_LOCKING=FALSE in the environment to read it anyway)")


def _reason(error: OSError) -> str:
    """Why h5py could not open a file, in a few words."""
    text = str(error)
    if isinstance(error, BlockingIOError) or "unable to lock file" in text:
        return LOCK_HINT
    if isinstance(error, PermissionError) or "Permission denied" in text:
        return "no permission to read it"
    if "truncated file" in text:
        sizes = re.search(r"eof = (\d+).*stored_eof = (\d+)", text)
        size = f" ({sizes[1]} of {sizes[2]} bytes)" if sizes else ""
        return f"a truncated file{size}: an incomplete copy, or still being written?"
    detail = re.search(r"\((.*)\)", text)
    return (detail[1] if detail else text)[:80]


def _register_plugins() -> None:
    """Make the compression filters of ``hdf5plugin`` (bitshuffle, LZ4, Blosc, ...: Eiger and
    other detector files) available to h5py when that package is installed; importing it
    registers them."""
    try:
        import hdf5plugin  # noqa: F401
    except ImportError:
        pass


def check_filters(node: h5py.Dataset, src: str, key: str) -> None:
    """Raise DataFormatError when ``node`` is compressed with a filter HDF5 cannot load here,
    before its first read fails with a bare h5py error."""
    plist = node.id.get_create_plist()
    for index in range(plist.get_nfilters()):
        code, _, _, name = plist.get_filter(index)
        if not h5py.h5z.filter_avail(code):
            label = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
            raise DataFormatError(
                src, key, "data compressed with a filter HDF5 can load",
                f"the '{label or 'unknown'}' filter (HDF5 filter id {code}), which is not "
                "installed here (pip install hdf5plugin provides the usual detector filters)")


def open_hdf5(path: str | os.PathLike[str]) -> h5py.File:
    """``path`` opened read-only (with ``hdf5plugin``'s compression filters registered when
    that package is installed).

    Raises:
        DataFormatError: with key ``<file>``: missing, a directory, not HDF5, truncated,
            locked by a writer, unreadable.
    """
    src = os.fspath(path)
    if os.path.isdir(src):
        raise DataFormatError(src, "<file>", "an HDF5/CXI file", "a directory")
    if not os.path.exists(src):
        raise DataFormatError(src, "<file>", "an existing HDF5/CXI file", "no such file")
    try:
        if not h5py.is_hdf5(src):
            empty = os.path.getsize(src) == 0
            raise DataFormatError(src, "<file>", "an HDF5/CXI file",
                                  "an empty file" if empty else "not an HDF5 file")
        _register_plugins()
        return h5py.File(src, "r")
    except OSError as error:
        raise DataFormatError(src, "<file>", "a readable HDF5 file", _reason(error)) from None


def _broken_link(handle: h5py.Group, src: str, key: str) -> str:
    """What stands at ``key`` when it cannot be opened: usually a dangling link."""
    link = handle.get(key, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        target = Path(link.filename)
        if not target.is_absolute():
            target = Path(src).parent / target
        if not target.exists():
            return f"an external link to missing file '{link.filename}' (path '{link.path}')"
        return f"an external link to '{link.path}' in '{link.filename}', which cannot be read"
    if isinstance(link, h5py.SoftLink):
        return f"a link to '{link.path}', which does not exist"
    return "an object that cannot be opened"


def dataset(handle: h5py.Group, src: str, keys: tuple[str, ...],
            expected: str) -> tuple[str, h5py.Dataset]:
    """The first of ``keys`` present in the file, as (key, dataset); links are followed.

    Raises:
        DataFormatError: naming the first key if none is present, or the key found if it is a
            group or a link that leads nowhere (an Eiger master file without its data files).
    """
    for key in keys:
        if key not in handle:
            continue
        try:
            node = handle[key]
        except (KeyError, OSError):
            raise DataFormatError(src, key, expected, _broken_link(handle, src, key)) from None
        if not isinstance(node, h5py.Dataset):
            raise DataFormatError(src, key, expected, f"a group (keys {sorted(node)[:5]})")
        return key, node
    raise DataFormatError(src, keys[0], expected, "missing")


def read_array(handle: h5py.Group, src: str, key: str, expected: str,
               kinds: str = "biuf") -> np.ndarray:
    """The dataset at ``key`` read whole; DataFormatError unless its elements are numbers of
    one of ``kinds`` (NumPy kind letters: b bool, i/u integer, f float, c complex)."""
    key, node = dataset(handle, src, (key,), expected)
    value = node[()]
    array = np.asarray(value)
    if array.dtype.kind not in kinds:
        raise DataFormatError(src, key, expected, describe(value))
    return array


class LazyPatterns:
    """An (N, H, W) HDF5 dataset read on demand as float32; keeps its file open.

    Indexing accepts an int, a slice, a tuple starting with either, or an integer array
    (any order, duplicates allowed): h5py needs increasing unique indices, so the rows are
    sorted, read once and put back in the requested order. Picklable (reopens the file), so
    it can cross into DataLoader worker processes.
    """

    def __init__(self, path: str, key: str) -> None:
        self.path, self.key = path, key
        self._file = open_hdf5(path)
        try:
            expected = "the diffraction patterns (N, H, W)"
            self._dataset: h5py.Dataset = dataset(self._file, path, (key,), expected)[1]
            check_filters(self._dataset, path, key)
        except DataFormatError:
            self._file.close()
            raise
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
