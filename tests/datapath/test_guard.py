"""Tests of guard.bpf.o (runtime enforcement in cgroup hooks) with real processes: BPF_PROG_TEST_RUN runs
none of its program types (cgroup sock_addr, sock, sysctl, device), so the programs are attached through
velvet.runtime.guard to a cgroup of the test's own, below the test's cgroup v2 directory; client
processes run in it and in a network namespace of the test's own, with their binary sets written into
proc_binsets as proc.bpf.o's exec hook would, and report what each call returned.

Needs root, cgroup v2, bpffs and iproute2; the cgroup, the netns, the pins and the links are removed by
exact name, even on failure.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from ctypes import c_uint32, c_uint64
from pathlib import Path
from typing import Any

import pytest

from velvet.datapath.attach import list_pinned_links
from velvet.datapath.structs import GuardAction, GuardHook
from velvet.errors import InvalidRule
from velvet.observe.enrich import DictResolver, EndpointInfo
from velvet.runtime.guard import PINNED_MAPS, KernelGuard, open_binsets
from velvet.runtime.guard_events import GuardEvents
from velvet.runtime.guard_rules import AddressMatch, DenyRule, DeviceMatch, SocketMatch, SysctlMatch
from velvet.runtime.monitor import ProcessMonitor
from velvet.system import mounts

pytestmark = [pytest.mark.privileged,
              pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2")]

TCP, UDP = 6, 17
NODE = "dp-node"
POD_IP = "10.0.9.9"
BLOCKED, OTHER = 1 << 0, 1 << 1  # the binary sets of the two clients

# A client: prints its pid, waits for a JSON list of operations, prints what each returned ("ok" or the
# errno's name), then stays until its stdin closes (so its process can be looked up meanwhile).
CLIENT = textwrap.dedent("""
    import errno, json, os, socket, sys
    print(os.getpid(), flush=True)
    def run(op):
        kind, *args = op
        if kind in ("connect", "sendto"):
            family, addr, port = args
            proto = socket.SOCK_STREAM if kind == "connect" else socket.SOCK_DGRAM
            with socket.socket(family, proto) as s:
                s.settimeout(3)
                if kind == "connect":
                    s.connect((addr, port))
                else:
                    s.sendto(b"ping", (addr, port))
                    assert s.recvfrom(16)[0] == b"pong"
        elif kind == "socket":
            socket.socket(*args).close()
        elif kind == "read":
            open(args[0]).read()
        elif kind == "write":  # one write(2): buffered files retry a failed flush at close
            fd = os.open(args[0], os.O_WRONLY)
            try:
                os.write(fd, args[1].encode())
            finally:
                os.close(fd)
        elif kind == "open":
            os.close(os.open(args[0], os.O_RDONLY))
        elif kind == "mknod":
            import stat
            os.mknod(args[0], 0o600 | stat.S_IFCHR, os.makedev(args[1], args[2]))
        return "ok"
    for line in sys.stdin:
        if not line.strip():
            break
        out = []
        for op in json.loads(line):
            try:
                out.append(run(op))
            except OSError as exc:
                out.append(errno.errorcode.get(exc.errno, str(exc)))
        print(json.dumps(out), flush=True)
""")

# Listeners in the netns: TCP 8080 and UDP 5353 (echo "pong") on 127.0.0.1 and ::1.
SERVER = textwrap.dedent("""
    import select, socket
    socks = []
    for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        t = socket.socket(family, socket.SOCK_STREAM); t.bind((addr, 8080)); t.listen(64)
        u = socket.socket(family, socket.SOCK_DGRAM); u.bind((addr, 5353))
        socks += [t, u]
    print("ready", flush=True)
    while True:
        for s in select.select(socks, [], [])[0]:
            if s.type == socket.SOCK_STREAM:
                s.accept()[0].close()
            else:
                data, peer = s.recvfrom(16)
                s.sendto(b"pong", peer)
""")


def own_cgroup() -> Path:
    """This process's cgroup v2 directory (from /proc/self/cgroup's "0::" line)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return mounts.cgroup2_mount() / line[3:].lstrip("/")
    raise AssertionError("no cgroup v2 line in /proc/self/cgroup")


