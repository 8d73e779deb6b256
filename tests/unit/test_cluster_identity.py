"""Tests of cluster-numbered identities: the allocator's seam and the compiler on two nodes of one cluster."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from netpol_reference import make_namespace, make_pod, make_policy, sel

from velvet.control.identity import IdentityAllocator
from velvet.control.policy import PolicyCompiler
from velvet.control.policy_lookup import trace
from velvet.errors import VelvetError
from velvet.model import FIRST_ALLOCATED_IDENTITY, NetworkPolicyPeer, NetworkPolicyRule, ReservedIdentity

NAMESPACES = [make_namespace("shop")]
A_ONE = make_pod("shop", "a-1", "10.244.0.5", {"app": "a"})
B_ONE = make_pod("shop", "b-1", "10.244.0.6", {"app": "b"})
A_TWO = make_pod("shop", "a-2", "10.244.1.5", {"app": "a"})
WEB = make_pod("shop", "web", "10.244.1.9", {"app": "web"})
NODE_ONE_PODS, NODE_TWO_PODS = [A_ONE, B_ONE], [A_TWO, WEB]
ALL_PODS = [*NODE_ONE_PODS, *NODE_TWO_PODS]


class Cluster:
    """An in-memory cluster numbering (what etcd does, minus etcd): one number per label set."""

    def __init__(self, first: int = FIRST_ALLOCATED_IDENTITY) -> None:
        self.numbers: dict[tuple[tuple[str, str], ...], int] = {}
        self.users: dict[int, int] = {}
        self.next = first
        self.calls: list[str] = []
        self.down = False

    def node(self) -> Node:
        """One node's view of the cluster."""
        return Node(self)


class Node:
    """A node's `ClusterNumbers`: counts its own users of each number in the cluster."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def allocate(self, labels: Mapping[str, str]) -> int:
        """The cluster's number for `labels`."""
        if self.cluster.down:
            raise VelvetError("etcd at http://192.0.2.1:2379 does not answer: timed out")
        key = tuple(sorted(labels.items()))
        number = self.cluster.numbers.setdefault(key, self.cluster.next)
        if number == self.cluster.next:
            self.cluster.next += 1
        self.cluster.users[number] = self.cluster.users.get(number, 0) + 1
        self.cluster.calls.append(f"allocate {number}")
        return number

    def release(self, labels: Mapping[str, str], number: int) -> None:
        """One user fewer."""
        self.cluster.users[number] -= 1
        self.cluster.calls.append(f"release {number}")


def test_label_identities_take_the_clusters_number_and_tell_it_only_first_and_last() -> None:
    """Test that with a cluster source the allocator uses its numbers, asks it once per label set and
    tells it when the last local reference goes; CIDR identities stay local."""
    cluster = Cluster(first=300)
    allocator = IdentityAllocator(cluster.node())
    web = allocator.acquire({"k8s:app": "web"})
    assert web.id == 300
    assert allocator.acquire({"k8s:app": "web"}) is web
    assert allocator.acquire({"k8s:app": "db"}).id == 301
    assert not allocator.release({"k8s:app": "web"})
    assert allocator.release({"k8s:app": "web"})
    assert cluster.calls == ["allocate 300", "allocate 301", "release 300"]
    assert allocator.lookup(300) is None
    assert allocator.allocate_cidr("10.0.0.0/8").id >= 1 << 24
    assert cluster.calls == ["allocate 300", "allocate 301", "release 300"]


def test_a_number_the_cluster_gives_twice_is_refused_and_handed_back() -> None:
    """Test that a cluster number already held here for other labels is an error that holds nothing."""
    class Broken:
        def __init__(self) -> None:
            self.released: list[int] = []

        def allocate(self, labels: Mapping[str, str]) -> int:
            return 400

        def release(self, labels: Mapping[str, str], number: int) -> None:
            self.released.append(number)

    broken = Broken()
    allocator = IdentityAllocator(broken)
    allocator.acquire({"k8s:app": "web"})
    with pytest.raises(VelvetError, match="identity 400"):
        allocator.acquire({"k8s:app": "db"})
    assert broken.released == [400]
    assert allocator.lookup_labels({"k8s:app": "db"}) is None
    assert [i.id for i in allocator.all() if i.id >= FIRST_ALLOCATED_IDENTITY] == [400]


def _node_compiler(cluster: Cluster, remote_node_ip: str) -> PolicyCompiler:
    """A node's compiler on the cluster's numbering, synced with every pod of the cluster."""
    compiler = PolicyCompiler(IdentityAllocator(cluster.node()))
    policy = make_policy("shop", "from-a", sel(app="web"), ingress=[
        NetworkPolicyRule(peers=(NetworkPolicyPeer(pod_selector=sel(app="a")),))])
    compiler.sync(NAMESPACES, ALL_PODS, [policy], host_ips=["10.244.9.1"], remote_node_ips=[remote_node_ip])
    return compiler


def test_two_nodes_see_every_pod_with_the_same_identity_and_policy_selects_remote_peers() -> None:
    """Test that two nodes' compilers on one cluster numbering put every pod, local or remote, in the
    ipcache with the same number, the other node's IP as remote-node, and that a policy allowing app=a
    on node two admits a on node one and denies b on node one."""
    cluster = Cluster()
    one, two = _node_compiler(cluster, "192.168.77.3"), _node_compiler(cluster, "192.168.77.2")
    first = one.compile({p.metadata.key: i + 1 for i, p in enumerate(NODE_ONE_PODS)})
    second = two.compile({p.metadata.key: i + 1 for i, p in enumerate(NODE_TWO_PODS)})
    pods = {f"{p.status.pod_ip}/32" for p in ALL_PODS}
    assert {k: v for k, v in first.ipcache.items() if k in pods} == \
        {k: v for k, v in second.ipcache.items() if k in pods}
    assert first.ipcache["10.244.0.5/32"] == first.ipcache["10.244.1.5/32"]  # app=a on both nodes
    assert first.ipcache["192.168.77.3/32"] == int(ReservedIdentity.REMOTE_NODE)
    assert second.ipcache["192.168.77.2/32"] == int(ReservedIdentity.REMOTE_NODE)
    assert first.ipcache["10.244.9.1/32"] == int(ReservedIdentity.HOST)
    assert trace(second, A_ONE, WEB, 80, "TCP").allowed
    assert not trace(second, B_ONE, WEB, 80, "TCP").allowed
    assert trace(second, A_TWO, WEB, 80, "TCP").allowed


def test_an_unreachable_cluster_fails_the_sync_and_keeps_the_previous_state() -> None:
    """Test that when the cluster cannot be asked for a new pod's identity, `sync` raises, hands back
    what it took in that pass, and the compiler still compiles the previous pods with their numbers."""
    cluster = Cluster()
    compiler = PolicyCompiler(IdentityAllocator(cluster.node()))
    compiler.sync(NAMESPACES, [A_ONE], [])
    before = compiler.compile({A_ONE.metadata.key: 1})
    cluster.down = True
    with pytest.raises(VelvetError, match="does not answer"):
        compiler.sync(NAMESPACES, [A_ONE, B_ONE, WEB], [])
    assert compiler.compile({A_ONE.metadata.key: 1}) == before
    assert sum(cluster.users.values()) == 1
    cluster.down = False
    compiler.sync(NAMESPACES, [B_ONE], [])
    assert cluster.users == {FIRST_ALLOCATED_IDENTITY: 0, FIRST_ALLOCATED_IDENTITY + 1: 1}
