"""Test the health probes (cilium-health's view) without privileges: which pod each node's probe aims at,
TCP probes against a real listener on loopback, the report `velvet status` shows, and how it renders.
The ICMP probe of pods needs a raw socket: tests/e2e/test_multinode_observe.py shows it on real pods."""

from __future__ import annotations

import socket
from dataclasses import replace
from typing import Any

from velvet.agent.health import HealthProber, Target, choose_targets, probe_tcp
from velvet.cli.status import cluster_lines
from velvet.model import NetworkPolicy, Pod
from velvet.model.codec import from_dict
from velvet.model.node import NodeRecord
from velvet.model.pod import PodStatus

NODES = [NodeRecord("velvet-node", "192.168.77.2", "10.244.0.0/24"),
         NodeRecord("velvet-node-1", "192.168.77.3", "10.244.1.0/24"),
         NodeRecord("velvet-node-2", "192.168.77.4", "10.244.2.0/24")]


def pod(name: str, node: str, ip: str, app: str, phase: str = "Running") -> Pod:
    """A pod of namespace `ns` on `node` with label app=`app`."""
    obj = from_dict({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": name, "namespace": "ns", "labels": {"app": app}},
                     "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}})
    assert isinstance(obj, Pod)
    return replace(obj, status=PodStatus(phase=phase, pod_ip=ip))


def isolating(app: str, types: list[str]) -> NetworkPolicy:
    """A NetworkPolicy of namespace `ns` selecting app=`app` with these policyTypes and no rules."""
    obj = from_dict({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                     "metadata": {"name": f"iso-{app}", "namespace": "ns"},
                     "spec": {"podSelector": {"matchLabels": {"app": app}}, "policyTypes": types}})
    assert isinstance(obj, NetworkPolicy)
    return obj


def test_each_node_gets_a_running_pod_no_policy_isolates_for_ingress() -> None:
    """Test the pod chosen per node: running, not isolated for ingress (egress isolation is fine)."""
    pods = [pod("a", "velvet-node", "10.244.0.5", "locked"), pod("b", "velvet-node", "10.244.0.6", "open"),
            pod("c", "velvet-node-1", "10.244.1.5", "locked"), pod("d", "velvet-node-1", "10.244.1.6", "out"),
            pod("e", "velvet-node-2", "10.244.2.5", "locked"),
            pod("f", "velvet-node-2", "10.244.2.6", "open", phase="Pending")]
    policies = [isolating("locked", ["Ingress"]), isolating("out", ["Egress"])]
    targets = choose_targets(NODES, pods, policies)
    assert targets == [
        Target("velvet-node", "192.168.77.2", "ns/b", "10.244.0.6"),
        Target("velvet-node-1", "192.168.77.3", "ns/d", "10.244.1.6"),
        Target("velvet-node-2", "192.168.77.4",
               why="every running pod is isolated for ingress by a NetworkPolicy")]
    assert choose_targets(NODES[:1], [], [])[0].why == "no running pod"


def test_tcp_probes_measure_reachable_nodes_and_name_the_error_of_others() -> None:
    """Test a round of probes: a listening node is reachable with a latency, a closed port is not."""
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    prober = HealthProber("127.0.0.1", port=0, timeout=2.0)
    prober.listen()
    try:
        prober.aim([Target("up", "127.0.0.1"), Target("gone", "127.0.0.2", why="no running pod")])
        assert [row["node"] for row in prober.report()] == [None, None]  # before the first round
        prober.probe_once()
        report = {row["name"]: row for row in prober.report()}
    finally:
        prober.close()
    assert report["up"]["node"]["reachable"] is True
    assert report["up"]["node"]["latency_ms"] > 0
    assert report["gone"]["node"]["reachable"] is False  # 127.0.0.2 has no listener on that port
    assert report["gone"]["node"]["error"] == "Connection refused"
    assert report["gone"]["pod"] == {"name": "", "ip": "", "probe": None, "why": "no running pod"}
    assert probe_tcp("127.0.0.1", closed_port, 1.0).error == "Connection refused"


def test_a_node_that_left_leaves_the_report() -> None:
    """Test that aiming without a node drops its results."""
    prober = HealthProber("127.0.0.1", port=0)
    prober.listen()
    try:
        prober.aim([Target("a", "127.0.0.1"), Target("b", "127.0.0.1")])
        prober.probe_once()
        prober.aim([Target("a", "127.0.0.1")])
        assert [row["name"] for row in prober.report()] == ["a"]
    finally:
        prober.close()


def probe(ms: float | None, error: str = "") -> dict[str, Any]:
    """A probe as the agent reports it."""
    return {"reachable": ms is not None, "latency_ms": ms, "error": error}


def test_status_shows_nodes_and_probes() -> None:
    """Test the cluster lines of `velvet status`: counts, one row per node with both probes."""
    cluster = {
        "routing": "native",
        "nodes": [{"name": n.name, "internal_ip": n.internal_ip, "pod_cidr": n.pod_cidr, "api": ""}
                  for n in NODES],
        "health": [
            {"name": "velvet-node", "ip": "192.168.77.2", "node": probe(0.0812),
             "pod": {"name": "ns/b", "ip": "10.244.0.6", "probe": probe(0.05)}},
            {"name": "velvet-node-1", "ip": "192.168.77.3", "node": probe(None, "no answer within 1 s"),
             "pod": {"name": "ns/d", "ip": "10.244.1.6", "probe": probe(None, "no echo reply within 1 s")}},
            {"name": "velvet-node-2", "ip": "192.168.77.4", "node": probe(0.2),
             "pod": {"name": "", "ip": "", "probe": None, "why": "no running pod"}}]}
    lines = cluster_lines(cluster)
    assert lines[0] == "Cluster:       3 nodes; health: 2/3 nodes and 1/2 pods reachable"
    assert lines[1].split() == ["NODE", "INTERNAL-IP", "POD-CIDR", "REACHABLE", "LATENCY", "HEALTH", "POD",
                                "POD", "REACHABLE", "POD", "LATENCY"]
    assert lines[2].split() == ["velvet-node", "192.168.77.2", "10.244.0.0/24", "yes", "0.081", "ms",
                                "ns/b", "(10.244.0.6)", "yes", "0.050", "ms"]
    assert "NO: no answer within 1 s" in lines[3]
    assert "NO: no echo reply within 1 s" in lines[3]
    assert "none: no running pod" in lines[4]
