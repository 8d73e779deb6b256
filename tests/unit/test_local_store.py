"""Test that the local store applies all-or-nothing, allocates like the API server, persists and watches."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from velvet.agent.manifests import parse_all, relocate
from velvet.errors import InvalidManifest
from velvet.model import KubeObject, Namespace, Pod, PodCondition, PodStatus, Service
from velvet.model.codec import from_dict
from velvet.sources.delta import Delta
from velvet.sources.local import LocalStore, ObjectRef, StoreError

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


class Clock:
    """A settable clock."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def ns(name: str) -> KubeObject:
    return from_dict({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def pod(name: str, namespace: str = "default", **labels: str) -> KubeObject:
    return from_dict({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": name, "namespace": namespace, "labels": labels or {"app": "web"}},
                      "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 8080}]}]}})


def svc(name: str, namespace: str = "default", **spec: Any) -> KubeObject:
    body: dict[str, Any] = {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}
    body.update(spec)
    return from_dict({"apiVersion": "v1", "kind": "Service",
                      "metadata": {"name": name, "namespace": namespace}, "spec": body})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> LocalStore:
    return LocalStore.open(tmp_path / "state", clock=clock)


def running(ip: str, ready: bool = True) -> PodStatus:
    condition = PodCondition("Ready", "True" if ready else "False")
    return PodStatus(phase="Running", pod_ip=ip, conditions=(condition,))


def test_default_namespaces_exist(store: LocalStore) -> None:
    assert [o.metadata.name for o in store.get("ns")] == ["default", "kube-system"]
    labels = store.get("namespace", name="default")[0].metadata.labels
    assert labels == {"kubernetes.io/metadata.name": "default"}


def test_apply_reports_created_configured_unchanged(store: LocalStore) -> None:
    results = store.apply([ns("demo"), pod("a", "demo"), svc("web", "demo")])
    assert [str(r) for r in results] == ["namespace/demo created", "pod/a created", "service/web created"]
    assert [r.action for r in store.apply([ns("demo"), pod("a", "demo")])] == ["unchanged", "unchanged"]
    relabeled = store.apply([pod("a", "demo", app="web", tier="x")])
    assert relabeled[0].action == "configured"
    stored = store.get("po", "demo", "a")[0]
    assert isinstance(stored, Pod)
    assert stored.spec.node_name == "velvet-node"
    assert stored.metadata.uid
    assert stored.metadata.creation_timestamp == "2024-05-01T12:00:00Z"


def test_apply_is_all_or_nothing(store: LocalStore) -> None:
    version = store.version
    with pytest.raises(InvalidManifest, match='namespaces "nope" not found'):
        store.apply([pod("a"), pod("b", "nope")])
    assert store.get("pods") == []
    assert store.version == version
    store.apply([svc("one", clusterIP="10.96.0.10")])
    with pytest.raises(InvalidManifest) as caught:
        store.apply([pod("c"), svc("two", clusterIP="10.96.0.10")], source="x.yaml")
    assert (caught.value.path, caught.value.document, caught.value.field) == ("x.yaml", 2, "spec.clusterIP")
    assert "already allocated" in caught.value.reason
    assert store.get("pods") == []


def test_namespace_created_earlier_in_the_same_apply_is_usable(store: LocalStore) -> None:
    store.apply([ns("demo"), pod("a", "demo")])
    assert store.get("po", "demo", "a")


def test_cluster_ip_allocation_never_reuses_an_ip_in_use(store: LocalStore) -> None:
    store.apply([svc("a"), svc("b"), svc("h", clusterIP="None"), svc("x", type="ExternalName",
                                                                      externalName="example.com")])
    ips = {s.metadata.name: s.spec.cluster_ip for s in store.get("svc") if isinstance(s, Service)}
    assert ips == {"a": "10.96.1.1", "b": "10.96.1.2", "h": "None", "x": None}
    store.delete([ObjectRef("svc", "a")])
    store.apply([svc("c")])
    c = store.get("svc", name="c")[0]
    assert isinstance(c, Service)
    assert c.spec.cluster_ip == "10.96.1.1"


def test_cluster_ip_is_kept_on_reapply_and_immutable(store: LocalStore) -> None:
    store.apply([svc("a")])
    assert store.apply([svc("a")])[0].action == "unchanged"
    with pytest.raises(InvalidManifest, match="immutable"):
        store.apply([svc("a", clusterIP="10.96.0.99")])
    with pytest.raises(InvalidManifest, match="not in the valid range"):
        store.apply([svc("b", clusterIP="192.168.0.1")])


def test_node_port_allocation_and_collisions(store: LocalStore) -> None:
    store.apply([svc("np", type="NodePort", ports=[{"port": 80, "name": "a"}, {"port": 81, "name": "b",
                                                                                 "nodePort": 30080}])])
    s = store.get("svc", name="np")[0]
    assert isinstance(s, Service)
    assert [p.node_port for p in s.spec.ports] == [30086, 30080]
    with pytest.raises(InvalidManifest) as caught:
        store.apply([svc("other", type="NodePort", ports=[{"port": 80, "nodePort": 30080}])])
    assert caught.value.field == "spec.ports[0].nodePort"
    assert store.apply([svc("np", type="NodePort", ports=[{"port": 80, "name": "a"}, {
        "port": 81, "name": "b", "nodePort": 30080}])])[0].action == "unchanged"
    store.apply([svc("np")])
    s = store.get("svc", name="np")[0]
    assert isinstance(s, Service)
    assert s.spec.ports[0].node_port is None
    store.apply([svc("other", type="NodePort", ports=[{"port": 80, "nodePort": 30080}])])


def test_health_check_node_port_for_local_load_balancers(store: LocalStore) -> None:
    store.apply([svc("lb", type="LoadBalancer", externalTrafficPolicy="Local")])
    s = store.get("svc", name="lb")[0]
    assert isinstance(s, Service)
    assert s.spec.health_check_node_port == 30087


def test_state_survives_reopen(tmp_path: Path, store: LocalStore, clock: Clock) -> None:
    store.apply([ns("demo"), pod("a", "demo"), svc("web", "demo", type="NodePort")])
    store.update_pod_status("demo", "a", running("10.244.0.5"))
    again = LocalStore.open(tmp_path / "state", clock=clock)
    assert again.snapshot() == store.snapshot()
    assert again.version == store.version
    again.apply([svc("web2", "demo", type="NodePort")])
    ips = {s.spec.cluster_ip for s in again.get("svc", "demo") if isinstance(s, Service)}
    assert len(ips) == 2
    assert not list((tmp_path / "state").glob("*.tmp"))


def test_graceful_pod_deletion_lifecycle(store: LocalStore, clock: Clock) -> None:
    store.apply([pod("a"), pod("b"), pod("c")])
    store.delete([ObjectRef("po", "a")])
    a = store.get("po", name="a")[0]
    assert isinstance(a, Pod)
    assert a.terminating
    assert a.metadata.deletion_timestamp == "2024-05-01T12:00:30Z"
    assert store.finalize_pod_deletion("default", "a")
    assert [p.metadata.name for p in store.get("po")] == ["b", "c"]
    store.delete([ObjectRef("pods", "b")], grace_seconds=5)
    assert store.expire_terminating(T0 + timedelta(seconds=4)) == []
    clock.now = T0 + timedelta(seconds=5)
    assert [p.metadata.name for p in store.expire_terminating()] == ["b"]
    store.delete([ObjectRef("pod", "c")], grace_seconds=0)
    assert store.get("po") == []
    assert not store.finalize_pod_deletion("default", "c")


def test_delete_missing_object_changes_nothing(store: LocalStore) -> None:
    store.apply([pod("a")])
    with pytest.raises(StoreError, match='pods "zz" not found'):
        store.delete([ObjectRef("po", "a"), ObjectRef("po", "zz")])
    assert not store.get("po", name="a")[0].metadata.deletion_timestamp
    assert len(store.delete([ObjectRef("po", "zz")], ignore_not_found=True)) == 0


def test_deleting_a_namespace_deletes_its_objects(store: LocalStore) -> None:
    store.apply([ns("demo"), pod("a", "demo"), svc("web", "demo")])
    store.update_pod_status("demo", "a", running("10.244.0.5"))
    store.delete([ObjectRef("ns", "demo")])
    demo = store.get("ns", name="demo")[0]
    assert isinstance(demo, Namespace)
    assert demo.phase == "Terminating"
    assert store.get("svc", "demo") == []
    assert store.get("endpointslices", "demo") == []
    with pytest.raises(InvalidManifest, match="being terminated") as caught:
        store.apply([pod("b", "demo")], source="b.yaml")
    assert (caught.value.path, caught.value.document) == ("b.yaml", 1)
    assert caught.value.field == "metadata.namespace"
    store.finalize_pod_deletion("demo", "a")
    assert [n.metadata.name for n in store.get("ns")] == ["default", "kube-system"]
    with pytest.raises(StoreError, match="may not be deleted"):
        store.delete([ObjectRef("ns", "default")])


def test_pod_spec_is_immutable(store: LocalStore) -> None:
    store.apply([pod("a")])
    changed = replace(pod("a"))
    assert isinstance(changed, Pod)
    changed = replace(changed, spec=replace(changed.spec, host_network=True))
    with pytest.raises(InvalidManifest) as caught:
        store.apply([changed])
    assert caught.value.field == "spec"


def test_get_by_namespace_and_unknown_kind(store: LocalStore) -> None:
    store.apply([ns("demo"), pod("a", "demo"), pod("b")])
    assert [p.metadata.name for p in store.get("po")] == ["b"]
    assert [(p.metadata.namespace, p.metadata.name) for p in store.get("po", "all")] == [
        ("default", "b"), ("demo", "a")]
    with pytest.raises(StoreError, match="resource type"):
        store.get("deployments")
    with pytest.raises(StoreError, match='pods "zz" not found'):
        store.get("po", name="zz")


def test_resource_versions_are_a_store_wide_counter(store: LocalStore) -> None:
    start = store.version
    store.apply([pod("a"), pod("b")])
    assert sorted(p.metadata.resource_version for p in store.get("po")) == [start + 1, start + 2]
    assert store.version == start + 2
    assert store.update_pod_status("default", "a", PodStatus(phase="Pending", conditions=(
        PodCondition("PodScheduled", "True"),)))
    assert store.version == start + 2
    assert not store.update_pod_status("default", "zz", PodStatus())


def test_watch_streams_every_change_to_every_watcher(store: LocalStore) -> None:
    async def scenario() -> tuple[list[Delta], list[Delta]]:
        first, second = store.watch(), store.watch()
        store.apply([pod("a"), svc("web")])
        store.update_pod_status("default", "a", running("10.244.0.5"))
        store.delete([ObjectRef("svc", "web")])
        store.close()
        return [d async for d in first], [d async for d in second]

    first, second = asyncio.run(scenario())
    assert first == second
    ops = [(d.kind, d.op, d.obj.metadata.name.split("-")[0]) for d in first]
    assert ops == [
        ("Pod", "upsert", "a"), ("Service", "upsert", "web"), ("EndpointSlice", "upsert", "web"),
        ("Pod", "upsert", "a"), ("EndpointSlice", "upsert", "web"),
        ("Service", "delete", "web"), ("EndpointSlice", "delete", "web"),
    ]
    assert [d.obj.metadata.resource_version for d in first] == sorted(d.obj.metadata.resource_version
                                                                      for d in first)


def test_unchanged_apply_emits_nothing(store: LocalStore) -> None:
    store.apply([pod("a")])

    async def scenario() -> list[Delta]:
        watch = store.watch()
        store.apply([pod("a")])
        watch.close()
        return [d async for d in watch]

    assert asyncio.run(scenario()) == []


# -- errors name the file and document -----------------------------------------------------------------


def test_a_missing_namespace_names_the_file_and_document(store: LocalStore) -> None:
    text = ("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c}]}\n---\n"
            "apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: nope}\n"
            "spec: {containers: [{name: c}]}\n")
    objects, origins = parse_all([{"path": "pods.yaml", "text": text}])
    with pytest.raises(InvalidManifest) as caught:
        store.apply(objects, source="pods.yaml")
    assert (caught.value.document, caught.value.field) == (2, "metadata.namespace")
    assert str(relocate(caught.value, origins)) == \
        'pods.yaml: document 2: metadata.namespace: namespaces "nope" not found'
    assert store.get("pods") == []


# -- deletion with any grace period --------------------------------------------------------------------


def test_deleting_a_pod_with_the_largest_grace_period_works(tmp_path: Path, store: LocalStore) -> None:
    forever = from_dict({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "forever"},
                         "spec": {"containers": [{"name": "c"}], "terminationGracePeriodSeconds": 2**63 - 1}})
    store.apply([forever, pod("long")])
    store.delete([ObjectRef("po", "forever")])
    store.delete([ObjectRef("po", "long")], grace_seconds=10**15)
    for name in ("forever", "long"):
        found = store.get("po", name=name)[0]
        assert isinstance(found, Pod)
        assert found.terminating
        assert found.metadata.deletion_timestamp == "9999-12-31T23:59:59Z"
    assert store.expire_terminating() == []
    assert LocalStore.open(tmp_path / "state").snapshot() == store.snapshot()
    assert store.finalize_pod_deletion("default", "forever")
    store.delete([ObjectRef("po", "long")], grace_seconds=0)
    assert store.get("po") == []
