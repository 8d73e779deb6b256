"""Test tunnel mode's control plane without privileges: which node the ipcache names for an address,
the routes through the VXLAN device, and an agent in tunnel mode on the in-memory datapath."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from test_nodes import DictRoutes, node

from velvet.agent import queries
from velvet.agent.config import AgentConfig
from velvet.agent.node import Agent
from velvet.cli.status import render
from velvet.control.tunnel import tunnel_endpoint, with_tunnel_endpoints
from velvet.controllers.nodes import NodeRouteController
from velvet.datapath.fake import FakeDatapath
from velvet.datapath.tables import RemoteIdentity
from velvet.model import Pod
from velvet.model.codec import from_dict
from velvet.model.identity import ReservedIdentity
from velvet.model.pod import PodStatus

NODE_IPS = {"velvet-node": "192.168.77.2", "velvet-node-1": "192.168.77.3"}


def pod(name: str, node_name: str, ip: str, *, host_network: bool = False) -> Pod:
    """A running pod on a node."""
    obj = from_dict({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "t"},
                     "spec": {"nodeName": node_name, "hostNetwork": host_network,
                              "containers": [{"name": "c", "command": ["sleep", "1"]}]}})
    assert isinstance(obj, Pod)
    return dataclasses.replace(obj, status=PodStatus(phase="Running", pod_ip=ip))


class RecordingTunnel:
    """A `TunnelDevice` that only counts how often it was ensured."""

    name = "velvet_vxlan"

    def __init__(self) -> None:
        self.ensured = 0

    def ensure(self) -> int:
        self.ensured += 1
        return 42


def test_tunnel_endpoint_is_the_pods_node_ip() -> None:
    """Test that a pod on another registered node is tunnelled to that node's IP, and that this node's
    pods, unscheduled pods and pods of unknown nodes have no endpoint."""
    assert tunnel_endpoint("velvet-node-1", "velvet-node", NODE_IPS) == "192.168.77.3"
    assert tunnel_endpoint("velvet-node", "velvet-node", NODE_IPS) is None
    assert tunnel_endpoint(None, "velvet-node", NODE_IPS) is None
    assert tunnel_endpoint("velvet-node-9", "velvet-node", NODE_IPS) is None


def test_ipcache_carries_remote_pods_endpoints_and_in_tunnel_mode_the_pod_cidrs() -> None:
    """Test that remote pods' ipcache values name their node, local pods and node IPs stay plain
    identities (node IPs travel untunnelled), and tunnel mode adds the other nodes' pod CIDRs as WORLD."""
    ipcache = {"10.244.0.10/32": 256, "10.244.1.10/32": 257, "192.168.77.3/32": 6, "192.168.77.2/32": 1}
    placement = {"10.244.0.10": "velvet-node", "10.244.1.10": "velvet-node-1"}  # pod IP -> its node
    nodes = [node(0), node(1)]
    native = with_tunnel_endpoints(ipcache, placement, nodes, "velvet-node", pod_cidrs=False)
    assert native == {**ipcache, "10.244.1.10/32": RemoteIdentity(257, "192.168.77.3")}
    tunnel = with_tunnel_endpoints(ipcache, placement, nodes, "velvet-node", pod_cidrs=True)
    assert tunnel == {**native, "10.244.1.0/24": RemoteIdentity(int(ReservedIdentity.WORLD), "192.168.77.3")}


def test_tunnel_routes_go_through_the_device_and_replace_native_ones() -> None:
    """Test that in tunnel mode every other node's pod CIDR is routed through the VXLAN device, and that
    routes an agent left in native mode are re-pointed (a restart that changed the mode)."""
    table = DictRoutes({"10.244.1.0/24": "192.168.77.3"})
    routes = NodeRouteController(table, "velvet-node", "10.244.0.0/24", "velvet_vxlan")
    assert routes.reconcile([node(0), node(1), node(2)]) == (["10.244.1.0/24", "10.244.2.0/24"], [])
    assert table.routes == {"10.244.1.0/24": "velvet_vxlan", "10.244.2.0/24": "velvet_vxlan"}


def test_one_node_in_tunnel_mode_makes_its_device_and_says_so(tmp_path: Path) -> None:
    """Test that an agent in tunnel mode with no peers ensures its VXLAN device before the datapath
    starts, and that `velvet status` names the mode, device, port and what the VNI carries."""
    tunnel = RecordingTunnel()
    config = AgentConfig(sandbox="unit", node_ips=("192.168.77.2",), state_dir=tmp_path, routing="tunnel")
    agent = Agent(config, FakeDatapath(), routes=DictRoutes(), tunnel=tunnel)
    agent.start()
    assert tunnel.ensured == 1
    status = queries.status(agent)
    assert status["agent"]["routing"] == {"mode": "tunnel", "device": "velvet_vxlan", "protocol": "vxlan",
                                          "port": 8472, "vni": "source identity"}
    status["flows"] = {}
    assert "Routing:       tunnel (vxlan velvet_vxlan, UDP 8472, VNI = source identity)" in render(status)
    native = Agent(AgentConfig(sandbox="unit", state_dir=tmp_path / "n"), FakeDatapath(), routes=DictRoutes())
    assert native.tunnel is None
    assert queries.status(native)["agent"]["routing"] == {"mode": "native"}
