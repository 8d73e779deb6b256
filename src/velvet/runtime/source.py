"""Process events from the kernel: proc.bpf.o loaded, limited to the node's cgroup, attached as pinned links.

Needs root, bpffs, tracefs, BTF (CO-RE) and cgroup v2. The rings (`proc_events`, 4 MiB; socket events in
their own small `proc_sock_events`) and the maps are pinned beside the node's other maps, the links under
its `links/` directory (`proc-exec`, `proc-fork`, `proc-exit`, `proc-tcp-connect`,
`proc-udp-send`, `proc-udp-recv`): a restarted agent
re-opens the same rings, so events of processes that ran while it was down are still read, and replaces
the links with its fresh programs (tracepoint links cannot be updated in place).

The tracing policies' maps (`rt_*`, `proc_binsets`) are pinned too and read back at start, so the policies
keep acting across a restart; `write_policy` writes only what changed, and attaches a syscall hook's program
(`proc-openat`) while some rule uses it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from ctypes import c_uint32, c_uint64
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from velvet.datapath import attach, build
from velvet.datapath.bpfobject import BpfObject, load_over_pins
from velvet.datapath.maps import Map
from velvet.datapath.rt_tables import RtRuleEntry, RtTables, bin_in_rules, path_key, prefix_key
from velvet.datapath.structs import (
    PROCESS_EVENT_DTYPE,
    SOCK_EVENT_DTYPE,
    ProcConfig,
    RtConfig,
    RtHook,
    RtPath,
    RtPathLpm,
    RtRule,
)
from velvet.datapath.views import ProcEventsRing, RingView
from velvet.system import mounts
from velvet.system.mounts import cgroup2_mount

log = logging.getLogger("velvet.runtime")
RUNTIME_POLICY_MAPS = ("rt_rules", "rt_config", "rt_cgroup_rules", "rt_bin_paths", "rt_bin_prefixes",
                       "rt_arg_paths", "rt_arg_prefixes", "rt_arg_postfixes", "rt_scratch")
PINNED_MAPS = ("proc_events", "proc_sock_events", "proc_config", "proc_lost", "proc_socks", "proc_udp_socks",
               "proc_binsets",
               "proc_syscall_counts", *RUNTIME_POLICY_MAPS)
# syscalls per cgroup: on every syscall of the machine, so attached only on request (--syscall-metrics)
SYSCALL_COUNTER = ("proc_syscalls", "raw_syscalls", "sys_enter")
# program -> (tracepoint category, or "raw" / "tp_btf" (a raw one, BTF-typed), tracepoint name)
TRACEPOINTS = {
    "proc_exec": ("sched", "sched_process_exec"),
    "proc_fork": ("raw", "sched_process_fork"),
    "proc_exit": ("sched", "sched_process_exit"),
    "proc_tcp_connect": ("tp_btf", "inet_sock_set_state"),
    "proc_udp_send": ("sock", "sock_send_length"),
    "proc_udp_recv": ("sock", "sock_recv_length"),
}
# tracing policies' syscall hooks (enum rt_hook) -> (program, tracepoint category, name): attached while used
POLICY_HOOKS = {int(hook): (f"proc_{hook.name.lower()}", "syscalls", f"sys_enter_{hook.name.lower()}")
                for hook in RtHook if hook != RtHook.EXEC}


class _PolicyMaps(NamedTuple):
    """proc.bpf.o's tracing-policy maps, typed."""

    paths: Map[RtPath, c_uint64]
    prefixes: Map[RtPathLpm, c_uint64]
    arg_paths: Map[RtPath, c_uint64]
    arg_prefixes: Map[RtPathLpm, c_uint64]
    arg_postfixes: Map[RtPathLpm, c_uint64]
    rules: Map[c_uint32, RtRule]
    config: Map[c_uint32, RtConfig]
    cgroups: Map[c_uint64, c_uint64]


_POLICY_MAPS: tuple[tuple[str, type[Any], type[Any]], ...] = (
    ("rt_bin_paths", RtPath, c_uint64), ("rt_bin_prefixes", RtPathLpm, c_uint64),
    ("rt_arg_paths", RtPath, c_uint64), ("rt_arg_prefixes", RtPathLpm, c_uint64),
    ("rt_arg_postfixes", RtPathLpm, c_uint64), ("rt_rules", c_uint32, RtRule),
    ("rt_config", c_uint32, RtConfig), ("rt_cgroup_rules", c_uint64, c_uint64))


