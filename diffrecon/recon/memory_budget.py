"""What a run may hold in memory: patterns in memory or read from the file, and batch sizes.

``reconstruct`` (``lazy=None``, the default) holds the patterns in memory when they take at
most ``DATA_SHARE`` of the memory available to the process, and otherwise reads them from the
file batch by batch (as ``--lazy``), so that a scan larger than the machine's memory runs
instead of swapping or being killed. The available memory is, on the host, the smallest of
the kernel's ``MemAvailable`` and what the process's cgroup (a batch job's or a container's
limit) leaves; with several torchrun processes on a node, each gets its share. On a CUDA
device it is the device's free memory.

The minibatch size chosen by default is capped so that one update's intermediates (about
``UPDATE_ARRAYS`` complex64 arrays of the batch's frames) take at most ``BATCH_SHARE`` of the
memory available (single-process runs: torchrun processes must draw the same batches); a
batch size set by the user that would exceed it gets a warning naming ``recon.batch_size``
before the run starts, not an out-of-memory error halfway.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

DATA_SHARE = 0.5  # of the available memory, at most, for patterns held in memory
BATCH_SHARE = 0.25  # of the available memory, at most, for one update's intermediates
# Batch-sized complex64 arrays alive at the peak of one update: 41.5 MiB in use for a
# 32 x 128^2 far-field update (4 MiB per array, see physics.overlap) is about 10.
UPDATE_ARRAYS = 10
_UNLIMITED = 2**60  # cgroup v1 reports "no limit" as a number near 2^63


def _meminfo_available(path: Path = Path("/proc/meminfo")) -> int | None:
    """``MemAvailable`` in bytes (Linux), or None."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read_number(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return None if text == "max" or not text.isdigit() else int(text)


def _reclaimable(stat: Path, key: str) -> int:
    """Page cache the kernel can drop (``key`` of a cgroup's memory.stat), in bytes."""
    try:
        for line in stat.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _memory_cgroup(proc: Path, root: Path) -> tuple[Path, Path] | None:
    """This process's memory cgroup directory and its hierarchy's mount point, from
    ``/proc/self/cgroup``: the v1 ``memory`` controller's, else the v2 unified one's."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return None
    for line in lines:  # v1: "4:memory:/path"
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        if "memory" in controllers.split(","):
            return root / "memory" / path.lstrip("/"), root / "memory"
    for line in lines:  # v2: "0::/path", mounted at the root (or, hybrid, at root/unified)
        if line.startswith("0::"):
            mount = root if (root / "cgroup.controllers").exists() else root / "unified"
            return mount / line[3:].lstrip("/"), mount
    return None


def _cgroup_available(root: Path = Path("/sys/fs/cgroup"),
                      proc: Path = Path("/proc/self/cgroup")) -> int | None:
    """What this process's memory cgroup and its ancestors still allow (the smallest
    limit - usage + reclaimable page cache over the levels that set a limit), in bytes, or
    None without a limit: a batch job's (Slurm) or a container's memory limit. cgroup v2
    (``memory.max``) or v1 (``memory.limit_in_bytes``)."""
    found = _memory_cgroup(proc, root)
    if found is None:
        return None
    directory, mount = found
    headroom: list[int] = []
    while True:
        for limit_name, usage_name, cache_key in (
                ("memory.max", "memory.current", "inactive_file"),
                ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")):
            limit = _read_number(directory / limit_name)
            usage = _read_number(directory / usage_name)
            if limit is not None and usage is not None and limit < _UNLIMITED:
                cache = _reclaimable(directory / "memory.stat", cache_key)
                headroom.append(max(0, limit - usage + cache))
        if directory == mount or mount not in directory.parents:
            break
        directory = directory.parent
    return min(headroom) if headroom else None


def _sysconf_available() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Memory this process may still use on ``device``, in bytes, or None if unknown.

    Host: the smallest of ``MemAvailable`` and the cgroup's headroom (``SC_AVPHYS_PAGES``,
    free memory only, where neither exists), divided among the torchrun processes of the node
    (``LOCAL_WORLD_SIZE``). CUDA: the device's free memory.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    found = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    if not found:
        fallback = _sysconf_available()
        found = [fallback] if fallback is not None else []
    if not found:
        return None
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return min(found) // processes


def stored_dtype(patterns: object) -> np.dtype:
    """The element type of patterns as stored: a file's own dtype for lazy HDF5 patterns."""
    return np.dtype(getattr(patterns, "stored_dtype", getattr(patterns, "dtype", np.float32)))


def held_pattern_bytes(shape: tuple[int, ...], dtype: np.dtype, compact: bool = True) -> int:
    """Bytes of ``shape`` patterns held in memory by ``PatternBatches``: uint16 where the
    stored counts are unsigned integers of at most 16 bits (and ``compact``), else float32.
    (Whole-number float files are held as uint16 too, which this upper bound ignores.)"""
    small_counts = dtype.kind in "ub" and dtype.itemsize <= 2
    return int(np.prod(shape)) * (2 if compact and small_counts else 4)


def choose_lazy(shape: tuple[int, ...], dtype: np.dtype, available: int | None,
                compact: bool = True) -> tuple[bool, str]:
    """Whether patterns of ``shape`` stored as ``dtype`` should be read batch by batch, and
    why (a sentence for the log). In memory when their held size is at most ``DATA_SHARE``
    of ``available`` bytes (or when that is unknown)."""
    held = held_pattern_bytes(shape, dtype, compact)
    if available is None:
        return False, f"patterns held in memory ({_gib(held)}; available memory unknown)"
    if held <= DATA_SHARE * available:
        return False, f"patterns held in memory ({_gib(held)} of {_gib(available)} available)"
    return True, (f"patterns read from the file batch by batch: held in memory they would "
                  f"take {_gib(held)} of the {_gib(available)} available (more than "
                  f"{DATA_SHARE:.0%}); pass lazy=False (--in-memory) to hold them anyway")


def batch_limit(frame_pixels: int, available: int | None) -> int | None:
    """The largest batch whose update intermediates take at most ``BATCH_SHARE`` of
    ``available`` bytes (``UPDATE_ARRAYS`` complex64 arrays of ``frame_pixels`` per pattern
    and mode), at least 1; None if the memory is unknown."""
    if available is None or frame_pixels <= 0:
        return None
    return max(1, int(BATCH_SHARE * available) // (UPDATE_ARRAYS * 8 * frame_pixels))


def update_bytes(batch_size: int, frame_pixels: int) -> int:
    """Estimated bytes of one update's intermediates for ``batch_size`` patterns."""
    return batch_size * UPDATE_ARRAYS * 8 * frame_pixels


def _gib(size: float) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"
