"""Tests of the process monitor on the real kernel: proc.bpf.o attached (exec, fork, exit) and limited to
a cgroup of the test's own, real processes run in it, the events read the way the agent reads them.

Needs root, cgroup v2, bpffs and tracefs; the cgroup, the pins and the links are removed by exact name.
"""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_datapath import remove_proc_source

from velvet.observe.enrich import DictResolver, EndpointInfo
from velvet.observe.flow import Endpoint, Flow
from velvet.runtime.monitor import EventQuery, ProcessMonitor
from velvet.runtime.source import KernelProcSource
from velvet.system import mounts

NODE = "dp-node"
POD_IP = "10.0.9.9"
Json = dict[str, Any]


class Monitored:
    """A cgroup whose processes are monitored (named as pod ns1/pod1), and the monitor."""

    def __init__(self, cgroup: Path, monitor: ProcessMonitor) -> None:
        self.cgroup = cgroup
        self.monitor = monitor

    def enter(self) -> Callable[[], object]:
        """A preexec_fn that moves the child into the cgroup."""
        return _enter(self.cgroup)

    def events(self, until: Callable[[list[Json]], bool]) -> list[Json]:
        """Poll the monitor until `until(all events)` holds (a few seconds at most); all events as JSON."""
        deadline = time.monotonic() + 10
        while True:
            self.monitor.poll()
            found = self.monitor.query(EventQuery(last=100000))
            if until(found) or time.monotonic() > deadline:
                return found


def _enter(cgroup: Path) -> Callable[[], object]:
    """A preexec_fn that moves the child into `cgroup`."""
    procs = cgroup / "cgroup.procs"
    return lambda: procs.write_text(str(os.getpid()))


@pytest.fixture(scope="module")
def monitored() -> Iterator[Monitored]:
    """proc.bpf.o loaded with its ring pinned in a pin dir of its own, aimed at a fresh cgroup."""
    token = secrets.token_hex(4)
    cgroup = mounts.cgroup2_mount() / f"velvet-dp-proc-{token}"
    pin_dir = mounts.ensure_bpffs() / f"velvet-dp-proc-{token}"
    cgroup.mkdir()
    source = KernelProcSource(pin_dir, cgroup)
    resolver = DictResolver()
    resolver.set_cgroup(cgroup.stat().st_ino, POD_IP)
    resolver.set_endpoint(POD_IP, EndpointInfo("ns1", "pod1", ("k8s:app=web",)))
    sleeper = subprocess.Popen(["sleep", "300"], preexec_fn=_enter(cgroup))
    monitor = ProcessMonitor(source, resolver, NODE, cgroup=cgroup)
    try:
        monitor.start()
        yield Monitored(cgroup, monitor)
    finally:
        sleeper.kill()
        sleeper.wait()
        try:
            monitor.close()
            remove_proc_source(source, pin_dir)
        finally:
            deadline = time.monotonic() + 5
            while "populated 1" in (cgroup / "cgroup.events").read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            cgroup.rmdir()


def _of(events: list[Json], kind: str, **match: Any) -> list[Json]:
    """The events of one type whose process has every given field."""
    return [e[kind] for e in events if kind in e
            and all(e[kind]["process"].get(k) == v for k, v in match.items())]


