"""Unit tests of the process monitor over hand-made `struct process_event` records: events, tree, output."""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

import velvet.runtime.monitor as monitor_module
from bench.flow_events import events
from velvet.datapath.rt_tables import RtTables
from velvet.datapath.structs import (
    PROCESS_EVENT_DTYPE,
    SOCK_EVENT_DTYPE,
    ProcEventFlag,
    ProcEventType,
    RtAction,
    RtHook,
)
from velvet.errors import NotSupported
from velvet.observe.enrich import DictResolver, EndpointInfo
from velvet.observe.filters import FlowQuery
from velvet.observe.flow import Endpoint, Flow
from velvet.observe.pipeline import FlowPipeline
from velvet.runtime.compact import compact_line
from velvet.runtime.monitor import EventQuery, ProcessMonitor
from velvet.runtime.process import Process
from velvet.runtime.tree import ConnectionTable, ProcessTree, UdpSockets

POD_CGROUP = 777
NODE_CGROUP = 5


def record(kind: ProcEventType, pid: int, ppid: int, ts: int, *, filename: str = "",
           argv: tuple[str, ...] = (), cwd: str = "/", code: int = 0, cgroup: int = POD_CGROUP,
           flags: int = 0) -> Any:
    """One process_event record as the kernel writes it."""
    rec = np.zeros(1, dtype=PROCESS_EVENT_DTYPE)
    args = b"".join(a.encode() + b"\0" for a in argv)
    names = [n.encode() for n in reversed(cwd.strip("/").split("/")) if n]
    rec["type"], rec["pid"], rec["ppid"], rec["ts_ns"], rec["cgroup_id"] = kind, pid, ppid, ts, cgroup
    rec["filename"], rec["args"], rec["args_len"], rec["exit_code"] = filename.encode(), args, len(args), code
    rec["cwd_depth"], rec["flags"], rec["comm"] = len(names), flags, filename.rsplit("/", 1)[-1].encode()
    for i, name in enumerate(names):
        rec["cwd"][0][i] = name
    return rec


def monitor(registry: CollectorRegistry | None = None) -> ProcessMonitor:
    """A monitor with no source whose pod cgroup is ns1/web-1."""
    resolver = DictResolver()
    resolver.set_cgroup(POD_CGROUP, "10.0.0.7")
    labels = ("k8s:app=web", "k8s:io.kubernetes.pod.namespace=ns1")
    resolver.set_endpoint("10.0.0.7", EndpointInfo("ns1", "web-1", labels))
    return ProcessMonitor(None, resolver, "node-a", cgroup=None, registry=registry)


def feed(mon: ProcessMonitor, *records: Any) -> list[dict[str, Any]]:
    """Ingest the records; every stored event as JSON."""
    mon.ingest(np.concatenate(records))
    return mon.query(EventQuery(last=1000))


def test_exec_fork_exec_exit_chain_carries_exec_ids_pod_and_status() -> None:
    """Test that a shell's exec, its fork, the child's exec and exits link by exec_id, name the pod (labels
    without Kubernetes' own), and carry the exit status or the signal."""
    registry = CollectorRegistry()
    mon = monitor(registry)
    events = feed(
        mon,
        record(ProcEventType.EXEC, 100, 1, 1_000, filename="/bin/sh", argv=("sh", "-c", "curl x"),
               cwd="/app"),
        record(ProcEventType.FORK, 101, 100, 2_000),
        record(ProcEventType.EXEC, 101, 100, 3_000, filename="/usr/bin/curl", argv=("curl", "-s", "a b"),
               cwd="/app/data"),
        record(ProcEventType.EXIT, 101, 100, 4_000, code=9),  # SIGKILL
        record(ProcEventType.EXIT, 100, 1, 5_000, code=3 << 8),
    )
    kinds = [next(iter(e)) for e in events]
    assert kinds == ["process_exec", "process_fork", "process_exec", "process_exit", "process_exit"]
    shell = events[0]["process_exec"]["process"]
    assert base64.b64decode(shell["exec_id"]).decode() == "node-a:1000:100"
    assert shell["pod"] == {"namespace": "ns1", "name": "web-1", "pod_labels": {"app": "web"}}
    assert shell["cwd"] == "/app"
    fork = events[1]["process_fork"]
    assert fork["process"]["flags"] == "clone"
    assert fork["process"]["binary"] == "/bin/sh"
    assert fork["parent"]["exec_id"] == shell["exec_id"]
    curl = events[2]["process_exec"]
    assert curl["process"]["arguments"] == "-s 'a b'"
    assert curl["process"]["cwd"] == "/app/data"
    assert curl["process"]["parent_exec_id"] == shell["exec_id"]
    killed = events[3]["process_exit"]
    assert (killed["process"]["exec_id"], killed["signal"]) == (curl["process"]["exec_id"], "SIGKILL")
    assert (events[4]["process_exit"]["status"], events[4]["process_exit"]["signal"]) == (3, "")
    assert registry.get_sample_value("velvet_process_execs_total", {"namespace": "ns1", "pod": "web-1"}) == 2


