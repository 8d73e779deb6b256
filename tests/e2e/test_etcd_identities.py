"""Test the cluster's identity numbers in a real etcd: two allocators (two nodes) racing on one etcd.

Each test starts its own etcd in a namespace of its own (the `etcd` fixture of test_etcd_store), so
nothing meets a user's etcd; nodes are `EtcdIdentities` with their own leases, as agents hold them.
"""

from __future__ import annotations

import threading
import time
from base64 import b64encode
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from test_etcd_store import URL, Etcd
from test_etcd_store import etcd as etcd  # the fixture, re-exported for this module's tests

from velvet.model import FIRST_ALLOCATED_IDENTITY
from velvet.sources.etcd_client import EtcdClient, prefix_end
from velvet.sources.etcd_identities import IDENTITIES_PREFIX, EtcdIdentities

pytestmark = pytest.mark.privileged

NUMBERS = range(FIRST_ALLOCATED_IDENTITY, 0x10000)


def labels(app: str) -> dict[str, str]:
    """Identity labels of a pod app=<app> in namespace shop."""
    return {"k8s:app": app, "k8s:io.kubernetes.pod.namespace": "shop"}


def keys() -> list[str]:
    """Every identity key in etcd, without the prefix."""
    return [kv.key[len(IDENTITIES_PREFIX):] for kv in EtcdClient(URL).range_prefix(IDENTITIES_PREFIX)[1]]


def wait_until(what: str, ok: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `ok` until true; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:.0f} s"
        time.sleep(0.05)


@pytest.fixture
def nodes(etcd: Etcd) -> Iterator[tuple[EtcdIdentities, EtcdIdentities]]:
    """Two nodes' allocators on the test's etcd, each under a lease of its own; watches not started."""
    client = EtcdClient(URL)
    made = []
    for name in ("node-a", "node-b"):
        node = EtcdIdentities(EtcdClient(URL), name, NUMBERS)
        node.use_lease(client.grant(30))
        made.append(node)
    yield made[0], made[1]
    for node in made:
        node.close()


