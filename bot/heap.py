"""Give freed memory back to the system between poll rounds (glibc's `malloc_trim`).

A round of polls allocates and frees many small objects (parsed documents, stories, SQL
parameters) in several threads; glibc keeps freed arenas mapped, and RSS creeps up in steps.
`malloc_trim(0)` returns the free pages at the top of every arena. It costs well under a
millisecond and runs off the hot path every `TRIM_EVERY` seconds. Elsewhere (musl, macOS) it
is a no-op. Set SIAR_MALLOC_TRIM=0 to turn it off (benchmarks/memory.py measures both).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable

TRIM_EVERY = 60.0  # seconds


def _malloc_trim() -> Callable[[int], int] | None:
    if os.environ.get("SIAR_MALLOC_TRIM", "1") == "0":
        return None
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def enabled() -> bool:
    return _TRIM is not None


def trim() -> bool:
    """Return free heap pages to the system; whether any were."""
    return bool(_TRIM(0)) if _TRIM is not None else False