def test_flags_name_truncated_arguments_and_cwd_and_relative_binaries_resolve_against_cwd() -> None:
    """Test that truncation flags become Tetragon-style flags and a relative path is made absolute."""
    mon = monitor()
    trunc = ProcEventFlag.ARGS_TRUNC | ProcEventFlag.CWD_TRUNC
    events = feed(mon, record(ProcEventType.EXEC, 10, 1, 1, filename="./run", argv=("run",), cwd="/a/b",
                              flags=trunc))
    proc = events[0]["process_exec"]["process"]
    assert proc["flags"] == "execve truncCWD truncArgs"
    assert proc["cwd"] == ".../a/b"
    assert proc["binary"] == ".../a/b/run"


def test_node_processes_have_no_pod_and_compact_lines_name_pod_or_node() -> None:
    """Test the compact lines of `velvet events`: pod or node, binary, arguments, exit code or signal."""
    mon = monitor()
    events = feed(
        mon,
        record(ProcEventType.EXEC, 200, 1, 1, filename="/usr/bin/curl", argv=("curl", "-s", "x")),
        record(ProcEventType.EXIT, 200, 1, 2, code=0),
        record(ProcEventType.EXEC, 300, 1, 3, filename="/usr/bin/ls", argv=("ls",), cgroup=NODE_CGROUP),
        record(ProcEventType.EXIT, 300, 1, 4, code=15, cgroup=NODE_CGROUP),
    )
    assert [compact_line(e) for e in events] == [
        "🚀 process ns1/web-1 /usr/bin/curl -s x",
        "💥 exit    ns1/web-1 /usr/bin/curl -s x 0",
        "🚀 process node-a /usr/bin/ls",
        "💥 exit    node-a /usr/bin/ls SIGTERM",
    ]
    assert "pod" not in events[2]["process_exec"]["process"]


def test_queries_filter_by_type_namespace_and_pod_pattern() -> None:
    """Test that --type, --namespace and --pod (glob) select events, and bad types are refused."""
    mon = monitor()
    feed(mon, record(ProcEventType.EXEC, 1, 0, 1, filename="/a"),
         record(ProcEventType.EXEC, 2, 0, 2, filename="/b", cgroup=NODE_CGROUP),
         record(ProcEventType.EXIT, 1, 0, 3))
    assert len(mon.query(EventQuery(types=frozenset({"process_exit"})))) == 1
    assert len(mon.query(EventQuery(namespace="ns1"))) == 2
    assert len(mon.query(EventQuery(pod="web-*"))) == 2
    assert mon.query(EventQuery(pod="db-*")) == []
    assert len(mon.query(EventQuery(last=1))) == 1
    with pytest.raises(ValueError, match="unknown event types"):
        EventQuery.from_params({"type": "process_kprobe"})