def test_two_nodes_racing_get_one_number_per_label_set(nodes: tuple[EtcdIdentities, EtcdIdentities]) -> None:
    """Test that two allocators that see nothing of each other (no watch: every create races on the
    lowest number), allocating 30 label sets at once from several threads, end with one distinct number
    per label set, the same on both nodes, and a ref of each node on each."""
    apps = [f"app{i}" for i in range(30)]
    got: dict[tuple[str, str], int] = {}
    errors: list[BaseException] = []

    def run(node: EtcdIdentities, chunk: list[str]) -> None:
        try:
            for app in chunk:
                got[node.node, app] = node.allocate(labels(app))
        except BaseException as err:  # reported below, with the test's assertion
            errors.append(err)

    threads = [threading.Thread(target=run, args=(node, apps[k::3] if node.node == "node-a" else apps[::-1]))
               for node in nodes for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    numbers = {app: got["node-a", app] for app in apps}
    assert all(got["node-b", app] == numbers[app] for app in apps)
    assert sorted(numbers.values()) == list(range(FIRST_ALLOCATED_IDENTITY, FIRST_ALLOCATED_IDENTITY + 30))
    found = keys()
    assert sum(k.startswith("id/") for k in found) == 30
    assert {k for k in found if k.startswith("refs/")} == {
        f"refs/{n}/{node}" for n in numbers.values() for node in ("node-a", "node-b")}


def test_a_burst_of_new_label_sets_costs_one_transaction_each(
        nodes: tuple[EtcdIdentities, EtcdIdentities], monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that one node allocating 100 new label sets in a row, faster than any watch could tell it
    (none runs), needs one transaction per label set: it starts past the numbers it took itself, where
    walking up from the lowest would retry every taken number and give up after 64."""
    node, _ = nodes
    calls = 0
    txn = node._txn

    def counted(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        return txn(*args)

    monkeypatch.setattr(node, "_txn", counted)
    numbers = [node.allocate(labels(f"burst{i}")) for i in range(100)]
    assert numbers == list(range(FIRST_ALLOCATED_IDENTITY, FIRST_ALLOCATED_IDENTITY + 100))
    assert calls == 100


def test_an_identity_lives_while_a_node_refers_to_it(nodes: tuple[EtcdIdentities, EtcdIdentities]) -> None:
    """Test that releasing on one node keeps the identity for the other, releasing on the last removes
    every key, and the number is then handed out again."""
    a, b = nodes
    web = a.allocate(labels("web"))
    assert b.allocate(labels("web")) == web
    a.release(labels("web"), web)
    assert keys() == [f"id/{web}", f"labels/{'k8s:app=web;k8s:io.kubernetes.pod.namespace=shop'}",
                      f"refs/{web}/node-b"]
    b.release(labels("web"), web)
    assert keys() == []
    assert b.allocate(labels("db")) == web


def test_a_dead_nodes_identities_are_collected_by_the_others(
        nodes: tuple[EtcdIdentities, EtcdIdentities]) -> None:
    """Test that when a node's lease ends (the node died or left), a following node removes the
    identities only that node used, and keeps those it shares."""
    a, b = nodes
    client = EtcdClient(URL)
    lease = client.grant(30)
    a.use_lease(lease)
    only_a = a.allocate(labels("only-a"))
    shared = a.allocate(labels("shared"))
    assert b.allocate(labels("shared")) == shared
    b.start()
    wait_until("b's view of the cluster", lambda: set(b.cluster_view()) == {only_a, shared})
    client.revoke(lease)
    wait_until("collecting a's identity", lambda: f"id/{only_a}" not in keys())
    assert f"id/{shared}" in keys()
    assert set(keys()) == {f"id/{shared}", "labels/k8s:app=shared;k8s:io.kubernetes.pod.namespace=shop",
                           f"refs/{shared}/node-b"}


def test_a_node_whose_lease_was_lost_refers_again_under_its_new_lease(
        nodes: tuple[EtcdIdentities, EtcdIdentities]) -> None:
    """Test that a node that lost its lease puts its refs back under the new one, recreating an identity
    removed meanwhile with the same number."""
    a, _ = nodes
    client = EtcdClient(URL)
    lease = client.grant(30)
    a.use_lease(lease)
    web = a.allocate(labels("web"))
    client.revoke(lease)
    assert keys() == [f"id/{web}", "labels/k8s:app=web;k8s:io.kubernetes.pod.namespace=shop"]
    a.use_lease(client.grant(30))
    assert f"refs/{web}/node-a" in keys()
    wipe = {"key": b64encode(IDENTITIES_PREFIX.encode()).decode(),
            "range_end": b64encode(prefix_end(IDENTITIES_PREFIX).encode()).decode()}
    client.call("kv/deleterange", wipe)  # as if another node collected the identity meanwhile
    a.use_lease(client.grant(30))
    assert keys() == [f"id/{web}", "labels/k8s:app=web;k8s:io.kubernetes.pod.namespace=shop",
                      f"refs/{web}/node-a"]


def test_a_node_recreating_after_another_still_refers_to_the_identity(
        nodes: tuple[EtcdIdentities, EtcdIdentities], monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that when both nodes lost their leases (etcd was away longer than the TTL) and the identity
    was collected, the node that finds it gone but loses the race to recreate it (the other node did
    between its two transactions) still puts its own ref under its new lease: the identity lives while
    either node uses it."""
    a, b = nodes
    client = EtcdClient(URL)
    leases = [client.grant(30), client.grant(30)]
    a.use_lease(leases[0])
    b.use_lease(leases[1])
    web = a.allocate(labels("web"))
    assert b.allocate(labels("web")) == web
    for lease in leases:
        client.revoke(lease)
    wipe = {"key": b64encode(IDENTITIES_PREFIX.encode()).decode(),
            "range_end": b64encode(prefix_end(IDENTITIES_PREFIX).encode()).decode()}
    client.call("kv/deleterange", wipe)  # collected while nobody referred to it
    txn = a._txn
    calls = []

    def b_recreates_in_between(*args: Any) -> Any:
        done = txn(*args)
        calls.append(done[0])
        if len(calls) == 1:
            b.use_lease(client.grant(30))
        return done
    monkeypatch.setattr(a, "_txn", b_recreates_in_between)
    a.use_lease(client.grant(30))
    assert calls[:2] == [False, False]  # a found it gone, then b's recreation beat a's
    assert keys() == [f"id/{web}", "labels/k8s:app=web;k8s:io.kubernetes.pod.namespace=shop",
                      f"refs/{web}/node-a", f"refs/{web}/node-b"]


def test_a_restarted_agent_drops_the_refs_its_previous_life_held(
        nodes: tuple[EtcdIdentities, EtcdIdentities]) -> None:
    """Test that an agent re-using its previous life's lease, after taking the identities it needs,
    drops that life's refs to the others, which the following nodes then collect."""
    a, b = nodes
    lease = EtcdClient(URL).grant(30)
    a.use_lease(lease)
    web, db = a.allocate(labels("web")), a.allocate(labels("db"))
    b.start()
    again = EtcdIdentities(EtcdClient(URL), "node-a", NUMBERS)  # node a's next life, same lease
    again.use_lease(lease)
    assert again.allocate(labels("web")) == web
    assert again.drop_stale_refs() == 1
    wait_until("db collected", lambda: f"id/{db}" not in keys())
    assert set(keys()) == {f"id/{web}", "labels/k8s:app=web;k8s:io.kubernetes.pod.namespace=shop",
                           f"refs/{web}/node-a"}
    assert again.drop_stale_refs() == 0
