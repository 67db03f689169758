"""User-facing exception types.

Every error a user can trigger with a file or a config names *where* (file, key) and *what*
(expected vs found), so the CLI can print it in one or two lines without a traceback.
"""

from __future__ import annotations

from typing import Any


class DiffreconError(Exception):
    """Base class of all errors diffrecon raises on purpose."""


class DataFormatError(DiffreconError):
    """A data file is missing a key or holds something of the wrong shape, type or value.

    Args:
        file: path of the offending file.
        key: HDF5 key (or other location) inside the file.
        expected: what a valid file holds there.
        found: what this file holds there.
    """

    def __init__(self, file: str, key: str, expected: str, found: str) -> None:
        self.file, self.key, self.expected, self.found = str(file), key, expected, found
        super().__init__(f"{self.file}: '{key}': expected {expected}, found {found}")


class RunFolderError(DiffreconError, OSError):
    """A run's files could not be written into its run folder (also an OSError, as the write
    failure it reports); the message says where they went instead.

    Attributes:
        result: what the run returned (``api.Result``), when the run itself finished.
    """

    result: Any = None


class ConfigError(DiffreconError):
    """A configuration key or value is invalid (unknown key, wrong type, out of range)."""


class DivergenceError(DiffreconError):
    """The reconstruction produced NaN/Inf and could not be recovered."""
