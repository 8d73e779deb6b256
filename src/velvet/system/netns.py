"""Run code inside a network namespace by switching only the calling thread (setns(2), CLONE_NEWNET).

Needs CAP_SYS_ADMIN. Sockets, netlink and BPF tc/tcx attachments made inside a switched thread belong
to the target namespace. `in_netns` restores the thread's namespace on exit, also on exceptions;
`call_in_netns` runs a function on a throwaway thread, so the caller's thread is never switched;
`enter_netns` switches for good (a child between fork and exec, a daemon moving into its node).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from velvet.errors import DatapathError

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/run/netns")
T = TypeVar("T")
_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setns.restype = ctypes.c_int


def netns_path(name_or_path: str | Path) -> Path:
    """A namespace file: `name` means /run/netns/<name> (as `ip netns` makes), else the path given."""
    return Path(name_or_path) if "/" in str(name_or_path) else NETNS_RUN_DIR / name_or_path


def netns_inode(name_or_path: str | Path) -> int:
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


def _open(name_or_path: str | Path) -> int:
    """An fd of the namespace file, or DatapathError naming the namespace."""
    try:
        return os.open(netns_path(name_or_path), os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DatapathError(f"network namespace {name_or_path}: {exc.strerror}", exc.errno or 0) from exc


def enter_netns(name_or_path: str | Path) -> None:
    """Move the calling thread into a network namespace for good (safe between fork and exec)."""
    target = _open(name_or_path)
    try:
        _setns(target, str(netns_path(name_or_path)))
    finally:
        os.close(target)


@contextmanager
def in_netns(name_or_path: str | Path) -> Iterator[None]:
    """Switch this thread into a network namespace for the duration of the block."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_netns(name_or_path)
        try:
            yield
        finally:
            _setns(original, "the original network namespace")
    finally:
        os.close(original)


def call_in_netns(name_or_path: str | Path, fn: Callable[[], T]) -> T:
    """Run `fn` on a fresh thread that lives in a network namespace; return its result or raise its error.

    The thread dies afterwards, so the caller's namespace is never touched. Sockets created by `fn`
    stay in that namespace, and `/proc/sys/net` opened by `fn` is that namespace's.
    """
    box: dict[str, T] = {}
    failure: list[BaseException] = []

    def run() -> None:
        try:
            enter_netns(name_or_path)
            box["result"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"netns:{netns_path(name_or_path).name}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return box["result"]
