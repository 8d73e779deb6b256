"""Test the cluster's endpoints, node leases and slice derivation on node membership in a real etcd.

Each test starts its own etcd in a namespace of its own (the `etcd` fixture of test_etcd_store);
nodes are `EtcdEndpoints` / `NodeRegistry` objects with their own leases, as agents hold them, and
stores are `LocalStore`s on that etcd, as each agent opens its own.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_etcd_store import URL, Etcd, open_store, wait_until
from test_etcd_store import etcd as etcd  # the fixture, re-exported for this module's tests

from velvet.model import EndpointSlice, Pod, PodCondition, PodStatus
from velvet.model.cluster_endpoint import ClusterEndpoint
from velvet.model.codec import from_dict
from velvet.model.node import NodeRecord
from velvet.sources.etcd_client import EtcdClient, KeyValue
from velvet.sources.etcd_endpoints import ENDPOINTS_PREFIX, EtcdEndpoints
from velvet.sources.etcd_nodes import NODES_PREFIX, NodeRegistry, PredecessorLease
from velvet.sources.local import LocalStore

pytestmark = pytest.mark.privileged


def published() -> dict[str, KeyValue]:
    """Every endpoint key in etcd, by IP."""
    return {kv.key[len(ENDPOINTS_PREFIX):]: kv for kv in EtcdClient(URL).range_prefix(ENDPOINTS_PREFIX)[1]}


def record(ip: str, node: str, identity: int = 300) -> ClusterEndpoint:
    """An endpoint of pod shop/<ip> on `node`."""
    return ClusterEndpoint(ip, identity, node, f"shop/{ip}")


@pytest.fixture
def nodes(etcd: Etcd) -> Iterator[tuple[EtcdEndpoints, EtcdEndpoints, int]]:
    """Nodes a and b publishing and following, each under a lease of its own; a's lease id too."""
    client = EtcdClient(URL)
    made = []
    for name in ("node-a", "node-b"):
        node = EtcdEndpoints(EtcdClient(URL), name)
        node.use_lease(client.grant(30))
        node.start()
        made.append(node)
    yield made[0], made[1], made[0]._lease
    for node in made:
        node.close()


def test_each_node_publishes_its_endpoints_and_follows_everyones(
        nodes: tuple[EtcdEndpoints, EtcdEndpoints, int]) -> None:
    """Test that what each node publishes reaches both views, a change is written as the difference, and
    an endpoint the node no longer has leaves every view."""
    a, b, _ = nodes
    a.publish({"10.244.0.5": record("10.244.0.5", "node-a"), "10.244.0.6": record("10.244.0.6", "node-a")})
    b.publish({"10.244.1.5": record("10.244.1.5", "node-b")})
    every = {"10.244.0.5", "10.244.0.6", "10.244.1.5"}
    wait_until("both views", lambda: set(a.view() or {}) == set(b.view() or {}) == every)
    assert (b.view() or {})["10.244.0.5"] == record("10.244.0.5", "node-a")
    kept = published()["10.244.0.5"].mod_revision
    a.publish({"10.244.0.5": record("10.244.0.5", "node-a"),
               "10.244.0.7": record("10.244.0.7", "node-a", 301)})
    wait_until("b seeing a's change",
               lambda: set(b.view() or {}) == {"10.244.0.5", "10.244.0.7", "10.244.1.5"})
    assert published()["10.244.0.5"].mod_revision == kept  # unchanged: not written again
    assert json.loads(published()["10.244.0.7"].value) == {
        "ip": "10.244.0.7", "identity": 301, "node": "node-a", "pod": "shop/10.244.0.7"}


def test_a_nodes_endpoints_go_with_its_lease(nodes: tuple[EtcdEndpoints, EtcdEndpoints, int]) -> None:
    """Test that when a node's lease ends (it left or died), its endpoints leave the other's view."""
    a, b, lease = nodes
    a.publish({"10.244.0.5": record("10.244.0.5", "node-a")})
    b.publish({"10.244.1.5": record("10.244.1.5", "node-b")})
    wait_until("b seeing a's endpoint", lambda: "10.244.0.5" in (b.view() or {}))
    EtcdClient(URL).revoke(lease)
    wait_until("a's endpoint gone from b's view", lambda: set(b.view() or {}) == {"10.244.1.5"})
    assert set(published()) == {"10.244.1.5"}


