"""Test the node registry's view without etcd: a node whose key went leaves after a grace, unless it
registers again (as every node does when etcd comes back from an outage longer than the leases)."""

from __future__ import annotations

import threading

from velvet.model.node import NodeRecord
from velvet.sources.etcd_client import EtcdClient, KeyValue
from velvet.sources.etcd_nodes import NODES_PREFIX, NodeRegistry

GRACE = 0.2


def kv(name: str, k: int, revision: int) -> KeyValue:
    """Node `name`'s key as the watch delivers it."""
    record = NodeRecord(name, f"192.168.77.{2 + k}", f"10.244.{k}.0/24")
    return KeyValue(NODES_PREFIX + name, record.encode(), revision, revision)


def registry() -> tuple[NodeRegistry, list[list[str]], threading.Event]:
    """A registry (its client never called) with nodes a and b; its views at each change; set on a leave."""
    reg = NodeRegistry(EtcdClient("http://127.0.0.1:9"), grace=GRACE)
    views: list[list[str]] = []
    left = threading.Event()

    def changed() -> None:
        views.append([n.name for n in reg.nodes()])
        if len(views[-1]) < 2:
            left.set()
    reg.on_change = changed
    reg._reset([kv("a", 0, 1), kv("b", 1, 2)])
    return reg, views, left


def test_a_node_registering_again_within_the_grace_never_leaves() -> None:
    """Test that b's key deleted (its lease expired) and put again (under a new lease) leaves b in every
    view, also after the grace has run out."""
    reg, views, left = registry()
    reg._update([(kv("b", 1, 2), True)])
    reg._update([(kv("b", 1, 3), False)])
    assert not left.wait(GRACE * 3)
    assert views == [["a", "b"]] * 3
    reg.close()


def test_a_node_whose_key_went_leaves_after_the_grace() -> None:
    """Test that b's key deleted and not put again keeps b for the grace, then takes it out of the view
    and tells the agent (on_change)."""
    reg, views, left = registry()
    reg._update([(kv("b", 1, 2), True)])
    assert [n.name for n in reg.nodes()] == ["a", "b"]
    assert left.wait(5)
    assert views == [["a", "b"], ["a", "b"], ["a"]]
    reg.close()


def test_a_relist_without_a_node_gives_it_the_same_grace() -> None:
    """Test that a relist (after a lost watch) missing b keeps b for the grace; a relist with b again
    within it keeps b for good."""
    reg, views, left = registry()
    reg._reset([kv("a", 0, 1)])
    reg._reset([kv("a", 0, 1), kv("b", 1, 5)])
    assert not left.wait(GRACE * 3)
    reg._reset([kv("a", 0, 1)])
    assert left.wait(5)
    assert views[-1] == ["a"]
    reg.close()
