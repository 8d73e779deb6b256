"""Tests of sock.bpf.o (socket LB) attached for real: BPF_PROG_TEST_RUN does not run cgroup sock_addr
programs, so each test attaches them to a cgroup of its own, runs a client and its servers (all on
127.0.0.x in a network namespace of its own) inside that cgroup, and checks what the sockets saw.
The tracepoint programs of proc.bpf.o are tested the same way at the end (unfiltered, TCP states
included); test_proc_events.py tests them as the agent's process monitor uses them.

Needs root, cgroup v2, bpffs and tracefs; every cgroup, netns and pin is removed by its exact name.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fixtures_datapath import Loaded, loaded
from seeding import lb_change

from velvet.datapath.attach import (
    BPF_CGROUP_INET4_CONNECT,
    BPF_CGROUP_INET4_GETPEERNAME,
    BPF_CGROUP_UDP4_RECVMSG,
    BPF_CGROUP_UDP4_SENDMSG,
    Link,
    attach_cgroup,
    attach_tracepoint,
)
from velvet.datapath.structs import (
    DropReason,
    EventType,
    LbScope,
    MetricDir,
    ObsPoint,
    ProcEventType,
    SvcFlag,
    Verdict,
)
from velvet.datapath.structs import ipv4 as ip_int
from velvet.datapath.views import ProcEventsRing
from velvet.system import mounts
from velvet.system.netns import netns_inode

pytestmark = [pytest.mark.privileged,
              pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2")]

TCP, UDP = 6, 17
VIP = "10.96.0.10"
HOOKS = {
    "sock_connect4": BPF_CGROUP_INET4_CONNECT,
    "sock_sendmsg4": BPF_CGROUP_UDP4_SENDMSG,
    "sock_recvmsg4": BPF_CGROUP_UDP4_RECVMSG,
    "sock_getpeername4": BPF_CGROUP_INET4_GETPEERNAME,
}


@dataclass
class SockEnv:
    """sock.bpf.o attached to a fresh cgroup, and a network namespace to run clients in."""

    loaded: Loaded
    cgroup: Path
    netns: str

    def run(self, script: str) -> dict[str, Any]:
        """Run a Python script inside the cgroup and the netns; it prints one JSON object."""
        procs = self.cgroup / "cgroup.procs"

        def enter_cgroup() -> None:
            procs.write_text(str(os.getpid()))

        command = ["ip", "netns", "exec", self.netns, sys.executable, "-c", textwrap.dedent(script)]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60, preexec_fn=enter_cgroup,
                              check=False)
        assert proc.returncode == 0, proc.stderr
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def service(self, vip: str, port: int, proto: int, backends: list[tuple[int, str, int]], *, rev: int,
                flags: SvcFlag = SvcFlag.CLUSTERIP, affinity_timeout: int = 0,
                scope: LbScope = LbScope.EXT) -> None:
        """Seed a frontend, its backends (id, address, port) and its reverse NAT entry as the agent does."""
        with lb_change(self.loaded.tables) as lb:
            lb.service(vip, port, proto, backends, rev=rev, flags=flags, affinity_timeout=affinity_timeout,
                       scope=scope)


@pytest.fixture
def sock() -> Iterator[SockEnv]:
    """Load sock.bpf.o, attach its four programs to a new cgroup, create a netns with lo up."""
    tag = secrets.token_hex(4)
    cgroup = mounts.cgroup2_mount() / f"velvet-test-{tag}"
    pin_dir = mounts.ensure_bpffs() / f"velvet-test-{tag}"
    netns = f"velvet-dp-{tag}"
    links: list[Link] = []
    with loaded("sock") as obj:
        cgroup.mkdir()
        try:
            subprocess.run(["ip", "netns", "add", netns], check=True)
            subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
            for name, hook in HOOKS.items():
                links.append(attach_cgroup(obj.obj.program(name), cgroup, hook, pin_dir / name))
            yield SockEnv(obj, cgroup, netns)
        finally:
            for link in links:
                link.detach()
            if pin_dir.exists():
                pin_dir.rmdir()
            subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)
            cgroup.rmdir()


def test_connect_and_sendmsg_reach_backends_and_show_the_frontend(sock: SockEnv) -> None:
    """Test that TCP connect, unconnected and connected UDP to a ClusterIP reach the backend while
    getpeername/recvfrom show the ClusterIP, and that translations are reported once per socket
    (three datagrams of one socket: one event)."""
    sock.service(VIP, 80, TCP, [(1, "127.0.0.2", 8080)], rev=1)
    sock.service(VIP, 53, UDP, [(2, "127.0.0.3", 5353)], rev=2)
    out = sock.run("""
        import json, socket
        out = {}
        srv = socket.socket(); srv.bind(("127.0.0.2", 8080)); srv.listen()
        c = socket.create_connection(("10.96.0.10", 80), timeout=3)
        conn, peer = srv.accept()
        conn.sendall(b"hello")
        out["tcp_peer"], out["tcp_server_local"] = c.getpeername(), conn.getsockname()
        out["tcp_data"] = c.recv(5).decode()
        us = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); us.bind(("127.0.0.3", 5353))
        uc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); uc.settimeout(3)
        for i in range(3):
            uc.sendto(b"ping", ("10.96.0.10", 53))
            data, src = us.recvfrom(100)
            us.sendto(b"pong", src)
            reply, out["udp_from"] = uc.recvfrom(100)
        out["udp_reply"] = reply.decode()
        ucc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); ucc.connect(("10.96.0.10", 53))
        ucc.send(b"x"); out["connected_udp_data"] = us.recvfrom(100)[0].decode()
        out["connected_udp_peer"] = ucc.getpeername()
        d = socket.create_connection(("127.0.0.2", 8080), timeout=3)
        out["direct_peer"] = d.getpeername()
        print(json.dumps(out))
    """)
    assert out["tcp_peer"] == [VIP, 80]
    assert (out["tcp_data"], out["tcp_server_local"]) == ("hello", ["127.0.0.2", 8080])
    assert (out["udp_reply"], out["udp_from"]) == ("pong", [VIP, 53])
    assert (out["connected_udp_data"], out["connected_udp_peer"]) == ("x", [VIP, 53])
    assert out["direct_peer"] == ["127.0.0.2", 8080]

    events = sock.loaded.events()
    socks = events[events["type"] == EventType.SOCK]
    assert sorted(socks["obs_point"].tolist()) == [ObsPoint.SOCK_CONNECT] * 2 + [ObsPoint.SOCK_SENDMSG]
    cgroup_id = os.stat(sock.cgroup).st_ino
    for ev in socks:
        assert ev["verdict"] == Verdict.TRANSLATED
        assert ev["orig_daddr"] == ip_int(VIP)
        assert ev["cookie"] == cgroup_id
    tcp_ev = socks[socks["proto"] == TCP][0]
    assert (tcp_ev["daddr"], tcp_ev["dport"], tcp_ev["orig_dport"], tcp_ev["rev_nat_index"]) == (
        ip_int("127.0.0.2"), 8080, 80, 1)
    # the two connected sockets keep their mapping in socket storage; the sendto() one in the LRU
    assert sock.loaded.map("lb4_sock_revnat").count() == 1


def test_reconnected_and_unconnected_sockets_answer_with_the_frontend_they_last_used(sock: SockEnv) -> None:
    """Test that a connected UDP socket re-connected to another service shows the new frontend in
    getpeername and recvfrom, that an unconnected socket sending to two services hears each reply from its
    own frontend, that many TCP connects each show the frontend, and that connects are remembered with
    their sockets (the LRU holds only the unconnected socket's two datagrams)."""
    sock.service(VIP, 53, UDP, [(1, "127.0.0.3", 5353)], rev=1)
    sock.service("10.96.0.11", 53, UDP, [(2, "127.0.0.4", 5353)], rev=2)
    sock.service("10.96.0.12", 53, UDP, [(3, "127.0.0.5", 5353)], rev=3)
    sock.service(VIP, 80, TCP, [(4, "127.0.0.2", 8080)], rev=4)
    out = sock.run("""
        import json, socket
        out = {}
        servers = {}
        for addr in ("127.0.0.3", "127.0.0.4", "127.0.0.5"):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((addr, 5353)); s.settimeout(3)
            servers[addr] = s
        def echo(addr):
            data, src = servers[addr].recvfrom(100)
            servers[addr].sendto(data, src)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(3)
        for vip, backend in (("10.96.0.10", "127.0.0.3"), ("10.96.0.11", "127.0.0.4")):
            u.connect((vip, 53))
            u.send(vip.encode()); echo(backend)
            data, src = u.recvfrom(100)
            out[vip] = {"peer": u.getpeername(), "reply": data.decode(), "from": src}
        v = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); v.settimeout(3)
        v.sendto(b"c", ("10.96.0.11", 53)); echo("127.0.0.4")
        v.sendto(b"d", ("10.96.0.12", 53)); echo("127.0.0.5")
        out["unconnected"] = sorted([list(v.recvfrom(100)[1]) for _ in range(2)])
        srv = socket.socket(); srv.bind(("127.0.0.2", 8080)); srv.listen(64)
        peers = set()
        for _ in range(20):
            c = socket.create_connection(("10.96.0.10", 80), timeout=3)
            peers.add(tuple(c.getpeername())); srv.accept()[0].close(); c.close()
        out["tcp_peers"] = sorted(peers)
        print(json.dumps(out))
    """)
    assert out["10.96.0.10"] == {"peer": [VIP, 53], "reply": "10.96.0.10", "from": [VIP, 53]}
    second = ["10.96.0.11", 53]
    assert out["10.96.0.11"] == {"peer": second, "reply": "10.96.0.11", "from": second}
    assert out["unconnected"] == [["10.96.0.11", 53], ["10.96.0.12", 53]]
    assert out["tcp_peers"] == [[VIP, 80]]
    events = sock.loaded.events()
    socks = events[events["type"] == EventType.SOCK]
    assert sorted(socks["obs_point"].tolist()) == [ObsPoint.SOCK_CONNECT] * 22 + [ObsPoint.SOCK_SENDMSG] * 2
    assert sock.loaded.map("lb4_sock_revnat").count() == 2


def test_frontend_without_backends_refuses(sock: SockEnv) -> None:
    """Test that connect() and sendto() to a frontend without backends fail with ECONNREFUSED."""
    sock.service(VIP, 80, TCP, [], rev=1)
    sock.service(VIP, 53, UDP, [], rev=2)
    out = sock.run("""
        import errno, json, socket
        out = {}
        try:
            socket.create_connection(("10.96.0.10", 80), timeout=3)
            out["tcp"] = "connected"
        except OSError as exc:
            out["tcp"] = errno.errorcode[exc.errno]
        try:
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("10.96.0.10", 53))
            out["udp"] = "sent"
        except OSError as exc:
            out["udp"] = errno.errorcode[exc.errno]
        print(json.dumps(out))
    """)
    assert out == {"tcp": "ECONNREFUSED", "udp": "ECONNREFUSED"}
    drops = sock.loaded.events()
    assert drops["type"].tolist() == [EventType.DROP] * 2
    assert drops["drop_reason"].tolist() == [DropReason.NO_SERVICE_BACKEND] * 2
    assert sock.loaded.packets(DropReason.NO_SERVICE_BACKEND, MetricDir.EGRESS) == 2


def test_local_only_scope_without_backends_is_unreachable(sock: SockEnv) -> None:
    """Test that an empty node-local internal scope (iTP=Local) fails connect() with EHOSTUNREACH."""
    sock.service(VIP, 80, TCP, [(1, "127.0.0.2", 8080)], rev=1, flags=SvcFlag.CLUSTERIP | SvcFlag.TWO_SCOPES)
    sock.service(VIP, 80, TCP, [], rev=1, flags=SvcFlag.CLUSTERIP | SvcFlag.LOCAL_ONLY_INT, scope=LbScope.INT)
    out = sock.run("""
        import errno, json, socket
        try:
            socket.create_connection(("10.96.0.10", 80), timeout=3)
            print(json.dumps("connected"))
        except OSError as exc:
            print(json.dumps({"err": errno.errorcode[exc.errno]}))
    """)
    assert out == {"err": "EHOSTUNREACH"}


def test_backends_spread_and_affinity_sticks(sock: SockEnv) -> None:
    """Test that new connections spread over backends, and that ClientIP affinity keeps a client
    (its network namespace) on one backend."""
    backends = [(1, "127.0.0.2", 8080), (2, "127.0.0.4", 8080)]
    sock.service(VIP, 80, TCP, backends, rev=1)
    sock.service("10.96.0.12", 80, TCP, [(3, "127.0.0.2", 8080), (4, "127.0.0.4", 8080)], rev=2,
                 flags=SvcFlag.CLUSTERIP | SvcFlag.AFFINITY, affinity_timeout=60)
    out = sock.run("""
        import json, select, socket
        listeners = {}
        for addr in ("127.0.0.2", "127.0.0.4"):
            s = socket.socket(); s.bind((addr, 8080)); s.listen(64); listeners[s.fileno()] = (s, addr)
        def hits(vip, n):
            seen = []
            for _ in range(n):
                c = socket.create_connection((vip, 80), timeout=3)
                ready, _, _ = select.select(list(listeners), [], [], 3)
                s, addr = listeners[ready[0]]
                s.accept()[0].close(); c.close()
                seen.append(addr)
            return seen
        print(json.dumps({"spread": hits("10.96.0.10", 40), "sticky": hits("10.96.0.12", 15)}))
    """)
    assert set(out["spread"]) == {"127.0.0.2", "127.0.0.4"}
    assert len(set(out["sticky"])) == 1
    remembered = [key for key, _ in sock.loaded.map("lb4_affinity").items()]
    assert len(remembered) == 1
    assert remembered[0].netns_cookie
    assert remembered[0].rev_nat_index == 2


# --- proc.bpf.o: process tracepoints, attached for real like the socket programs -----------------------


@pytest.fixture
def proc() -> Iterator[tuple[Loaded, str]]:
    """proc.bpf.o's exec and exit programs on their tracepoints, and a network namespace with lo up."""
    netns = f"velvet-dp-{secrets.token_hex(4)}"
    links: list[Link] = []
    with loaded("proc") as obj:
        try:
            subprocess.run(["ip", "netns", "add", netns], check=True)
            subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
            for program, category, name in (("proc_exec", "sched", "sched_process_exec"),
                                            ("proc_exit", "sched", "sched_process_exit")):
                links.append(attach_tracepoint(obj.obj.program(program), category, name))
            yield obj, netns
        finally:
            for link in links:
                link.detach()
            subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)


def test_process_events_name_their_netns(proc: tuple[Loaded, str]) -> None:
    """Test that the exec and exit of a process in a pod's netns are reported with that netns inode, the
    pid, the executable and the exit status."""
    obj, netns = proc
    script = "import os, sys; print(os.getpid(), flush=True); sys.exit(3)"
    child = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", script],
                           capture_output=True, text=True, timeout=60, check=False)
    assert child.returncode == 3, child.stderr
    pid = int(child.stdout)
    events = obj.views.get(ProcEventsRing).read()
    mine = events[events["netns_ino"] == netns_inode(netns)]

    execs = mine[(mine["type"] == ProcEventType.EXEC) & (mine["pid"] == pid)]
    assert len(execs) == 1
    assert execs[0]["filename"].decode() == sys.executable
    exits = mine[(mine["type"] == ProcEventType.EXIT) & (mine["pid"] == pid)]
    assert len(exits) == 1
    assert exits[0]["exit_code"] == 3 << 8
