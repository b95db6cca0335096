"""Keep freed memory in the process, so that each image's large tensors do not fault in fresh pages.

glibc's malloc serves every block above a threshold (128 KiB, rising to at most 32 MiB) with its own mmap and
unmaps it on free. Inference allocates tensors of tens of MB per layer and per image (the members' decode of a
512² image holds 5 x 32 x 512 x 512 floats), so every image pays the kernel to map, zero and fault in those
pages again. On the 2-core virtual machines this project is measured on (README *Speed*), `diffiml localize` at
the defaults took 0.39-0.43 s per 512² image with `keep_freed_memory()` against 0.65-0.76 s without (paired
runs); raising only glibc's mmap threshold to its 32 MiB ceiling recovered less of it.

`keep_freed_memory()` turns glibc's mmap path off and stops it from trimming the heap, so freed blocks are
reused. The cost: the process keeps its peak heap until it exits (its peak does not grow). The `diffiml`
command calls it at start; library users may call it too. jemalloc or tcmalloc preloaded do the same job
without this, but are not installable from this project's dependencies (they are system libraries).
Nothing is changed on other C libraries, or when the user set glibc's own MALLOC_* tunables.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform

# mallopt parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # bytes, the largest int mallopt takes: in effect never give the heap's top back


class _MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (glibc >= 2.33)."""

    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Make glibc reuse freed memory rather than return it to the kernel (see module doc).

    Returns True when the settings were applied; False on other C libraries, or when any MALLOC_* tunable is
    set in the environment (the user's choice stands).
    """
    if any(name.startswith(("MALLOC_", "GLIBC_TUNABLES")) for name in os.environ):
        return False
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def mmapped_blocks() -> int | None:
    """How many blocks glibc currently serves by mmap (mallinfo2's hblks), or None where it cannot say."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    return int(libc.mallinfo2().hblks)
