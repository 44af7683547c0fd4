"""Process memory tuning for the sync processes (stdlib only; glibc only).

A backfill with pages of 5,000 entries (issue #24) allocates a few buffers of megabytes per
page (the response body, the decoded JSON, the upsert's encoded records) and frees them once
the page is stored. glibc serves allocations under its dynamic mmap threshold from the heap,
and raises that threshold to the size of the largest block freed (up to 32 MB), so after the
first big page every later one lands on the heap, whose top cannot shrink past long-lived
objects allocated meanwhile: peak RSS grows by tens of MB (measured: 137 MB for a 200,000-entry
backfill at 5,000 a page, 111 MB with the threshold fixed at 128 KiB). Fixing the threshold
makes such buffers mmap'd and returned to the system when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["fix_mmap_threshold"]

#: glibc <malloc.h>: M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 128 * 1024  # glibc's own initial value, kept fixed


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Keep glibc's mmap threshold at `threshold` bytes (and the trim threshold at twice it),
    so blocks that large are mmap'd and given back when freed. Returns False, changing
    nothing, where the C library is not glibc (musl, macOS) or refuses."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, 2 * threshold))
