"""The in-memory description of a diffraction data set, shared by every modality."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from diffrecon.data.checks import PROBE_EXPECTED, DataWarning, dtype_text, positive, real_counts
from diffrecon.errors import DataFormatError

#: bytes of float32 frames read, checked or converted at a time (``DiffractionData.blocks``)
BLOCK_BYTES = 16 * 2**20

#: the CXI key of each field, named in error messages unless ``source_keys`` says otherwise
CXI_KEYS = {
    "patterns": "entry_1/data_1/data",
    "positions_m": "entry_1/sample_1/geometry_1/translation",
    "angles_rad": "entry_1/sample_1/geometry_1/angles",
    "wavelength_m": "entry_1/instrument_1/source_1/energy",
    "probe_guess": "entry_1/instrument_1/source_1/illumination",
    "distance_m": "entry_1/instrument_1/detector_1/distance",
    "y_pixel_size_m": "entry_1/instrument_1/detector_1/y_pixel_size",
    "x_pixel_size_m": "entry_1/instrument_1/detector_1/x_pixel_size",
    "valid": "entry_1/instrument_1/detector_1/mask",
}


class PatternStore(Protocol):
    """Anything indexable like an (N, H, W) array: a NumPy array or a lazy HDF5 dataset."""

    shape: tuple[int, ...]
    dtype: Any

    def __getitem__(self, index: Any) -> Any: ...


@dataclasses.dataclass
class Truth:
    """Ground truth stored beside simulated data (all in SI units).

    Attributes:
        object: complex object, shape (S, H, W) or (H, W) (or (D, H, W) for volumes).
        probe: complex probe modes, shape (M, h, w), or None.
        positions_m: true scan positions, shape (N, 2), (y, x) metres, or None.
        pixel_size_m: object pixel size (y, x) in metres.
        origin_m: sample coordinates (y, x) in metres of object pixel [0, 0].
    """

    object: np.ndarray
    probe: np.ndarray | None = None
    positions_m: np.ndarray | None = None
    pixel_size_m: tuple[float, float] = (1.0, 1.0)
    origin_m: tuple[float, float] = (0.0, 0.0)


@dataclasses.dataclass
class DiffractionData:
    """Measured diffraction patterns and the geometry needed to interpret them.

    Attributes:
        patterns: counts, shape (N, H, W) (ptychography; N=1 for a single CDI pattern) or
            (D, H, W) for a 3D CDI volume; DC-centred as on the detector. May be a lazy
            ``h5py.Dataset``: it is only read batch by batch.
        wavelength_m: radiation wavelength in metres.
        distance_m: sample-detector distance in metres.
        detector_pixel_size_m: detector pixel pitch (y, x) in metres.
        positions_m: scan positions, shape (N, 2), (y, x) metres, or None (CDI).
        valid: detector mask, shape (H, W) bool, True where a pixel is trusted. (CXI files store
            the opposite convention, non-zero = bad; the readers convert.)
        probe_guess: complex initial probe, shape (M, H, W) or (H, W), or None.
        truth: ground truth for simulated data, or None.
        source: where the data came from (a file path), used in error messages.
        metadata: free-form strings (instrument, sample, simulation settings).
        angles_rad: sample orientation of each pattern, shape (N, 3), radians, or None (a
            tilt series: tilt about y, tilt about x, rotation about the beam; see
            ``physics.volume``). Patterns sharing a row belong to one tilt.
        source_keys: where in the source file each field came from, by field name (keys of
            ``CXI_KEYS``; ``y_pixel_size_m``/``x_pixel_size_m`` for the pixel pitch), filled by
            the readers; a field not listed is named by its CXI key in error messages.
    """

    patterns: PatternStore
    wavelength_m: float
    distance_m: float
    detector_pixel_size_m: tuple[float, float]
    positions_m: np.ndarray | None = None
    valid: np.ndarray | None = None
    probe_guess: np.ndarray | None = None
    truth: Truth | None = None
    source: str = "<memory>"
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    angles_rad: np.ndarray | None = None
    source_keys: dict[str, str] = dataclasses.field(default_factory=dict)
    _summed: np.ndarray | None = dataclasses.field(default=None, init=False, repr=False,
                                                   compare=False)

    def __post_init__(self) -> None:
        if not hasattr(self.patterns, "shape"):  # a list or other array-like from Python
            try:
                self.patterns = np.asarray(self.patterns)
            except ValueError:
                raise TypeError("DiffractionData.patterns: expected an (N, H, W) array of "
                                f"counts, found a {type(self.patterns).__name__} that is "
                                "not a regular array (ragged?)") from None

    def key(self, field: str) -> str:
        """The key in the source file that ``field`` came from (see ``source_keys``)."""
        return self.source_keys.get(field, CXI_KEYS[field])

    def summed_counts(self) -> np.ndarray:
        """Counts summed over all patterns, (H, W) float64, as stored (masked pixels too).

        One pass over the data, kept for later calls: the probe start and the probe
        candidates both need it, and a pass over a 2000 x 256^2 gzip file takes 1.2 s. A
        copy made with ``dataclasses.replace`` computes its own; patterns changed in place
        after the first call are not seen (replace the data instead)."""
        if self._summed is None:
            total = np.zeros(self.frame_shape, dtype=np.float64)
            for _, block in self.blocks():
                total += block.sum(axis=0, dtype=np.float64)
            self._summed = total
        return self._summed

    @property
    def num_patterns(self) -> int:
        return int(self.patterns.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return int(self.patterns.shape[-2]), int(self.patterns.shape[-1])

    @property
    def energy_ev(self) -> float:
        from diffrecon.physics.optics import xray_energy_ev

        return xray_energy_ev(self.wavelength_m)

    def blocks(self, budget_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, patterns[start : start + k])`` over the whole scan, k frames at a time
        with k float32 frames about ``budget_bytes`` (at least one): every pass over the data
        (checks, statistics, conversion, copies) reads lazy sources in these blocks, so its
        transient memory is bounded whatever the frame size and the number of frames.

        A source that reads into a given array (``read_into(start, out)``, e.g. an HDF5
        ``LazyPatterns``) fills one buffer, reused for every block, so a pass allocates no
        block-sized array per block: **each block is valid only until the next is read**. (A
        fresh array per block left 190 MiB of freed heap after converting 500 MiB of patterns,
        2000 x 256^2, with a peak of 720 MiB against 590 with the buffer.)"""
        n, frame = self.num_patterns, self.frame_shape
        step = max(1, budget_bytes // (4 * frame[0] * frame[1]))
        read_into = getattr(self.patterns, "read_into", None)
        buffer = None if read_into is None else np.empty((min(step, n), *frame), np.float32)
        for start in range(0, n, step):
            stop = min(start + step, n)
            if buffer is None:
                yield start, np.asarray(self.patterns[start:stop])
            else:
                block = buffer[: stop - start]
                read_into(start, block)
                yield start, block

    def valid_mask(self) -> np.ndarray:
        """The detector mask, shape (H, W) bool (or (N, H, W) for a 3D volume's own mask),
        all True when the file has none."""
        if self.valid is None:
            return np.ones(self.frame_shape, dtype=bool)
        return np.asarray(self.valid, dtype=bool)

    def frames_valid(self, start: int, stop: int) -> np.ndarray:
        """The mask of patterns ``start:stop``, shape (stop - start, H, W) bool."""
        valid = self.valid_mask()
        if valid.ndim == 3:
            return valid[start:stop]
        return np.broadcast_to(valid, (min(stop, self.num_patterns) - start, *valid.shape))

    def validate(self, *, needs_positions: bool = True, square: bool = True) -> None:
        """Check shapes and values; raise DataFormatError naming the file and the key each
        field came from. Reads the patterns once, block by block (also lazy ones)."""
        src, key = self.source, self.key
        shape = tuple(self.patterns.shape)
        if len(shape) != 3:
            raise DataFormatError(src, key("patterns"), "a 3D array (N, H, W)", f"{shape}")
        n, h, w = shape
        if n == 0:
            raise DataFormatError(src, key("patterns"), "at least one pattern",
                                  f"none (shape {shape})")
        real_counts(src, key("patterns"), _stored_dtype(self.patterns))
        if square and (h != w or h % 2):
            raise DataFormatError(
                src, key("patterns"), "square frames of even size", f"frames of {h}x{w}"
            )
        if needs_positions:
            self._check_positions(n, h, w)
        for value, field in (
            (self.wavelength_m, "wavelength_m"),
            (self.distance_m, "distance_m"),
            (self.detector_pixel_size_m[0], "y_pixel_size_m"),
            (self.detector_pixel_size_m[1], "x_pixel_size_m"),
        ):
            positive(src, key(field), value, "a positive number")
        if self.angles_rad is not None:
            angles = np.asarray(self.angles_rad)
            if angles.shape != (n, 3) or not np.all(np.isfinite(angles)):
                raise DataFormatError(src, key("angles_rad"),
                                      f"finite ({n}, 3) tilt angles in radians (one row per "
                                      "pattern)", f"shape {angles.shape}" if angles.shape != (
                                          n, 3) else "NaN or Inf")
        self._check_mask(needs_positions, n, h, w)
        if self.probe_guess is not None:
            probe = np.asarray(self.probe_guess)
            if probe.dtype.kind not in "biufc":
                raise DataFormatError(src, key("probe_guess"), PROBE_EXPECTED,
                                      dtype_text(probe.dtype))
            if probe.ndim not in (2, 3) or probe.shape[-2:] != (h, w):
                raise DataFormatError(src, key("probe_guess"),
                                      f"{PROBE_EXPECTED} = ({h}, {w})", f"shape {probe.shape}")
        self._check_counts()

    def _check_positions(self, n: int, h: int, w: int) -> None:
        """One finite (y, x) position per pattern."""
        src, key = self.source, self.key("positions_m")
        if self.positions_m is None:
            raise DataFormatError(src, key, "scan positions (N, 2 or 3) in metres", "nothing")
        pos = np.asarray(self.positions_m)
        if pos.ndim != 2 or pos.shape[1] != 2:
            raise DataFormatError(src, key, "an (N, 2) array of (y, x)", f"shape {pos.shape}")
        if n == 1 and pos.shape[0] > 1:
            raise DataFormatError(
                src, self.key("patterns"),
                f"(N, H, W) patterns, one per scan position ({pos.shape[0]} in {key})",
                f"one ({h}, {w}) frame")
        if pos.shape[0] != n:
            raise DataFormatError(
                src, key, f"{n} positions (one per pattern)", f"{pos.shape[0]} positions"
            )
        if not np.all(np.isfinite(pos)):
            raise DataFormatError(src, key, "finite positions", "NaN or Inf")

    def _check_mask(self, needs_positions: bool, n: int, h: int, w: int) -> None:
        """The mask fits the frames and trusts at least one pixel."""
        if self.valid is None:
            return
        # a mask per voxel only for a 3D volume (CDI): per-pattern masks are not supported
        shapes = [(h, w)] if needs_positions else [(h, w), (n, h, w)]
        if tuple(np.shape(self.valid)) not in shapes:
            raise DataFormatError(
                self.source, self.key("valid"), " or ".join(map(str, shapes)),
                f"shape {np.shape(self.valid)}",
            )
        if not np.any(self.valid):
            raise DataFormatError(self.source, self.key("valid"),
                                  "at least one trusted pixel (mask 0)",
                                  f"all {np.size(self.valid)} pixels masked (non-zero or NaN)")

    def _check_counts(self) -> None:
        """Reject negative, NaN or Inf counts on valid pixels, and data without a single
        count, in one pass that reads lazy sources in blocks; warn (``DataWarning``) about
        trusted pixels at the largest value of a 16- or 32-bit integer type, which detectors
        write for bad or saturated pixels (Eiger: 2^16 - 1, 2^32 - 1)."""
        key = self.key("patterns")
        counted, flagged = False, 0
        stored = _stored_dtype(self.patterns)
        flag = (np.float32(np.iinfo(stored).max)
                if stored.kind in "iu" and stored.itemsize >= 2 else None)
        for start, block in self.blocks():
            valid = self.frames_valid(start, start + block.shape[0])
            good = np.where(valid, block, 0)
            if not np.all(np.isfinite(good)):
                bad = start + int(np.argwhere(~np.isfinite(good))[0, 0])
                raise DataFormatError(
                    self.source, key, "finite counts",
                    f"NaN or Inf in pattern {bad} (mask such pixels instead)",
                )
            if good.size and good.min() < 0:
                bad = start + int(np.argwhere(good < 0)[0, 0])
                raise DataFormatError(
                    self.source, key, "non-negative counts",
                    f"{good.min():.3g} in pattern {bad} (subtract background without clipping?)",
                )
            counted = counted or bool(good.any())
            if flag is not None:
                flagged += int(np.count_nonzero(good == flag))
        if flagged:
            warnings.warn(
                f"{self.source}: '{key}': {flagged} trusted pixel values equal "
                f"{np.iinfo(stored).max}, the largest {stored}, which detectors write for bad "
                "or saturated pixels; they are used as counts: mask those pixels if they are "
                "flags", DataWarning, stacklevel=3)
        if not counted:
            raise DataFormatError(self.source, key, "some counts",
                                  "zero on every trusted pixel of every pattern")


def _stored_dtype(patterns: PatternStore) -> np.dtype:
    """The element type the patterns are stored as (a lazy source's, before conversion)."""
    try:
        return np.dtype(getattr(patterns, "stored_dtype", patterns.dtype))
    except TypeError:  # e.g. a torch tensor
        return np.asarray(patterns[:0]).dtype
