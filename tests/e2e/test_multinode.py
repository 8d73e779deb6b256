"""Test a three-node sandbox on one etcd with native routing, through the CLI as a user drives it.

One sandbox (`sandbox up --nodes 3`) for the story, torn down whatever happens: nodes registered in
etcd, pods spread over the nodes, pod-to-pod TCP and UDP between nodes, a ClusterIP Service whose only
backend is on another node, and a removed node's routes gone from the others. A second sandbox
shows that `sandbox down` leaves nothing of any node.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
from harness import Sandbox, echo_pod, namespace, sandbox

from velvet.paths import BPFFS_ROOT, RUN_ROOT, STATE_ROOT
from velvet.sandbox.cleanup import find_leftovers, read_pid
from velvet.sandbox.naming import SandboxNames, node_config
from velvet.sandbox.process import alive
from velvet.system.netns import NETNS_RUN_DIR

pytestmark = pytest.mark.privileged

NODES = ("velvet-node", "velvet-node-1", "velvet-node-2")
FAR_SERVICE = """apiVersion: v1
kind: Service
metadata: {name: far, namespace: mn}
spec:
  selector: {app: far}
  ports: [{name: tcp, port: 80, targetPort: 8080}, {name: udp, port: 53, targetPort: 8081, protocol: UDP}]
"""
PINNED = """apiVersion: v1
kind: Pod
metadata: {name: pinned, namespace: mn, labels: {app: pinned}}
spec:
  nodeName: velvet-node-1
  terminationGracePeriodSeconds: 1
  containers:
  - name: sleep
    command: [python3, -c, "import time; time.sleep(3600)"]
"""


def manifests() -> str:
    """The namespace, three echo pods (spread by the scheduler) and a pod pinned by spec.nodeName."""
    pods = [echo_pod("mn", f"echo-{i}", {"app": "far" if i == 2 else "near"}) for i in range(3)]
    return "\n---\n".join(doc.strip() for doc in (namespace("mn"), *pods, PINNED))


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    """A three-node sandbox with the echo pods ready."""
    with sandbox("mn", "--nodes", "3") as box:
        box.apply(manifests())
        box.apply(FAR_SERVICE)
        box.wait_ready([f"mn/echo-{i}" for i in range(3)])
        yield box


def velvet_routes(sb: Sandbox, node: int) -> dict[str, str]:
    """Velvet's routes (proto 198) in node `node`'s namespace: destination -> gateway."""
    out = subprocess.run(["ip", "netns", "exec", node_config(sb.name, node).names.node_netns,
                          "ip", "route", "show", "proto", "198"], capture_output=True, text=True, check=True)
    return {fields[0]: fields[2] for line in out.stdout.splitlines() if (fields := line.split())}


def pods_by_name(sb: Sandbox) -> dict[str, dict[str, str]]:
    """Each pod's node and IP."""
    return {p["metadata"]["name"]: {"node": p["spec"]["nodeName"], "ip": p["status"].get("podIP", "")}
            for p in sb.pods("mn")}


