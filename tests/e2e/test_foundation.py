"""Test the foundation as a new user meets it: sandbox up, apply, pods talking, status, restart, down.

Real kernel and datapath: the agent in the node netns loads the programs, attaches them to every pod
veth and the node cgroup; traffic is real TCP and UDP between pod network namespaces.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import EXAMPLES, Sandbox, unique_name

from velvet.paths import AgentPaths
from velvet.sandbox.naming import SandboxNames

pytestmark = pytest.mark.privileged
PODS = ["blue/echo-1", "blue/echo-2", "green/echo-1", "green/echo-2"]


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    """One sandbox with the echo example (two namespaces, four pods) applied."""
    box = Sandbox(unique_name("f"))
    try:
        box.up()
        box.apply(EXAMPLES / "echo")
        yield box
    finally:
        box.down()


@pytest.fixture(scope="module")
def ips(sb: Sandbox) -> dict[str, str]:
    """Pod IPs once every pod is ready."""
    return sb.wait_ready(PODS)


def probe_all(sb: Sandbox, src: str, targets: list[str]) -> list[str | None]:
    """Query every target URL from `src` in one exec (one Python process inside the pod)."""
    code = (
        "import json, subprocess, sys\n"
        "out = []\n"
        "for url in sys.argv[1:]:\n"
        "    p = subprocess.run([sys.executable, '-m', 'velvet.sandbox.echo', '--query', url,"
        " '--timeout', '2'], capture_output=True, text=True)\n"
        "    out.append(p.stdout.strip() if p.returncode == 0 else None)\n"
        "print(json.dumps(out))\n"
    )
    done = sb.exec(src, "python3", "-c", code, *targets, timeout=120)
    assert done.returncode == 0, done.stderr
    answers: list[str | None] = json.loads(done.stdout)
    return answers


def test_every_pod_reaches_every_other_pod_over_tcp_and_udp(sb: Sandbox, ips: dict[str, str]) -> None:
    """Test that all ordered pod pairs talk over TCP and UDP through the node, source IP preserved."""
    for src in PODS:
        targets = [f"{proto}://{ips[dst]}:{port}" for dst in PODS if dst != src
                   for proto, port in (("tcp", 8080), ("udp", 8081))]
        answers = probe_all(sb, src, targets)
        expected = [f"{dst.split('/')[1]} {ips[src]}" for dst in PODS if dst != src for _ in range(2)]
        got = [a.rsplit(":", 1)[0] if a else None for a in answers]
        assert got == expected, f"from {src}: {list(zip(targets, answers, strict=True))}"


def test_get_pods_shows_ip_phase_and_ready(sb: Sandbox, ips: dict[str, str]) -> None:
    """Test that `get pods -o json` is a kubectl List with podIP, phase and the Ready condition."""
    listing = sb.json("get", "pods", "-A")
    assert listing["kind"] == "List"
    assert listing["apiVersion"] == "v1"
    by_name = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in listing["items"]}
    for pod in PODS:
        status = by_name[pod]["status"]
        assert status["podIP"] == ips[pod]
        assert status["phase"] == "Running"
        assert {"type": "Ready", "status": "True"} in [{k: c[k] for k in ("type", "status")}
                                                       for c in status["conditions"]]


def test_status_shows_programs_on_every_veth_and_the_cgroup(sb: Sandbox, ips: dict[str, str]) -> None:
    """Test that `velvet status` names each program's attachments, and bpftool agrees on the programs."""
    status = sb.json("status")
    programs = {p["name"]: p for p in status["datapath"]["programs"]}
    names = SandboxNames(sb.name)
    veths = {names.pod(*pod.split("/")).host_veth for pod in PODS}
    for prog, direction in (("lxc_from_pod", "ingress"), ("lxc_to_pod", "egress")):
        attached = set(programs[prog]["attached_to"])
        assert {f"{v} ({direction})" for v in veths} <= attached
    for prog in ("sock_connect4", "sock_sendmsg4", "sock_recvmsg4", "sock_getpeername4"):
        assert programs[prog]["attached_to"] == [f"cgroup {names.cgroup_node}"]
    assert status["counts"]["endpoints"] == 4
    assert status["agent"]["ok"] is True
    features = {f["name"]: f for f in status["kernel"]["features"]}
    assert features["BTF"]["ok"]
    tool = shutil.which("bpftool", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") or "bpftool"
    bpftool = json.loads(subprocess.run([tool, "-j", "prog", "show"], capture_output=True, text=True,
                                        check=True).stdout)
    kernel_ids = {p["id"] for p in bpftool}
    assert {p["id"] for p in programs.values() if p["attached_to"]} <= kernel_ids


# A TCP client in a pod (argv: host [port, 8080]): one echo round trip, "connected", then one round
# trip per line of stdin.
STREAM_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 8080), timeout=5)
f = s.makefile("rw")
def round_trip(i):
    f.write("x\\n"); f.flush()
    if not f.readline(): sys.exit(f"broken at round trip {i}")
