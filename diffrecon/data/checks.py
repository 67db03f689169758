"""Checks of values read from data files, and short human words for what was found instead.

Every reader (CXI, plain HDF5, FP) and ``DiffractionData.validate`` use these, so one kind of
bad value gives one kind of message whatever the layout.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from diffrecon.errors import DataFormatError


class DataWarning(UserWarning):
    """A value in a data file that was read by a guess (e.g. an energy without units)."""


#: what a probe guess must be (the data's frames fix H and W)
PROBE_EXPECTED = "(H, W) or (M, H, W) complex with the frames' (H, W)"


def _number(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Inf" if value > 0 else "-Inf")
    return f"{value:.6g}" if isinstance(value, int | float | complex) else str(value)


def describe(value: Any) -> str:
    """What ``value`` is in a few words, never a NumPy repr: ``the string '8 keV'``, ``NaN``,
    ``-2``, ``(2, 3)``, ``an array of shape (5, 5)``."""
    if isinstance(value, bytes | np.bytes_):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    array = np.asarray(value)
    if array.size == 1 and array.dtype.kind in "OSU":
        return describe(array.ravel()[0])
    if array.dtype.kind not in "biufc":
        return f"{dtype_text(array.dtype)} of shape {array.shape}"
    if array.size == 0:
        return f"an empty array (shape {array.shape})"
    if array.size > 4:
        return f"an array of shape {array.shape}"
    numbers = [_number(item) for item in array.ravel().tolist()]
    return numbers[0] if array.size == 1 else f"({', '.join(numbers)})"


def dtype_text(dtype: Any) -> str:
    """An array's element type in words: ``complex values (complex64)``, ``text (|S3)``."""
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        return f"complex values ({dtype})"
    if dtype.kind in "OSU":
        return f"text ({dtype.str})"
    return f"dtype {dtype}"


def _parsed(value: Any) -> Any:
    """A number written as text ('8000', b'75e-6') as that number; anything else unchanged."""
    text = value
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "OSU":
        text = value.ravel()[0]
    if isinstance(text, bytes | np.bytes_):
        text = text.decode("utf-8", errors="replace")
    if isinstance(text, str):
        try:
            return float(text)
        except ValueError:
            return value
    return value


def positive(src: str, key: str, value: Any, expected: str) -> float:
    """``value`` as a float: one positive finite number (or an array of copies of one); a
    number written as text is read as that number.

    Raises:
        DataFormatError: naming ``key`` and what was found (a string, NaN, 0, an array...).
    """
    array = np.asarray(_parsed(value))
    if array.dtype.kind in "iuf" and array.size:
        flat = array.astype(np.float64).ravel()
        if np.all(flat == flat[0]) and math.isfinite(flat[0]) and flat[0] > 0:
            return float(flat[0])
    raise DataFormatError(src, key, expected, describe(value))


def positive_pair(src: str, key: str, value: Any, expected: str) -> tuple[float, float]:
    """A (y, x) pair of positive finite floats from one number or two (or one as text)."""
    array = np.asarray(_parsed(value))
    if array.dtype.kind in "iuf" and array.size in (1, 2):
        pair = np.broadcast_to(array.astype(np.float64).ravel(), (2,))
        if np.all(np.isfinite(pair)) and np.all(pair > 0):
            return float(pair[0]), float(pair[1])
    raise DataFormatError(src, key, expected, describe(value))


def real_counts(src: str, key: str, dtype: Any) -> None:
    """Reject patterns that are not real numbers (complex, text) before they are read."""
    if np.dtype(dtype).kind not in "biuf":
        raise DataFormatError(src, key, "real counts (integer or float)", dtype_text(dtype))
