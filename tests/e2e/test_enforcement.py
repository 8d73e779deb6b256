"""Runtime enforcement end to end: the agent loads guard.bpf.o at start and attaches a hook's programs to
the node's cgroup while a rule uses it, and a VelvetTracingPolicyNamespaced applied with `velvet apply`
(Override, argError -1, on syscalls/sys_enter_connect for one binary) makes that binary's connect() fail
with EPERM in its namespace's pods while another binary of the same pod, and the same binary in another
namespace, connect; the denial is in `velvet events` naming pod, binary and policy; deleting the policy
lets the connect through. A policy on sys_enter_socket refuses socket() the same way.

One sandbox for the module: pods guard/web-1, guard/web-2 and other/web-1 (echo servers on 8080).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from harness import Sandbox, echo_pod, namespace, sandbox

from velvet.datapath.attach import list_pinned_links
from velvet.paths import AgentPaths

pytestmark = pytest.mark.privileged
PORT = 8080
PYTHON = "/usr/bin/python3"
CONNECT = """
import errno, socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("ok")
except OSError as exc:
    print(errno.errorcode.get(exc.errno, str(exc)))
"""
BASH_CONNECT = "exec 3<>/dev/tcp/$0/$1 && echo ok"
UDP_SOCKET = """
import errno, socket
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
    print("ok")
except OSError as exc:
    print(errno.errorcode.get(exc.errno, str(exc)))
"""


def no_python_to(ip: str) -> str:
    """The policy: /usr/bin/python3 in namespace guard may not connect to ip:8080 over TCP."""
    return f"""
apiVersion: velvet.io/v1alpha1
kind: VelvetTracingPolicyNamespaced
metadata: {{name: no-python, namespace: guard}}
spec:
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_connect
    args: [{{index: 6, type: sockaddr}}]
    selectors:
    - matchBinaries: [{{operator: In, values: [{PYTHON}]}}]
      matchArgs:
      - {{index: 6, operator: DAddr, values: ["{ip}/32"]}}
      - {{index: 6, operator: DPort, values: [{PORT}]}}
      - {{index: 6, operator: Protocol, values: [IPPROTO_TCP]}}
      matchActions: [{{action: Override, argError: -1}}]
"""


NO_UDP = f"""
apiVersion: velvet.io/v1alpha1
kind: VelvetTracingPolicyNamespaced
metadata: {{name: no-udp, namespace: guard}}
spec:
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_socket
    args: [{{index: 5, type: int}}, {{index: 6, type: int}}]
    selectors:
    - matchBinaries: [{{operator: In, values: [{PYTHON}]}}]
      matchArgs:
      - {{index: 5, operator: Equal, values: [AF_INET]}}
      - {{index: 6, operator: Equal, values: [SOCK_DGRAM]}}
      matchActions: [{{action: Override, argError: -1}}]
"""


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    with sandbox("guard") as sb:
        sb.apply(namespace("guard") + namespace("other") + echo_pod("guard", "web-1") +
                 echo_pod("guard", "web-2") + echo_pod("other", "web-1"))
        sb.wait_ready(["guard/web-1", "guard/web-2", "other/web-1"])
        yield sb


def pod_ip(sb: Sandbox, ns: str, name: str) -> str:
    """The pod's IP."""
    ip: str = next(p["status"]["podIP"] for p in sb.pods(ns) if p["metadata"]["name"] == name)
    return ip


def python_connect(sb: Sandbox, pod: str, ip: str) -> str:
    """What connect() by /usr/bin/python3 in `pod` to ip:PORT returned ("ok" or the errno's name)."""
    return sb.exec(pod, PYTHON, "-c", CONNECT, ip, str(PORT)).stdout.strip()


def bash_connect(sb: Sandbox, pod: str, ip: str) -> str:
    """What bash's /dev/tcp connect() in `pod` to ip:PORT printed ("ok", else bash's error)."""
    done = sb.exec(pod, "/bin/bash", "-c", BASH_CONNECT, ip, str(PORT))
    return (done.stdout + done.stderr).strip()


def denials(sb: Sandbox, policy: str) -> list[dict[str, Any]]:
    """The process_tracepoint events of namespace guard naming `policy`, from `velvet events` (asked until
    there are some)."""
    deadline = time.monotonic() + 10
    while True:
        out = sb.velvet("events", "--namespace", "guard", "--type", "process_tracepoint", "--last", "1000",
                        "-o", "json").stdout
        found = [e["process_tracepoint"] for e in map(json.loads, out.splitlines())
                 if e["process_tracepoint"].get("policy_name") == policy]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def guard_links(sb: Sandbox) -> set[str]:
    """The guard programs attached to the node's cgroup, by `velvet status` and by their pinned links."""
    listed = {p["name"] for p in sb.api.get("/v1/status")["enforcement"]["programs"]}
    pinned = {path.name for path, info in list_pinned_links(AgentPaths(sb.name).pin_dir / "links")
              if info.type == "cgroup" and path.name.startswith("guard-")}
    assert pinned == {name.replace("_", "-") for name in listed}
    return listed


def test_agent_loads_the_guard_and_attaches_no_hook_without_a_rule(sb: Sandbox) -> None:
    """Test that velvet status says enforcement is on while no guard program is attached: with no rule,
    the node's connect(), socket(), sendmsg(), sysctl and device calls run none of them."""
    status = sb.api.get("/v1/status")["enforcement"]
    assert (status["attached"], status["error"], status["rules"]) == (True, "", [])
    assert guard_links(sb) == set()


