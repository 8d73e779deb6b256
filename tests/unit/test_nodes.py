"""Test the pieces of a multi-node sandbox that need no privileges: names and addresses per node, the
route controller's difference, scheduling of pods without spec.nodeName, node records and the CLI's
refusals."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from velvet.controllers.nodes import NodeRouteController
from velvet.model import Pod
from velvet.model.codec import from_dict
from velvet.model.node import InvalidNode, NodeRecord
from velvet.paths import BPFFS_ROOT, RUN_ROOT, STATE_ROOT, AgentPaths
from velvet.sandbox.naming import NETNS_RE, SandboxConfig, SandboxNames, node_config, node_index
from velvet.sources.local import ALL_NAMESPACES, LocalStore


class DictRoutes:
    """A `RouteTable` in memory that counts the changes asked of it."""

    def __init__(self, routes: Mapping[str, str] | None = None) -> None:
        self.routes = dict(routes or {})
        self.changes = 0

    def owned(self) -> Mapping[str, str]:
        return dict(self.routes)

    def replace(self, cidr: str, gateway: str) -> None:
        self.routes[cidr] = gateway
        self.changes += 1

    def delete(self, cidr: str) -> None:
        self.routes.pop(cidr, None)
        self.changes += 1


def node(k: int) -> NodeRecord:
    cfg = node_config("t", k)
    return NodeRecord(cfg.node_name, cfg.node_uplink_ip, cfg.pod_cidr)


def test_node_zero_keeps_the_one_node_names_and_addresses() -> None:
    """Test that node 0 of a cluster is exactly today's one-node sandbox (names, paths, addresses)."""
    assert node_config("t", 0) == SandboxConfig("t")
    names = SandboxNames("t")
    assert (names.node_netns, names.pin_dir, names.state_dir, names.run_dir, names.cgroup_node.name) == (
        "velvet-t-node", BPFFS_ROOT / "t", STATE_ROOT / "t", RUN_ROOT / "t", "node")
    assert names.pod("a", "b").netns.startswith("velvet-t-p-")


def test_node_k_has_its_own_cidr_address_and_nested_directories() -> None:
    """Test that node k gets 10.244.k.0/24, 192.168.77.(2+k), and directories below the sandbox's."""
    cfg = node_config("t", 3)
    assert (cfg.node_name, cfg.pod_cidr, cfg.pod_gateway, cfg.node_uplink_ip) == (
        "velvet-node-3", "10.244.3.0/24", "10.244.3.1", "192.168.77.5")
    names = cfg.names
    assert names.node_netns == "velvet-t-node3"
    assert names.pin_dir == BPFFS_ROOT / "t" / "node3"
    assert names.state_dir == STATE_ROOT / "t" / "node3"
    assert names.agent_socket == RUN_ROOT / "t" / "node3" / "agent.sock"
    assert names.cgroup_node.name == "node3"
    assert names.pod("a", "b").netns.startswith("velvet-t-p3-")
    for netns in ("velvet-t-node3", "velvet-t-lan", "velvet-t-etcd", names.pod("a", "b").netns):
        match = NETNS_RE.fullmatch(netns)
        assert match is not None
        assert match["sandbox"] == "t"
    assert [node_index(node_config("t", k).node_name) for k in range(8)] == list(range(8))
    assert [node_index(n) for n in ("velvet-node-0", "velvet-node-8", "velvet-node-01", "x")] == [None] * 4


def test_node_directory_must_be_a_node_name() -> None:
    """Test that a node directory that could climb out of the sandbox's is refused."""
    with pytest.raises(Exception, match="node1 .. node7"):
        AgentPaths("t", "../x")


def test_routes_follow_the_registered_nodes_and_change_only_the_difference() -> None:
    """Test that node 0 routes every other node's CIDR via its IP, re-points a moved node, drops a node
    that left, and leaves its table alone when nothing changed."""
    table = DictRoutes({"10.244.7.0/24": "192.168.77.9"})  # a node that left while no agent ran
    routes = NodeRouteController(table, "velvet-node", "10.244.0.0/24")
    assert routes.reconcile([node(0), node(1), node(2)]) == (["10.244.1.0/24", "10.244.2.0/24"],
                                                             ["10.244.7.0/24"])
    assert table.routes == {"10.244.1.0/24": "192.168.77.3", "10.244.2.0/24": "192.168.77.4"}
    changes = table.changes
    assert routes.reconcile([node(2), node(1), node(0)]) == ([], [])
    assert table.changes == changes
    moved = NodeRecord("velvet-node-2", "192.168.77.40", "10.244.2.0/24")
    assert routes.reconcile([node(0), node(1), moved]) == (["10.244.2.0/24"], [])
    assert routes.reconcile([node(0), node(1)]) == ([], ["10.244.2.0/24"])
    assert table.routes == {"10.244.1.0/24": "192.168.77.3"}


