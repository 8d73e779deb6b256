"""Runtime enforcement in the kernel: guard.bpf.o loaded, attached to the node's cgroup, its rules written.

Needs root, bpffs, cgroup v2 and Linux >= 5.17 (bpf_loop). A hook's programs are attached to the node's
cgroup only while some rule uses it (every connect(), socket() and sysctl write of the node's pods would
run them otherwise), as pinned links (`links/guard-connect4`, ...), which run beside the socket LB's
programs on the same hooks (cgroup links are always multi-attach; programs of one cgroup run in attach
order, and the LB is attached when the datapath starts, before any rule: connect rules see the backend a
ClusterIP was translated to). The rule maps and the
event ring are pinned beside the node's other maps, and `proc_binsets` is pinned under the same name as
proc.bpf.o's, so both objects share it: a restarted agent keeps enforcing the rules it had written.
"""

from __future__ import annotations

import logging
from ctypes import c_uint32, c_uint64
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from velvet.datapath import attach, build
from velvet.datapath.bpfobject import BpfObject, load_over_pins
from velvet.datapath.maps import Map
from velvet.datapath.structs import GUARD_EVENT_DTYPE, GUARD_RULES_MAX, GuardHook, GuardRule
from velvet.datapath.views import RingView
from velvet.errors import DatapathError
from velvet.runtime.guard_rules import MAPS, Contents, DenyRule, compile_rules
from velvet.system import mounts

log = logging.getLogger("velvet.runtime")
PINNED_MAPS = (*MAPS, "guard_events", "guard_stats")  # and proc_binsets, proc.bpf.o's as well
# program -> cgroup attach type
HOOKS = {
    "guard_connect4": attach.BPF_CGROUP_INET4_CONNECT,
    "guard_connect6": attach.BPF_CGROUP_INET6_CONNECT,
    "guard_sendmsg4": attach.BPF_CGROUP_UDP4_SENDMSG,
    "guard_sendmsg6": attach.BPF_CGROUP_UDP6_SENDMSG,
    "guard_sock_create": attach.BPF_CGROUP_INET_SOCK_CREATE,
    "guard_sysctl": attach.BPF_CGROUP_SYSCTL,
    "guard_dev": attach.BPF_CGROUP_DEVICE,
}
PROGRAMS_OF_HOOK = {
    GuardHook.CONNECT: ("guard_connect4", "guard_connect6"),
    GuardHook.SENDMSG: ("guard_sendmsg4", "guard_sendmsg6"),
    GuardHook.SOCK_CREATE: ("guard_sock_create",),
    GuardHook.SYSCTL: ("guard_sysctl",),
    GuardHook.DEV: ("guard_dev",),
}
_EMPTY_RULE = bytes(GuardRule())


@dataclass(frozen=True)
class RuleWrite:
    """What one `set_rules` changed in the kernel: entries written and deleted per map."""

    written: dict[str, int]
    deleted: dict[str, int]


class GuardSource(Protocol):
    """Where rules are enforced and denials come from: the kernel, or a fake in unit tests."""

    slots: dict[DenyRule, int]  # the slot of every rule in force

    def start(self) -> None:
        """Load and attach."""

    def set_rules(self, rules: list[DenyRule]) -> RuleWrite:
        """Enforce exactly `rules` (InvalidRule, and nothing written, for a bad one)."""

    def read(self, max_records: int = 4096) -> Any:
        """Committed event records (a numpy array of GUARD_EVENT_DTYPE), oldest first."""

    def filenos(self) -> list[int]:
        """Pollable fds, readable while records are pending (none: poll)."""

    def matches(self) -> dict[int, int]:
        """Matches counted per slot, slots that matched at least once."""

    def lost(self) -> int:
        """Events the kernel had no room for."""

    def programs(self) -> list[dict[str, Any]]:
        """The loaded programs: name, id and where each is attached."""

    def close(self) -> None:
        """Release fds; pinned links keep enforcing."""


class GuardEventsRing(RingView):
    """guard_events: struct guard_event records (GUARD_EVENT_DTYPE) of guard.bpf.o."""

    name = "guard_events"
    dtype = GUARD_EVENT_DTYPE


