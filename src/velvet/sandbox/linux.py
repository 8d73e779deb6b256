"""Two small Linux chores of the sandbox: a signal that tolerates a gone process, sysctls in a namespace."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from velvet.system.netns import call_in_netns


def set_sysctls(netns_path: Path, values: dict[str, str]) -> None:
    """Write `net.*` sysctls (dotted names) inside one network namespace."""

    def write() -> None:
        for key, value in values.items():
            Path("/proc/sys", *key.split(".")).write_text(value)

    call_in_netns(netns_path, write)


def send_signal(pid: int, sig: int) -> None:
    """kill(2) that ignores a process already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
