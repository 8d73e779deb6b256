"""Test the cluster's one view on three nodes through the CLI, as Hubble Relay and cilium-health give it.

One sandbox (`sandbox up --nodes 3`), torn down whatever happens, with an echo pod pinned to each node
(z on node 0, a on node 1, b on node 2) and a NodePort Service in front of b. `velvet observe` run
against node 0 shows the flows nodes 1 and 2 saw, each with its node_name; `--node-name` keeps one
node's; `--follow` sees a new flow made on node 2; `velvet --node velvet-node-2 ...` answers from node
2; `velvet status` lists the nodes with health probes; a removed node leaves the list. The nodes run
with `--host-routing legacy` (their IP stacks forward), which this module also checks.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import yaml
from harness import Sandbox, echo_pod, namespace, sandbox
from test_multinode import eventually as poll_until
from test_multinode import forwarded_datagrams, on_node, on_node_json

pytestmark = pytest.mark.privileged

NODES = ("velvet-node", "velvet-node-1", "velvet-node-2")
NODE_IPS = ("192.168.77.2", "192.168.77.3", "192.168.77.4")
SERVICE = """apiVersion: v1
kind: Service
metadata: {name: b, namespace: obs}
spec:
  type: NodePort
  selector: {app: b}
  ports: [{port: 80, targetPort: 8080}]
"""


def manifests() -> str:
    """Namespace obs with echo pods z, a, b pinned to nodes 0, 1, 2, and the NodePort Service b."""
    docs = [namespace("obs")]
    for name, node in (("z", 0), ("a", 1), ("b", 2)):
        pod = yaml.safe_load(echo_pod("obs", name, {"app": name}))
        pod["spec"]["nodeName"] = NODES[node]
        docs.append(yaml.safe_dump(pod))
    docs.append(SERVICE)
    return "\n---\n".join(doc.strip().removeprefix("---").strip() for doc in docs)


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    """A three-node sandbox with z, a, b ready; the node's IP stacks forward (legacy host routing), so the
    cluster view is also seen working without host routing."""
    with sandbox("mo", "--nodes", "3", "--host-routing", "legacy") as box:
        box.apply(manifests())
        box.wait_ready(["obs/z", "obs/a", "obs/b"])
        yield box


@pytest.fixture(scope="module")
def ips(sb: Sandbox) -> dict[str, str]:
    """The pods' IPs by name."""
    return {p["metadata"]["name"]: p["status"]["podIP"] for p in sb.pods("obs")}


eventually = partial(poll_until, timeout=20.0)  # this module's changes take up to 20 s


def observe(sb: Sandbox, *args: str) -> list[dict[str, Any]]:
    """`velvet observe -o json ARGS` against node 0 (the sandbox's default API), decoded."""
    done = sb.velvet("observe", "-o", "json", *args)
    assert done.stderr == ""
    return [json.loads(line) for line in done.stdout.splitlines()]


def tcp_a_to_b(flows: list[dict[str, Any]], b_ip: str) -> list[dict[str, Any]]:
    """The flows of a's TCP connections to b's port 8080 (either direction)."""
    return [f for f in flows if f["IP"]["destination"] == b_ip and f["source"].get("pod_name") == "a"
            and (f["l4"].get("TCP") or {}).get("destination_port") == 8080]


def test_observe_on_node_0_shows_flows_of_nodes_1_and_2(sb: Sandbox, ips: dict[str, str]) -> None:
    """Test that a connection from a (node 1) to b (node 2) appears in node 0's `observe`, seen by both
    nodes, each flow naming the node that saw it; `--node-name` keeps only that node's flows."""
    assert sb.query("obs/a", f"tcp://{ips['b']}:8080") is not None
    flows = tcp_a_to_b(observe(sb, "--last", "1000", "--protocol", "tcp"), ips["b"])
    assert {f["node_name"] for f in flows} == {NODES[1], NODES[2]}
    times = [f["time"] for f in observe(sb, "--last", "1000")]
    assert times == sorted(times)
    only_1 = observe(sb, "--last", "1000", "--node-name", NODES[1])
    assert only_1
    assert {f["node_name"] for f in only_1} == {NODES[1]}
    assert tcp_a_to_b(only_1, ips["b"])
    compact = sb.velvet("observe", "--last", "1000", "--print-node-name", "--node-name", NODES[2],
                        "--from-pod", "obs/a", "--protocol", "tcp").stdout.splitlines()
    assert compact
    assert all(f" [{NODES[2]}]: obs/a:" in line for line in compact)


def test_legacy_host_routing_leaves_forwarding_to_the_ip_stack(sb: Sandbox, ips: dict[str, str]) -> None:
    """Test that with `--host-routing legacy` every node says so in `velvet status`, and that a's
    connections to b (nodes 1 and 2) are forwarded by both nodes' IP stacks (Ip ForwDatagrams grows by
    at least a packet per connection and direction): the counter the BPF mode leaves unchanged."""
    for k in range(3):
        host_routing = on_node_json(sb, k, "status")["agent"]["host_routing"]
        assert host_routing == {"mode": "Legacy", "requested": "legacy"}
        assert "Host Routing:  Legacy" in on_node(sb, k, "status").stdout.splitlines()
    before = [forwarded_datagrams(sb, k) for k in (1, 2)]
    for _ in range(5):
        assert sb.query("obs/a", f"tcp://{ips['b']}:8080") is not None
    grown = [forwarded_datagrams(sb, k) - was for k, was in zip((1, 2), before, strict=True)]
    assert min(grown) >= 5 * 2, grown


