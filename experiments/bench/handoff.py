"""The file hand-off to the peer packages: what every worker reads from the shared CXI file.

This module is imported both by the harness and by the workers that run inside the peers'
virtual environments, so it needs only numpy and h5py (never diffrecon). The CXI layout is the
one ``diffrecon.data.cxi.save`` writes (see its docstring); positions are the probe positions
on the sample, (y, x) in metres, and are converted here to the object-pixel units that
ptychography packages take.
"""

from __future__ import annotations

import dataclasses
import math
import os
import resource
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

HC_J_M = 1.98644586e-25  # Planck constant times the speed of light, J m


@dataclasses.dataclass
class ScanFile:
    """A far-field ptychography scan as the peers need it.

    Attributes:
        patterns: float32 (N, H, W) counts, DC-centred.
        positions_m: float64 (N, 2) probe positions on the sample, (y, x), metres.
        wavelength_m: photon wavelength, metres.
        distance_m: sample-detector distance, metres.
        detector_pixel_m: detector pixel side (square pixels), metres.
        valid: bool (H, W), True where the pixel is trusted.
    """

    patterns: np.ndarray
    positions_m: np.ndarray
    wavelength_m: float
    distance_m: float
    detector_pixel_m: float
    valid: np.ndarray

    @property
    def frame(self) -> int:
        return int(self.patterns.shape[-1])

    @property
    def object_pixel_m(self) -> float:
        """Far-field object pixel, lambda z / (N p), metres."""
        return self.wavelength_m * self.distance_m / (self.frame * self.detector_pixel_m)

    def positions_px(self) -> np.ndarray:
        """Probe-centre positions (N, 2), (y, x), in object pixels, minimum at 0."""
        px = self.positions_m / self.object_pixel_m
        return px - px.min(axis=0)


def read_scan(path: str | Path) -> ScanFile:
    """Read the CXI file ``path`` (as written by ``diffrecon.data.cxi.save``)."""
    with h5py.File(path, "r") as handle:
        detector = handle["entry_1/instrument_1/detector_1"]
        energy = float(handle["entry_1/instrument_1/source_1/energy"][()])
        translation = np.asarray(handle["entry_1/sample_1/geometry_1/translation"][()],
                                 dtype=np.float64)
        mask = (np.asarray(detector["mask"][()]) if "mask" in detector
                else np.zeros(handle["entry_1/data_1/data"].shape[-2:], np.uint8))
        return ScanFile(
            patterns=np.asarray(handle["entry_1/data_1/data"][()], dtype=np.float32),
            positions_m=translation[:, [1, 0]].copy(),  # CXI (x, y, z) -> (y, x)
            wavelength_m=HC_J_M / energy,
            distance_m=float(detector["distance"][()]),
            detector_pixel_m=float(detector["x_pixel_size"][()]),
            valid=mask == 0,
        )


def mean_pattern_probe(scan: ScanFile) -> np.ndarray:
    """A generic probe guess (H, W) complex64: the flat-phase field whose far-field intensity
    is the mean pattern, scaled to the mean photon count (the usual start when the optics are
    unknown; packages that build their own start from the data do not use it)."""
    amplitude = np.sqrt(np.maximum(scan.patterns.mean(axis=0), 0) * scan.valid)
    probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(amplitude), norm="ortho"))
    total = float(scan.patterns.sum(axis=(1, 2)).mean())
    probe *= math.sqrt(total / max(float(np.sum(np.abs(probe) ** 2)), 1e-30))
    return probe.astype(np.complex64)


def save_snapshots(path: str | Path, objects: list[np.ndarray], epochs: list[int],
                   epoch_seconds: list[float], setup_s: float, peak_mb: float,
                   object_pixel_m: float, note: str = "") -> None:
    """What a worker hands back: object snapshots (K, H, W) after ``epochs`` (K,), the seconds
    of every epoch run, the setup time, the added peak memory (MiB) and a note."""
    np.savez(path, objects=np.stack(objects).astype(np.complex64), epochs=np.asarray(epochs),
             epoch_seconds=np.asarray(epoch_seconds, dtype=np.float64), setup_s=setup_s,
             peak_mb=peak_mb, object_pixel_m=object_pixel_m, note=np.asarray(note))


def resident_mb() -> float:
    """Current resident memory of this process, MiB (Linux)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    """Peak resident memory of this process so far, MiB: the kernel's high-water mark of this
    program's memory map (Linux ``VmHWM``). Not ``ru_maxrss``: it survives ``exec``, so a
    process started by a large one (the harness after a reconstruction) reports at least the
    parent's resident size at the fork (a 245 MiB peak read as 316-358 MiB)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def without_torchvision_ops() -> None:
    """Let ``import torchvision`` succeed with a CPU-only torch.

    The torchvision wheels on PyPI are CUDA builds whose compiled operators (nms, roi_align,
    ...) do not load against the CPU torch wheel, and torchvision's import then fails while
    registering meta kernels for them. The peers use only torchvision's pure-Python image
    transforms, so the worker skips that registration module; the compiled operators stay
    unavailable, which these packages never call.
    """
    sys.modules.setdefault("torchvision._meta_registrations",
                           types.ModuleType("torchvision._meta_registrations"))


def checkpoint(epoch: int, every: int, epochs: int, epoch_seconds: list[float],
               budget_s: float) -> tuple[bool, bool]:
    """After ``epoch`` (1-based): (take a snapshot?, stop?). A run stops after ``epochs``
    epochs or once its timed epochs exceed ``budget_s``; its last epoch is always scored."""
    stop = epoch >= epochs or sum(epoch_seconds) > budget_s
    return epoch % every == 0 or stop, stop


def run_epochs(step: Callable[[int], object], snapshot: Callable[[], np.ndarray], epochs: int,
               every: int, budget_s: float) -> tuple[list[np.ndarray], list[int], list[float]]:
    """Run ``step(epoch)`` for epochs 1, 2, ..., timing each call alone, and copy the object
    (``snapshot()``, (H, W)) outside the timed region every ``every`` epochs and at the end.

    Returns the snapshots, the epochs they follow and the seconds of every epoch.
    """
    objects: list[np.ndarray] = []
    done: list[int] = []
    seconds: list[float] = []
    for epoch in range(1, epochs + 1):
        tick = time.perf_counter()
        step(epoch)
        seconds.append(time.perf_counter() - tick)
        take, stop = checkpoint(epoch, every, epochs, seconds, budget_s)
        if take:
            objects.append(np.array(snapshot(), dtype=np.complex64))
            done.append(epoch)
        if stop:
            break
    return objects, done, seconds
