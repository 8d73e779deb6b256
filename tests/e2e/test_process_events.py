"""Process events of real processes in sandbox pods: `velvet events` (JSON and compact, --follow), /metrics,
and the processes already running when an agent (re)starts.

One sandbox for the module: namespace proc with pod web-1 (app=web), namespace other with pod db-1.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness import Event, Sandbox, echo_pod, events, namespace, sandbox
from harness import eventually_events as eventually

from velvet.connectivity.manifests import UDP_PORT
from velvet.datapath.attach import list_pinned_links
from velvet.paths import AgentPaths

pytestmark = pytest.mark.privileged
MANIFEST = namespace("proc") + namespace("other") + echo_pod("proc", "web-1", {"app": "web"}) + \
    echo_pod("other", "db-1", {"app": "db"})


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    with sandbox("proc") as sb:
        sb.apply(MANIFEST)
        sb.wait_ready(["proc/web-1", "other/db-1"])
        yield sb


def _with(kind: str, **fields: Any) -> Callable[[list[Event]], list[Event]]:
    return lambda evs: [e[kind] for e in evs if kind in e
                        and all(e[kind]["process"].get(k) == v for k, v in fields.items())]


def test_exec_in_a_pod_names_pod_binary_arguments_and_parent_and_its_exit_the_code(sb: Sandbox) -> None:
    """Test that a binary run in a pod is a process_exec naming the pod (with labels), the full path, the
    arguments and the parent (a shell of the pod, alive while the agent reads: a parent outside the node
    that has exited by then is not named), and that its exit and a shell's exit 5 carry their codes."""
    sb.exec("proc/web-1", "/bin/sh", "-c", "/bin/true hello e2e-1; sleep 0.5")
    execs = eventually(sb, ("--pod", "web-1"),
                       _with("process_exec", binary="/bin/true", arguments="hello e2e-1"))
    assert len(execs) == 1
    proc = execs[0]["process"]
    assert proc["pod"] == {"namespace": "proc", "name": "web-1", "pod_labels": {"app": "web"}}
    assert "execve" in proc["flags"]
    assert proc["parent_exec_id"]
    assert execs[0]["parent"]["exec_id"] == proc["parent_exec_id"]
    assert execs[0]["parent"]["binary"] == "/bin/sh"
    exits = eventually(sb, ("--pod", "web-1", "--type", "process_exit"),
                       _with("process_exit", exec_id=proc["exec_id"]))
    assert [(e["status"], e["signal"]) for e in exits] == [(0, "")]

    sb.exec("proc/web-1", "/bin/sh", "-c", "exit 5")
    shells = eventually(sb, ("--namespace", "proc", "--type", "process_exit"),
                        _with("process_exit", binary="/bin/sh", arguments="-c 'exit 5'"))
    assert [e["status"] for e in shells] == [5]
    assert not _with("process_exec", arguments="hello e2e-1")(events(sb, "--namespace", "other"))
    servers = [e for e in _with("process_exec")(events(sb, "--pod", "web-1"))
               if "velvet.sandbox.echo" in e["process"]["arguments"] and "execve" in e["process"]["flags"]]
    assert len(servers) == 1  # the pod's server, started before the agent knew the pod's cgroup


def test_a_process_killed_by_sigkill_exits_with_the_signal(sb: Sandbox) -> None:
    """Test that a process in a pod that gets SIGKILL has an exit event naming SIGKILL."""
    sb.exec("proc/web-1", "/bin/sh", "-c", "kill -9 $$")
    exits = eventually(sb, ("--pod", "web-1"), _with("process_exit", arguments="-c 'kill -9 $$'"))
    assert [(e["signal"], e["process"]["pod"]["name"]) for e in exits] == [("SIGKILL", "web-1")]


