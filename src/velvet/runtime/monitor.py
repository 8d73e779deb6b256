"""Process events of one node: records from the kernel in, the process tree kept, Tetragon-shaped events out.

Arguments and the current directory come from the kernel, because a short-lived process has exited
long before the agent could read /proc/<pid>/cmdline or cwd: argv is read from the new image's
`mm->arg_start..arg_end` at the exec tracepoint (up to 512 bytes, flag `truncArgs` beyond), the cwd by a
bounded walk up its dentries across mount points (a tracepoint may not call `bpf_d_path`; up to 12
components of up to 31 bytes each, flag `truncCWD` and a leading "..." beyond). A fork's cwd is read from
/proc (its parent's when it is gone). Processes running when the agent starts are read from /proc (flag
`procFS`, exec_id from their start time, ancestry from their ppid).

Call every method but `start` from the agent's event loop thread: the tree, the store and the followers'
queues are not thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
import logging
import signal
import socket
import struct
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from itertools import compress
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from velvet.datapath.rt_tables import SYSCALL_HOOK_FIELDS, RtTables, SyscallField
from velvet.datapath.structs import (
    RT_PATH_MAX,
    SOCK_EVENT_DTYPE,
    ProcEventFlag,
    ProcEventType,
    RtAction,
    RtHook,
    SockEvent,
)
from velvet.errors import NotSupported, VelvetError
from velvet.observe.enrich import EndpointResolver
from velvet.observe.flow import Flow
from velvet.runtime.process import (
    Json,
    PodRef,
    Process,
    ProcStat,
    cwd_of,
    exec_id,
    listening_sockets,
    live_pids,
    read_proc,
    rfc3339,
)
from velvet.runtime.source import ProcessSource
from velvet.runtime.tree import ConnectionTable, ConnKey, ProcessTree, UdpSockets
from velvet.system.mounts import cgroup2_mount

log = logging.getLogger("velvet.runtime")
EVENT_TYPES = ("process_exec", "process_exit", "process_fork", "process_tracepoint")
DEFAULT_CAPACITY = 4096
FOLLOWER_QUEUE = 4096
TCP_ESTABLISHED = 1
TCP_SYN_RECV = 3
TCP_CLOSE = 7
TCP_LISTEN = 10
IPPROTO_TCP = 6
IPPROTO_UDP = 17
_HIDDEN_LABEL_PREFIXES = ("io.kubernetes.", "io.cilium.")
# struct sock_event's fields in the order _socket_changes unpacks them
_SOCK_FIELDS = ("old_state", "new_state", "pid", "protocol", "saddr", "sport", "daddr", "dport", "netns_ino")


_CONN_KEY = struct.Struct(">IIHH")
"""A connection's key: struct sock_event's saddr, daddr, sport and dport as they lie in the record."""


_KEY_VIEW = np.dtype({"names": ["key"], "formats": ["V12"], "offsets": [SockEvent.saddr.offset],
                      "itemsize": SOCK_EVENT_DTYPE.itemsize})


def _connection_keys(batch: Any) -> list[bytes]:
    """The connection key (`_CONN_KEY`) of every record, made by numpy from the records' bytes."""
    records = np.ascontiguousarray(batch, SOCK_EVENT_DTYPE)  # (numpy's concatenate makes fields host-order)
    keys: list[bytes] = records.view(_KEY_VIEW)["key"].tolist()
    return keys


@functools.lru_cache(maxsize=4096)
def _ip_int(text: str) -> int:
    """The host-order integer of a dotted quad (0 for none)."""
    return int.from_bytes(socket.inet_aton(text)) if text else 0


@functools.lru_cache(maxsize=4096)
def _ip_text(address: int) -> str:
    """Dotted quad of an IPv4 address (a node's sockets use few addresses: cached)."""
    return str(IPv4Address(address))