class Client:
    """One client process in the cgroup and the netns, with its binary sets in proc_binsets."""

    def __init__(self, env: GuardEnv, binsets: int) -> None:
        procs = env.cgroup / "cgroup.procs"
        self.proc = subprocess.Popen(["ip", "netns", "exec", env.netns, sys.executable, "-c", CLIENT],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     preexec_fn=lambda: procs.write_text(str(os.getpid())))
        assert self.proc.stdout is not None
        self.pid = int(self.proc.stdout.readline())
        if binsets:
            env.binsets.update(c_uint32(self.pid), c_uint64(binsets))

    def run(self, *ops: list[Any]) -> list[str]:
        """Run the operations in the client; what each returned."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(ops) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the client died"
        result: list[str] = json.loads(line)
        return result

    def close(self) -> None:
        """End the client."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class GuardEnv:
    """guard.bpf.o attached to a fresh cgroup, a netns with listeners, the process monitor for names."""

    def __init__(self, guard: KernelGuard, cgroup: Path, netns: str, pin_dir: Path) -> None:
        self.guard = guard
        self.cgroup = cgroup
        self.netns = netns
        self.pin_dir = pin_dir
        self.binsets = open_binsets(pin_dir)
        resolver = DictResolver()
        resolver.set_cgroup(cgroup.stat().st_ino, POD_IP)
        resolver.set_endpoint(POD_IP, EndpointInfo("ns1", "pod1", ("k8s:app=web",)))
        self.events = GuardEvents(NODE, ProcessMonitor(None, resolver, NODE, cgroup=cgroup))
        self.clients: list[Client] = []

    def client(self, binsets: int) -> Client:
        """A new client of the given binary sets (closed with the test)."""
        client = Client(self, binsets)
        self.clients.append(client)
        return client

    def new_events(self) -> list[dict[str, Any]]:
        """The events written since the last call, as JSON (read while their processes still run)."""
        return [e["process_tracepoint"] for e in self.events.ingest(self.guard.read())]

    @property
    def cgroup_id(self) -> int:
        """The test cgroup's id."""
        return self.cgroup.stat().st_ino


@pytest.fixture(scope="module")
def module_env() -> Iterator[GuardEnv]:
    """guard.bpf.o loaded with pins of its own and attached to a new cgroup; a netns with listeners."""
    tag = secrets.token_hex(4)
    cgroup = own_cgroup() / f"velvet-dp-guard-{tag}"
    pin_dir = mounts.ensure_bpffs() / f"velvet-dp-guard-{tag}"
    netns = f"velvet-dp-guard-{tag}"
    guard = KernelGuard(pin_dir, cgroup)
    server: subprocess.Popen[str] | None = None
    cgroup.mkdir()
    try:
        subprocess.run(["ip", "netns", "add", netns], check=True)
        subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
        server = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", SERVER],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        guard.start()
        env = GuardEnv(guard, cgroup, netns, pin_dir)
        yield env
        env.binsets.close()
    finally:
        try:
            guard.close()
            guard.detach()
            for name in (*PINNED_MAPS, "proc_binsets"):
                (pin_dir / name).unlink(missing_ok=True)
            for directory in (pin_dir / "links", pin_dir):
                if directory.exists():
                    directory.rmdir()
        finally:
            if server is not None:
                server.kill()
                server.wait()
            subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)
            cgroup.rmdir()


@pytest.fixture
def env(module_env: GuardEnv) -> Iterator[GuardEnv]:
    """The module's environment with no rules and no pending events; the test's clients closed after."""
    module_env.guard.set_rules([])
    module_env.guard.read()
    module_env.clients = []
    try:
        yield module_env
    finally:
        for client in module_env.clients:
            client.close()
        module_env.guard.set_rules([])


def connect_rule(policy: int, *cidrs: str, hook: GuardHook = GuardHook.CONNECT, port: int = 8080,
                 protocol: int = TCP, binsets: int = BLOCKED, action: GuardAction = GuardAction.DENY,
                 cgroups: frozenset[int] = frozenset()) -> DenyRule:
    """A destination rule for one port."""
    return DenyRule(policy, hook, AddressMatch(cidrs, (port, port), protocol), binsets, cgroups, action)