def test_connect_policy_denies_one_binary_of_a_pod_and_not_another_nor_another_namespace(sb: Sandbox) -> None:
    """Test that after `velvet apply` of the connect policy, python3 in guard/web-1 gets EPERM connecting to
    web-2 while bash in the same pod connects to the same address and python3 in other/web-1 connects too;
    that the denial is in `velvet events` (json and compact) naming pod, binary and policy; and that once
    the policy is deleted python3 connects again."""
    web2 = pod_ip(sb, "guard", "web-2")
    assert python_connect(sb, "guard/web-1", web2) == "ok"
    policy = no_python_to(web2)
    sb.apply(policy)
    assert guard_links(sb) == {"guard_connect4", "guard_connect6"}  # that hook's programs, only
    assert python_connect(sb, "guard/web-1", web2) == "EPERM"
    assert bash_connect(sb, "guard/web-1", web2) == "ok"
    assert python_connect(sb, "other/web-1", web2) == "ok"

    [event] = denials(sb, "guard/no-python")
    assert (event["subsys"], event["event"], event["action"]) == (
        "cgroup", "connect4", "KPROBE_ACTION_OVERRIDE")
    assert event["process"]["pod"]["name"] == "web-1"
    assert event["process"]["binary"] == PYTHON
    assert event["args"][0]["sockaddr_arg"] == {"family": "AF_INET", "addr": web2, "port": PORT}
    compact = sb.velvet("events", "--namespace", "guard", "--last", "1000").stdout.splitlines()
    line = f"🚫 guard/web-1 {PYTHON} denied connect4 to {web2}:{PORT}/TCP by policy guard/no-python"
    assert line in compact
    rules = sb.json("status")["enforcement"]["rules"]
    assert [(r["policy_name"], r["hook"], r["action"]) for r in rules] == [
        ("guard/no-python", "connect", "deny")]

    sb.delete(policy)
    assert sb.json("status")["enforcement"]["rules"] == []
    assert guard_links(sb) == set()
    assert python_connect(sb, "guard/web-1", web2) == "ok"


def test_socket_policy_denies_udp_sockets_of_one_binary_in_its_namespace(sb: Sandbox) -> None:
    """Test that a sys_enter_socket policy (AF_INET, SOCK_DGRAM, Override) makes socket() by python3 fail
    with EPERM in guard/web-1 and not in other/web-1, with a sock_create denial naming the policy."""
    sb.apply(NO_UDP)
    try:
        assert sb.exec("guard/web-1", PYTHON, "-c", UDP_SOCKET).stdout.strip() == "EPERM"
        assert sb.exec("other/web-1", PYTHON, "-c", UDP_SOCKET).stdout.strip() == "ok"
        [event] = denials(sb, "guard/no-udp")
        assert (event["event"], event["process"]["binary"]) == ("sock_create", PYTHON)
    finally:
        sb.delete(NO_UDP)
    assert sb.exec("guard/web-1", PYTHON, "-c", UDP_SOCKET).stdout.strip() == "ok"


NO_SYSCTL = """
apiVersion: velvet.io/v1alpha1
kind: VelvetTracingPolicyNamespaced
metadata: {name: no-sysctl, namespace: guard}
spec:
  tracepoints:
  - subsystem: cgroup
    event: sysctl
    args: [{index: 0, type: string}, {index: 1, type: int}]
    selectors:
    - matchArgs:
      - {index: 0, operator: Prefix, values: [net.ipv4.ip_forward]}
      - {index: 1, operator: Equal, values: [1]}
      matchActions: [{action: Override, argError: -1}]
"""
# Writes the value the pod's own network namespace already has: nothing changes where it is allowed.
REWRITE_FORWARD = """
import errno, os
path = "/proc/sys/net/ipv4/ip_forward"
value = open(path, "rb").read()
fd = os.open(path, os.O_WRONLY)
try:
    os.write(fd, value)
    print("ok")
except OSError as exc:
    print(errno.errorcode.get(exc.errno, str(exc)))
"""


def test_sysctl_policy_denies_writes_in_its_namespace_and_lets_reads_through(sb: Sandbox) -> None:
    """Test that a cgroup/sysctl policy (Velvet's event; Prefix on the name, write) makes a write of
    net.ipv4.ip_forward fail with EPERM in guard/web-1 (reading it works: the value written is the one
    read), and not in other/web-1; deleting the policy lets the write through."""
    sb.apply(NO_SYSCTL)
    try:
        assert sb.exec("guard/web-1", PYTHON, "-c", REWRITE_FORWARD).stdout.strip() == "EPERM"
        assert sb.exec("other/web-1", PYTHON, "-c", REWRITE_FORWARD).stdout.strip() == "ok"
        [event] = denials(sb, "guard/no-sysctl")
        assert event["event"] == "sysctl"
        assert event["args"][0] == {"string_arg": "net.ipv4.ip_forward", "label": "name"}
    finally:
        sb.delete(NO_SYSCTL)
    assert sb.exec("guard/web-1", PYTHON, "-c", REWRITE_FORWARD).stdout.strip() == "ok"
