"""CPU forwards without page faults: glibc's allocator settings for repeated, same-sized activation buffers.

By default glibc hands buffers above a (dynamic) size straight back to the kernel when they are freed, and
trims the heap's free top. A teacher forward allocates and frees the same activation buffers on every call, so
each call faults every page of them in again: at 3x224x224, half the CPU time went to the kernel. Pinning the
mmap threshold at glibc's ceiling (32 MiB) and raising the trim threshold keeps those buffers in the process.
"""
from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc's largest mmap threshold on 64-bit (``4 * 1024 * 1024 * sizeof(long)``): buffers below it come from the heap.
MMAP_THRESHOLD_MAX = 32 << 20
#: Freed heap memory kept in the process before glibc returns it to the kernel (bounds what stays resident).
TRIM_THRESHOLD = 1 << 28

_state = {"done": False, "applied": False}


def keep_activation_buffers() -> bool:
    """Sets glibc's mmap and trim thresholds once per process (Linux with glibc; elsewhere nothing).

    Returns:
        Whether the settings are in effect.
    """
    if _state["done"]:
        return _state["applied"]
    _state["done"] = True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # absent from musl
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _state["applied"] = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return _state["applied"]
