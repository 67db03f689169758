"""Host (CPU) allocator settings while a reconstruction runs: large blocks reused, not remapped.

glibc serves every allocation above its mmap threshold (adaptive, at most 32 MiB) from a fresh
``mmap`` and unmaps it on ``free``. A reconstruction creates object-sized tensors on every
update (the object gradient, the optimizer's temporaries), so with an object above 32 MiB
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
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Iterator

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
GLIBC_MMAP_MAX, GLIBC_TRIM_THRESHOLD = 65536, 128 * 1024  # glibc's defaults


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