@dataclass
class ProcessEvent:
    """One event: its type, the process and its parent as they were, and the exit's status."""

    type: str
    time_ns: int  # wall clock
    process: Process
    parent: Process | None
    status: int = 0
    signal: str = ""
    policy_name: str = ""  # process_exec: the tracing policy that acted on the exec (Post, Signal, Sigkill)
    action: str = ""
    hook: Json | None = None  # process_tracepoint: subsys, event and the policy's args

    def to_json(self, node_name: str) -> Json:
        """Tetragon's event JSON: {"process_exec": {"process": …, "parent": …}, "node_name", "time"}."""
        body: Json = {"process": self.process.to_json()}
        if self.parent is not None:
            body["parent"] = self.parent.to_json()
        if self.hook is not None:
            body.update(self.hook)
        if self.policy_name:
            body.update(policy_name=self.policy_name, action=self.action)
        if self.type == "process_exit":
            body.update(status=self.status, signal=self.signal, time=rfc3339(self.time_ns))
        return {self.type: body, "node_name": node_name, "time": rfc3339(self.time_ns)}


@dataclass(frozen=True)
class EventQuery:
    """Which events `velvet events` asks for: types, pod (glob) and namespace, the last N."""

    types: frozenset[str] = frozenset()
    pod: str = ""
    namespace: str = ""
    last: int = 20

    @classmethod
    def from_params(cls, params: dict[str, str] | Any) -> EventQuery:
        """From the API's query parameters (`type` comma-separated); bad values raise ValueError."""
        types = frozenset(t for t in str(params.get("type", "")).split(",") if t)
        unknown = sorted(types - set(EVENT_TYPES))
        if unknown:
            raise ValueError(f"unknown event types {unknown} (one of {', '.join(EVENT_TYPES)})")
        last = int(params.get("last", 20))
        if last < 0:
            raise ValueError(f"last must be >= 0, not {last}")
        return cls(types, str(params.get("pod", "")), str(params.get("namespace", "")), last)

    def matches(self, event: ProcessEvent) -> bool:
        """Whether `event` is of a wanted type and in the wanted pod and namespace."""
        if self.types and event.type not in self.types:
            return False
        pod = event.process.pod
        if self.namespace and (pod is None or pod.namespace != self.namespace):
            return False
        return not self.pod or (pod is not None and fnmatch.fnmatchcase(pod.name, self.pod))


class _Follower:
    """One `velvet events --follow`: a bounded queue, and how many events it lost while full."""

    def __init__(self, query: EventQuery) -> None:
        self.query = query
        self.queue: asyncio.Queue[ProcessEvent | None] = asyncio.Queue(FOLLOWER_QUEUE)
        self.lost = 0


