"""Runtime enforcement in a sandbox: the agent attaches guard.bpf.o to the node's cgroup at start, and a
connect rule scoped to one pod's cgroup makes that pod's connect() fail with EPERM while the other pod
connects; the denial is an event of the agent's API naming the pod, the process and the policy.

Policies are not compiled into rules yet (VelvetTracingPolicy is another item): the test writes the rule
into the agent's pinned maps with the agent's own compiler, as `agent.guard.set_rules` would.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from harness import Sandbox, echo_pod, namespace, sandbox

from velvet.datapath import libbpf
from velvet.datapath.attach import list_pinned_links
from velvet.datapath.maps import untyped
from velvet.datapath.structs import GuardHook
from velvet.paths import AgentPaths
from velvet.runtime.guard import HOOKS
from velvet.runtime.guard_rules import AddressMatch, DenyRule, compile_rules
from velvet.sandbox.naming import SandboxNames

pytestmark = pytest.mark.privileged
PORT = 8080
CONNECT = """
import errno, socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("ok")
except OSError as exc:
    print(errno.errorcode.get(exc.errno, str(exc)))
"""


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    with sandbox("guard") as sb:
        sb.apply(namespace("guard") + echo_pod("guard", "web-1") + echo_pod("guard", "web-2"))
        sb.wait_ready(["guard/web-1", "guard/web-2"])
        yield sb


def pod_ip(sb: Sandbox, name: str) -> str:
    """The pod's IP."""
    ip: str = next(p["status"]["podIP"] for p in sb.pods("guard") if p["metadata"]["name"] == name)
    return ip


def write_rules(sb: Sandbox, rules: list[DenyRule]) -> None:
    """Write the rule maps pinned by the sandbox's agent (every entry: the test's rules only)."""
    pin_dir = AgentPaths(sb.name).pin_dir
    for name, contents in compile_rules(rules).maps.items():
        fd = libbpf.check(libbpf.bpf_obj_get(str(pin_dir / name).encode()), f"opening {name}")
        try:
            pinned = untyped(fd, name)
        finally:
            os.close(fd)
        with pinned:
            for key in [k for k in pinned if bytes(k) not in contents]:
                pinned.delete(key)
            for key, value in contents.items():
                pinned.update(pinned.key_type.from_buffer_copy(key),
                              pinned.value_type.from_buffer_copy(value))


def connect(sb: Sandbox, pod: str, ip: str) -> str:
    """What connect() from `pod` to ip:PORT returned ("ok" or the errno's name)."""
    return sb.exec(f"guard/{pod}", "python3", "-c", CONNECT, ip, str(PORT)).stdout.strip()


def enforcement_events(sb: Sandbox) -> list[dict[str, Any]]:
    """The denials and audits of namespace guard, from the agent's API (asked until there are some)."""
    deadline = time.monotonic() + 10
    while True:
        found: list[dict[str, Any]] = sb.api.get("/v1/query/enforcement_events", namespace="guard", last=100)
        if found or time.monotonic() > deadline:
            return [e["process_tracepoint"] for e in found]
        time.sleep(0.2)


def test_agent_attaches_the_guard_to_the_node_cgroup(sb: Sandbox) -> None:
    """Test that velvet status says enforcement is attached with the seven programs, pinned as links."""
    status = sb.api.get("/v1/status")["enforcement"]
    assert (status["attached"], status["error"]) == (True, "")
    assert sorted(p["name"] for p in status["programs"]) == sorted(HOOKS)
    pinned = {path.name for path, info in list_pinned_links(AgentPaths(sb.name).pin_dir / "links")
              if info.type == "cgroup"}
    assert {name.replace("_", "-") for name in HOOKS} <= pinned


def test_connect_rule_of_one_pod_denies_it_while_the_other_pod_connects(sb: Sandbox) -> None:
    """Test that a connect rule scoped to web-1's cgroup fails web-1's connect() to web-2 with EPERM while
    web-2 connects to web-1, and that the denial is an event naming pod, process, hook and policy."""
    web1, web2 = pod_ip(sb, "web-1"), pod_ip(sb, "web-2")
    assert connect(sb, "web-1", web2) == "ok"
    web1_cgroup = SandboxNames(sb.name).pod("guard", "web-1").cgroup.stat().st_ino
    rule = DenyRule(11, GuardHook.CONNECT, AddressMatch((f"{web2}/32",), (PORT, PORT), 6),
                    cgroups=frozenset({web1_cgroup}))
    write_rules(sb, [rule])
    assert connect(sb, "web-1", web2) == "EPERM"
    assert connect(sb, "web-2", web1) == "ok"

    [event] = enforcement_events(sb)
    assert (event["event"], event["policy_index"], event["action"]) == (
        "connect4", 11, "KPROBE_ACTION_OVERRIDE")
    assert event["process"]["pod"]["name"] == "web-1"
    assert event["process"]["binary"].rsplit("/", 1)[-1].startswith("python3")
    assert event["args"][0]["sockaddr_arg"] == {"family": "AF_INET", "addr": web2, "port": PORT}
    write_rules(sb, [])
    assert connect(sb, "web-1", web2) == "ok"