def test_compact_output_and_follow(sb: Sandbox) -> None:
    """Test `velvet events -o compact` lines, stored and followed, as tetra getevents prints them."""
    follower = subprocess.Popen(sb.argv("events", "--follow", "--last", "0", "--pod", "db-*"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    lines: queue.Queue[str] = queue.Queue()
    assert follower.stdout is not None
    out = follower.stdout
    def read() -> None:
        for line in out:
            lines.put(line.rstrip("\n"))
    threading.Thread(target=read, daemon=True).start()
    try:
        time.sleep(1)  # the follow is registered before the exec
        sb.exec("other/db-1", "/bin/echo", "followed")
        got = [lines.get(timeout=15) for _ in range(2)]
    finally:
        follower.terminate()
        follower.wait()
    assert got == ["🚀 process other/db-1 /bin/echo followed", "💥 exit    other/db-1 /bin/echo followed 0"]
    stored = sb.velvet("events", "--pod", "db-1", "--last", "5000").stdout.splitlines()
    assert "🚀 process other/db-1 /bin/echo followed" in stored


def test_metrics_count_execs_per_pod(sb: Sandbox) -> None:
    """Test that /metrics counts process executions per pod."""
    sb.exec("other/db-1", "/bin/true", "counted")
    eventually(sb, ("--pod", "db-1"), _with("process_exec", arguments="counted"))
    with urllib.request.urlopen(sb.json("status")["http"]["metrics"], timeout=10) as resp:
        text = resp.read().decode()
    counts = [line for line in text.splitlines()
              if line.startswith('velvet_process_execs_total{namespace="other",pod="db-1"}')]
    assert counts
    assert float(counts[0].split()[-1]) >= 1


def test_processes_running_before_a_restarted_agent_appear_with_their_ancestry(sb: Sandbox) -> None:
    """Test that after `kill -9` of the agent and its restart, the pod's server process (started long
    before) is a procFS process_exec naming the pod, whose parent is known, and that status shows the
    programs and where they are attached."""
    db = sb.wait_ready(["other/db-1"])["other/db-1"]
    assert sb.query("proc/web-1", f"udp://{db}:{UDP_PORT}") is not None  # a UDP socket the agent knew
    pid_file = AgentPaths(sb.name).run_dir / "agent.pid"
    old_pid = int(pid_file.read_text())
    os.kill(old_pid, 9)
    deadline = time.monotonic() + 30
    while not sb.api.healthy() or int(pid_file.read_text()) == old_pid:
        assert time.monotonic() < deadline, "the agent was not restarted"
        time.sleep(0.2)
    found = [e["process_exec"] for e in events(sb, "--pod", "web-1", "--type", "process_exec")
             if "procFS" in e["process_exec"]["process"]["flags"]]
    servers = [e for e in found if "velvet.sandbox.echo" in e["process"]["arguments"]]
    assert len(servers) == 1, found
    server = servers[0]
    assert server["process"]["pod"]["name"] == "web-1"
    assert server["parent"]["exec_id"] == server["process"]["parent_exec_id"]
    assert server["parent"]["pid"] > 0
    # connections accepted by servers that listened before the restart name them (listeners from /proc)
    assert sb.query("proc/web-1", f"tcp://{db}:8080") is not None
    out = sb.velvet("observe", "--last", "4095", "--protocol", "tcp", "--from-pod", "other/db-1",
                    "--from-process", server_process(sb, "db-1")["exec_id"], "-o", "json").stdout
    assert [json.loads(line) for line in out.splitlines() if line.strip()]
    # and the UDP server the agent before knew is named again once it next receives
    answer = sb.query("proc/web-1", f"udp://{db}:{UDP_PORT}")
    assert answer is not None
    out = sb.velvet("observe", "--last", "4095", "--protocol", "udp", "--to-pod", "other/db-1",
                    "--to-process", server_process(sb, "db-1")["exec_id"], "-o", "json").stdout
    port = int(answer.rsplit(":", 1)[1])
    assert [f for f in map(json.loads, filter(None, out.splitlines())) if port in ports(f, "UDP")]
    status = sb.json("status")["processes"]
    assert status["attached"]
    assert status["processes"] > 0
    assert {p["name"]: p["attached_to"] for p in status["programs"]} == {
        "proc_exec": "tracepoint sched:sched_process_exec", "proc_fork": "raw_tracepoint:sched_process_fork",
        "proc_exit": "tracepoint sched:sched_process_exit",
        "proc_tcp_connect": "tp_btf:inet_sock_set_state",
        "proc_udp_send": "tracepoint sock:sock_send_length",
        "proc_udp_recv": "tracepoint sock:sock_recv_length"}
    links = list_pinned_links(AgentPaths(sb.name).pin_dir / "links")
    pinned = {path.name: info.prog_id for path, info in links  # the restarted agent's programs are in them
              if path.name.startswith("proc-")}
    assert pinned == {p["name"].replace("_", "-"): p["id"] for p in status["programs"]}


def test_flows_name_the_process_that_opened_the_connection(sb: Sandbox) -> None:
    """Test that the flows of a TCP connection a pod's process opened name that process (pid, binary,
    exec_id of its process_exec) as source, their replies as destination, and that `velvet observe
    --from-process` / `--to-process` select them."""
    db = sb.wait_ready(["other/db-1"])["other/db-1"]
    answer = sb.query("proc/web-1", f"tcp://{db}:8080")  # "db-1 <client ip>:<client port>"
    assert answer is not None
    port = int(answer.rsplit(":", 1)[1])

    def observe(*args: str) -> list[Event]:  # this connection's flows
        return flows_with_port(sb, "TCP", port, *args)

    sent = observe("--from-pod", "proc/web-1", "--to-pod", "other/db-1", "--from-process", "*python3*")
    assert sent
    opener = sent[0]["source_process"]
    assert {f["source_process"]["exec_id"] for f in sent} == {opener["exec_id"]}
    queries = [e for e in _with("process_exec", pid=opener["pid"])(events(sb, "--pod", "web-1"))
               if "--query" in e["process"]["arguments"]]
    assert [(e["process"]["exec_id"], e["process"]["binary"]) for e in queries] == \
        [(opener["exec_id"], opener["binary"])]
    replies = observe("--from-pod", "other/db-1", "--to-pod", "proc/web-1", "--to-process", opener["exec_id"])
    assert replies
    assert all(f["destination_process"] == opener for f in replies)
    assert observe("--from-pod", "proc/web-1", "--from-process", "/no/such/binary") == []
    server = server_process(sb, "db-1")
    assert {f["destination_process"]["exec_id"] for f in sent} == {server["exec_id"]}
    assert {f["source_process"]["exec_id"] for f in replies} == {server["exec_id"]}


def test_udp_flows_name_the_client_and_the_server_process(sb: Sandbox) -> None:
    """Test that a datagram a pod's process sends to another pod's UDP server names the client's process
    (pid, binary, exec_id of its process_exec) as source and the server's as destination, and that
    `velvet observe --from-process` / `--to-process` select them (the datapath reports no reply datagrams:
    tests/datapath/test_proc_events.py shows a reply's processes)."""
    db = sb.wait_ready(["other/db-1"])["other/db-1"]
    answer = sb.query("proc/web-1", f"udp://{db}:{UDP_PORT}")  # "db-1 <client ip>:<client port>"
    assert answer is not None
    port = int(answer.rsplit(":", 1)[1])

    def observe(*args: str) -> list[Event]:  # this exchange's flows
        return flows_with_port(sb, "UDP", port, *args)

    sent = observe("--from-pod", "proc/web-1", "--to-pod", "other/db-1", "--from-process", "*python3*")
    assert sent
    client = sent[0]["source_process"]
    queries = [e for e in _with("process_exec", pid=client["pid"])(events(sb, "--pod", "web-1"))
               if "--query" in e["process"]["arguments"]]
    assert [(e["process"]["exec_id"], e["process"]["binary"]) for e in queries] == \
        [(client["exec_id"], client["binary"])]
    server = server_process(sb, "db-1")
    assert {(f["source_process"]["exec_id"], f["destination_process"]["exec_id"]) for f in sent} == \
        {(client["exec_id"], server["exec_id"])}
    # both observation points (leaving the client's endpoint, reaching the server's) name both processes
    assert {f["trace_observation_point"] for f in sent} == {"FROM_ENDPOINT", "TO_ENDPOINT"}
    assert observe("--from-pod", "proc/web-1", "--to-process", server["exec_id"]) == sent
    assert observe("--from-pod", "proc/web-1", "--from-process", "/no/such/binary") == []


def ports(flow: Event, proto: str = "TCP") -> tuple[int, int]:
    """A TCP (or `proto`) flow's source and destination ports."""
    l4 = flow["l4"][proto]
    return l4["source_port"], l4["destination_port"]


def flows_with_port(sb: Sandbox, proto: str, port: int, *args: str) -> list[Event]:
    """`velvet observe -o json` flows of `proto` (TCP or UDP) with `port` on either side, filtered by args."""
    out = sb.velvet("observe", "--last", "4095", "--protocol", proto.lower(), *args, "-o", "json").stdout
    return [f for f in map(json.loads, filter(None, out.splitlines())) if port in ports(f, proto)]


def server_process(sb: Sandbox, pod: str) -> Event:
    """The process of a pod's echo server (its latest process_exec), as flows name processes."""
    servers = [e["process"] for e in _with("process_exec")(events(sb, "--pod", pod))
               if "velvet.sandbox.echo" in e["process"]["arguments"]
               and "--query" not in e["process"]["arguments"]]
    return {k: servers[-1][k] for k in ("exec_id", "pid", "binary")}