class ProcessMonitor:
    """Takes `struct process_event` records, keeps the tree and the last events, counts execs per pod."""

    def __init__(self, source: ProcessSource | None, resolver: EndpointResolver, node_name: str, *,
                 cgroup: Path | None, registry: CollectorRegistry | None = None,
                 capacity: int = DEFAULT_CAPACITY, tree: ProcessTree | None = None) -> None:
        """Events of `cgroup`'s subtree (the node's; every process when None) from `source` (None: none)."""
        self.source = source
        self.resolver = resolver
        self.node_name = node_name
        self.cgroup = cgroup
        self.tree = tree or ProcessTree()
        self.connections = ConnectionTable()
        self.udp = UdpSockets()
        self.listeners: dict[tuple[int, int], Process] = {}  # (netns inode, port) -> the listening process
        self.events: deque[ProcessEvent] = deque(maxlen=capacity)
        self.seen = 0
        self.error = ""
        self._followers: set[_Follower] = set()
        self._clock_offset_ns = time.time_ns() - time.monotonic_ns()  # bpf_ktime_get_ns is CLOCK_MONOTONIC
        self.execs = Counter("velvet_process_execs", "Process executions seen, by pod (node: empty labels)",
                             ["namespace", "pod"], registry=registry)
        self.policy_actions = Counter("velvet_policy_actions",
                                      "Runtime policy actions (exec, openat, cgroup hooks) by pod",
                                      ["namespace", "pod", "policy", "action"], registry=registry)
        self.policy_names: dict[int, str] = {}  # the kernel's policy index -> the policy's name
        self.policy_args: dict[tuple[int, int], tuple[int, ...]] = {}  # (policy, hook) -> args to report
        self.policy_tables = RtTables()  # what the kernel's exec policy maps hold
        if registry is not None:
            registry.register(_LostCollector(self))
            registry.register(_SyscallCollector(self))

    # -- start: the kernel's programs, then what already runs -------------------------------------

    def start(self) -> None:
        """Attach the programs, take in what the pinned ring holds, then the node's live processes.

        A kernel that refuses the programs leaves the agent running without process events: one error
        line in the log, and `velvet status` says why.
        """
        if self.source is None:
            return
        try:
            self.source.start()
        except VelvetError as exc:
            log.error("no process events: %s", exc)
            self.error = str(exc)
            self.source.close()
            self.source = None
            return
        self.policy_tables = self.source.read_policy()  # still acting: only differences are written
        while self.poll():
            pass
        self.scan_proc()

    def scan_proc(self) -> None:
        """Every live process of the node's cgroup subtree not yet known, parents first (flag procFS)."""
        prefix = "" if self.cgroup is None else "/" + str(self.cgroup.relative_to(cgroup2_mount()))
        found = [s for s in map(read_proc, live_pids()) if s is not None and _under(s.cgroup, prefix)]
        for stat in sorted(found, key=lambda s: (s.start_ticks, s.pid)):
            proc = self.tree.get(stat.pid)
            if proc is None:
                proc = self._from_proc(stat)
                self.tree.put(proc)
                self._emit(ProcessEvent("process_exec", proc.start_ns, proc, self._parent(proc.ppid)))
            for listener in listening_sockets(stat.pid):  # servers started before the agent
                self.listeners.setdefault(listener, proc)

    def _from_proc(self, stat: ProcStat) -> Process:
        """A Process from /proc: its exec_id from its start time, its parent's from the parent's."""
        parent = self.tree.get(stat.ppid)
        if parent is not None:
            parent_id = parent.exec_id
        else:
            pstat = read_proc(stat.ppid) if stat.ppid else None
            parent_id = exec_id(self.node_name, pstat.start_ktime_ns, pstat.pid) if pstat else ""
        boot_wall_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        cgroup_id = _cgroup_id(stat.cgroup)
        return Process(exec_id(self.node_name, stat.start_ktime_ns, stat.pid), stat.pid, stat.ppid, stat.uid,
                       stat.binary, stat.argv, stat.cwd, boot_wall_ns + stat.start_ktime_ns, ["procFS"],
                       parent_id, cgroup_id, self._pod(cgroup_id))

    def _parent(self, ppid: int) -> Process | None:
        """The parent from the tree, else read from /proc and remembered (a parent outside the node)."""
        parent = self.tree.get(ppid)
        if parent is None and ppid:
            stat = read_proc(ppid)
            if stat is not None:
                parent = self._from_proc(stat)
                self.tree.put(parent)
        return parent

    def _pod(self, cgroup_id: int) -> PodRef | None:
        """The pod whose cgroup this is (None: a node process, or a pod not known yet)."""
        ip = self.resolver.by_cgroup(cgroup_id)
        info = self.resolver.by_ip(ip) if ip is not None else None
        if info is None or not info.pod_name:
            return None
        pairs = (label.removeprefix("k8s:").partition("=") for label in info.labels)
        labels = tuple((k, v) for k, sep, v in pairs if sep and not k.startswith(_HIDDEN_LABEL_PREFIXES))
        return PodRef(info.namespace, info.pod_name, labels)

    def process(self, pid: int) -> Process | None:
        """The process `pid` as the tree knows it, else as /proc shows it (None when gone)."""
        return self._parent(pid)

    def pod(self, cgroup_id: int) -> PodRef | None:
        """The pod whose cgroup `cgroup_id` is (None: a node process, or a pod not known yet)."""
        return self._pod(cgroup_id)

    # -- records in -------------------------------------------------------------------------------

    def filenos(self) -> list[int]:
        """The source's pollable fds."""
        return self.source.filenos() if self.source is not None else []

    def poll(self, max_records: int = 4096) -> int:
        """Take up to `max_records` pending records; how many were taken (call again while it is > 0)."""
        if self.source is None:
            return 0
        batch = self.source.read(max_records)
        self.ingest(batch)  # first: a connection's process has exec'd before it
        sockets = self.source.read_sockets(max_records)
        self.ingest_sockets(sockets)
        self.tree.expire()
        self.connections.expire()
        return len(batch) + len(sockets)

    def lost(self) -> int:
        """Events the kernel could not write (its ring was full)."""
        return self.source.lost() if self.source is not None else 0

    def ingest(self, batch: Any) -> None:
        """Take a batch of `struct process_event` records (numpy, PROCESS_EVENT_DTYPE)."""
        for record in batch:
            kind = int(record["type"])
            if kind == ProcEventType.EXEC:
                self._on_exec(record)
            elif kind == ProcEventType.FORK:
                self._on_fork(record)
            elif kind == ProcEventType.EXIT:
                self._on_exit(record)
            elif kind == ProcEventType.TRACEPOINT:
                self._on_tracepoint(record)

    def ingest_sockets(self, batch: Any) -> None:
        """Take a batch of `struct sock_event` records (numpy, SOCK_EVENT_DTYPE).

        Per batch, not per record (the agent's CPU per connection ran on the CPUs the node's connections
        use: the p99 of connect() to a service, issue 14): connection keys are the records' own address and
        port bytes, each pid's process and each listener is looked up once, and the connection table takes
        the batch in one pass. A batch that opens or closes a listener or uses a UDP socket is taken record
        by record, in order.
        """
        if not len(batch):
            return
        keys = _connection_keys(batch)
        columns = {name: batch[name] for name in _SOCK_FIELDS}
        old, new, protocol = columns["old_state"], columns["new_state"], columns["protocol"]
        if ((protocol != IPPROTO_TCP) | (new == TCP_LISTEN) | (old == TCP_LISTEN)).any():
            rows = zip(keys, *(columns[name].tolist() for name in _SOCK_FIELDS), strict=True)
            self.connections.update(self._socket_changes(rows))
            return
        opened = new == TCP_ESTABLISHED
        accepted = opened & (old == TCP_SYN_RECV)
        connected = opened & ~accepted
        owners: list[Process | None] = [None]  # handle 0: the connection closed
        handles = np.zeros(len(batch), np.intp)
        for rows, lookup, column in (
                (connected, self._owner, columns["pid"]),
                (accepted, self._listener, (columns["netns_ino"].astype(np.int64) << 16) | columns["sport"])):
            if rows.any():
                distinct, inverse = np.unique(column[rows], return_inverse=True)
                handles[rows] = len(owners) + inverse
                owners += [lookup(int(value)) for value in distinct.tolist()]
        # a connection whose opener is unknown changes nothing
        known = np.array([True] + [p is not None for p in owners[1:]])[handles]
        named = map(owners.__getitem__, handles[known].tolist())
        self.connections.update(zip(compress(keys, known.tolist()), named, strict=True))

    def _owner(self, pid: int) -> Process | None:
        return self.tree.get(pid) or self._parent(pid)

    def _listener(self, netns_port: int) -> Process | None:
        return self.listeners.get((netns_port >> 16, netns_port & 0xFFFF))

    def _socket_changes(self, rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[ConnKey, Process | None]]:
        """The connections that rows (key, then `_SOCK_FIELDS`) establish (with their process) and close
        (None), in order; listeners and UDP sockets are remembered as the rows come.

        A listener opened or closed is remembered by netns and port; an established connection is named by
        the connecting process, or by the listener's owner for an accepted one; a UDP socket in use by
        its local address.
        """
        listeners = self.listeners
        for key, old, new, pid, protocol, saddr, sport, _, _, netns_ino in rows:
            if protocol == IPPROTO_UDP:
                proc = self._owner(pid)
                if proc is not None:
                    self.udp.put(_ip_text(saddr), sport, netns_ino, proc)
            elif new == TCP_LISTEN:
                proc = self._owner(pid)
                if proc is not None:
                    listeners[(netns_ino, sport)] = proc
            elif old == TCP_LISTEN and new == TCP_CLOSE:
                listeners.pop((netns_ino, sport), None)
            elif new == TCP_ESTABLISHED:
                proc = listeners.get((netns_ino, sport)) if old == TCP_SYN_RECV else self._owner(pid)
                if proc is not None:
                    yield key, proc
            else:
                yield key, None

    def _on_exec(self, r: Any) -> None:
        pid, ts = int(r["pid"]), int(r["ts_ns"])
        flags = ["execve"]
        names = [bytes(n).decode(errors="replace") for n in r["cwd"][:int(r["cwd_depth"])]]
        cwd = "/" + "/".join(reversed(names))
        if int(r["flags"]) & ProcEventFlag.CWD_TRUNC:
            cwd, flags = "..." + cwd, [*flags, "truncCWD"]
        elif not names:
            flags.append("rootcwd")
        argv = [a.decode(errors="replace") for a in bytes(r["args"])[:int(r["args_len"])].split(b"\0")]
        if argv and argv[-1] == "":
            argv.pop()
        if int(r["flags"]) & ProcEventFlag.ARGS_TRUNC:
            flags.append("truncArgs")
        if int(r["flags"]) & ProcEventFlag.ARGS_ERROR:
            flags.append("errorArgs")
        binary = bytes(r["filename"]).decode(errors="replace")
        if not binary.startswith("/") and cwd:
            binary = str(Path(cwd, binary))
        parent = self._parent(int(r["ppid"]))
        cgroup_id = int(r["cgroup_id"])
        proc = Process(exec_id(self.node_name, ts, pid), pid, int(r["ppid"]), int(r["uid"]), binary, argv,
                       cwd, ts + self._clock_offset_ns, flags, parent.exec_id if parent else "", cgroup_id,
                       self._pod(cgroup_id))
        self.tree.put(proc)
        pod = proc.pod
        namespace, pod_name = (pod.namespace, pod.name) if pod else ("", "")
        self.execs.labels(namespace=namespace, pod=pod_name).inc()
        event = ProcessEvent("process_exec", proc.start_ns, proc, parent)
        action = int(r["action"])
        if action != RtAction.NONE:
            policy = self.policy_names.get(int(r["policy"]), f"#{int(r['policy'])}")
            name = _ACTION_NAMES[RtAction(action)]
            self.policy_actions.labels(namespace=namespace, pod=pod_name, policy=policy, action=name).inc()
            if action != RtAction.NOPOST:
                event.policy_name, event.action = policy, name
        self._emit(event)

    def set_policy(self, tables: RtTables, names: dict[int, str],
                   args: dict[tuple[int, int], tuple[int, ...]] | None = None) -> None:
        """Program the tracing policies (only what differs from what the kernel holds), name their indexes
        and say which arguments each reports per hook ((policy, hook) -> format field indexes)."""
        if self.source is not None and tables != self.policy_tables:
            self.source.write_policy(self.policy_tables, tables)
        self.policy_tables = tables
        self.policy_names.update(names)
        self.policy_args.update(args or {})

    def _on_tracepoint(self, r: Any) -> None:
        """A syscall hook's Post, Signal or Sigkill: Tetragon's process_tracepoint, with the policy's args."""
        pid, hook, policy = int(r["pid"]), int(r["hook"]), int(r["policy"])
        proc = self.tree.get(pid) or self._parent(pid)
        cgroup_id = int(r["cgroup_id"])
        if proc is None:
            proc = Process("", pid, int(r["ppid"]), int(r["uid"]), bytes(r["comm"]).decode(errors="replace"),
                           [], "", 0, ["miss"], "", cgroup_id, self._pod(cgroup_id))
        subsys, event, number, fields = SYSCALL_HOOK_FIELDS[RtHook(hook)]
        data = bytes(r["args"]).ljust(48 + RT_PATH_MAX, b"\0")  # numpy drops trailing NULs
        raw = struct.unpack_from("<6q", data)
        # the kernel copied the policy's string args in order: the first into filename, the second after raw
        strings = [bytes(r["filename"]).decode(errors="replace"),
                   data[48:48 + RT_PATH_MAX].split(b"\0", 1)[0].decode(errors="replace")]
        wanted = self.policy_args.get((policy, hook), ())
        args = [_arg_json(number, fields[i], raw, strings) for i in wanted if i in fields]
        name = self.policy_names.get(policy, f"#{policy}")
        action = _ACTION_NAMES.get(RtAction(int(r["action"])), "")
        pod = proc.pod
        self.policy_actions.labels(namespace=pod.namespace if pod else "", pod=pod.name if pod else "",
                                   policy=name, action=action).inc()
        self._emit(ProcessEvent("process_tracepoint", int(r["ts_ns"]) + self._clock_offset_ns, proc,
                                self.tree.get(proc.ppid), policy_name=name, action=action,
                                hook={"subsys": subsys, "event": event, "args": args}))

    def syscalls_per_pod(self) -> dict[tuple[str, str], int]:
        """Syscalls counted in the kernel, by (namespace, pod) of this node (a pod's cgroups summed)."""
        if self.source is None:
            return {}
        counts: dict[tuple[str, str], int] = {}
        for cgroup_id, count in self.source.syscall_counts().items():
            pod = self._pod(cgroup_id)
            if pod is not None:
                key = (pod.namespace, pod.name)
                counts[key] = counts.get(key, 0) + count
        return counts

    def write_binsets(self, sets_of: Callable[[str], int]) -> None:
        """proc_binsets of every live process the tree knows, from its binary (the kernel keeps them current
        from the next exec or fork on; this covers processes that ran before the agent or the policy)."""
        if self.source is not None:
            self.source.write_binsets({p.pid: sets_of(p.binary) for p in self.tree.live()})

    def _on_fork(self, r: Any) -> None:
        pid, ts = int(r["pid"]), int(r["ts_ns"])
        parent = self._parent(int(r["ppid"]))
        cwd = cwd_of(pid) or (parent.cwd if parent is not None else "")
        cgroup_id = int(r["cgroup_id"])
        binary = parent.binary if parent is not None else bytes(r["comm"]).decode(errors="replace")
        proc = Process(exec_id(self.node_name, ts, pid), pid, int(r["ppid"]), int(r["uid"]), binary,
                       list(parent.argv) if parent is not None else [], cwd, ts + self._clock_offset_ns,
                       ["clone"], parent.exec_id if parent else "", cgroup_id, self._pod(cgroup_id))
        self.tree.put(proc)
        self._emit(ProcessEvent("process_fork", proc.start_ns, proc, parent))

    def _on_exit(self, r: Any) -> None:
        pid, code = int(r["pid"]), int(r["exit_code"])
        proc = self.tree.get(pid)
        if proc is None:  # never seen (lost, or evicted): what the record says
            cgroup_id = int(r["cgroup_id"])
            proc = Process("", pid, int(r["ppid"]), int(r["uid"]), bytes(r["comm"]).decode(errors="replace"),
                           [], "", 0, ["miss"], "", cgroup_id, self._pod(cgroup_id))
        sig = code & 0x7F
        self._emit(ProcessEvent("process_exit", int(r["ts_ns"]) + self._clock_offset_ns, proc,
                                self.tree.get(proc.ppid), status=(code >> 8) & 0xFF,
                                signal=signal.Signals(sig).name if sig in _SIGNALS else ""))
        self.tree.exit(pid)

    def flow_processes(self, flow: Flow) -> tuple[Json | None, Json | None]:
        """The processes at a flow's source and destination (None where unknown). TCP: the one that opened
        the connection is the source of its packets and the destination of the replies; UDP: the process
        that last used the socket at each end's address and port."""
        if flow.proto == IPPROTO_UDP:
            ends = (self.udp.get(flow.src_ip, flow.src_port, self._address),
                    self.udp.get(flow.dst_ip, flow.dst_port, self._address))
            return ends[0].flow_json() if ends[0] else None, ends[1].flow_json() if ends[1] else None
        if flow.proto != IPPROTO_TCP:
            return None, None
        source, destination = _ip_int(flow.src_ip), _ip_int(flow.dst_ip)
        forward = self.connections.get(_CONN_KEY.pack(source, destination, flow.src_port, flow.dst_port))
        reverse = self.connections.get(_CONN_KEY.pack(destination, source, flow.dst_port, flow.src_port))
        return (forward.flow_json() if forward else None), (reverse.flow_json() if reverse else None)

    def _address(self, proc: Process) -> str | None:
        """The address of the pod `proc` runs in (None: a node process, or a pod not known yet)."""
        ip = self.resolver.by_cgroup(proc.cgroup_id)
        return str(IPv4Address(ip)) if ip is not None else None

    # -- events out -------------------------------------------------------------------------------

    def _emit(self, event: ProcessEvent) -> None:
        """Store the event and hand it to every follower that wants it (one that is full loses it)."""
        self.seen += 1
        self.events.append(event)
        for follower in self._followers:
            if follower.query.matches(self._named(event)):
                try:
                    follower.queue.put_nowait(event)
                except asyncio.QueueFull:
                    follower.lost += 1

    def _named(self, event: ProcessEvent) -> ProcessEvent:
        """`event` with its processes' pods looked up again where unknown: a pod's first processes start
        before the agent has learnt its cgroup (the pod's address comes with the kubelet's next report)."""
        for proc in (event.process, event.parent):
            if proc is not None and proc.pod is None and proc.cgroup_id:
                proc.pod = self._pod(proc.cgroup_id)
        return event

    def query(self, query: EventQuery) -> list[Json]:
        """The last `query.last` stored events that match, oldest first."""
        found = [e for e in self.events if query.matches(self._named(e))]
        return [e.to_json(self.node_name) for e in found[-query.last:]] if query.last else []

    async def stream(self, query: EventQuery) -> AsyncGenerator[Json]:
        """The last `query.last` matching events, then new ones as they come; a loss is one notice."""
        follower = _Follower(query)
        self._followers.add(follower)
        try:
            for item in self.query(query):
                yield item
            while (event := await follower.queue.get()) is not None:
                yield event.to_json(self.node_name)
                if follower.lost and follower.queue.empty():
                    yield {"lost_events": {"source": "PROCESS_EVENTS_QUEUE",
                                           "num_events_lost": follower.lost}}
                    follower.lost = 0
        finally:
            self._followers.discard(follower)

    def status(self) -> Json:
        """Counters for `velvet status`: events seen and stored, processes known."""
        return {"seen": self.seen, "lost": self.lost(), "stored": len(self.events),
                "capacity": self.events.maxlen, "listeners": len(self.listeners),
                "connections": len(self.connections), "processes": len(self.tree),
                "evicted": self.tree.evicted,
                "attached": self.source is not None, "error": self.error,
                "programs": self.source.programs() if self.source is not None else []}

    def close(self) -> None:
        """End every stream and release the source (pinned links stay attached)."""
        for follower in self._followers:
            with contextlib.suppress(asyncio.QueueFull):
                follower.queue.put_nowait(None)
        if self.source is not None:
            self.source.close()


