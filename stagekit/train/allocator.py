"""Large freed blocks stay with the process (glibc), so a training step reuses the pages of the step before.

glibc serves every block above its mmap threshold (32 MiB at most) with fresh pages from mmap and unmaps it
on free, so each large intermediate of every step faults its pages in again and has them zeroed by the kernel.
At SATURN's real shapes (one batch of 4,096 cells x 8,000 genes per species) each likelihood term is such a
block, and writing into fresh pages, not the arithmetic, dominates the step (docs/benchmarks.md has the figures).
PyTorch's CPU tuning guide gets the same from jemalloc or tcmalloc; glibc's own switches need no extra library.
The price: memory a run has freed is not returned to the system before the process ends (the peak is what it was).

Commands that stream a file in blocks (extract, evaluate) want the opposite: glibc raises its mmap threshold to
the size of each large block freed, after which such blocks come from the heap, and the small results kept
between them pin the heap's pages, so memory grows with the file (5 KB a cell in Mean Teacher's extract).
`return_freed_memory` fixes the threshold at 1 MiB: every larger block is mapped and unmapped again.
"""

from __future__ import annotations

import ctypes
import sys
from functools import cache

M_TRIM_THRESHOLD = -1  # mallopt parameters, <malloc.h>
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
MAPPED_FROM_BYTES = 1 << 20
KEEP_FREE_BYTES = 2**31 - 1  # the heap's free top is trimmed only beyond this (mallopt takes an int)


def _mallopt():
    """glibc's mallopt, or None where the C library is not glibc (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the symbols the process already has: glibc's, where it is glibc
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt


@cache
def return_freed_memory() -> bool:
    """Map every block over 1 MiB on its own, so that freeing it returns it (once per process). False where the
    C library is not glibc."""
    mallopt = _mallopt()
    return mallopt is not None and bool(mallopt(M_MMAP_THRESHOLD, MAPPED_FROM_BYTES))


@cache
def keep_freed_memory() -> bool:
    """Serve large blocks from the heap and keep freed ones there (mallopt; once per process, for the rest of
    it). False where the C library is not glibc (musl, macOS, Windows): nothing is changed there. glibc applies
    it to its main arena; blocks over 64 MiB asked for by other threads are still mapped afresh."""
    mallopt = _mallopt()
    return mallopt is not None and bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREE_BYTES))
