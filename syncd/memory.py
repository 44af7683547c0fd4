"""Process memory tuning for the sync processes (stdlib only; the mmap threshold glibc only).

A backfill with pages of 5,000 entries (issue #24) allocates a few buffers of megabytes per
page (the response body, the decoded JSON, the upsert's encoded records) and frees them once
the page is stored. glibc serves allocations under its dynamic mmap threshold from the heap,
and raises that threshold to the size of the largest block freed (up to 32 MB), so after the
first big page every later one lands on the heap, whose top cannot shrink past long-lived
objects allocated meanwhile: peak RSS grows by tens of MB (measured: 137 MB for a 200,000-entry
backfill at 5,000 a page, 111 MB with the threshold fixed at 128 KiB). Fixing the threshold
makes such buffers mmap'd and returned to the system when freed. It is fixed at 1 MiB, above
the buffers of a 200-entry page (~110 KB of body; asyncpg's write buffer grows to 256 KB), which
at 128 KiB cost an mmap, an mremap and a munmap with their page faults on every page: a
1,000,000-entry backfill at 200 a page spent 1.3-1.5 s of system CPU, 0.6-0.8 s at 1 MiB; at
5,000 a page peak RSS went from 77 to 78-79 MB (200,000 entries, `tests/benchmarks/README.md`).

Python's cyclic garbage collector, for its part, walks every object it tracks at each full
collection, and most of them are the modules, classes and functions imported at start, which
live as long as the process: `freeze_startup_objects` moves them out of its reach once the
command is ready (`gc.freeze`, the Python manual's "gc" module). Measured (issue #26), a
1,000,000-entry backfill: 9 full collections cost 0.25 s before, 0.04 s after.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

__all__ = ["fix_mmap_threshold", "freeze_startup_objects"]

#: glibc <malloc.h>: M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 1024 * 1024  # above a 200-entry page's buffers, below a 5,000-entry page's


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


def freeze_startup_objects() -> int:
    """Move every object the collector tracks now (the imported modules, the settings, the
    parser) to its permanent generation, so later collections no longer walk them; call it once
    the command's imports are done, in the console script's process only. Returns how many
    were frozen. Objects created later are collected as ever; the frozen ones are never freed
    (they live as long as the process anyway)."""
    gc.freeze()
    return gc.get_freeze_count()
