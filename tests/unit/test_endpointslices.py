"""Test that EndpointSlices are derived from services and pods exactly as the upstream controller does."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from velvet.model import EndpointSlice, KubeObject, Pod, PodCondition, PodStatus, Service
from velvet.model.codec import from_dict, to_dict
from velvet.model.decode_net import MAX_SLICE_PORTS
from velvet.sources.delta import Delta
from velvet.sources.endpointslices import (
    CONTROLLER_NAME,
    MANAGED_BY_LABEL,
    desired_slices,
    slice_name,
)
from velvet.sources.local import LocalStore, ObjectRef


def make_pod(name: str, ip: str | None = "10.244.0.1", *, ready: bool = True, phase: str = "Running",
             labels: dict[str, str] | None = None, ports: list[dict[str, Any]] | None = None,
             terminating: bool = False) -> Pod:
    obj = from_dict({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": name, "labels": labels or {"app": "web"}},
                     "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": ports or []}]}})
    assert isinstance(obj, Pod)
    ready_condition = PodCondition("Ready", "True" if ready else "False")
    status = PodStatus(phase=phase, pod_ip=ip, conditions=(ready_condition,))
    meta = replace(obj.metadata, uid=f"uid-{name}",
                   deletion_timestamp="2024-01-01T00:00:30Z" if terminating else None)
    return replace(obj, metadata=meta, status=status)


def make_svc(**spec: Any) -> Service:
    body: dict[str, Any] = {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}
    body.update(spec)
    obj = from_dict({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": "web", "labels": {"team": "a"}}, "spec": body})
    assert isinstance(obj, Service)
    return obj


def conditions(eps: EndpointSlice) -> dict[str, tuple[bool | None, bool | None, bool | None]]:
    return {e.target_ref.name: (e.conditions.ready, e.conditions.serving, e.conditions.terminating)
            for e in eps.endpoints if e.target_ref}


def test_ready_not_ready_and_terminating_conditions() -> None:
    pods = [make_pod("a", "10.0.0.1"), make_pod("b", "10.0.0.2", ready=False),
            make_pod("c", "10.0.0.3", terminating=True),
            make_pod("d", "10.0.0.4", ready=False, terminating=True)]
    (eps,) = desired_slices(make_svc(), pods)
    assert conditions(eps) == {"a": (True, True, False), "b": (False, False, False),
                               "c": (False, True, True), "d": (False, False, True)}
    assert eps.metadata.labels == {"team": "a", "kubernetes.io/service-name": "web",
                                   MANAGED_BY_LABEL: CONTROLLER_NAME}
    assert eps.metadata.name == slice_name("web", "default", 0)
    assert eps.metadata.name.startswith("web-")
    endpoint = eps.endpoints[0]
    assert endpoint.node_name == "n1"
    assert endpoint.target_ref is not None
    assert (endpoint.target_ref.kind, endpoint.target_ref.uid) == ("Pod", "uid-a")
    assert [(p.name, p.port, p.protocol) for p in eps.ports] == [("", 8080, "TCP")]


def test_publish_not_ready_addresses_marks_everything_ready() -> None:
    pods = [make_pod("b", "10.0.0.2", ready=False), make_pod("c", "10.0.0.3", terminating=True)]
    (eps,) = desired_slices(make_svc(publishNotReadyAddresses=True), pods)
    assert conditions(eps) == {"b": (True, True, False), "c": (True, True, True)}


def test_pods_without_ip_finished_or_unselected_are_left_out() -> None:
    pods = [make_pod("noip", None), make_pod("done", "10.0.0.2", phase="Succeeded"),
            make_pod("failed", "10.0.0.3", phase="Failed"),
            make_pod("other", "10.0.0.4", labels={"app": "db"}),
            make_pod("ok", "10.0.0.5")]
    (eps,) = desired_slices(make_svc(), pods)
    assert list(conditions(eps)) == ["ok"]


def test_placeholder_slice_when_nothing_matches() -> None:
    (eps,) = desired_slices(make_svc(), [])
    assert eps.endpoints == ()
    assert eps.ports == ()


def test_named_ports_resolving_to_different_numbers_split_slices() -> None:
    svc = make_svc(ports=[{"name": "http", "port": 80, "targetPort": "web"},
                          {"name": "metrics", "port": 9090, "targetPort": 9090}])
    pods = [make_pod("a", "10.0.0.1", ports=[{"containerPort": 8080, "name": "web"}]),
            make_pod("b", "10.0.0.2", ports=[{"containerPort": 8081, "name": "web"}]),
            make_pod("c", "10.0.0.3", ports=[{"containerPort": 8080, "name": "web"}]),
            make_pod("d", "10.0.0.4")]
    slices = desired_slices(svc, pods)
    by_ports = {tuple((p.name, p.port) for p in s.ports): sorted(conditions(s)) for s in slices}
    assert by_ports == {
        (("http", 8080), ("metrics", 9090)): ["a", "c"],
        (("http", 8081), ("metrics", 9090)): ["b"],
        (("metrics", 9090),): ["d"],
    }
    assert len({s.metadata.name for s in slices}) == 3


def test_more_than_100_endpoints_are_split() -> None:
    pods = [make_pod(f"p{i:03}", f"10.0.{i // 250}.{i % 250 + 1}") for i in range(250)]
    slices = desired_slices(make_svc(), pods)
    assert [len(s.endpoints) for s in slices] == [100, 100, 50]


def test_a_port_set_a_slice_may_not_hold_is_split_into_runs_each_with_every_endpoint() -> None:
    ports = [{"name": f"p{i}", "port": 1000 + i} for i in range(MAX_SLICE_PORTS * 2 + 50)]
    pods = [make_pod(f"p{i:03}", f"10.0.{i // 250}.{i % 250 + 1}") for i in range(150)]
    slices = desired_slices(make_svc(ports=ports), pods)
    assert [(len(s.ports), len(s.endpoints)) for s in slices] == [
        (MAX_SLICE_PORTS, 100), (MAX_SLICE_PORTS, 50), (MAX_SLICE_PORTS, 100), (MAX_SLICE_PORTS, 50),
        (50, 100), (50, 50)]
    assert [p.name for s in slices[::2] for p in s.ports] == [p["name"] for p in ports]
    for eps in slices:  # every slice is one the store's own reload (EndpointSlice validation) accepts
        assert from_dict(to_dict(eps), trusted=True) == eps
    assert len({s.metadata.name for s in slices}) == 6


def test_a_port_set_a_slice_may_hold_stays_whole_as_upstream_keeps_it() -> None:
    ports = [{"name": f"p{i}", "port": 1000 + i} for i in range(MAX_SLICE_PORTS)]
    (eps,) = desired_slices(make_svc(ports=ports), [make_pod("a")])
    assert len(eps.ports) == MAX_SLICE_PORTS
    assert eps.metadata.name == slice_name("web", "default", 0)


def test_headless_gets_slices_external_name_and_selectorless_get_none() -> None:
    (eps,) = desired_slices(make_svc(clusterIP="None"), [make_pod("a")])
    assert eps.metadata.labels["service.kubernetes.io/headless"] == ""
    assert desired_slices(make_svc(type="ExternalName", externalName="example.com", selector=None), []) == []
    assert desired_slices(make_svc(selector=None), [make_pod("a")]) == []


# -- the store hook ------------------------------------------------------------------------------


def obj(doc: dict[str, Any]) -> KubeObject:
    return from_dict(doc)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore.open(tmp_path)


def slices_of(store: LocalStore) -> list[EndpointSlice]:
    return [s for s in store.get("endpointslices") if isinstance(s, EndpointSlice)]


def apply_pod(store: LocalStore, name: str, ip: str, labels: dict[str, str]) -> None:
    store.apply([obj({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
                      "spec": {"containers": [{"name": "c"}]}})])
    ready = PodStatus(phase="Running", pod_ip=ip, conditions=(PodCondition("Ready", "True"),))
    store.update_pod_status("default", name, ready)


def addresses(store: LocalStore) -> list[str]:
    return sorted(a for s in slices_of(store) for e in s.endpoints for a in e.addresses)


def test_store_follows_pod_label_and_selector_changes(store: LocalStore) -> None:
    store.apply([make_svc()])
    apply_pod(store, "a", "10.0.0.1", {"app": "web"})
    apply_pod(store, "b", "10.0.0.2", {"app": "db"})
    assert addresses(store) == ["10.0.0.1"]
    store.apply([obj({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "b", "labels": {"app": "web"}},
                      "spec": {"containers": [{"name": "c"}], "nodeName": "velvet-node"}})])
    assert addresses(store) == ["10.0.0.1", "10.0.0.2"]
    store.apply([make_svc(selector={"app": "db"})])
    assert addresses(store) == []
    store.apply([make_svc(selector=None)])
    assert slices_of(store) == []


def test_store_emits_deltas_only_for_slices_that_changed(store: LocalStore) -> None:
    store.apply([make_svc(), replace(make_svc(), metadata=replace(make_svc().metadata, name="other"))])
    apply_pod(store, "a", "10.0.0.1", {"app": "web"})

    async def scenario() -> list[Delta]:
        watch = store.watch()
        store.update_pod_status("default", "a", PodStatus(phase="Running", pod_ip="10.0.0.1",
                                                          conditions=(PodCondition("Ready", "False"),)))
        store.apply([make_svc()])
        watch.close()
        return [d async for d in watch]

    deltas = asyncio.run(scenario())
    assert [(d.kind, d.obj.metadata.labels.get("kubernetes.io/service-name")) for d in deltas] == [
        ("Pod", None), ("EndpointSlice", "web"), ("EndpointSlice", "other")]


def test_store_keeps_user_slices_of_selectorless_services(store: LocalStore) -> None:
    store.apply([make_svc(selector=None), obj({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-manual", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["192.0.2.1"]}], "ports": [{"port": 80}]})])
    apply_pod(store, "a", "10.0.0.1", {"app": "web"})
    assert [s.metadata.name for s in slices_of(store)] == ["web-manual"]
    store.delete([ObjectRef("svc", "web")])
    assert [s.metadata.name for s in slices_of(store)] == ["web-manual"]


def test_endpoints_on_nodes_not_registered_are_neither_ready_nor_serving() -> None:
    """Test that with a view of the cluster's nodes, an endpoint on a node not in it is not ready and
    not serving (terminating kept), while without a view (one node) every node counts as present."""
    def on_n2(pod: Pod) -> Pod:
        return replace(pod, spec=replace(pod.spec, node_name="n2"))

    pods = [make_pod("a", "10.0.0.1"), on_n2(make_pod("b", "10.0.0.2")),
            on_n2(make_pod("c", "10.0.0.3", terminating=True))]
    (eps,) = desired_slices(make_svc(), pods, frozenset({"n1"}))
    assert conditions(eps) == {"a": (True, True, False), "b": (False, False, False),
                               "c": (False, False, True)}
    (eps,) = desired_slices(make_svc(), pods)
    assert conditions(eps) == {"a": (True, True, False), "b": (True, True, False),
                               "c": (False, True, True)}


def test_the_store_follows_nodes_leaving_and_joining(tmp_path: Path) -> None:
    """Test that when the registered nodes change, the store derives the slices of the services with pods
    on those nodes again in one change (not ready while the node is gone, ready once it is back), and
    writes nothing when the view did not change or was never known."""
    store = LocalStore.open(tmp_path)
    registered: list[frozenset[str] | None] = [None]
    store.registered = lambda: registered[0]
    pod = from_dict({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": "b", "labels": {"app": "web"}},
                     "spec": {"nodeName": "n2", "containers": [{"name": "c"}]}})
    store.apply([make_svc(), pod])
    store.update_pod_status("default", "b", PodStatus(phase="Running", pod_ip="10.244.2.5",
                                                      conditions=(PodCondition("Ready", "True"),)))

    def ready() -> bool | None:
        (eps,) = [e for e in store.get("endpointslices") if isinstance(e, EndpointSlice)]
        return eps.endpoints[0].conditions.ready

    version = store.version
    store.follow_nodes()
    assert (ready(), store.version) == (True, version)
    registered[0] = frozenset({"n1", "n2"})
    store.follow_nodes()
    assert (ready(), store.version) == (True, version)
    registered[0] = frozenset({"n1"})
    store.follow_nodes()
    assert (ready(), store.version) == (False, version + 1)
    store.follow_nodes()
    assert store.version == version + 1
    registered[0] = frozenset({"n1", "n2"})
    store.follow_nodes()
    assert (ready(), store.version) == (True, version + 2)