def _lines(process: subprocess.Popen[str], into: queue.Queue[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        into.put(line)


def test_follow_sees_a_new_flow_made_on_node_2(sb: Sandbox, ips: dict[str, str]) -> None:
    """Test that `observe --follow` (against node 0) prints a flow node 2 sees after it started."""
    follower = subprocess.Popen(sb.argv("observe", "--follow", "-o", "json", "--node-name", NODES[2],
                                        "--to-pod", "obs/b", "--protocol", "tcp"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(follower, lines), daemon=True).start()
    try:
        started = time.time_ns()
        seen: dict[str, Any] | None = None
        deadline = time.monotonic() + 20
        while seen is None and time.monotonic() < deadline:  # until the follower's streams are up
            sb.query("obs/z", f"tcp://{ips['b']}:8080")
            try:
                seen = json.loads(lines.get(timeout=1.0))
            except queue.Empty:
                continue
        assert seen is not None, "no flow followed within 20 s"
        assert seen["node_name"] == NODES[2]
        assert seen["destination"]["pod_name"] == "b"
        assert seen["time"] >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started // 10**9))
    finally:
        follower.terminate()
        follower.wait(timeout=10)
    assert follower.stderr is not None
    assert follower.stderr.read() == ""


def test_node_option_answers_from_that_node(sb: Sandbox) -> None:
    """Test that `velvet --node velvet-node-2 status|service list|bpf lb list|endpoint list` answer from
    node 2: its name, its own NodePort frontend address, its own endpoint."""
    assert sb.json("--node", NODES[2], "status")["agent"]["node"] == NODES[2]
    assert sb.json("status")["agent"]["node"] == NODES[0]
    frontends = {s["frontend"].split(":")[0] for s in sb.json("--node", NODES[2], "service", "list")
                 if s["type"] == "NodePort"}
    assert NODE_IPS[2] in frontends
    assert NODE_IPS[0] not in frontends
    lb = sb.velvet("--node", NODES[2], "bpf", "lb", "list").stdout
    assert f"address={NODE_IPS[2]} " in lb  # the reverse NAT entry of its own NodePort address
    assert f"address={NODE_IPS[0]} " not in lb
    assert [e["pod"] for e in sb.json("--node", NODES[2], "endpoint", "list")] == ["obs/b"]
    unknown = sb.velvet("--node", "velvet-node-9", "service", "list", check=False)
    assert unknown.returncode == 1
    assert unknown.stderr.splitlines() == [
        f"Error: --node velvet-node-9: no such node is registered (nodes: {', '.join(NODES)})"]


def health(sb: Sandbox) -> list[dict[str, Any]]:
    """The health rows of node 0's `velvet status -o json`."""
    rows: list[dict[str, Any]] = sb.json("status")["cluster"]["health"]
    return rows


def all_reachable(rows: list[dict[str, Any]]) -> bool:
    """Every node and its pod probed and reachable."""
    return all((r["node"] or {}).get("reachable") and (r["pod"]["probe"] or {}).get("reachable")
               for r in rows)


def test_status_shows_the_cluster_with_health_probes(sb: Sandbox, ips: dict[str, str]) -> None:
    """Test that `velvet status` lists the three nodes, the store, the routing mode, and every node and one
    pod per node reachable with a latency (on node 0, and on node 2 through --node)."""
    eventually("every health probe reachable", lambda: len(health(sb)) == 3 and all_reachable(health(sb)))
    rows = {r["name"]: r for r in health(sb)}
    assert list(rows) == list(NODES)
    for k, name in enumerate(NODES):
        assert rows[name]["ip"] == NODE_IPS[k]
        assert rows[name]["node"]["latency_ms"] > 0
        assert rows[name]["pod"]["probe"]["latency_ms"] > 0
        assert rows[name]["pod"]["ip"].startswith(f"10.244.{k}.")
    status = sb.json("status")
    assert status["cluster"]["routing"] == "native"
    assert [n["name"] for n in status["cluster"]["nodes"]] == list(NODES)
    assert status["store"]["kind"] == "etcd"
    assert status["store"]["connected"] is True
    text = sb.velvet("status").stdout
    assert "Routing:       native" in text
    assert "Cluster:       3 nodes; health: 3/3 nodes and 3/3 pods reachable" in text
    assert "Store:         etcd http://192.168.77.250:2379  connected" in text
    eventually("node 2's own probes reachable", lambda: all_reachable(
        sb.json("--node", NODES[2], "status")["cluster"]["health"]))


def test_a_removed_node_leaves_status(sb: Sandbox) -> None:
    """Test that after `sandbox remove-node velvet-node-2`, status lists two nodes and --node refuses it."""
    sb.velvet("sandbox", "remove-node", NODES[2])
    eventually("node 2 gone from status", lambda: [n["name"] for n in sb.json("status")["cluster"]["nodes"]]
               == list(NODES[:2]), timeout=10)
    eventually("node 2 gone from the health probes",
               lambda: [r["name"] for r in health(sb)] == list(NODES[:2]), timeout=10)
    assert sb.velvet("--node", NODES[2], "status", check=False).returncode == 1
    assert {f["node_name"] for f in observe(sb, "--last", "1000")} <= set(NODES[:2])
