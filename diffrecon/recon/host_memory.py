"""Host (CPU) allocator settings while a reconstruction runs: large blocks reused, not remapped.

glibc serves every allocation above its mmap threshold (adaptive, at most 32 MiB) from a fresh
``mmap`` and unmaps it on ``free``. A reconstruction used to create object-sized tensors on
every update (the object gradient, the optimizer's temporaries), so with an object above 32 MiB
(about 2000 x 2000 complex64 pixels) the kernel zero-fills and page-faults that memory in
again and again: on 2000 patterns of 256x256 (a 2435 x 2440 object, 1 thread) the kernel's
page-fault work was a third of the run (38 of 115 s, 26.5 million minor faults). With mmap off
and automatic trimming off for the duration, freed blocks are reused: 115 -> 75 s, epoch
9.2 -> 6.1 s, peak RSS unchanged (1630 -> 1680 MiB). On the 420 x 128^2 scene (3 MiB object)
the change is within noise.

``reuse_freed_blocks`` covers the iterations only (``api``), not the reading and conversion
of the data (with it, converting 500 MiB of patterns left 852 instead of 660 MiB resident); on
exit it restores glibc's default values and returns free memory to the system. glibc's
*adaptive* mmap threshold, which any such ``mallopt`` call switches off for the process, stays
off: afterwards every allocation above 128 KiB is freshly mapped (glibc's behaviour before it
adapts), which costs later large allocations their page faults but holds no freed memory.
(Trimming the heap on entry too, or after every epoch, did not lower the peak of a run, and
re-faulted the pages.)
It does nothing on other C libraries (macOS, Windows, musl) or when the user set any
``MALLOC_*`` environment variable (their choice wins).

**jemalloc holds less.** Even with these settings glibc's heap fragmented while the object
gradient was a fresh object-sized block on every update: batch-sized blocks split the freed
one, and the next gradient no longer fitted. On 2000 x 256^2 frames (500 MiB of counts) the
peak of a 3-epoch run ranged over 724-948 MiB in 18 fresh processes (1.45-1.90x the data), and
rose by one object-sized block now and then as epochs went on (835 and 971 MiB after 20).
Now the ptychographic models reuse one gradient buffer (``physics.spares``) and a run without
TensorBoard draws no images: 699-760 MiB (median 711, 1.42x) in three 3-epoch runs, 719 MiB
after 20 epochs. jemalloc keeps blocks of a size class together: 628 MiB (1.26x) after 3
epochs and after 20; on 420 x 128^2, 115 instead of 144-154 MiB (114 instead of 166-170 read
batch by batch), with epochs within this machine's noise of glibc's. That is with
``JEMALLOC_CONF``: no separate arena for blocks above 8 MiB and no purging of freed pages,
whose page faults made epochs a third slower or more. ``jemalloc_environment`` gives the
environment that starts a process with it; ``restart_under_jemalloc`` restarts ``diffrecon
reconstruct`` under it for a large scan; ``experiments/bench_memory.py`` measures both
allocators.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Iterator, Mapping

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
JEMALLOC_CONF = "oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1"
GLIBC_MMAP_MAX, GLIBC_TRIM_THRESHOLD = 65536, 128 * 1024  # glibc's defaults
LARGE_SCAN_BYTES = 256 * 2**20  # patterns held in memory from which jemalloc is worth a restart
RESTARTED = "DIFFRECON_RESTARTED_UNDER_JEMALLOC"  # set in a process restarted under jemalloc
log = logging.getLogger("diffrecon")


def _glibc() -> ctypes.CDLL | None:
    if os.name != "posix" or any(k.startswith("MALLOC_") for k in os.environ):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (glibc only)
        libc.mallopt, libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def reuse_freed_blocks(enabled: bool = True) -> Iterator[bool]:
    """Within the block, large host allocations come from the heap and freed ones are kept for
    reuse (glibc: ``mallopt(M_MMAP_MAX, 0)``, no automatic trim). Yields whether it applied."""
    libc = _glibc() if enabled else None
    if libc is None:
        yield False
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield True
    finally:
        libc.mallopt(M_MMAP_MAX, GLIBC_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD)
        libc.malloc_trim(0)


@contextlib.contextmanager
def return_large_blocks(enabled: bool = True) -> Iterator[bool]:
    """Within ``reuse_freed_blocks``: large blocks mapped and unmapped on free again for the
    duration, and free heap returned on exit. For one-off work between epochs whose own peak
    would otherwise stay resident in the heap for the rest of the run, e.g. the comparison with
    the ground truth (a 2435 x 2440 object: 0.8 GiB of complex128 temporaries; a default
    10-epoch run on 2000 x 256^2 frames peaked at 2.63 GB resident with them kept).
    Yields whether it applied."""
    libc = _glibc() if enabled else None
    if libc is None:
        yield False
        return
    libc.mallopt(M_MMAP_MAX, GLIBC_MMAP_MAX)
    try:
        yield True
    finally:
        libc.mallopt(M_MMAP_MAX, 0)
        libc.malloc_trim(0)


def jemalloc_library() -> str | None:
    """The file name of the system's jemalloc shared library (e.g. ``libjemalloc.so.2``;
    Debian/Ubuntu package ``libjemalloc2``), or None where there is none."""
    return ctypes.util.find_library("jemalloc")


def jemalloc_environment(environ: Mapping[str, str] | None = None,
                         library: str | None = None) -> dict[str, str] | None:
    """A copy of ``environ`` (default ``os.environ``) that starts a process with jemalloc:
    ``library`` (default ``jemalloc_library()``) first in ``LD_PRELOAD`` and
    ``MALLOC_CONF=JEMALLOC_CONF`` unless set already. None when there is no library."""
    library = library or jemalloc_library()
    if library is None:
        return None
    env = dict(os.environ if environ is None else environ)
    preload = [p for p in env.get("LD_PRELOAD", "").split() if p]
    if not any("jemalloc" in p for p in preload):
        env["LD_PRELOAD"] = " ".join([library, *preload])
    env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    return env


def system_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``environ`` (default ``os.environ``) without ``LD_PRELOAD`` and
    ``MALLOC_CONF``: a process started with it runs the system allocator."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}


def allocator_in_use() -> str:
    """``jemalloc`` when that library is mapped into this process, else ``system``."""
    try:
        with open("/proc/self/maps") as maps:
            return "jemalloc" if "libjemalloc" in maps.read() else "system"
    except OSError:
        return "system"


def allocator_hint(pattern_bytes: int, device: str = "cpu") -> str | None:
    """A line suggesting jemalloc for a scan whose patterns take ``pattern_bytes`` on the host
    (256 MiB or more) while this process runs the system allocator; None otherwise."""
    if device != "cpu" or pattern_bytes < LARGE_SCAN_BYTES or allocator_in_use() == "jemalloc":
        return None
    library = jemalloc_library()
    how = (f"diffrecon reconstruct restarts under it by itself; from Python, run with "
           f"LD_PRELOAD={library} MALLOC_CONF={JEMALLOC_CONF} set" if library else
           "install jemalloc (Debian/Ubuntu: libjemalloc2)")
    return (f"allocator: the system's; on large scans jemalloc holds about a tenth less host "
            f"memory ({how}; README, 'Large scans')")


def restart_under_jemalloc(pattern_bytes: int, device: str = "cpu") -> None:
    """Replace this process by the same command line under jemalloc (``os.execve``) for a
    scan whose patterns take ``pattern_bytes`` in host memory (``LARGE_SCAN_BYTES`` or more),
    on Linux, when the library is installed and this process runs the system allocator.
    Returns when it does not restart. The environment variable ``DIFFRECON_ALLOCATOR`` chooses:
    ``auto`` (default), ``system`` (never restart) or ``jemalloc`` (whatever the size).

    For the command line only (``diffrecon reconstruct``): the process starts afresh, so its
    imports (about 2 s) run twice, which a scan of that size repays. A restarted process
    carries ``RESTARTED`` in its environment, logs its allocator and never restarts again
    (so a library that fails to preload cannot loop).
    """
    choice = os.environ.get("DIFFRECON_ALLOCATOR", "auto")
    if choice not in ("auto", "system", "jemalloc"):
        log.warning("DIFFRECON_ALLOCATOR=%s: expected auto, system or jemalloc; using auto",
                    choice)
    if os.environ.get(RESTARTED):
        log.info("host memory: %s allocator", allocator_in_use())
        return
    if choice == "system" or not sys.platform.startswith("linux"):
        return
    if choice != "jemalloc" and (device != "cpu" or pattern_bytes < LARGE_SCAN_BYTES):
        return
    env = jemalloc_environment()
    if env is None or allocator_in_use() == "jemalloc":
        return
    env[RESTARTED] = "1"
    log.info("host memory: restarting under jemalloc (%s) for %.0f MiB of patterns held in "
             "memory; DIFFRECON_ALLOCATOR=system keeps the system allocator",
             env["LD_PRELOAD"].split()[0], pattern_bytes / 2**20)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