def test_follow_gets_new_matching_events() -> None:
    """Test that a follower sees the stored events, then new ones that match its filter only."""
    mon = monitor()
    feed(mon, record(ProcEventType.EXEC, 1, 0, 1, filename="/a"))

    async def follow() -> list[str]:
        stream = mon.stream(EventQuery(namespace="ns1", last=5))
        got = [await anext(stream)]
        mon.ingest(np.concatenate([record(ProcEventType.EXEC, 2, 0, 2, filename="/node", cgroup=NODE_CGROUP),
                                   record(ProcEventType.EXEC, 3, 0, 3, filename="/b")]))
        got.append(await anext(stream))
        await stream.aclose()
        return [e["process_exec"]["process"]["binary"] for e in got]

    assert asyncio.run(follow()) == ["/a", "/b"]


def _proc(pid: int) -> Process:
    return Process(f"id{pid}", pid, 1, 0, "/x", [], "/", 0, [])


def test_tree_keeps_exited_processes_for_a_grace_period_and_stays_bounded() -> None:
    """Test that an exited process resolves until its grace ends, and that over capacity the exited go
    before the live ones."""
    tree = ProcessTree(capacity=3, grace_seconds=10)
    for pid in (1, 2, 3):
        tree.put(_proc(pid))
    tree.exit(2, now=100.0)
    tree.expire(now=105.0)
    assert tree.get(2) is not None
    tree.put(_proc(4))  # over capacity: the exited 2 goes first
    assert tree.get(2) is None
    assert [tree.get(p) is not None for p in (1, 3, 4)] == [True, True, True]
    tree.put(_proc(5))  # nothing exited: the oldest live one goes, counted
    assert tree.get(1) is None
    assert tree.evicted == 1
    tree.exit(3, now=200.0)
    tree.expire(now=210.0)
    assert tree.get(3) is None


def test_a_pod_learnt_after_its_first_exec_names_the_stored_event() -> None:
    """Test that an exec in a cgroup the agent did not know yet names the pod once the agent knows it."""
    resolver = DictResolver()
    mon = ProcessMonitor(None, resolver, "node-a", cgroup=None)
    feed(mon, record(ProcEventType.EXEC, 1, 0, 1, filename="/srv", cgroup=900))
    assert "pod" not in mon.query(EventQuery())[0]["process_exec"]["process"]
    resolver.set_cgroup(900, "10.0.0.8")
    resolver.set_endpoint("10.0.0.8", EndpointInfo("ns2", "late-1"))
    assert mon.query(EventQuery(pod="late-1"))[0]["process_exec"]["process"]["pod"]["name"] == "late-1"


def test_flows_name_the_process_of_their_connection_and_filter_by_it() -> None:
    """Test that a TCP flow whose connection a process opened names it as source (its replies as
    destination), and that --from-process / --to-process select by binary pattern, pid or exec_id."""
    mon = monitor()
    feed(mon, record(ProcEventType.EXEC, 40, 1, 1, filename="/usr/bin/curl", argv=("curl",)))
    connect = np.zeros(1, dtype=SOCK_EVENT_DTYPE)
    connect["pid"], connect["new_state"] = 40, 1  # TCP_ESTABLISHED, from connect()
    connect["saddr"], connect["sport"], connect["daddr"], connect["dport"] = 0x0A000001, 40000, 0x0A000002, 80
    mon.ingest_sockets(connect)
    flows = FlowPipeline(DictResolver(), node_name="n1", clock_offset_ns=0)
    flows.processes = mon.flow_processes
    flows.ingest(events({"ts_ns": 1, "saddr": "10.0.0.1", "daddr": "10.0.0.2", "sport": 40000, "dport": 80,
                         "proto": 6},
                        {"ts_ns": 2, "saddr": "10.0.0.2", "daddr": "10.0.0.1", "sport": 80, "dport": 40000,
                         "proto": 6},
                        {"ts_ns": 3, "saddr": "10.0.0.3", "daddr": "10.0.0.2", "sport": 40000, "dport": 80,
                         "proto": 6}))
    known = mon.tree.get(40)
    assert known is not None
    curl = {"exec_id": known.exec_id, "pid": 40, "binary": "/usr/bin/curl"}
    out = flows.query(FlowQuery())
    assert [(f.get("source_process"), f.get("destination_process")) for f in out] == [
        (curl, None), (None, curl), (None, None)]
    assert [f["time"][-4:] for f in flows.query(FlowQuery(from_process=("*/curl",)))] == ["001Z"]
    assert [f["time"][-4:] for f in flows.query(FlowQuery(to_process=("40",)))] == ["002Z"]
    assert flows.query(FlowQuery(from_process=(known.exec_id,)))[0]["source_process"] == curl
    assert flows.query(FlowQuery(from_process=("/bin/sh",))) == []
    assert FlowQuery.from_params(FlowQuery(from_process=("a,b",)).to_params()).from_process == ("a,b",)