def test_a_restarted_agent_keeps_what_it_still_has_and_deletes_the_rest(
        nodes: tuple[EtcdEndpoints, EtcdEndpoints, int]) -> None:
    """Test that a node's next agent life on the same lease leaves its unchanged endpoints as they are
    (same keys, never deleted), deletes those its pods no longer have, and leaves other nodes' keys."""
    a, b, lease = nodes
    a.publish({"10.244.0.5": record("10.244.0.5", "node-a"), "10.244.0.6": record("10.244.0.6", "node-a")})
    b.publish({"10.244.1.5": record("10.244.1.5", "node-b")})
    wait_until("published", lambda: len(published()) == 3)
    before = published()
    a.close()  # what kill -9 leaves: the keys, under a lease that is still alive
    again = EtcdEndpoints(EtcdClient(URL), "node-a")
    again.use_lease(lease)
    again.start()
    try:
        again.publish({"10.244.0.5": record("10.244.0.5", "node-a")})
        wait_until("the endpoint it no longer has deleted", lambda: set(published()) == {"10.244.0.5",
                                                                                          "10.244.1.5"})
        after = published()
        assert after["10.244.0.5"].mod_revision == before["10.244.0.5"].mod_revision
        assert after["10.244.1.5"].mod_revision == before["10.244.1.5"].mod_revision
    finally:
        again.close()


def test_publishing_waits_for_the_lease_and_survives_etcd_down(etcd: Etcd) -> None:
    """Test that endpoints published before the node has a lease are written once it has one, and that
    what was published while etcd was down is written when it answers again, without raising."""
    node = EtcdEndpoints(EtcdClient(URL, timeout=1), "node-a")
    node.start()
    try:
        node.publish({"10.244.0.5": record("10.244.0.5", "node-a")})
        assert published() == {}
        node.use_lease(EtcdClient(URL).grant(60))
        wait_until("written under the lease", lambda: set(published()) == {"10.244.0.5"})
        etcd.stop()
        node.publish({"10.244.0.6": record("10.244.0.6", "node-a")})
        etcd.start()
        wait_until("written once etcd is back", lambda: set(published()) == {"10.244.0.6"}, timeout=20)
    finally:
        node.close()


def own() -> NodeRecord:
    """Node a as it registers."""
    return NodeRecord("node-a", "192.168.77.2", "10.244.0.0/24")


def test_a_restarted_agent_renews_its_predecessors_lease(etcd: Etcd, tmp_path: Path) -> None:
    """Test that a registry starting where a previous one was killed (lease not revoked) registers under
    that same lease, so the node's key is never deleted; a clean close revokes it and forgets its id,
    and a registry finding only an ended lease's id registers under a new one."""
    lease_file = tmp_path / "node-lease"
    first = NodeRegistry(EtcdClient(URL), lease_file=lease_file)
    first.start(own())
    wait_until("registered", lambda: [n.name for n in first.nodes()] == ["node-a"])
    lease = int(lease_file.read_text())
    created = EtcdClient(URL).get(NODES_PREFIX + "node-a")
    assert created is not None
    first._stop.set()  # what kill -9 leaves: no renewal any more, the lease not revoked
    leases: list[int] = []
    second = NodeRegistry(EtcdClient(URL), lease_file=lease_file)
    second.on_lease = leases.append
    second.start(own())
    wait_until("registered again", lambda: leases != [])
    assert leases == [lease]
    again = EtcdClient(URL).get(NODES_PREFIX + "node-a")
    assert again is not None
    assert again.create_revision == created.create_revision
    second.close()
    assert EtcdClient(URL).get(NODES_PREFIX + "node-a") is None
    assert not lease_file.exists()
    lease_file.write_text(f"{lease}\n")  # an ended lease's id
    third = NodeRegistry(EtcdClient(URL), lease_file=lease_file)
    third.on_lease = leases.append
    third.start(own())
    try:
        wait_until("registered under a new lease", lambda: len(leases) == 2)
        assert leases[1] != lease
        assert int(lease_file.read_text()) == leases[1]
    finally:
        third.close()