def test_connect_denied_for_one_binary_set_while_another_connects(env: GuardEnv) -> None:
    """Test that a connect rule for one binary set makes that process's connect() to the prefix and port
    fail with EPERM while a process of another binary set in the same cgroup connects, that other ports
    are untouched, and that the event names the policy, the hook, the process, its pod and the target."""
    env.guard.set_rules([connect_rule(7, "127.0.0.0/8")])
    blocked, other = env.client(BLOCKED), env.client(OTHER)
    assert blocked.run(["connect", socket.AF_INET, "127.0.0.1", 8080],
                       ["connect", socket.AF_INET, "127.0.0.1", 8081]) == ["EPERM", "ECONNREFUSED"]
    assert other.run(["connect", socket.AF_INET, "127.0.0.1", 8080]) == ["ok"]

    events = env.new_events()
    assert len(events) == 1
    event = events[0]
    assert (event["policy_index"], event["subsys"], event["event"], event["action"]) == (
        7, "cgroup", "connect4", "KPROBE_ACTION_OVERRIDE")
    assert event["process"]["pid"] == blocked.pid
    assert event["process"]["binary"] == os.path.realpath(sys.executable)
    assert event["process"]["pod"] == {"namespace": "ns1", "name": "pod1", "pod_labels": {"app": "web"}}
    assert event["args"][0] == {"sockaddr_arg": {"family": "AF_INET", "addr": "127.0.0.1", "port": 8080}}
    assert event["message"] == "denied connect4 to 127.0.0.1:8080/TCP"
    slot = env.guard.slots[connect_rule(7, "127.0.0.0/8")]
    assert env.guard.matches() == {slot: 1}


def test_connect6_denied_by_an_ipv6_prefix_only(env: GuardEnv) -> None:
    """Test that a rule with an IPv6 prefix denies connect() over IPv6 to it, not IPv4 connects of the
    same process, nor the other binary set's IPv6 connects."""
    env.guard.set_rules([connect_rule(3, "::1/128")])
    blocked, other = env.client(BLOCKED), env.client(OTHER)
    assert blocked.run(["connect", socket.AF_INET6, "::1", 8080],
                       ["connect", socket.AF_INET, "127.0.0.1", 8080]) == ["EPERM", "ok"]
    assert other.run(["connect", socket.AF_INET6, "::1", 8080]) == ["ok"]
    events = env.new_events()
    assert [(e["event"], e["policy_index"], e["process"]["pid"]) for e in events] == [
        ("connect6", 3, blocked.pid)]
    assert events[0]["args"][0]["sockaddr_arg"] == {"family": "AF_INET6", "addr": "::1", "port": 8080}


def test_udp_sendmsg_denied_on_both_families(env: GuardEnv) -> None:
    """Test that a sendmsg rule makes sendto() of UDP to the prefixes fail with EPERM (IPv4 and IPv6)
    while the other binary set's datagrams reach the listener and its answer comes back."""
    env.guard.set_rules([connect_rule(4, "127.0.0.1/32", "::1/128", hook=GuardHook.SENDMSG, port=5353,
                                      protocol=UDP)])
    blocked, other = env.client(BLOCKED), env.client(OTHER)
    assert blocked.run(["sendto", socket.AF_INET, "127.0.0.1", 5353],
                       ["sendto", socket.AF_INET6, "::1", 5353]) == ["EPERM", "EPERM"]
    assert other.run(["sendto", socket.AF_INET, "127.0.0.1", 5353],
                     ["sendto", socket.AF_INET6, "::1", 5353]) == ["ok", "ok"]
    events = env.new_events()
    assert [(e["event"], e["policy_index"], e["process"]["pid"]) for e in events] == [
        ("sendmsg4", 4, blocked.pid), ("sendmsg6", 4, blocked.pid)]
    assert events[0]["message"] == "denied sendmsg4 to 127.0.0.1:5353/UDP"


def test_raw_socket_creation_denied_by_family_and_type(env: GuardEnv) -> None:
    """Test that a sock_create rule for AF_INET SOCK_RAW fails socket() with EPERM for its binary set,
    leaves other types and families alone, and lets the other binary set create raw sockets."""
    rule = DenyRule(5, GuardHook.SOCK_CREATE, SocketMatch(socket.AF_INET, socket.SOCK_RAW), BLOCKED)
    env.guard.set_rules([rule])
    blocked, other = env.client(BLOCKED), env.client(OTHER)
    raw4 = ["socket", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP]
    assert blocked.run(raw4, ["socket", socket.AF_INET, socket.SOCK_STREAM, 0],
                       ["socket", socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6]) == [
        "EPERM", "ok", "ok"]
    assert other.run(raw4) == ["ok"]
    events = env.new_events()
    assert len(events) == 1
    assert (events[0]["event"], events[0]["policy_index"], events[0]["process"]["pid"]) == (
        "sock_create", 5, blocked.pid)
    assert events[0]["args"] == [{"int_arg": socket.AF_INET, "label": "family"},
                                 {"int_arg": socket.SOCK_RAW, "label": "type"},
                                 {"int_arg": socket.IPPROTO_ICMP, "label": "protocol"}]