def test_a_batch_of_socket_records_formats_no_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that 1,000 connections between two addresses in one batch format no address (a connection's
    key is its record's address and port bytes; the agent's CPU per connection competes with the node's
    connections), and that each still names its process."""
    mon = monitor()
    feed(mon, record(ProcEventType.EXEC, 40, 1, 1, filename="/usr/bin/curl", argv=("curl",)))
    made: list[int] = []

    class Counted(IPv4Address):
        def __init__(self, address: int) -> None:
            made.append(address)
            super().__init__(address)

    monkeypatch.setattr(monitor_module, "IPv4Address", Counted)
    monitor_module._ip_text.cache_clear()
    batch = np.zeros(1000, dtype=SOCK_EVENT_DTYPE)
    batch["pid"], batch["new_state"] = 40, 1  # TCP_ESTABLISHED, from connect()
    batch["saddr"], batch["daddr"], batch["dport"] = 0x0A000001, 0x0A000002, 80
    batch["sport"] = np.arange(20000, 21000)
    mon.ingest_sockets(batch)
    assert made == []
    for sport in (20000, 20999):
        source, _ = mon.flow_processes(udp_flow("10.0.0.1", sport, "10.0.0.2", 80, proto=6))
        assert source is not None
        assert source["binary"] == "/usr/bin/curl"


def connection_batch(pid: int, ports: range, *, closed: bool) -> Any:
    """Connections 10.0.0.1:<port> -> 10.0.0.2:80 of process `pid` established, then (`closed`) closed."""
    opened = np.zeros(len(ports), dtype=SOCK_EVENT_DTYPE)
    opened["pid"], opened["protocol"], opened["old_state"], opened["new_state"] = pid, 6, 2, 1
    opened["saddr"], opened["daddr"], opened["dport"] = 0x0A000001, 0x0A000002, 80
    opened["sport"] = np.array(ports)
    if not closed:
        return opened
    done = opened.copy()
    done["old_state"], done["new_state"] = 1, 7  # TCP_ESTABLISHED -> TCP_CLOSE
    return np.concatenate([opened, done])


def test_a_batch_of_connections_finds_each_process_once_and_reads_the_clock_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that 1,000 connections of one process opened and closed in one batch look its process up once
    and read the clock once (the agent's CPU per connection competes with the node's connections), and
    that a connection closed in the batch still names its process until its grace period ends."""
    mon = monitor()
    feed(mon, record(ProcEventType.EXEC, 40, 1, 1, filename="/usr/bin/curl", argv=("curl",)))
    lookups: list[int] = []
    real_get = mon.tree.get
    clock: list[float] = []

    def get(pid: int) -> Process | None:
        lookups.append(pid)
        return real_get(pid)

    def monotonic() -> float:
        clock.append(100.0)
        return 100.0

    monkeypatch.setattr(mon.tree, "get", get)
    monkeypatch.setattr(time, "monotonic", monotonic)
    mon.ingest_sockets(connection_batch(40, range(20000, 21000), closed=True))
    assert lookups == [40]
    assert len(clock) == 1
    source, _ = mon.flow_processes(udp_flow("10.0.0.1", 20999, "10.0.0.2", 80, proto=6))
    assert source is not None
    assert source["binary"] == "/usr/bin/curl"
    mon.connections.expire(now=100.0 + mon.connections.grace_seconds)
    assert mon.flow_processes(udp_flow("10.0.0.1", 20999, "10.0.0.2", 80, proto=6)) == (None, None)