def test_exec_names_binary_arguments_pod_and_parent_and_exit_its_code(monitored: Monitored) -> None:
    """Test that a shell in the cgroup running /bin/true gives exec events with the full binary path, the
    arguments, the pod, the cwd and the parent's exec_id, and exit events with the exit codes."""
    here = Path(__file__).resolve().parent  # several components, on another mount than /tmp
    proc = subprocess.Popen(["/bin/sh", "-c", f"cd {here} && /bin/true one 'two words'; exit 3"], cwd="/tmp",
                            preexec_fn=monitored.enter())
    assert proc.wait() == 3
    events = monitored.events(lambda ev: bool(_of(ev, "process_exit", pid=proc.pid)))
    shells = _of(events, "process_exec", pid=proc.pid)
    assert len(shells) == 1
    shell = shells[0]["process"]
    assert shell["binary"] == "/bin/sh"
    assert shell["arguments"] == shlex.join(["-c", f"cd {here} && /bin/true one 'two words'; exit 3"])
    assert shell["cwd"] == "/tmp"
    assert shell["pod"] == {"namespace": "ns1", "name": "pod1", "pod_labels": {"app": "web"}}
    assert "execve" in shell["flags"]
    assert shell["parent_exec_id"] == shells[0]["parent"]["exec_id"]
    assert shells[0]["parent"]["pid"] == os.getpid()  # forked by this test, outside the cgroup: from /proc

    trues = [e for e in _of(events, "process_exec", binary="/bin/true")
             if e["process"]["parent_exec_id"] == shell["exec_id"]]
    assert len(trues) == 1
    true = trues[0]["process"]
    assert true["arguments"] == "one 'two words'"
    assert true["cwd"] == str(here)
    assert true["uid"] == os.getuid()
    assert trues[0]["parent"]["exec_id"] == shell["exec_id"]

    exits = {e["process"]["exec_id"]: e for e in _of(events, "process_exit")}
    assert exits[true["exec_id"]]["status"] == 0
    assert exits[true["exec_id"]]["signal"] == ""
    assert exits[shell["exec_id"]]["status"] == 3


def test_a_killed_process_exits_with_its_signal(monitored: Monitored) -> None:
    """Test that a process killed by SIGKILL gives an exit event that names the signal, and that its cwd
    is found across mount points (it runs in the cgroup's directory, on the cgroup2 mount)."""
    sleeper = subprocess.Popen(["/bin/sleep", "60"], preexec_fn=monitored.enter(), cwd=monitored.cgroup)
    monitored.events(lambda ev: bool(_of(ev, "process_exec", pid=sleeper.pid)))
    sleeper.send_signal(signal.SIGKILL)
    sleeper.wait()
    events = monitored.events(lambda ev: bool(_of(ev, "process_exit", pid=sleeper.pid)))
    exit_event = _of(events, "process_exit", pid=sleeper.pid)[-1]
    assert exit_event["signal"] == "SIGKILL"
    assert exit_event["process"]["binary"] == "/bin/sleep"
    assert exit_event["process"]["arguments"] == "60"
    assert exit_event["process"]["cwd"] == str(monitored.cgroup)


def test_fork_without_exec_is_a_clone_of_its_parent_and_threads_are_not_processes(
        monitored: Monitored) -> None:
    """Test that a process that forks (no exec) gives one process_fork event with the parent's binary and
    flag clone, and that starting a thread gives none."""
    script = ("import os, threading; t = threading.Thread(target=lambda: None); t.start(); t.join(); "
              "pid = os.fork()\nif pid == 0: os._exit(7)\nos.waitpid(pid, 0); print(pid)")
    proc = subprocess.Popen([sys.executable, "-c", script], preexec_fn=monitored.enter(),
                            stdout=subprocess.PIPE, text=True)
    child = int(proc.communicate()[0])
    events = monitored.events(lambda ev: bool(_of(ev, "process_exit", pid=proc.pid)))
    forks = _of(events, "process_fork", pid=child)
    assert len(forks) == 1
    assert forks[0]["process"]["flags"] == "clone"
    assert forks[0]["process"]["binary"] == sys.executable
    parent_exec = _of(events, "process_exec", pid=proc.pid)[0]["process"]
    assert forks[0]["parent"]["exec_id"] == parent_exec["exec_id"]
    assert [e["status"] for e in _of(events, "process_exit", pid=child)] == [7]
    assert len([f for f in _of(events, "process_fork") if f["parent"]["pid"] == proc.pid]) == 1


def test_processes_outside_the_cgroup_are_not_reported(monitored: Monitored) -> None:
    """Test that the monitor of one cgroup subtree (a node's) does not report another's processes."""
    outside = subprocess.run(["/bin/true", "outside"], check=True)
    inside = subprocess.Popen(["/bin/true", "inside"], preexec_fn=monitored.enter())
    inside.wait()
    events = monitored.events(lambda ev: bool(_of(ev, "process_exit", pid=inside.pid)))
    assert not [e for e in _of(events, "process_exec") if e["process"]["arguments"] == "outside"]
    assert outside.returncode == 0