def test_nodes_are_registered_with_their_pod_cidrs(sb: Sandbox) -> None:
    """Test that `get nodes -o json` lists the three nodes as v1 Nodes with podCIDR and InternalIP."""
    nodes = sb.json("get", "nodes")["items"]
    seen = {n["metadata"]["name"]: (n["spec"]["podCIDR"], n["spec"]["podCIDRs"],
                                    [a["address"] for a in n["status"]["addresses"]
                                     if a["type"] == "InternalIP"])
            for n in nodes}
    assert seen == {
        "velvet-node": ("10.244.0.0/24", ["10.244.0.0/24"], ["192.168.77.2"]),
        "velvet-node-1": ("10.244.1.0/24", ["10.244.1.0/24"], ["192.168.77.3"]),
        "velvet-node-2": ("10.244.2.0/24", ["10.244.2.0/24"], ["192.168.77.4"]),
    }
    assert all(n["kind"] == "Node" and n["apiVersion"] == "v1" for n in nodes)
    table = sb.velvet("get", "nodes").stdout.splitlines()
    assert table[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert [line.split()[:2] for line in table[1:]] == [[n, "Ready"] for n in NODES]


def test_every_node_routes_the_others_pod_cidrs(sb: Sandbox) -> None:
    """Test that each node has a route to every other node's pod CIDR via its IP, and none to its own."""
    for k in range(3):
        want = {f"10.244.{j}.0/24": f"192.168.77.{2 + j}" for j in range(3) if j != k}
        assert velvet_routes(sb, k) == want


def test_pods_are_spread_and_node_name_is_honoured(sb: Sandbox) -> None:
    """Test that pods without spec.nodeName land one per node, each in its node's pod CIDR, and a pod
    naming its node runs there."""
    pods = pods_by_name(sb)
    assert sorted(pods[f"echo-{i}"]["node"] for i in range(3)) == sorted(NODES)
    for i in range(3):
        node = NODES.index(pods[f"echo-{i}"]["node"])
        assert pods[f"echo-{i}"]["ip"].startswith(f"10.244.{node}.")
    assert pods["pinned"]["node"] == "velvet-node-1"


def test_pods_talk_tcp_and_udp_across_nodes(sb: Sandbox) -> None:
    """Test that every echo pod reaches the others (on other nodes) over TCP and UDP, and that the
    server sees the client's own pod IP (routed, not translated)."""
    pods = pods_by_name(sb)
    for i in range(3):
        for j in range(3):
            if i == j:
                continue
            for url in (f"tcp://{pods[f'echo-{j}']['ip']}:8080", f"udp://{pods[f'echo-{j}']['ip']}:8081"):
                reply = sb.query(f"mn/echo-{i}", url)
                assert reply is not None, f"echo-{i} on {pods[f'echo-{i}']['node']} -> {url}"
                name, source = reply.split()
                assert name == f"echo-{j}"
                assert source.split(":")[0] == pods[f"echo-{i}"]["ip"]


def test_cluster_ip_reaches_a_backend_on_another_node(sb: Sandbox) -> None:
    """Test that a ClusterIP Service whose only backend runs on another node answers over TCP and UDP
    from pods on both other nodes."""
    far = sb.json("get", "services", "far", "-n", "mn")
    vip = (far["items"][0] if "items" in far else far)["spec"]["clusterIP"]
    for client in ("echo-0", "echo-1"):
        for url in (f"tcp://{vip}:80", f"udp://{vip}:53"):
            reply = sb.query(f"mn/{client}", url)
            assert reply is not None, f"{client} -> {url}"
            assert reply.split()[0] == "echo-2"


def test_removed_node_leaves_the_others_routes(sb: Sandbox) -> None:
    """Test that `sandbox remove-node` takes the node out of `get nodes` and out of the other nodes'
    routes within 10 s, and removes its namespace; the others still talk."""
    sb.velvet("sandbox", "remove-node", "velvet-node-2")
    deadline = time.monotonic() + 10
    want = {0: {"10.244.1.0/24": "192.168.77.3"}, 1: {"10.244.0.0/24": "192.168.77.2"}}
    while {k: velvet_routes(sb, k) for k in (0, 1)} != want:
        assert time.monotonic() < deadline, {k: velvet_routes(sb, k) for k in (0, 1)}
        time.sleep(0.1)
    assert [n["metadata"]["name"] for n in sb.json("get", "nodes")["items"]] == list(NODES[:2])
    assert not (NETNS_RUN_DIR / node_config(sb.name, 2).names.node_netns).exists()
    pods = pods_by_name(sb)
    assert sb.query("mn/echo-0", f"tcp://{pods['echo-1']['ip']}:8080") is not None


def test_sandbox_down_leaves_nothing_of_any_node() -> None:
    """Test that `sandbox down` of a three-node sandbox with pods stops etcd (by its pid) and removes
    every namespace, cgroup, pin, state and runtime directory of every node."""
    with sandbox("mnd", "--nodes", "3") as box:
        box.apply(manifests())
        box.wait_ready([f"mn/echo-{i}" for i in range(3)])
        names = SandboxNames(box.name)
        etcd_pid = read_pid(names.pid_file("etcd"))
        assert etcd_pid is not None
        assert alive(etcd_pid)
    assert not alive(etcd_pid)
    assert find_leftovers(box.name).empty
    assert not any(p.name.startswith(f"velvet-{box.name}-") for p in NETNS_RUN_DIR.iterdir())
    for root in (BPFFS_ROOT, RUN_ROOT, STATE_ROOT):
        assert not (root / box.name).exists()
