"""guard.bpf.o's denials and audits as Tetragon reports an enforcement: `process_tracepoint` events.

Tetragon reports an overridden call as a `process_kprobe`/`process_tracepoint` with `action`
KPROBE_ACTION_OVERRIDE and the `policy_name`; Velvet's hooks are cgroup hooks, so `subsys` is "cgroup"
and `event` names the hook ("connect4", "sendmsg6", "sock_create", "sysctl", "dev"), `args` the operation
in Tetragon's argument shapes, and `policy_index` the policy's number. A deny says
KPROBE_ACTION_OVERRIDE (the call failed with EPERM), an audit KPROBE_ACTION_POST (it went on). The
process and its parent come from the process monitor's tree (else /proc, else the record's comm).
Call from the agent's event loop thread, as the monitor.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from velvet.datapath.structs import GuardAction, GuardHook, GuardSysctlAccess
from velvet.runtime.guard_rules import ACC_MKNOD, ACC_READ, ACC_WRITE, DEV_BLOCK, DEV_CHAR
from velvet.runtime.monitor import ProcessMonitor
from velvet.runtime.process import Json, Process, rfc3339

DEFAULT_CAPACITY = 4096
AF_INET, AF_INET6 = 2, 10
FAMILIES = {AF_INET: "AF_INET", AF_INET6: "AF_INET6"}
ACTIONS = {GuardAction.DENY: "KPROBE_ACTION_OVERRIDE", GuardAction.AUDIT: "KPROBE_ACTION_POST"}
_PROTOCOLS = {6: "TCP", 17: "UDP", 58: "ICMPv6", 1: "ICMP", 255: "RAW"}


def hook_name(hook: int, family: int) -> str:
    """The cgroup hook an event came from ("connect4", "sendmsg6", "sock_create", "sysctl", "dev")."""
    if hook in (GuardHook.CONNECT, GuardHook.SENDMSG):
        return f"{GuardHook(hook).name.lower()}{'6' if family == AF_INET6 else '4'}"
    return GuardHook(hook).name.lower()


def _args(r: Any) -> list[Json]:
    """The operation in Tetragon's argument shapes."""
    hook, family = int(r["hook"]), int(r["family"])
    if hook in (GuardHook.CONNECT, GuardHook.SENDMSG):
        raw = bytes(r["addr"])
        addr = ipaddress.IPv4Address(raw[:4]) if family == AF_INET else ipaddress.IPv6Address(raw)
        return [{"sockaddr_arg": {"family": FAMILIES.get(family, str(family)), "addr": str(addr),
                                  "port": int(r["port"])}},
                {"int_arg": int(r["protocol"]), "label": "protocol"}]
    if hook == GuardHook.SOCK_CREATE:
        return [{"int_arg": family, "label": "family"}, {"int_arg": int(r["sock_type"]), "label": "type"},
                {"int_arg": int(r["protocol"]), "label": "protocol"}]
    if hook == GuardHook.SYSCTL:
        access = "write" if int(r["access"]) & GuardSysctlAccess.WRITE else "read"
        name = bytes(r["name"]).split(b"\0", 1)[0].decode(errors="replace").replace("/", ".")
        return [{"string_arg": name, "label": "name"}, {"string_arg": access, "label": "access"}]
    kind = {DEV_BLOCK: "b", DEV_CHAR: "c"}.get(int(r["sock_type"]), "?")
    acc = int(r["access"])
    access = "".join(c for c, bit in (("r", ACC_READ), ("w", ACC_WRITE), ("m", ACC_MKNOD)) if acc & bit)
    return [{"string_arg": f"{kind} {int(r['major'])}:{int(r['minor'])}", "label": "device"},
            {"string_arg": access, "label": "access"}]


def _message(r: Any, args: list[Json]) -> str:
    """One line for humans: what was refused or seen."""
    verb = "denied" if int(r["action"]) == GuardAction.DENY else "audited"
    hook = hook_name(int(r["hook"]), int(r["family"]))
    first = args[0]
    if "sockaddr_arg" in first:
        sa = first["sockaddr_arg"]
        proto = _PROTOCOLS.get(int(r["protocol"]), str(int(r["protocol"])))
        return f"{verb} {hook} to {sa['addr']}:{sa['port']}/{proto}"
    if hook == "sock_create":
        return (f"{verb} socket({FAMILIES.get(int(r['family']), r['family'])}, type {int(r['sock_type'])}, "
                f"protocol {int(r['protocol'])})")
    return f"{verb} {hook} {args[1]['string_arg']} of {first['string_arg']}"


class GuardEvents:
    """The last denials and audits of the node, as JSON; policy names are set with the rules."""

    def __init__(self, node_name: str, monitor: ProcessMonitor | None, *,
                 capacity: int = DEFAULT_CAPACITY) -> None:
        self.node_name = node_name
        self.monitor = monitor
        self.policy_names: Mapping[int, str] = {}
        self.events: deque[Json] = deque(maxlen=capacity)
        self._clock_offset_ns = time.time_ns() - time.monotonic_ns()  # bpf_ktime_get_ns is CLOCK_MONOTONIC

    def ingest(self, batch: Any) -> list[Json]:
        """Take a batch of `struct guard_event` records (numpy); the events they became."""
        made = [self._event(r) for r in batch]
        self.events.extend(made)
        return made

    def _process(self, r: Any) -> tuple[Process, Process | None]:
        """The process that made the call and its parent; a stand-in from the record when unknown."""
        pid, cgroup_id = int(r["pid"]), int(r["cgroup_id"])
        proc = self.monitor.process(pid) if self.monitor is not None else None
        if proc is None:
            pod = self.monitor.pod(cgroup_id) if self.monitor is not None else None
            proc = Process("", pid, 0, int(r["uid"]), bytes(r["comm"]).decode(errors="replace"), [], "", 0,
                           ["miss"], "", cgroup_id, pod)
        parent = self.monitor.process(proc.ppid) if self.monitor is not None and proc.ppid else None
        return proc, parent

    def _event(self, r: Any) -> Json:
        """One record as a Tetragon `process_tracepoint` event."""
        proc, parent = self._process(r)
        args = _args(r)
        policy = int(r["policy"])
        body: Json = {"process": proc.to_json(), "subsys": "cgroup",
                      "event": hook_name(int(r["hook"]), int(r["family"])), "args": args,
                      "policy_name": self.policy_names.get(policy, ""), "policy_index": policy,
                      "action": ACTIONS[GuardAction(int(r["action"]))], "message": _message(r, args)}
        if parent is not None:
            body["parent"] = parent.to_json()
        when = rfc3339(int(r["ts_ns"]) + self._clock_offset_ns)
        return {"process_tracepoint": body, "node_name": self.node_name, "time": when}

    def query(self, *, last: int = 20, namespace: str = "", pod: str = "") -> list[Json]:
        """The last `last` stored events of a namespace and pod (glob), oldest first."""
        found = [e for e in self.events if _in_pod(e, namespace, pod)]
        return found[-last:] if last else []


def _in_pod(event: Json, namespace: str, pod: str) -> bool:
    """Whether an event's process runs in the given namespace and pod ("" matches any)."""
    ref = event["process_tracepoint"]["process"].get("pod")
    if namespace and (ref is None or ref["namespace"] != namespace):
        return False
    return not pod or (ref is not None and fnmatch.fnmatchcase(ref["name"], pod))
