"""cgroup v2 directories of the sandbox: create, join, signal, kill and remove (needs cgroup2).

No controller is enabled, so processes may live in inner cgroups (the node) and leaves (pods) alike.
The cgroup id the BPF helpers report (`bpf_get_current_cgroup_id`) is the directory's inode.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from velvet.errors import SandboxError
from velvet.sandbox.linux import send_signal
from velvet.system.mounts import cgroup2_mount


def create(path: Path) -> int:
    """Create the cgroup `path` (and its parents) unless present; return its cgroup id."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SandboxError(f"cannot create cgroup {path}: {exc}") from exc
    return cgroup_id(path)


def cgroup_id(path: Path) -> int:
    """The cgroup id of `path` (its inode number)."""
    return os.stat(path).st_ino


def join(path: Path, pid: int = 0) -> None:
    """Move process `pid` (0: the caller) into cgroup `path`; uses only os calls (safe after fork)."""
    fd = os.open(path / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(pid).encode())
    finally:
        os.close(fd)


def walk(path: Path) -> list[Path]:
    """`path` and every cgroup below it, deepest first (the order rmdir needs)."""
    if not path.is_dir():
        return []
    found = [Path(root) for root, _dirs, _files in os.walk(path)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def procs(path: Path) -> list[int]:
    """Pids of every process in `path` and below it."""
    pids: list[int] = []
    for group in walk(path):
        try:
            pids.extend(int(line) for line in (group / "cgroup.procs").read_text().split())
        except FileNotFoundError:
            continue
    return sorted(pids)


def signal_all(path: Path, sig: int) -> None:
    """Send `sig` to every process in `path` and below it."""
    for pid in procs(path):
        send_signal(pid, sig)


def populated(path: Path) -> bool:
    """Whether `path` or a cgroup below it still holds a process, exiting ones included (cgroup.events)."""
    try:
        return "populated 1" in (path / "cgroup.events").read_text()
    except FileNotFoundError:
        return False


def kill(path: Path, timeout: float = 5.0) -> None:
    """Kill every process in `path` and below and wait until the tree is empty.

    Uses cgroup.kill (Linux >= 5.14), SIGKILL per pid otherwise. Waits on cgroup.events, not
    cgroup.procs: a process that is still exiting has left cgroup.procs but keeps rmdir at EBUSY.
    """
    if not path.is_dir():
        return
    knob = path / "cgroup.kill"
    if knob.exists():
        knob.write_text("1")
    deadline = time.monotonic() + timeout
    while populated(path):
        if not knob.exists():
            signal_all(path, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise SandboxError(f"processes in cgroup {path} survive SIGKILL: {procs(path)}")
        time.sleep(0.01)


def remove_tree(path: Path) -> None:
    """Remove `path` and every cgroup below it, bottom-up; they must hold no process."""
    for group in walk(path):
        try:
            group.rmdir()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise SandboxError(f"cannot remove cgroup {group}: {exc}") from exc


def cgroup_of(pid: int) -> Path | None:
    """The cgroup v2 directory of process `pid`, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return cgroup2_mount() / line[3:].lstrip("/")
    return None
