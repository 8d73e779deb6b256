"""The few Linux calls Python 3.11 and pyroute2 do not offer: setns(2) on an fd and mount(2) of bpffs."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from velvet.errors import SandboxError

CLONE_NEWNET = 0x40000000
T = TypeVar("T")

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]


def setns_net(path: Path | str) -> None:
    """Move the calling thread into the network namespace bound at `path` (setns(2), CLONE_NEWNET).

    Safe to call in a child between fork and exec; in a threaded process it affects this thread only.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in_netns(path: Path | str, fn: Callable[[], T]) -> T:
    """Run `fn` on a fresh thread that lives in the network namespace at `path`; return its result.

    The thread dies afterwards, so the caller's namespace is never touched. Sockets created by
    `fn` stay in that namespace, and `/proc/sys/net` opened by `fn` is that namespace's.
    """
    box: dict[str, T] = {}
    failure: list[BaseException] = []

    def run() -> None:
        try:
            setns_net(path)
            box["result"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"netns:{Path(path).name}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return box["result"]


def netns_inode(path: Path | str) -> int:
    """Inode number of a network namespace (what /proc/PID/ns/net and BPF `net_ns.ns.inum` show)."""
    return os.stat(path).st_ino


def set_sysctls(netns_path: Path, values: dict[str, str]) -> None:
    """Write `net.*` sysctls (dotted names) inside one network namespace."""

    def write() -> None:
        for key, value in values.items():
            Path("/proc/sys", *key.split(".")).write_text(value)

    call_in_netns(netns_path, write)


def is_mountpoint_of(path: Path, fstype: str, mountinfo: Path = Path("/proc/self/mountinfo")) -> bool:
    """Whether a filesystem of type `fstype` is mounted exactly at `path`."""
    for line in mountinfo.read_text().splitlines():
        left, _, right = line.partition(" - ")
        if left.split(" ")[4] == str(path) and right.split(" ", 1)[0] == fstype:
            return True
    return False


def ensure_bpffs(root: Path) -> None:
    """Mount bpffs at `root` (normally /sys/fs/bpf) unless it already is mounted there."""
    if is_mountpoint_of(root, "bpf"):
        return
    root.mkdir(parents=True, exist_ok=True)
    if _libc.mount(b"bpf", str(root).encode(), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        if err != errno.EBUSY:
            raise SandboxError(f"cannot mount bpffs at {root}: {os.strerror(err)}")


def send_signal(pid: int, sig: int) -> None:
    """kill(2) that ignores a process already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
