"""Process-level memory settings for CPU runs.

glibc's ``malloc`` serves large blocks (above a threshold that starts at 128 KiB and adapts) with ``mmap`` and hands
them back to the kernel on ``free``; it also trims the top of its heap once more than a threshold is free. Between
steps, PyTorch frees and reallocates the same multi-megabyte activations, so each step faults in fresh zeroed pages.
:func:`tune_malloc` sets both thresholds high (as ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` would), so
freed blocks up to 32 MiB are kept and reused instead (the page faults and training time measured with and without
it: ``benchmarks/README.md``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["tune_malloc"]

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Keep freed memory for reuse instead of returning it to the kernel after every step (glibc only).

    Call once at the start of a CPU training or inference process; the ``multibox`` command does so. It changes
    process-wide allocator settings, which is why the library never does it on import.

    Args:
        mmap_threshold: blocks at least this large still come from ``mmap`` (glibc caps it at 32 MiB on 64 bits).
        trim_threshold: free memory kept at the top of the heap before it is returned to the kernel.

    Returns:
        True when the settings were applied; False off glibc (macOS, Windows, musl) or when the environment already
        sets glibc's malloc parameters (``GLIBC_TUNABLES`` with ``glibc.malloc``, ``MALLOC_MMAP_THRESHOLD_``,
        ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_`` or ``MALLOC_ARENA_MAX``), which win.
    """
    if not sys.platform.startswith("linux"):
        return False
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(k in os.environ for k in _USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (only glibc has it; musl's mallopt does nothing)
    except (OSError, AttributeError):
        return False
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    applied = libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
    return libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1 and applied