@contextlib.contextmanager
def _policy_maps(obj: BpfObject) -> Iterator[_PolicyMaps]:
    """The tracing-policy maps of `obj`, open for the block."""
    with contextlib.ExitStack() as stack:
        views = [stack.enter_context(stack.enter_context(obj.map(name)).typed(key, value))
                 for name, key, value in _POLICY_MAPS]
        yield _PolicyMaps(*views)


class ProcessSource(Protocol):
    """Where process events come from: the kernel, or a list in unit tests."""

    def start(self) -> None:
        """Begin producing events."""

    def read(self, max_records: int = 4096) -> Any:
        """Committed records (a numpy array of PROCESS_EVENT_DTYPE), oldest first."""

    def read_sockets(self, max_records: int = 4096) -> Any:
        """Committed socket records (a numpy array of SOCK_EVENT_DTYPE), oldest first."""

    def filenos(self) -> list[int]:
        """Pollable fds, readable while records are pending (none: poll)."""

    def lost(self) -> int:
        """Events the kernel had no room for since the ring was made (it survives agent restarts)."""

    def programs(self) -> list[dict[str, Any]]:
        """The loaded programs: name, id and the tracepoint each is attached to."""

    def write_policy(self, old: RtTables, new: RtTables) -> None:
        """Write the exec policy maps' difference between `old` (what they hold) and `new`."""

    def write_binsets(self, binsets: dict[int, int]) -> None:
        """Set proc_binsets of the given processes (tgid -> sets; 0 removes the entry)."""

    def read_policy(self) -> RtTables:
        """What the exec policy maps hold (a restarted agent's predecessor's policies keep acting)."""

    def syscall_counts(self) -> dict[int, int]:
        """Syscalls per cgroup id since they were first counted (empty unless counting was asked for)."""

    def close(self) -> None:
        """Release fds; pinned links keep reporting into the pinned ring."""


def _hook_name(category: str, tracepoint: str) -> str:
    """How `status` names a program's tracepoint: "tracepoint sched:sched_process_exec", "raw_tracepoint:…",
    "tp_btf:…"."""
    if category == "raw":
        return f"raw_tracepoint:{tracepoint}"
    if category == "tp_btf":
        return f"tp_btf:{tracepoint}"
    return f"tracepoint {category}:{tracepoint}"


class SockEventsRing(RingView):
    """proc_sock_events: struct sock_event records (SOCK_EVENT_DTYPE) of proc.bpf.o."""

    name = "proc_sock_events"
    dtype = SOCK_EVENT_DTYPE


def cgroup_level(cgroup: Path) -> int:
    """Depth of a cgroup v2 directory below the hierarchy's root (the root is level 0)."""
    return len(cgroup.resolve().relative_to(cgroup2_mount().resolve()).parts)


