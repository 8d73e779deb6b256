"""Find and remove everything a sandbox left behind, by name, even after a crash half-way through.

A sandbox's objects are found from its name alone (see `naming`): network namespaces
`velvet-<sb>-*`, the cgroup tree `<cgroup2>/velvet/<sb>`, processes in that tree or in those
namespaces, `/sys/fs/bpf/velvet/<sb>`, `/var/lib/velvet/<sb>` and `/run/velvet/<sb>`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from velvet.errors import SandboxError
from velvet.paths import BPFFS_ROOT, RUN_ROOT, SANDBOX_NAME, STATE_ROOT
from velvet.sandbox import cgroups, netlink, process
from velvet.sandbox.linux import send_signal
from velvet.sandbox.naming import NETNS_RE, SandboxNames, cgroup_root
from velvet.system.netns import NETNS_RUN_DIR


@dataclass(frozen=True)
class Leftovers:
    """What exists of one or more sandboxes."""

    sandboxes: tuple[str, ...]
    netns: tuple[str, ...]
    cgroups: tuple[Path, ...]
    pids: tuple[int, ...]
    pin_dirs: tuple[Path, ...]
    state_dirs: tuple[Path, ...]
    run_dirs: tuple[Path, ...]

    @property
    def empty(self) -> bool:
        """Whether nothing is left."""
        return not any(
            (self.netns, self.cgroups, self.pids, self.pin_dirs, self.state_dirs, self.run_dirs)
        )


def find_leftovers(sandbox: str | None = None) -> Leftovers:
    """Everything of sandbox `sandbox` (of every sandbox on this machine when None)."""
    sandboxes = [sandbox] if sandbox is not None else _all_sandboxes()
    all_ns = netlink.list_netns()
    found_ns: list[str] = []
    groups: list[Path] = []
    pins: list[Path] = []
    states: list[Path] = []
    runs: list[Path] = []
    for sb in sandboxes:
        sn = SandboxNames(sb)
        found_ns += [n for n in all_ns if (m := NETNS_RE.fullmatch(n)) and m["sandbox"] == sb]
        groups += [p for p in (sn.cgroup_sandbox,) if p.is_dir()]
        pins += [p for p in (sn.pin_dir,) if p.is_dir()]
        states += [p for p in (sn.state_dir,) if p.is_dir()]
        runs += [p for p in (sn.run_dir,) if p.is_dir()]
    pids = {pid for g in groups for pid in cgroups.procs(g)} | _pids_in_netns(found_ns)
    pids.discard(os.getpid())
    return Leftovers(
        tuple(sandboxes), tuple(found_ns), tuple(groups), tuple(sorted(pids)), tuple(pins), tuple(states),
        tuple(runs),
    )


def find_node_leftovers(names: SandboxNames) -> Leftovers:
    """Everything of one node of a multi-node sandbox: its namespace, pods, cgroup, pins, state, runtime."""
    netns = [n for n in netlink.list_netns() if (m := NETNS_RE.fullmatch(n)) and m["sandbox"] == names.sandbox
             and (n == names.node_netns or m["role"].startswith(names.pod_role))]
    groups = [p for p in (names.cgroup_node,) if p.is_dir()]
    pids = {pid for g in groups for pid in cgroups.procs(g)} | _pids_in_netns(netns)
    pids.discard(os.getpid())

    def existing(path: Path) -> tuple[Path, ...]:
        return (path,) if path.is_dir() else ()

    return Leftovers((names.sandbox,), tuple(netns), tuple(groups), tuple(sorted(pids)),
                     existing(names.pin_dir), existing(names.state_dir), existing(names.run_dir))


def remove(leftovers: Leftovers, timeout: float = 5.0) -> None:
    """Kill the processes, then remove namespaces, cgroups, pins and state; report what failed at the end.

    Must run outside the sandbox's cgroups (it would kill itself otherwise).
    """
    own = cgroups.cgroup_of(os.getpid())
    if own is not None and any(own == g or g in own.parents for g in leftovers.cgroups):
        raise SandboxError(f"cannot remove a sandbox from inside its own cgroup ({own})")
    errors: list[str] = []

    def attempt(what: str, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except (OSError, SandboxError) as exc:
            errors.append(f"{what}: {exc}")

    for group in leftovers.cgroups:
        attempt(f"kill cgroup {group}", cgroups.kill, group, timeout)
    attempt("kill processes", _kill_pids, leftovers.pids, timeout)
    for ns in leftovers.netns:
        attempt(f"remove netns {ns}", netlink.remove_netns, ns)
    for group in leftovers.cgroups:
        attempt(f"remove cgroup {group}", cgroups.remove_tree, group)
    for d in (*leftovers.pin_dirs, *leftovers.state_dirs, *leftovers.run_dirs):
        attempt(f"remove {d}", shutil.rmtree, d)
    if errors:
        raise SandboxError("sandbox cleanup incomplete:\n  " + "\n  ".join(errors))


def status(sandbox: str) -> dict[str, Any]:
    """What exists of `sandbox` (JSON-serialisable), for `velvet sandbox status`."""
    sn = SandboxNames(sandbox)
    left = find_leftovers(sandbox)
    pods = []
    records = [*sn.pods_dir.glob("*/record.json"), *sn.state_dir.glob("node[1-7]/pods/*/record.json")]
    for path in sorted(records):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        alive = {c: process.alive(pid) for c, pid in rec.get("pids", {}).items()}
        pods.append({"namespace": rec["namespace"], "name": rec["name"], "ip": rec["ip"], "running": alive})
    daemons = {}
    pid_files = [*sn.run_dir.glob("*.pid"), *sn.run_dir.glob("node[1-7]/*.pid")]
    for pid_file in sorted(pid_files):
        pid = read_pid(pid_file)
        node = f"{pid_file.parent.name}/" if pid_file.parent != sn.run_dir else ""
        daemons[f"{node}{pid_file.stem}"] = {"pid": pid, "running": pid is not None and process.alive(pid)}
    return {
        "sandbox": sn.sandbox,
        "node": sn.node_netns in left.netns,
        "ext": sn.ext_netns in left.netns,
        "netns": list(left.netns),
        "cgroup": str(sn.cgroup_sandbox) if left.cgroups else None,
        "processes": list(left.pids),
        "pin_dir": str(sn.pin_dir) if left.pin_dirs else None,
        "state_dir": str(sn.state_dir) if left.state_dirs else None,
        "run_dir": str(sn.run_dir) if left.run_dirs else None,
        "pods": pods,
        "daemons": daemons,
    }


def read_pid(path: Path) -> int | None:
    """The pid in a pid file, or None."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _all_sandboxes() -> list[str]:
    """Names of every sandbox with a namespace, a cgroup, a pin dir or a state dir on this machine."""
    found = {m["sandbox"] for n in netlink.list_netns() if (m := NETNS_RE.fullmatch(n))}
    for root in (cgroup_root(), BPFFS_ROOT, RUN_ROOT):
        if root.is_dir():
            found |= {p.name for p in root.iterdir() if p.is_dir()}
    if STATE_ROOT.is_dir():
        found |= {p.name for p in STATE_ROOT.iterdir() if (p / "pods").is_dir()}
    return sorted(sb for sb in found if SANDBOX_NAME.fullmatch(sb))


def _pids_in_netns(names: list[str]) -> set[int]:
    """Pids of processes whose network namespace is one of `names`."""
    inodes = set()
    for name in names:
        try:
            inodes.add(os.stat(NETNS_RUN_DIR / name).st_ino)
        except OSError:
            continue
    if not inodes:
        return set()
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                    pids.add(int(entry))
            except OSError:
                continue
    return pids


def _kill_pids(pids: tuple[int, ...], timeout: float) -> None:
    """SIGKILL `pids` and wait until they are gone (zombies count as gone)."""
    for pid in pids:
        send_signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(process.alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise SandboxError(f"processes survive SIGKILL: {[p for p in pids if process.alive(p)]}")
        time.sleep(0.01)
