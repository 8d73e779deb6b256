"""Find or mount the pseudo file systems the datapath needs: bpffs, tracefs and cgroup v2.

Needs CAP_SYS_ADMIN to mount; every function is idempotent and only mounts what is missing.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
from pathlib import Path

from velvet.errors import DatapathError, NotSupported

BPFFS = Path("/sys/fs/bpf")
TRACEFS = Path("/sys/kernel/tracing")
_MOUNTINFO = Path("/proc/self/mountinfo")
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.mount.restype = ctypes.c_int
_BPF_FS_MAGIC = 0xCAFE4A11


class _Statfs(ctypes.Structure):
    """struct statfs: only f_type is read; the rest is room for the kernel to write into."""

    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_long * 15)]


def _mounts() -> list[tuple[Path, str]]:
    """(mount point, file system type) of every mount of this process's mount namespace."""
    found: list[tuple[Path, str]] = []
    for line in _MOUNTINFO.read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])  # \040 is a blank
        found.append((Path(point), fields[sep + 1]))
    return found


def fs_type(path: Path) -> str | None:
    """File system type mounted exactly at `path`, or None (the last mount on top wins)."""
    kinds = [kind for point, kind in _mounts() if point == path]
    return kinds[-1] if kinds else None


def _ensure(path: Path, fstype: str) -> Path:
    """Mount `fstype` at `path` unless it is already mounted there."""
    if fs_type(path) == fstype:
        return path
    path.mkdir(parents=True, exist_ok=True)
    if _libc.mount(fstype.encode(), str(path).encode(), fstype.encode(), 0, None) != 0:
        err = ctypes.get_errno()
        raise DatapathError(f"mounting {fstype} at {path} failed: {os.strerror(err)}", err)
    return path


def ensure_bpffs(path: Path = BPFFS) -> Path:
    """Make sure a BPF file system (bpffs, for pinning maps and links) is mounted at `path`."""
    return _ensure(path, "bpf")


def ensure_tracefs() -> Path:
    """Make sure tracefs is mounted at /sys/kernel/tracing (tracepoint attach needs its event ids)."""
    return _ensure(TRACEFS, "tracefs")


@functools.cache
def cgroup2_mount() -> Path:
    """The cgroup v2 mount point, found in /proc/self/mountinfo (e.g. /sys/fs/cgroup/unified on hybrid).

    Looked up once per process: the sandbox asks for it on every process check.
    """
    for point, kind in _mounts():
        if kind == "cgroup2":
            return point
    raise NotSupported("cgroup v2 mount", "4.5", "socket load balancing")


def is_on_bpffs(path: Path) -> bool:
    """Whether `path` (or its nearest existing parent) lives on a BPF file system."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    return _statfs_type(probe) == _BPF_FS_MAGIC


def ensure_pin_dir(pin_dir: Path) -> Path:
    """Create `pin_dir` on bpffs (mounting /sys/fs/bpf first when the dir is below it)."""
    if pin_dir.is_relative_to(BPFFS):
        ensure_bpffs()
    if not is_on_bpffs(pin_dir):
        raise DatapathError(f"{pin_dir} is not on a BPF file system (mount -t bpf bpf <dir>)")
    pin_dir.mkdir(parents=True, exist_ok=True)
    return pin_dir


def _statfs_type(path: Path) -> int:
    """The f_type magic of the file system holding `path` (statfs(2))."""
    buf = _Statfs()
    if _libc.statfs(str(path).encode(), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise DatapathError(f"statfs {path}: {os.strerror(err)}", err)
    return int(buf.f_type) & 0xFFFFFFFF