_SIGNALS = {int(s) for s in signal.Signals}
def _arg_json(number: int, field: SyscallField, raw: tuple[int, ...], strings: list[str]) -> Json:
    """One reported argument as Tetragon writes it: {"string_arg": …} (the next string the kernel copied)
    or {"int_arg": …}."""
    if field.string:
        return {"string_arg": strings.pop(0) if strings else ""}
    if field.position < 0:
        return {"int_arg": number}
    value = raw[field.position] & 0xFFFFFFFF  # int arguments: the low 32 bits, signed
    return {"int_arg": value - (1 << 32) if value >= 1 << 31 else value}


_ACTION_NAMES = {RtAction.NOPOST: "NoPost", RtAction.POST: "Post", RtAction.SIGNAL: "Signal",
                 RtAction.SIGKILL: "Sigkill"}


def _under(cgroup: str, prefix: str) -> bool:
    """Whether cgroup path `cgroup` is `prefix` or below it ("" is the root: everything)."""
    return not prefix or cgroup == prefix or cgroup.startswith(prefix + "/")


def _cgroup_id(path: str) -> int:
    """The id (inode) of a cgroup v2 path relative to the hierarchy's root; 0 when it is gone, or when no
    cgroup v2 hierarchy is mounted here (the kernel check reports that; processes are then not attributed)."""
    try:
        return (cgroup2_mount() / path.lstrip("/")).stat().st_ino
    except (OSError, NotSupported):
        return 0


class _SyscallCollector(Collector):
    """velvet_syscalls_total{namespace,pod}: the kernel's per-cgroup counts, summed per pod at scrape time
    (nothing unless the agent counts syscalls: --syscall-metrics)."""

    def __init__(self, monitor: ProcessMonitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        """One sample per pod of this node that made syscalls."""
        family = CounterMetricFamily("velvet_syscalls", "System calls made by the processes of each pod",
                                     labels=["namespace", "pod"])
        for (namespace, pod), count in sorted(self.monitor.syscalls_per_pod().items()):
            family.add_metric([namespace, pod], count)
        yield family


class _LostCollector(Collector):
    """velvet_process_events_lost_total: read from the kernel's counter at scrape time."""

    def __init__(self, monitor: ProcessMonitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        """The one counter."""
        yield CounterMetricFamily("velvet_process_events_lost",
                                  "Process events the kernel ring had no room for", value=self.monitor.lost())