def test_a_node_overlapping_this_nodes_pods_gets_no_route() -> None:
    """Test that a node claiming this node's pod CIDR (or a supernet of it) is left out."""
    table = DictRoutes()
    routes = NodeRouteController(table, "velvet-node", "10.244.0.0/24")
    rogue = NodeRecord("rogue", "192.168.77.66", "10.244.0.0/16")
    routes.reconcile([node(0), node(1), rogue])
    assert table.routes == {"10.244.1.0/24": "192.168.77.3"}


def test_node_records_decode_or_fail_in_one_line() -> None:
    """Test that a node record round-trips, prints as a v1 Node, and a bad one is one InvalidNode line."""
    record = NodeRecord("velvet-node-1", "192.168.77.3", "10.244.1.0/24", "2025-01-01T00:00:00Z")
    assert NodeRecord.decode(record.encode(), "k") == record
    v1 = record.to_v1()
    assert v1["spec"]["podCIDR"] == "10.244.1.0/24"
    assert v1["spec"]["podCIDRs"] == ["10.244.1.0/24"]
    assert {"type": "InternalIP", "address": "192.168.77.3"} in v1["status"]["addresses"]
    for raw in (b"{", b'{"name": "n"}', b'{"name": "n", "internalIP": "x", "podCIDR": "10.0.0.0/24"}'):
        with pytest.raises(InvalidNode) as err:
            NodeRecord.decode(raw, "/velvet/nodes/n")
        assert "\n" not in str(err.value)


def pod(name: str, node_name: str = "") -> Pod:
    spec: dict[str, object] = {"containers": [{"name": "c"}]}
    if node_name:
        spec["nodeName"] = node_name
    obj = from_dict({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
                     "spec": spec})
    assert isinstance(obj, Pod)
    return obj


def placement(store: LocalStore) -> dict[str, str]:
    pods = store.get("pods", ALL_NAMESPACES)
    return {p.metadata.name: p.spec.node_name for p in pods if isinstance(p, Pod)}


def test_pods_without_a_node_go_to_the_node_with_fewest_pods(tmp_path: Path) -> None:
    """Test that pods without spec.nodeName are spread (fewest pods, ties by name, pods of the same apply
    counted), a pod naming its node stays there, and with one node everything goes to it."""
    store = LocalStore.open(tmp_path / "one", node_name="velvet-node")
    store.apply([pod("solo")])
    assert placement(store) == {"solo": "velvet-node"}

    store = LocalStore.open(tmp_path / "many", node_name="velvet-node")
    store.nodes = lambda: ["velvet-node-2", "velvet-node", "velvet-node-1"]
    store.apply([pod("pinned", "velvet-node"), pod("a"), pod("b"), pod("c")])
    assert placement(store) == {"pinned": "velvet-node", "a": "velvet-node-1", "b": "velvet-node-2",
                                "c": "velvet-node"}
    store.apply([pod("d"), pod("e")])
    assert placement(store)["d"] == "velvet-node-1"
    assert placement(store)["e"] == "velvet-node-2"


def test_sandbox_up_refuses_unknown_routing_and_too_many_nodes_in_one_line() -> None:
    """Test that `--routing` other than native|tunnel and `--nodes 9` are refused in one line, and
    nothing of the sandbox is made."""
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "velvet.cli.main", "--sandbox", "nodesrefused", "sandbox", "up", *args]
        return subprocess.run(argv, capture_output=True, text=True, check=False)

    for args in (("--nodes", "9"), ("--nodes", "0")):
        done = run(*args)
        assert done.returncode == 2
        assert "a sandbox has 1 to 8 nodes" in done.stderr
    done = run("--nodes", "3", "--routing", "geneve")
    assert done.returncode == 2
    assert "invalid choice: 'geneve' (choose from 'native', 'tunnel')" in done.stderr
    assert not (STATE_ROOT / "nodesrefused").exists()
    assert not (RUN_ROOT / "nodesrefused").exists()