def test_the_connection_table_keeps_the_newest_connections_and_applies_a_batch_in_order() -> None:
    """Test that beyond its capacity a batch leaves exactly the newest connections, and that a tuple closed
    then opened again in one batch names its new process after the old one's grace period."""
    old = Process("e1", 1, 0, 0, "/old", [], "/", 0, [], "", 0, None)
    new = Process("e2", 2, 0, 0, "/new", [], "/", 0, [], "", 0, None)
    table = ConnectionTable(capacity=3, grace_seconds=10.0)
    table.update([(b"a", old), (b"a", None), (b"a", new)], now=0.0)
    table.expire(now=10.0)
    assert table.get(b"a") is new
    table.update([(bytes([port]), old) for port in range(5)], now=20.0)
    assert len(table) == 3
    assert [table.get(bytes([port])) for port in range(5)] == [None, None, old, old, old]


def test_closed_connections_beyond_their_capacity_go_first_and_open_ones_stay() -> None:
    """Test that a node closing many connections within one grace period keeps at most `closed_capacity`
    of them (the oldest closed go first, before their grace period ends), that open connections are never
    dropped for it, and that a tuple opened again by another process keeps its new process."""
    first = Process("e1", 1, 0, 0, "/srv", [], "/", 0, [], "", 0, None)
    other = Process("e2", 2, 0, 0, "/cli", [], "/", 0, [], "", 0, None)
    table = ConnectionTable(capacity=1000, grace_seconds=300.0, closed_capacity=10)
    table.update([(b"open", first)], now=0.0)
    table.update([(b"again", first), (b"again", None)], now=0.0)
    table.update([(b"again", other)], now=1.0)
    for batch in range(50):  # 500 connections opened and closed, 10 per batch
        keys = [f"c{batch}-{i}".encode() for i in range(10)]
        table.update([*((k, first) for k in keys), *((k, None) for k in keys)], now=2.0 + batch)
    assert table.closing == 10
    assert len(table) == 12
    assert [table.get(f"c49-{i}".encode()) for i in range(10)] == [first] * 10
    assert table.get(b"c48-9") is None
    assert table.get(b"open") is first
    assert table.get(b"again") is other
    table.update([(b"last", first), (b"last", None)], now=60.0)  # one more: the oldest closed goes
    assert table.get(b"c49-0") is None
    assert table.get(b"c49-1") is first
    table.expire(now=360.0)
    assert table.closing == 0
    assert len(table) == 2


def udp_record(pid: int, ip: int, port: int, netns: int) -> Any:
    """A sock_event of proc_udp_send/recv: process `pid` uses the UDP socket ip:port of netns."""
    rec = np.zeros(1, dtype=SOCK_EVENT_DTYPE)
    rec["pid"], rec["new_state"], rec["protocol"], rec["netns_ino"] = pid, 1, 17, netns
    rec["saddr"], rec["sport"] = ip, port
    return rec