round_trip(0)
print("connected", flush=True)
for i, _ in enumerate(sys.stdin, 1):
    round_trip(i)
    print("ok", i, flush=True)
"""


def stdout_lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """Every stdout line of `proc` (stripped), then "" at its end, filled by a reader thread."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.strip())
        lines.put("")
    threading.Thread(target=pump, daemon=True).start()
    return lines


def next_line(lines: queue.Queue[str], what: str, timeout: float = 30) -> str:
    """The next line; fails naming `what` when none comes in time or the process ended."""
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no {what} within {timeout}s") from None
    assert line, f"the client ended before {what}"
    return line


def test_agent_kill_does_not_interrupt_a_streaming_connection(sb: Sandbox, ips: dict[str, str]) -> None:
    """Test that `kill -9` of the agent leaves a live TCP stream working, while the agent is down and
    after it is back, and the restarted agent reports the same state."""
    before = sb.json("status")
    client = subprocess.Popen(
        [sys.executable, "-m", "velvet.cli.main", "--sandbox", sb.name, "sandbox", "exec", "blue/echo-1",
         "--", "python3", "-c", STREAM_CLIENT, ips["green/echo-2"]],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    assert client.stdin is not None
    lines = stdout_lines(client)
    try:
        assert next_line(lines, "connected line") == "connected"
        pid_file = AgentPaths(sb.name).run_dir / "agent.pid"
        old_pid = int(pid_file.read_text())
        os.kill(old_pid, 9)
        client.stdin.write("\n")  # a round trip right after the kill
        assert next_line(lines, "round trip after the kill") == "ok 1"
        deadline = time.monotonic() + 30
        while not sb.api.healthy() or int(pid_file.read_text()) == old_pid:
            assert time.monotonic() < deadline, "the agent was not restarted"
            time.sleep(0.2)
        client.stdin.write("\n")
        assert next_line(lines, "round trip after the restart") == "ok 2"
        client.stdin.close()
        assert client.wait(timeout=30) == 0, client.stderr.read() if client.stderr else ""
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    after = sb.json("status")
    assert after["counts"] == before["counts"]
    assert {m["name"]: m["entries"] for m in after["datapath"]["maps"] if m["name"].startswith("lb4_s")} == \
        {m["name"]: m["entries"] for m in before["datapath"]["maps"] if m["name"].startswith("lb4_s")}
    assert sb.query("green/echo-1", f"tcp://{ips['blue/echo-2']}:8080") is not None


def test_invalid_document_rejects_the_whole_file(sb: Sandbox, tmp_path: Path) -> None:
    """Test that one invalid document among valid ones fails with one line naming document and field,
    and nothing of the file is stored."""
    manifest = tmp_path / "mixed.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: purple\n---\n"
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: good\n  namespace: default\n"
        "spec:\n  ports:\n  - port: 80\n---\n"
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\n  namespace: default\n"
        "spec:\n  ports:\n  - port: 99999\n")
    done = sb.velvet("apply", "-f", str(manifest), check=False)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"{manifest}: document 3: spec.ports[0].port" in lines[0]
    namespaces = [n["metadata"]["name"] for n in sb.json("get", "namespaces")["items"]]
    assert "purple" not in namespaces
    services = [s["metadata"]["name"] for s in sb.json("get", "services", "-A")["items"]]
    assert "good" not in services


def test_cli_without_agent_says_how_to_start_one() -> None:
    """Test that a command needing the agent, with none running, says so and how to start one."""
    done = Sandbox(unique_name("n")).velvet("status", check=False)
    assert done.returncode == 1
    assert "no Velvet agent" in done.stderr
    assert "velvet sandbox up" in done.stderr


def test_sandbox_down_leaves_nothing() -> None:
    """Test that `sandbox down` removes every namespace, link, cgroup, pin and process it made."""
    box = Sandbox(unique_name("d"))
    names = SandboxNames(box.name)
    try:
        box.up()
        box.apply(EXAMPLES / "echo")
        box.wait_ready(PODS)
    finally:
        box.down()
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert names.prefix not in netns
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert not any(names.pod(*pod.split("/")).host_veth in links for pod in PODS)
    assert not names.cgroup_sandbox.exists()
    assert not names.pin_dir.exists()
    assert not names.state_dir.exists()
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert f"--sandbox {box.name} " not in processes
