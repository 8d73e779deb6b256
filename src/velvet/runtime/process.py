"""A process as the monitor knows it, Tetragon's `exec_id`, and what /proc says about a live process."""

from __future__ import annotations

import base64
import datetime
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Json = dict[str, Any]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def exec_id(node: str, ktime_ns: int, pid: int) -> str:
    """Tetragon's process id: base64 of "node:ktime:pid", unique per exec (or fork) on a node."""
    return base64.b64encode(f"{node}:{ktime_ns}:{pid}".encode()).decode()


def rfc3339(wall_ns: int) -> str:
    """UTC time with nanoseconds, as Tetragon and Hubble print it (sorts as text)."""
    seconds, nanos = divmod(wall_ns, 1_000_000_000)
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


def arguments_text(argv: list[str]) -> str:
    """argv[1:] as one line, each argument quoted only when it needs it (Tetragon's `arguments`)."""
    return " ".join(a if a and not any(c.isspace() or c in "'\"\\" for c in a) else shlex.quote(a)
                    for a in argv[1:])


@dataclass(frozen=True)
class PodRef:
    """The pod a process runs in: namespace, name and labels (k8s: prefix removed)."""

    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> Json:
        """Tetragon's `pod` object."""
        return {"namespace": self.namespace, "name": self.name, "pod_labels": dict(self.labels)}


@dataclass
class Process:
    """One process image: an exec, a fork (flags "clone") or one found in /proc at start ("procFS")."""

    exec_id: str
    pid: int
    ppid: int
    uid: int
    binary: str
    argv: list[str]
    cwd: str
    start_ns: int  # wall clock
    flags: list[str]
    parent_exec_id: str = ""
    cgroup_id: int = 0
    pod: PodRef | None = None
    exited: bool = False

    def flow_json(self) -> Json:
        """What a flow says of the process at one of its ends."""
        return {"exec_id": self.exec_id, "pid": self.pid, "binary": self.binary}

    def to_json(self) -> Json:
        """Tetragon's `process` object."""
        out: Json = {
            "exec_id": self.exec_id, "pid": self.pid, "uid": self.uid, "cwd": self.cwd,
            "binary": self.binary, "arguments": arguments_text(self.argv), "flags": " ".join(self.flags),
            "start_time": rfc3339(self.start_ns), "parent_exec_id": self.parent_exec_id,
        }
        if self.pod is not None:
            out["pod"] = self.pod.to_json()
        return out


@dataclass(frozen=True)
class ProcStat:
    """What /proc/<pid> says of a live process (threads' own entries are not listed in /proc)."""

    pid: int
    ppid: int
    start_ticks: int  # since boot, in clock ticks (CLOCK_BOOTTIME)
    uid: int
    binary: str
    argv: list[str]
    cwd: str
    cgroup: str  # the cgroup v2 path, relative to the hierarchy's root ("/velvet/sb/node/pod-…")

    @property
    def start_ktime_ns(self) -> int:
        """The start time in ns since boot: the ktime part of a /proc process's exec_id."""
        return self.start_ticks * 1_000_000_000 // CLK_TCK


def _read(path: Path) -> str:
    return path.read_bytes().decode(errors="replace")


def read_proc(pid: int) -> ProcStat | None:
    """Read a live process from /proc; None when it is gone (or is a kernel thread, which has no exe)."""
    base = PROC / str(pid)
    try:
        stat = _read(base / "stat")
        fields = stat[stat.rindex(")") + 2:].split()
        status = _read(base / "status")
        uid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:"))
        cmdline = (base / "cmdline").read_bytes()
        binary = os.readlink(base / "exe")
        lines = _read(base / "cgroup").splitlines()
        cgroup = next((line[3:] for line in lines if line.startswith("0::")), "")
    except (OSError, ValueError, StopIteration):
        return None
    try:
        cwd = os.readlink(base / "cwd")
    except OSError:
        cwd = ""
    argv = [a.decode(errors="replace") for a in cmdline.rstrip(b"\0").split(b"\0")] if cmdline else []
    return ProcStat(pid, int(fields[1]), int(fields[19]), uid, binary, argv, cwd, cgroup)


def live_pids() -> list[int]:
    """Every process id in /proc (thread-group leaders only)."""
    return [int(name) for name in os.listdir(PROC) if name.isdigit()]


def cwd_of(pid: int) -> str | None:
    """The current directory of a live process, None when it is gone."""
    try:
        return os.readlink(PROC / str(pid) / "cwd")
    except OSError:
        return None


def listening_sockets(pid: int) -> list[tuple[int, int]]:
    """(netns inode, port) of every IPv4 TCP socket process `pid` listens on (empty when it is gone)."""
    base = PROC / str(pid)
    try:
        netns = os.stat(base / "ns" / "net").st_ino
        lines = _read(base / "net" / "tcp").splitlines()[1:]
        fds = {os.readlink(base / "fd" / fd) for fd in os.listdir(base / "fd")}
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) > 9 and fields[3] == "0A" and f"socket:[{fields[9]}]" in fds:  # 0A: TCP_LISTEN
            found.append((netns, int(fields[1].rsplit(":", 1)[1], 16)))
    return found