def test_sysctl_write_denied_while_reads_work(env: GuardEnv) -> None:
    """Test that a sysctl rule on writes of a name prefix fails the write with EPERM and lets the same
    process read it, while the other binary set writes (the netns's own ip_forward)."""
    rule = DenyRule(6, GuardHook.SYSCTL, SysctlMatch("net.ipv4.ip_forward"), BLOCKED)
    env.guard.set_rules([rule])
    blocked, other = env.client(BLOCKED), env.client(OTHER)
    path = "/proc/sys/net/ipv4/ip_forward"
    assert blocked.run(["read", path], ["write", path, "1"]) == ["ok", "EPERM"]
    assert other.run(["write", path, "1"], ["write", path, "0"]) == ["ok", "ok"]
    events = env.new_events()
    assert len(events) == 1
    assert (events[0]["event"], events[0]["policy_index"], events[0]["process"]["pid"]) == (
        "sysctl", 6, blocked.pid)
    assert events[0]["args"] == [{"string_arg": "net.ipv4.ip_forward", "label": "name"},
                                 {"string_arg": "write", "label": "access"}]


def test_device_open_and_mknod_denied(env: GuardEnv, tmp_path: Path) -> None:
    """Test that a device rule for char 1:3 (/dev/null) fails its open and mknod with EPERM for the binary
    set, leaves other devices (1:5, /dev/zero) alone, and lets the other binary set open it."""
    rule = DenyRule(8, GuardHook.DEV, DeviceMatch("c", 1, 3, "rwm"), BLOCKED)
    env.guard.set_rules([rule])
    blocked, other = env.client(BLOCKED), env.client(OTHER)
    assert blocked.run(["open", "/dev/null"], ["open", "/dev/zero"],
                       ["mknod", str(tmp_path / "null"), 1, 3]) == ["EPERM", "ok", "EPERM"]
    assert other.run(["open", "/dev/null"]) == ["ok"]
    events = env.new_events()
    assert [(e["event"], e["policy_index"], e["process"]["pid"], e["args"][0]["string_arg"],
             e["args"][1]["string_arg"]) for e in events] == [
        ("dev", 8, blocked.pid, "c 1:3", "r"), ("dev", 8, blocked.pid, "c 1:3", "m")]


def test_audit_rule_lets_the_call_through_and_reports_it(env: GuardEnv) -> None:
    """Test that an audit rule reports a matching connect() (KPROBE_ACTION_POST) and the call succeeds,
    and that a deny rule wins over an audit rule that matches too."""
    audit = connect_rule(1, "127.0.0.0/8", binsets=0, action=GuardAction.AUDIT)
    env.guard.set_rules([audit])
    blocked = env.client(BLOCKED)
    assert blocked.run(["connect", socket.AF_INET, "127.0.0.1", 8080]) == ["ok"]
    events = env.new_events()
    assert [(e["action"], e["policy_index"]) for e in events] == [("KPROBE_ACTION_POST", 1)]
    assert events[0]["message"] == "audited connect4 to 127.0.0.1:8080/TCP"

    env.guard.set_rules([audit, connect_rule(2, "127.0.0.1/32")])
    assert blocked.run(["connect", socket.AF_INET, "127.0.0.1", 8080]) == ["EPERM"]
    assert [(e["action"], e["policy_index"]) for e in env.new_events()] == [("KPROBE_ACTION_OVERRIDE", 2)]


def test_rules_apply_to_their_cgroups_only(env: GuardEnv) -> None:
    """Test that a rule scoped to another cgroup does not apply here, and one scoped to this cgroup for
    every binary (mask 0) denies both clients."""
    env.guard.set_rules([connect_rule(9, "127.0.0.0/8", binsets=0, cgroups=frozenset({env.cgroup_id + 1}))])
    blocked, other = env.client(BLOCKED), env.client(OTHER)
    assert blocked.run(["connect", socket.AF_INET, "127.0.0.1", 8080]) == ["ok"]
    env.guard.set_rules([connect_rule(9, "127.0.0.0/8", binsets=0, cgroups=frozenset({env.cgroup_id}))])
    assert blocked.run(["connect", socket.AF_INET, "127.0.0.1", 8080]) == ["EPERM"]
    assert other.run(["connect", socket.AF_INET, "127.0.0.1", 8080]) == ["EPERM"]
    assert [e["process"]["pid"] for e in env.new_events()] == [blocked.pid, other.pid]