def test_a_slow_start_keeps_the_predecessors_lease_until_the_registry_takes_it(
        etcd: Etcd, tmp_path: Path) -> None:
    """Test that a successor whose registry starts only after three lease TTLs (a start on a busy node)
    still registers under its killed predecessor's lease: `PredecessorLease`, begun at the successor's
    first moment, renewed it meanwhile, so the node's key and the endpoint published under that lease were
    never deleted and the other node's view kept the endpoint all along; once stopped, it renews no more."""
    ttl = 2
    lease_file = tmp_path / "node-lease"
    first = NodeRegistry(EtcdClient(URL), ttl=ttl, lease_file=lease_file)
    first.start(own())
    wait_until("registered", lambda: [n.name for n in first.nodes()] == ["node-a"])
    lease = int(lease_file.read_text())
    a, b = EtcdEndpoints(EtcdClient(URL), "node-a"), EtcdEndpoints(EtcdClient(URL), "node-b")
    a.use_lease(lease)
    for node in (a, b):
        node.start()
    try:
        a.publish({"10.244.0.5": record("10.244.0.5", "node-a")})
        wait_until("b seeing a's endpoint", lambda: "10.244.0.5" in (b.view() or {}))
        keys = {key: kv.create_revision for key, kv in (
            ("node", EtcdClient(URL).get(NODES_PREFIX + "node-a")), ("endpoint", published()["10.244.0.5"]))
            if kv is not None}
        first._stop.set()  # what kill -9 leaves: no renewal any more, the lease not revoked
        a.close()
        predecessor = PredecessorLease(EtcdClient(URL), lease_file, ttl=ttl)
        predecessor.start()
        seen = []
        for _ in range(3 * ttl * 10):  # the successor still loading for three TTLs
            seen.append("10.244.0.5" in (b.view() or {}))
            time.sleep(0.1)
        assert all(seen), "the endpoint left the other node's view"
        leases: list[int] = []
        second = NodeRegistry(EtcdClient(URL), ttl=ttl, lease_file=lease_file)
        second.on_lease = leases.append
        second.start(own())
        wait_until("registered again", lambda: leases != [])
        predecessor.stop()
        assert leases == [lease]
        node_kv, endpoint_kv = EtcdClient(URL).get(NODES_PREFIX + "node-a"), published().get("10.244.0.5")
        assert node_kv is not None
        assert endpoint_kv is not None
        assert {"node": node_kv.create_revision, "endpoint": endpoint_kv.create_revision} == keys
        second.close()
    finally:
        for node in (a, b):
            node.close()


SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
           "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}


def bound_pod(name: str, node: str) -> Pod:
    """A pod app=web bound to `node`."""
    pod = from_dict({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
                     "spec": {"nodeName": node, "containers": [{"name": "c"}]}})
    assert isinstance(pod, Pod)
    return pod


def ready_endpoints(store: LocalStore) -> dict[str, bool]:
    """The web service's endpoints: pod name -> ready, as the store's slices say."""
    found = {}
    for eps in store.get("endpointslices", "default"):
        assert isinstance(eps, EndpointSlice)
        for endpoint in eps.endpoints:
            assert endpoint.target_ref is not None
            found[endpoint.target_ref.name] = bool(endpoint.conditions.ready)
    return found


def same_version(a: LocalStore, b: LocalStore) -> bool:
    """Both stores took in everything etcd has and stand at the same version."""
    a.refresh()
    b.refresh()
    return a.version == b.version


def test_endpoints_on_a_node_that_left_are_not_ready_one_writer(etcd: Etcd, tmp_path: Path) -> None:
    """Test that the first agent seeing node n2 leave derives its pods' endpoints not ready in one
    transaction, a second agent seeing the same then writes nothing, and the endpoints are ready again
    when the node registers again."""
    a, b = open_store(tmp_path / "a"), open_store(tmp_path / "b")
    view = {"a": frozenset({"n1", "n2"}), "b": frozenset({"n1", "n2"})}
    a.registered, b.registered = (lambda: view["a"]), (lambda: view["b"])
    a.apply([bound_pod("web-1", "n1"), bound_pod("web-2", "n2"), from_dict(SERVICE)])
    for name, ip in (("web-1", "10.244.1.5"), ("web-2", "10.244.2.5")):
        a.update_pod_status("default", name, PodStatus(phase="Running", pod_ip=ip,
                                                       conditions=(PodCondition("Ready", "True"),)))
    a.follow_nodes()
    b.follow_nodes()
    wait_until("b caught up", lambda: same_version(a, b))
    assert ready_endpoints(b) == {"web-1": True, "web-2": True}
    view["a"] = view["b"] = frozenset({"n1"})
    writes = threading.Barrier(2)

    def follow(store: LocalStore) -> None:
        writes.wait()
        store.follow_nodes()

    threads = [threading.Thread(target=follow, args=(s,)) for s in (a, b)]
    version = int(EtcdClient(URL).status()["header"]["revision"])
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_until("both caught up", lambda: same_version(a, b))
    assert ready_endpoints(a) == ready_endpoints(b) == {"web-1": True, "web-2": False}
    revision = EtcdClient(URL).status()["header"]["revision"]
    assert int(revision) == a.version == version + 1  # one transaction: the winner's slice write
    view["a"] = view["b"] = frozenset({"n1", "n2"})
    b.follow_nodes()
    wait_until("a caught up", lambda: ready_endpoints(a) == {"web-1": True, "web-2": True})
