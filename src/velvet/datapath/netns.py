"""Run code inside a network namespace by switching only the calling thread (setns(2), CLONE_NEWNET).

Needs CAP_SYS_ADMIN. Sockets, netlink and BPF tc/tcx attachments made inside the block belong to the
target namespace; the thread's original namespace is restored on exit, also on exceptions.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from velvet.errors import DatapathError

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/run/netns")
_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setns.restype = ctypes.c_int


def netns_path(name_or_path: str) -> Path:
    """A namespace file: `name` means /run/netns/<name> (as `ip netns` makes), else the path given."""
    return Path(name_or_path) if "/" in name_or_path else NETNS_RUN_DIR / name_or_path


def netns_inode(name_or_path: str) -> int:
    """Inode number of a network namespace (what BPF_CORE_READ(..., net_ns, ns.inum) reports)."""
    try:
        return os.stat(netns_path(name_or_path)).st_ino
    except OSError as exc:
        raise DatapathError(f"network namespace {name_or_path}: {exc.strerror}", exc.errno or 0) from exc


def _setns(fd: int, what: str) -> None:
    """Move this thread into the network namespace behind `fd`."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise DatapathError(f"setns into {what}: {os.strerror(err)}", err)


@contextmanager
def in_netns(name_or_path: str) -> Iterator[None]:
    """Switch this thread into a network namespace for the duration of the block."""
    path = netns_path(name_or_path)
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise DatapathError(f"network namespace {name_or_path}: {exc.strerror}", exc.errno or 0) from exc
        try:
            _setns(target, str(path))
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(original, "the original network namespace")
    finally:
        os.close(original)