def test_rule_changes_write_only_the_difference(env: GuardEnv) -> None:
    """Test that writing the same rules again writes nothing, that adding a rule writes only its slot
    and the entries that point at it, and that removing it restores the maps' previous contents."""
    first = connect_rule(1, "10.0.0.0/8")
    env.guard.set_rules([first])
    again = env.guard.set_rules([first])
    assert sum(again.written.values()) == sum(again.deleted.values()) == 0
    added = env.guard.set_rules([first, connect_rule(2, "10.1.0.0/16", port=443)])
    # the new rule's slot; 10.1.0.0/16 (both rules' bits); the connect scope's bits changed
    assert added.written == {"guard_rules": 1, "guard_scope": 1, "guard_cidr4": 1, "guard_cidr6": 0}
    assert sum(added.deleted.values()) == 0
    removed = env.guard.set_rules([first])
    assert removed.written == {"guard_rules": 0, "guard_scope": 1, "guard_cidr4": 0, "guard_cidr6": 0}
    assert removed.deleted == {"guard_rules": 1, "guard_scope": 0, "guard_cidr4": 1, "guard_cidr6": 0}


def test_a_bad_rule_changes_nothing(env: GuardEnv) -> None:
    """Test that a rule set with a bad rule raises InvalidRule naming it and leaves the rules in force."""
    env.guard.set_rules([connect_rule(1, "127.0.0.0/8")])
    with pytest.raises(InvalidRule, match="policy 2"):
        env.guard.set_rules([connect_rule(2, "127.0.0.300/8")])
    blocked = env.client(BLOCKED)
    assert blocked.run(["connect", socket.AF_INET, "127.0.0.1", 8080]) == ["EPERM"]


def test_a_restarted_guard_keeps_enforcing_and_writes_nothing_new(env: GuardEnv) -> None:
    """Test that a second load of the guard over the same pins (an agent restart) keeps the rules in force
    while it takes over the links, and that setting the same rules again writes nothing: the difference
    is taken against the kernel's maps, not the previous agent's memory."""
    rule = connect_rule(5, "127.0.0.0/8")
    env.guard.set_rules([rule])
    restarted = KernelGuard(env.pin_dir, env.cgroup)
    try:
        restarted.start()
        blocked = env.client(BLOCKED)
        assert blocked.run(["connect", socket.AF_INET, "127.0.0.1", 8080]) == ["EPERM"]
        again = restarted.set_rules([rule])
        assert sum(again.written.values()) == sum(again.deleted.values()) == 0
        assert [e["process"]["pid"] for e in env.new_events()] == [blocked.pid]  # the same pinned ring
    finally:
        restarted.close()


def test_a_hook_is_attached_only_while_a_rule_uses_it(env: GuardEnv) -> None:
    """Test that with no rule no guard program runs on the cgroup, that a connect rule attaches the two
    connect programs and a socket rule adds sock_create, that a restarted guard takes over exactly those
    links with its own programs, and that removing the rules detaches them."""
    def attached(guard: KernelGuard) -> list[str]:
        return sorted(p["name"] for p in guard.programs())

    assert attached(env.guard) == []
    env.guard.set_rules([connect_rule(1, "127.0.0.0/8")])
    assert attached(env.guard) == ["guard_connect4", "guard_connect6"]
    raw = DenyRule(2, GuardHook.SOCK_CREATE, SocketMatch(socket.AF_INET, socket.SOCK_RAW), BLOCKED)
    env.guard.set_rules([connect_rule(1, "127.0.0.0/8"), raw])
    assert attached(env.guard) == ["guard_connect4", "guard_connect6", "guard_sock_create"]
    restarted = KernelGuard(env.pin_dir, env.cgroup)
    try:
        restarted.start()
        assert attached(restarted) == attached(env.guard)
        links = {path.name: info.prog_id for path, info in list_pinned_links(env.pin_dir / "links")}
        assert links == {p["name"].replace("_", "-"): p["id"] for p in restarted.programs()}
        restarted.set_rules([])
        assert attached(restarted) == []
    finally:
        restarted.close()