def test_processes_running_before_the_start_are_read_from_proc_with_their_parent(
        monitored: Monitored) -> None:
    """Test that a process already running in the cgroup when the monitor started is reported once, flag
    procFS, with its binary, arguments, pod and its parent's exec_id (the parent read from /proc)."""
    found = [e for e in _of(monitored.monitor.query(EventQuery(last=100000)), "process_exec", arguments="300")
             if "procFS" in e["process"]["flags"]]
    assert len(found) == 1
    sleeper = found[0]["process"]
    assert sleeper["binary"].endswith("/sleep")
    assert sleeper["pod"]["name"] == "pod1"
    assert sleeper["parent_exec_id"]
    assert found[0]["parent"]["pid"] == os.getpid()
    assert found[0]["parent"]["exec_id"] == sleeper["parent_exec_id"]


def test_a_connection_names_the_process_that_opened_it(monitored: Monitored) -> None:
    """Test that a TCP connection opened by a process in the cgroup is attributed to that process (its
    flows' source, its replies' destination), and that the accepting side outside the cgroup is not."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    script = (f"import socket; c = socket.create_connection(('127.0.0.1', {port})); "
              "print(c.getsockname()[1], flush=True); c.recv(1)")
    client = subprocess.Popen([sys.executable, "-c", script], preexec_fn=monitored.enter(),
                              stdout=subprocess.PIPE, text=True)
    try:
        conn, _ = server.accept()
        assert client.stdout is not None
        sport = int(client.stdout.readline())
        monitored.events(lambda ev: bool(_of(ev, "process_exec", pid=client.pid)))
        forward = _tcp_flow("127.0.0.1", sport, "127.0.0.1", port)
        deadline = time.monotonic() + 10
        while monitored.monitor.flow_processes(forward) == (None, None) and time.monotonic() < deadline:
            monitored.monitor.poll()
        source, destination = monitored.monitor.flow_processes(forward)
        exec_event = _of(monitored.monitor.query(EventQuery(last=100000)), "process_exec", pid=client.pid)[0]
        assert source == {"exec_id": exec_event["process"]["exec_id"], "pid": client.pid,
                          "binary": sys.executable}
        assert destination is None  # the accepting test process is outside the cgroup
        assert monitored.monitor.flow_processes(_tcp_flow("127.0.0.1", port, "127.0.0.1", sport)) == \
            (None, source)
        conn.close()
    finally:
        client.kill()
        client.wait()
        server.close()


def test_an_accepted_connection_names_the_listening_process(monitored: Monitored) -> None:
    """Test that a connection accepted by a server in the cgroup is attributed to the server: the
    destination of the client's packets and the source of the replies; a client in the cgroup before
    (whose SYN clones the listener in its own context) leaves the listener known."""
    script = ("import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
              "print(s.getsockname()[1], flush=True)\nfor _ in range(2): c, _ = s.accept(); c.recv(1)")
    server = subprocess.Popen([sys.executable, "-c", script], preexec_fn=monitored.enter(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        inside = f"import socket; socket.create_connection(('127.0.0.1', {port})).close()"
        subprocess.run([sys.executable, "-c", inside], preexec_fn=monitored.enter(), check=True)
        client = socket.create_connection(("127.0.0.1", port))
        cport = client.getsockname()[1]
        forward = _tcp_flow("127.0.0.1", cport, "127.0.0.1", port)
        deadline = time.monotonic() + 10
        while monitored.monitor.flow_processes(forward) == (None, None) and time.monotonic() < deadline:
            monitored.monitor.poll()
        source, destination = monitored.monitor.flow_processes(forward)
        assert source is None  # the connecting test process is outside the cgroup
        assert destination is not None
        assert (destination["pid"], destination["binary"]) == (server.pid, sys.executable)
        assert monitored.monitor.flow_processes(_tcp_flow("127.0.0.1", port, "127.0.0.1", cport)) == \
            (destination, None)
        client.close()
    finally:
        server.kill()
        server.wait()

def test_udp_sockets_name_the_processes_that_send_and_receive_on_them(monitored: Monitored) -> None:
    """Test that UDP flows name their processes: a server in the cgroup bound to every address (found by
    its pod's address), a client's connected socket (bound to 127.0.0.1) and its unconnected, autobound
    one; a process outside the cgroup is not named."""
    udp = "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
    server = subprocess.Popen(
        [sys.executable, "-c", udp + "s.bind(('0.0.0.0', 0)); print(s.getsockname()[1], flush=True)\n"
         "for _ in range(3): data, peer = s.recvfrom(64); s.sendto(data, peer)"],
        preexec_fn=monitored.enter(), stdout=subprocess.PIPE, text=True)
    client: subprocess.Popen[str] | None = None
    outside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        client = subprocess.Popen(
            [sys.executable, "-c", udp + f"s.connect(('127.0.0.1', {port})); s.send(b'c'); s.recv(64)\n"
             f"u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b'u', ('127.0.0.1', {port}))\n"
             "u.recvfrom(64); print(s.getsockname()[1], u.getsockname()[1], flush=True); input()"],
            preexec_fn=monitored.enter(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None
        connected, unconnected = map(int, client.stdout.readline().split())
        outside.sendto(b"o", ("127.0.0.1", port))
        outside.recvfrom(64)
        monitored.events(lambda ev: bool(_of(ev, "process_exec", pid=client.pid if client else 0)))
        flows = [_flow(17, "127.0.0.1", connected, POD_IP, port),
                 _flow(17, POD_IP, unconnected, POD_IP, port),
                 _flow(17, "127.0.0.1", outside.getsockname()[1], POD_IP, port)]
        deadline = time.monotonic() + 10
        while any(None in monitored.monitor.flow_processes(f) for f in flows[:2]) \
                and time.monotonic() < deadline:
            monitored.monitor.poll()
        events = monitored.monitor.query(EventQuery(last=100000))
        named = {pid: {"exec_id": _of(events, "process_exec", pid=pid)[0]["process"]["exec_id"], "pid": pid,
                       "binary": sys.executable} for pid in (client.pid, server.pid)}
        assert [monitored.monitor.flow_processes(f) for f in flows] == [
            (named[client.pid], named[server.pid]), (named[client.pid], named[server.pid]),
            (None, named[server.pid])]
        replies = _flow(17, POD_IP, port, "127.0.0.1", connected)
        assert monitored.monitor.flow_processes(replies) == (named[server.pid], named[client.pid])
        # the pod's address names the server's wildcard socket; another address does not
        assert monitored.monitor.flow_processes(_flow(17, "10.0.9.10", port, "127.0.0.1", 1)) == (None, None)
    finally:
        outside.close()
        for proc in (server, client):
            if proc is not None:
                proc.kill()
                proc.wait()


def _tcp_flow(src: str, sport: int, dst: str, dport: int) -> Flow:
    """A TCP flow between two addresses, as the flow pipeline hands it to the process lookup."""
    return _flow(6, src, sport, dst, dport)


def _flow(proto: int, src: str, sport: int, dst: str, dport: int) -> Flow:
    """A flow of `proto` between two addresses, as the flow pipeline hands it to the process lookup."""
    return Flow(time_ns=0, type=0, obs_point=0, verdict=0, drop_reason=0, proto=proto, tcp_flags=0,
                src_ip=src, dst_ip=dst, src_port=sport, dst_port=dport, source=Endpoint(0),
                destination=Endpoint(0))

def test_a_burst_bigger_than_the_ring_is_counted_as_lost_never_silent(monitored: Monitored) -> None:
    """Test that when forks outrun the reader (nothing polls during the burst), every event the ring could
    not hold is counted: events taken in + lost >= the fork and exit events of the burst."""
    while monitored.monitor.poll():
        pass
    seen_before, lost_before = monitored.monitor.seen, monitored.monitor.lost()
    forks = 4000  # two events each (fork, exit) of ~1.3 KiB: more than the 4 MiB ring holds
    script = (f"import os\nfor _ in range({forks}):\n    pid = os.fork()\n    if pid == 0: os._exit(0)\n"
              "    os.waitpid(pid, 0)\n")
    subprocess.run([sys.executable, "-c", script], preexec_fn=monitored.enter(), check=True)
    while monitored.monitor.poll():
        pass
    lost = monitored.monitor.lost() - lost_before
    assert lost > 0
    assert (monitored.monitor.seen - seen_before) + lost >= 2 * forks
    assert monitored.monitor.status()["lost"] == monitored.monitor.lost()
