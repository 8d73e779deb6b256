"""Test the agent's heap settings: one malloc arena for every thread."""

from __future__ import annotations

import subprocess
import sys

# A thread allocating blocks too big for Python's own allocator, then glibc's per-arena statistics.
_PROGRAM = """
import ctypes, sys, threading
from velvet.agent import malloc
if sys.argv[1] == "one":
    assert malloc.tune()
held = []
thread = threading.Thread(target=lambda: held.extend(bytes(4000 + i) for i in range(2000)))
thread.start()
thread.join()
ctypes.CDLL(None).malloc_stats()
"""


def arenas(setting: str) -> int:
    """How many malloc arenas a process with a busy second thread ends up with."""
    done = subprocess.run([sys.executable, "-c", _PROGRAM, setting], capture_output=True, text=True,
                          check=True)
    return sum(line.startswith("Arena ") for line in done.stderr.splitlines())


def test_every_thread_allocates_from_one_arena_once_asked() -> None:
    assert arenas("default") >= 2  # glibc gives the second thread an arena of its own
    assert arenas("one") == 1
