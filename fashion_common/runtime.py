"""Process-wide settings for the entry points (scripts), never applied on import of a library module."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_allocator() -> bool:
    """Keep freed memory in the heap instead of returning it to the OS; True if glibc took the settings.

    A training step frees and re-allocates the same few buffers every time (a batch, activations,
    XLA's temporaries). With glibc's defaults, blocks of 128 KiB and more go to mmap/munmap and
    the top of the heap is trimmed, so every step pays page faults again; on the 2-core CPU this
    made the torch epoch flip between ~1.5 s and ~2.5 s from run to run (seen with JAX loaded in
    the same process, as in the benchmark). A fixed 32 MiB mmap threshold, no trimming and a
    64 MiB top pad made it steady. The cost is memory the process keeps after freeing it.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
        ok &= libc.mallopt(_M_TOP_PAD, 64 * 1024 * 1024)
        return bool(ok)
    except (OSError, AttributeError):  # not glibc (musl, macOS): leave the allocator alone
        return False