class KernelGuard:
    """guard.bpf.o for one node: its programs on `cgroup` (the node's), its rules, its events."""

    def __init__(self, pin_dir: Path, cgroup: Path) -> None:
        self.pin_dir = pin_dir
        self.links_dir = pin_dir / "links"
        self.cgroup = cgroup
        self.slots: dict[DenyRule, int] = {}
        self._obj: BpfObject | None = None
        self._ring: GuardEventsRing | None = None

    def start(self) -> None:
        """Load (re-adopting the pinned maps, so rules written before stay enforced); the hooks a previous
        agent attached for its rules now run this agent's programs, and no other hook is attached."""
        mounts.ensure_bpffs()
        mounts.ensure_pin_dir(self.pin_dir)
        self._obj = load_over_pins(build.object_path("guard"), self.pin_dir,
                                   lambda: [self.pin_dir / name for name in PINNED_MAPS])
        for prog_name in self._attached():
            self._attach(prog_name)
        with self._obj.map("guard_events") as untyped:
            self._ring = GuardEventsRing(untyped)

    def _pin(self, prog_name: str) -> Path:
        """Where the link of one program is pinned."""
        return self.links_dir / prog_name.replace("_", "-")

    def _attached(self) -> list[str]:
        """The programs whose links are pinned (in `HOOKS` order)."""
        return [name for name in HOOKS if self._pin(name).exists()]

    def _attach(self, prog_name: str) -> None:
        """Attach one program to the node's cgroup (taking over a pinned link of it)."""
        attach.attach_cgroup(self._loaded().program(prog_name), self.cgroup, HOOKS[prog_name],
                             self._pin(prog_name)).close()

    def _loaded(self) -> BpfObject:
        """The loaded object; raises before start."""
        if self._obj is None:
            raise DatapathError("guard.bpf.o is not loaded (KernelGuard.start() was not called)")
        return self._obj

    def set_rules(self, rules: list[DenyRule]) -> RuleWrite:
        """Make the kernel enforce exactly `rules`, writing only the entries that differ.

        Order: rule bodies first (new rules sit in slots nothing points at yet), then the prefixes and
        scopes that point at them, then what no longer points anywhere, then emptied slots. A bad rule
        raises InvalidRule and nothing is written.
        """
        compiled = compile_rules(rules, self.slots)
        obj = self._loaded()
        wanted = {name for rule in rules for name in PROGRAMS_OF_HOOK[rule.hook]}
        written: dict[str, int] = {}
        deleted: dict[str, int] = {}
        current = {name: _contents(obj, name) for name in MAPS}
        upserts = {name: {k: v for k, v in compiled.maps[name].items() if current[name].get(k) != v}
                   for name in MAPS}
        emptied = {k: v for k, v in upserts["guard_rules"].items() if v == _EMPTY_RULE}
        filled = {k: v for k, v in upserts["guard_rules"].items() if v != _EMPTY_RULE}
        _write(obj, "guard_rules", filled)
        for name in ("guard_cidr4", "guard_cidr6", "guard_scope"):
            _write(obj, name, upserts[name])
        attached = self._attached()
        for prog_name in wanted.difference(attached):  # once its rules are in place
            self._attach(prog_name)
        for prog_name in set(attached) - wanted:  # before its rules go
            attach.detach_pinned(self._pin(prog_name))
        for name in ("guard_scope", "guard_cidr4", "guard_cidr6"):
            gone = [k for k in current[name] if k not in compiled.maps[name]]
            deleted[name] = _delete(obj, name, gone)
        _write(obj, "guard_rules", emptied)
        for name in MAPS:
            written[name] = len(upserts[name])
        written["guard_rules"] = len(filled)
        deleted["guard_rules"] = len(emptied)  # an array's entries are emptied, not deleted
        self.slots = compiled.slots
        return RuleWrite(written, deleted)

    def read(self, max_records: int = 4096) -> Any:
        """Committed event records (a numpy array of GUARD_EVENT_DTYPE), oldest first."""
        if self._ring is None:
            return np.empty(0, dtype=GUARD_EVENT_DTYPE)
        return self._ring.read(max_records)

    def filenos(self) -> list[int]:
        """The ring's fd, readable while records are pending."""
        return [self._ring.ring.fileno()] if self._ring is not None else []

    def matches(self) -> dict[int, int]:
        """Matches counted per slot (over all CPUs), slots that matched at least once."""
        counts = self._stats()
        return {slot: n for slot, n in enumerate(counts[:GUARD_RULES_MAX]) if n}

    def lost(self) -> int:
        """Events the ring had no room for (the operations were still decided)."""
        return self._stats()[GUARD_RULES_MAX]

    def _stats(self) -> list[int]:
        """guard_stats summed over CPUs, by index."""
        with self._loaded().map("guard_stats") as untyped, untyped.typed(c_uint32, c_uint64) as stats:
            return [sum(int(v.value) for v in (stats.lookup_percpu(c_uint32(i)) or []))
                    for i in range(GUARD_RULES_MAX + 1)]

    def programs(self) -> list[dict[str, Any]]:
        """The attached programs: name, id and the cgroup each is attached to."""
        if self._obj is None:
            return []
        return [{"name": name, "id": self._obj.program(name).id, "attached_to": f"cgroup {self.cgroup}"}
                for name in self._attached()]

    def close(self) -> None:
        """Release fds and the ring mapping; the pinned links keep enforcing."""
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._obj is not None:
            self._obj.close()
            self._obj = None

    def detach(self) -> None:
        """Remove the pinned links (the node is going away)."""
        for prog_name in HOOKS:
            attach.detach_pinned(self._pin(prog_name))


def _contents(obj: BpfObject, name: str) -> Contents:
    """A map's entries as raw bytes."""
    with obj.map(name) as untyped:
        return {bytes(k): bytes(v) for k, v in untyped.items()}


def _write(obj: BpfObject, name: str, entries: Contents) -> None:
    """Write raw entries into a map."""
    if not entries:
        return
    with obj.map(name) as untyped:
        key_type, value_type = untyped.key_type, untyped.value_type
        for key, value in entries.items():
            untyped.update(key_type.from_buffer_copy(key), value_type.from_buffer_copy(value))


def _delete(obj: BpfObject, name: str, keys: list[bytes]) -> int:
    """Delete raw keys from a map; how many were there."""
    if not keys:
        return 0
    with obj.map(name) as untyped:
        return sum(untyped.delete(untyped.key_type.from_buffer_copy(key)) for key in keys)


def open_binsets(pin_dir: Path) -> Map[c_uint32, c_uint64]:
    """proc_binsets as pinned in `pin_dir` (tgid -> binary set bits), shared with proc.bpf.o."""
    return Map.from_pin(pin_dir / "proc_binsets", c_uint32, c_uint64)
