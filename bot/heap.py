"""The daemon's C heap: few malloc arenas, and freed memory given back between poll rounds.

Arenas. glibc gives each thread that contends for the heap an arena of its own, up to 8 per
core; a daemon's threads (the parse workers of `asyncio.to_thread`, one per SQLite connection)
each grow one, and RSS with them: ~11 MiB more over 40 rounds of 200 feeds, still growing
(benchmarks/memory.py). `limit_arenas` caps them at `ARENAS` (2: the event loop's thread and
the workers' do not wait for one lock) with `mallopt(M_ARENA_MAX)`, before the daemon starts
threads. SIAR_MALLOC_ARENAS=N sets another cap, 0 leaves glibc's default; a MALLOC_ARENA_MAX
in the environment (read by glibc itself) wins over both.

Trim. A round of polls allocates and frees many small objects (parsed documents, stories, SQL
parameters); glibc keeps freed memory mapped, and RSS creeps up in steps. `malloc_trim(0)`
returns the free pages of every arena. It costs well under a millisecond and runs off the hot
path every `TRIM_EVERY` seconds. Set SIAR_MALLOC_TRIM=0 to turn it off (for measurements).

Elsewhere than glibc (musl, macOS) both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable

TRIM_EVERY = 60.0  # seconds
ARENAS = 2
M_ARENA_MAX = -8  # glibc's mallopt parameter number


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def _malloc_trim() -> Callable[[int], int] | None:
    if os.environ.get("SIAR_MALLOC_TRIM", "1") == "0":
        return None
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)  # not glibc: none
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_TRIM = _malloc_trim()


def enabled() -> bool:
    return _TRIM is not None


def trim() -> bool:
    """Return free heap pages to the system; whether any were."""
    return bool(_TRIM(0)) if _TRIM is not None else False


def arena_cap() -> int:
    """The arena cap `limit_arenas` sets: SIAR_MALLOC_ARENAS, else ARENAS (0: none)."""
    text = os.environ.get("SIAR_MALLOC_ARENAS", "").strip()
    try:
        return max(0, int(text)) if text else ARENAS
    except ValueError:
        return ARENAS


def limit_arenas() -> bool:
    """Cap glibc's malloc arenas (see the module's docstring); whether a cap was set. Call it
    before threads start: glibc fixes its limit when the ninth arena would be made."""
    cap = arena_cap()
    if cap == 0 or "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, cap))