class KernelProcSource:
    """proc.bpf.o for one node: every process in `cgroup`'s subtree (every process when None)."""

    def __init__(self, pin_dir: Path, cgroup: Path | None, *, count_syscalls: bool = False) -> None:
        self.pin_dir = pin_dir
        self.links_dir = pin_dir / "links"
        self.cgroup = cgroup
        self.count_syscalls = count_syscalls
        self._obj: BpfObject | None = None
        self._ring: ProcEventsRing | None = None
        self._sock_ring: SockEventsRing | None = None

    def start(self) -> None:
        """Load (re-adopting the pinned ring), aim at the node's cgroup, attach the tracepoint programs."""
        self.preload()
        assert self._obj is not None
        config = ProcConfig()
        if self.cgroup is not None:
            config.cgroup_id = self.cgroup.stat().st_ino
            config.level = cgroup_level(self.cgroup)
        with self._obj.map("proc_config") as untyped, untyped.typed(c_uint32, ProcConfig) as config_map:
            config_map.update(c_uint32(0), config)
        for prog_name, (category, name) in TRACEPOINTS.items():
            pin = self.links_dir / prog_name.replace("_", "-")
            if category in ("raw", "tp_btf"):
                attach.attach_raw_tracepoint(self._obj.program(prog_name), name, pin,
                                             btf=category == "tp_btf").close()
            else:
                attach.attach_tracepoint(self._obj.program(prog_name), category, name, pin).close()
        for prog_name, category, name in POLICY_HOOKS.values():  # the previous agent's: our program now
            pin = self.links_dir / prog_name.replace("_", "-")
            if pin.exists():
                attach.attach_tracepoint(self._obj.program(prog_name), category, name, pin).close()
        prog_name, category, name = SYSCALL_COUNTER
        pin = self.links_dir / prog_name.replace("_", "-")
        if self.count_syscalls:
            attach.attach_tracepoint(self._obj.program(prog_name), category, name, pin).close()
        else:  # a previous agent's, asked for then: not any more
            attach.detach_pinned(pin)
        # this monitor knows no UDP socket yet: the kernel reports each again as it is next used
        with self._obj.map("proc_udp_socks") as untyped, untyped.typed(c_uint64, c_uint64) as udp:
            for key in list(udp.keys()):
                udp.delete(key)
        with self._obj.map("proc_events") as untyped:
            self._ring = ProcEventsRing(untyped)
        with self._obj.map("proc_sock_events") as untyped:
            self._sock_ring = SockEventsRing(untyped)

    def preload(self) -> None:
        """Load the object over the pins unless loaded already, attaching nothing (see `start`; the agent
        calls it on a thread while its store loads)."""
        mounts.ensure_bpffs()
        mounts.ensure_pin_dir(self.pin_dir)
        if self._obj is None:
            self._obj = self._load()

    def _load(self) -> BpfObject:
        """Load, re-adopting the pinned maps (an older layout's are replaced, entries that fit kept)."""
        return load_over_pins(build.object_path("proc"), self.pin_dir,
                              lambda: [self.pin_dir / name for name in PINNED_MAPS])

    def read(self, max_records: int = 4096) -> Any:
        """See `ProcessSource.read`."""
        if self._ring is None:
            return np.empty(0, dtype=PROCESS_EVENT_DTYPE)
        return self._ring.read(max_records)

    def read_sockets(self, max_records: int = 4096) -> Any:
        """See `ProcessSource.read_sockets`."""
        if self._sock_ring is None:
            return np.empty(0, dtype=SOCK_EVENT_DTYPE)
        return self._sock_ring.read(max_records)

    def filenos(self) -> list[int]:
        """See `ProcessSource.filenos`."""
        return [view.ring.fileno() for view in (self._ring, self._sock_ring) if view is not None]

    def programs(self) -> list[dict[str, Any]]:
        """See `ProcessSource.programs`."""
        if self._obj is None:
            return []
        attached = {name: hook for name, hook in TRACEPOINTS.items()}
        optional = [*POLICY_HOOKS.values(), SYSCALL_COUNTER]
        attached.update((name, (category, tp)) for name, category, tp in optional
                        if (self.links_dir / name.replace("_", "-")).exists())
        return [{"name": name, "id": self._obj.program(name).id,
                 "attached_to": _hook_name(category, tp)}
                for name, (category, tp) in attached.items()]

    def write_policy(self, old: RtTables, new: RtTables) -> None:
        """See `ProcessSource.write_policy`. New entries go in before what refers to them (sets, then rules,
        then the masks that enable them); removals in the reverse order."""
        if self._obj is None:
            return
        obj = self._obj
        for hook in new.hooks - old.hooks:
            prog_name, category, name = POLICY_HOOKS[hook]
            attach.attach_tracepoint(obj.program(prog_name), category, name,
                                     self.links_dir / prog_name.replace("_", "-")).close()
        with _policy_maps(obj) as (paths, prefixes, arg_paths, arg_prefixes, arg_postfixes, rules, config,
                                    cgroups):
            for postfix, sets in new.arg_postfixes.items():  # the trie holds them reversed
                if old.arg_postfixes.get(postfix) != sets:
                    arg_postfixes.update(prefix_key(postfix[::-1]), c_uint64(sets))
            string_maps = ((paths, prefixes, (old.paths, old.prefixes), (new.paths, new.prefixes)),
                           (arg_paths, arg_prefixes, (old.arg_paths, old.arg_prefixes),
                            (new.arg_paths, new.arg_prefixes)))
            for exact, trie, was, now in string_maps:
                for path, sets in now[0].items():
                    if was[0].get(path) != sets:
                        exact.update(path_key(path), c_uint64(sets))
                for prefix, sets in now[1].items():
                    if was[1].get(prefix) != sets:
                        trie.update(prefix_key(prefix), c_uint64(sets))
            for number, rule in new.rules.items():
                if old.rules.get(number) != rule:
                    rules.update(c_uint32(number), rule.to_c())
            span = max(new.rules, default=-1) + 1  # the kernel walks rule numbers below it
            if old.global_rules != new.global_rules or old.rules != new.rules:
                config.update(c_uint32(0), RtConfig(global_rules=new.global_rules, rule_span=span,
                                                    bin_in_rules=bin_in_rules(new.rules)))
            for cgroup, mask in new.cgroup_rules.items():
                if old.cgroup_rules.get(cgroup) != mask:
                    cgroups.update(c_uint64(cgroup), c_uint64(mask))
            for cgroup in old.cgroup_rules.keys() - new.cgroup_rules.keys():
                cgroups.delete(c_uint64(cgroup))
            for number in old.rules.keys() - new.rules.keys():  # no mask refers to them any more
                rules.update(c_uint32(number), RtRule())
            for prefix in old.prefixes.keys() - new.prefixes.keys():
                prefixes.delete(prefix_key(prefix))
            for path in old.paths.keys() - new.paths.keys():
                paths.delete(path_key(path))
            for prefix in old.arg_prefixes.keys() - new.arg_prefixes.keys():
                arg_prefixes.delete(prefix_key(prefix))
            for path in old.arg_paths.keys() - new.arg_paths.keys():
                arg_paths.delete(path_key(path))
            for postfix in old.arg_postfixes.keys() - new.arg_postfixes.keys():
                arg_postfixes.delete(prefix_key(postfix[::-1]))
        for hook in old.hooks - new.hooks:
            attach.detach_pinned(self.links_dir / POLICY_HOOKS[hook][0].replace("_", "-"))

    def read_policy(self) -> RtTables:
        """See `ProcessSource.read_policy`."""
        if self._obj is None:
            return RtTables()
        obj = self._obj
        with _policy_maps(obj) as (paths, prefixes, arg_paths, arg_prefixes, arg_postfixes, rules, config,
                                    cgroups):
            settings = config.lookup(c_uint32(0))
            hooks = frozenset(hook for hook, (prog_name, _, _) in POLICY_HOOKS.items()
                              if (self.links_dir / prog_name.replace("_", "-")).exists())
            return RtTables(
                rules={int(k.value): RtRuleEntry.from_c(v) for k, v in rules.items() if v.policy_rules},
                global_rules=int(settings.global_rules) if settings is not None else 0,
                cgroup_rules={int(k.value): int(v.value) for k, v in cgroups.items()},
                paths={k.path.decode(errors="replace"): int(v.value) for k, v in paths.items()},
                prefixes={k.path[:k.prefixlen // 8].decode(errors="replace"): int(v.value)
                          for k, v in prefixes.items()},
                arg_paths={k.path.decode(errors="replace"): int(v.value) for k, v in arg_paths.items()},
                arg_prefixes={k.path[:k.prefixlen // 8].decode(errors="replace"): int(v.value)
                              for k, v in arg_prefixes.items()},
                arg_postfixes={k.path[:k.prefixlen // 8][::-1].decode(errors="replace"): int(v.value)
                               for k, v in arg_postfixes.items()},
                hooks=hooks)

    def write_binsets(self, binsets: dict[int, int]) -> None:
        """See `ProcessSource.write_binsets`."""
        if self._obj is None:
            return
        with self._obj.map("proc_binsets") as untyped, untyped.typed(c_uint32, c_uint64) as sets:
            for tgid, bits in binsets.items():
                if bits:
                    sets.update(c_uint32(tgid), c_uint64(bits))
                else:
                    sets.delete(c_uint32(tgid))

    def syscall_counts(self) -> dict[int, int]:
        """See `ProcessSource.syscall_counts`."""
        if self._obj is None or not self.count_syscalls:
            return {}
        with self._obj.map("proc_syscall_counts") as untyped, untyped.typed(c_uint64, c_uint64) as counts:
            return {int(key.value): sum(int(v.value) for v in counts.lookup_percpu(key) or [])
                    for key in list(counts.keys())}

    def lost(self) -> int:
        """See `ProcessSource.lost`."""
        if self._obj is None:
            return 0
        with self._obj.map("proc_lost") as untyped, untyped.typed(c_uint32, c_uint64) as lost_map:
            per_cpu = lost_map.lookup_percpu(c_uint32(0)) or []
        return sum(int(v.value) for v in per_cpu)

    def close(self) -> None:
        """See `ProcessSource.close`."""
        for view in (self._ring, self._sock_ring):
            if view is not None:
                view.close()
        self._ring = self._sock_ring = None
        if self._obj is not None:
            self._obj.close()
            self._obj = None

    def detach(self) -> None:
        """Remove the pinned links (the node is going away: nothing reads the ring any more)."""
        for prog_name in [*TRACEPOINTS, *(name for name, _, _ in POLICY_HOOKS.values()), SYSCALL_COUNTER[0]]:
            attach.detach_pinned(self.links_dir / prog_name.replace("_", "-"))
