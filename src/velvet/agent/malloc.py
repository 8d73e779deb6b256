"""glibc's heap as the agent uses it: one arena, big blocks always mapped, free pages given back.

The agent's threads (event loop, state worker, event readers, netlink) take turns on the GIL, so
glibc's per-thread arenas buy no parallelism, while each keeps its own high-water mark: at 10,000
services the extra arenas held about 10 MB of resident memory. Blocks of 128 KiB and more (request
bodies, journal lines, snapshots: megabytes at 10,000 services) are mapped and unmapped on their own,
as glibc does until the first big free raises that bound for good and they land in the heap. On
another C library these calls do nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

M_MMAP_THRESHOLD = -3  # mallopt parameters, malloc.h
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's initial default


def _libc(name: str, argtypes: list[type]) -> Callable[..., int] | None:
    """A C library function returning int, or None when the library has no such function."""
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = argtypes, ctypes.c_int
    return function  # type: ignore[no-any-return]


_MALLOPT = _libc("mallopt", [ctypes.c_int, ctypes.c_int])
_TRIM = _libc("malloc_trim", [ctypes.c_size_t])


def tune() -> bool:
    """One arena for every thread, and a fixed mmap threshold; call before the agent starts threads.

    True when the C library took both settings.
    """
    if _MALLOPT is None:
        return False
    return _MALLOPT(M_ARENA_MAX, 1) == 1 and _MALLOPT(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1


def trim() -> None:
    """malloc_trim(0): give the free pages of every arena back to the kernel (ctypes drops the GIL)."""
    if _TRIM is not None:
        _TRIM(0)