def test_udp_flows_name_the_processes_at_their_addresses_and_ports() -> None:
    """Test that a UDP flow names the process at each end: a socket bound to its address, else one bound to
    any address whose process's pod has the flow's address, else the only one of a process with no known
    address; a later user of the port replaces the earlier; TCP flows are not UDP sockets."""
    mon = monitor()
    feed(mon, record(ProcEventType.EXEC, 50, 1, 1, filename="/srv/dns"),
         record(ProcEventType.EXEC, 51, 1, 2, filename="/usr/sbin/node-dns", cgroup=77),
         record(ProcEventType.EXEC, 52, 1, 3, filename="/usr/bin/dig"),
         record(ProcEventType.EXEC, 53, 1, 4, filename="/srv/dns2"))
    mon.ingest_sockets(np.concatenate([udp_record(50, 0, 53, 1), udp_record(51, 0, 53, 2),
                                       udp_record(52, 0x0A000009, 4000, 3)]))

    def names(flow: Flow) -> tuple[str | None, str | None]:
        source, destination = mon.flow_processes(flow)
        return (source["binary"] if source else None), (destination["binary"] if destination else None)

    assert names(udp_flow("10.0.0.9", 4000, "10.0.0.7", 53)) == ("/usr/bin/dig", "/srv/dns")
    assert names(udp_flow("10.0.0.7", 53, "10.0.0.9", 4000)) == ("/srv/dns", "/usr/bin/dig")
    assert names(udp_flow("10.0.0.8", 4000, "192.168.1.1", 53)) == (None, "/usr/sbin/node-dns")
    assert names(udp_flow("10.0.0.9", 4000, "10.0.0.7", 53, proto=6)) == (None, None)
    mon.ingest_sockets(udp_record(53, 0, 53, 1))
    assert names(udp_flow("10.0.0.9", 4000, "10.0.0.7", 53)) == ("/usr/bin/dig", "/srv/dns2")


def test_udp_sockets_are_bounded() -> None:
    """Test that beyond its capacity the table forgets the oldest sockets, bound or not."""
    table = UdpSockets(capacity=1)
    proc = Process("e", 1, 0, 0, "/b", [], "/", 0, [], "", 0, None)
    table.put("10.0.0.1", 1, 1, proc)
    table.put("10.0.0.1", 2, 1, proc)
    table.put("0.0.0.0", 3, 1, proc)
    table.put("0.0.0.0", 4, 2, proc)
    assert len(table) == 2
    assert [table.get("10.0.0.1", port, lambda _: None) for port in (1, 2, 3, 4)] == [None, proc, None, proc]


def udp_flow(src: str, sport: int, dst: str, dport: int, proto: int = 17) -> Flow:
    """A flow between two addresses, as the flow pipeline hands it to the process lookup."""
    return Flow(time_ns=0, type=0, obs_point=0, verdict=0, drop_reason=0, proto=proto, tcp_flags=0,
                src_ip=src, dst_ip=dst, src_port=sport, dst_port=dport, source=Endpoint(0),
                destination=Endpoint(0))


def test_processes_found_without_a_cgroup_v2_mount_are_kept_unattributed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that a process read from /proc where no cgroup v2 hierarchy is mounted (the kernel check says so)
    gets no cgroup id instead of stopping the agent."""
    def missing() -> Path:
        raise NotSupported("cgroup v2 mount", "4.5", "socket load balancing")

    monkeypatch.setattr(monitor_module, "cgroup2_mount", missing)
    assert monitor_module._cgroup_id("/velvet/node0/pod") == 0


def test_a_syscall_hook_record_reports_the_declared_ints_and_both_strings() -> None:
    """Test that a PROC_TRACEPOINT record of syscalls/sys_enter_mount becomes a process_tracepoint event with
    the policy's args in their declared order (the kernel copies the first string into filename, the second
    after the six raw arguments), ints as the low 32 bits signed, and a compact line with all of them."""
    mon = monitor()
    rec = record(ProcEventType.TRACEPOINT, 400, 1, 1, filename="/mnt/secrets")
    raw = struct.pack("<6q", 0x1000, 0x2000, 0x3000, 2, 0, 0) + b"tmpfs\0"
    rec["args"], rec["args_len"] = raw, 48
    rec["hook"], rec["policy"], rec["action"] = RtHook.MOUNT, 3, RtAction.POST
    mon.set_policy(RtTables(), {3: "mounts"}, {(3, int(RtHook.MOUNT)): (6, 8, 7)})
    [event] = feed(mon, rec)
    body = event["process_tracepoint"]
    assert (body["subsys"], body["event"], body["policy_name"]) == ("syscalls", "sys_enter_mount", "mounts")
    assert body["args"] == [{"string_arg": "/mnt/secrets"}, {"int_arg": 2}, {"string_arg": "tmpfs"}]
    assert compact_line(event).endswith("sys_enter_mount /mnt/secrets 2 tmpfs (Post by policy mounts)")
