"""Test the Kubernetes source against the stand-in API server: list, watch, bookmarks, faults.

The stand-in runs on its own thread on a loopback port of the test process (nothing is routed, no
namespace is needed for a loopback socket); the source follows it from its own thread, as in the
agent. Faults are the issue's: a watch cut mid-stream, 410 Gone after compaction, the API server
restarted, a slow one, an unreachable one; each test counts requests and deltas, never time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_apiserver import KubeApiServer, kubeconfig, status

from velvet.model import Pod, Service
from velvet.sources.delta import Delta
from velvet.sources.kube_client import SERVICES, KubeApi, Unreachable, load_config
from velvet.sources.kube_informer import BACKOFF_MAX_SECONDS, Change, Informer
from velvet.sources.kube_source import KubeSource, node_pod_cidr

NODE = "node-a"
WAIT = 10.0


def service(name: str, port: int = 80, namespace: str = "default") -> dict[str, Any]:
    """A Service as kubectl would create it (the API server stamps the rest)."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name},
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                         "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
            "spec": {"selector": {"app": name},
                     "ports": [{"port": port, "protocol": "TCP", "targetPort": port}],
                     "clusterIP": f"10.96.0.{10 + len(name)}", "clusterIPs": [f"10.96.0.{10 + len(name)}"],
                     "type": "ClusterIP", "sessionAffinity": "None", "ipFamilies": ["IPv4"],
                     "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster"},
            "status": {"loadBalancer": {}}}


def pod(name: str, node: str = NODE, ip: str = "10.244.0.5") -> dict[str, Any]:
    """A running Pod as the API returns it after the scheduler and the kubelet (generateName kept)."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "generateName": f"{name[:-2]}-",
                         "labels": {"app": "web"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": "web-1", "uid": "0b5c", "controller": True,
                                              "blockOwnerDeletion": True}]},
            "spec": {"nodeName": node, "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
                     "schedulerName": "default-scheduler", "serviceAccountName": "default",
                     "terminationGracePeriodSeconds": 30,
                     "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                                      "effect": "NoExecute", "tolerationSeconds": 300}],
                     "containers": [{"name": "web", "image": "nginx:1.27", "imagePullPolicy": "IfNotPresent",
                                     "ports": [{"containerPort": 80, "protocol": "TCP"}], "resources": {},
                                     "terminationMessagePath": "/dev/termination-log",
                                     "terminationMessagePolicy": "File"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.168.77.2",
                       "qosClass": "BestEffort",
                       "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": None,
                                       "lastTransitionTime": "2026-12-04T10:00:05Z"}]}}


def node(name: str, ip: str, cidr: str | None) -> dict[str, Any]:
    """A Node as the kubelet registers it (pod CIDR assigned by the controller manager, or not yet)."""
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]} if cidr else {},
            "status": {"addresses": [{"type": "InternalIP", "address": ip},
                                     {"type": "Hostname", "address": name}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


@pytest.fixture
def api() -> Iterator[KubeApiServer]:
    """A running stand-in with the default namespace and this node."""
    server = KubeApiServer()
    server.start()
    server.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
    server.put(node(NODE, "192.168.77.2", "10.244.0.0/24"))
    yield server
    server.stop()


@pytest.fixture
def config_file(api: KubeApiServer, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig(api.url))
    return path


class Followed:
    """A started source and every delta its cache published, taken in on this thread."""

    def __init__(self, config_file: Path) -> None:
        self.source = KubeSource(load_config(config_file), NODE)
        self.woken = threading.Event()
        self.source.on_change = self.woken.set
        self.deltas: list[Delta] = []
        self.source.start()
        assert self.source.wait_listed(WAIT)
        self.take()

    def take(self) -> list[Delta]:
        """Take in what the informers queued (as the state worker does on a wake-up)."""
        self.woken.clear()
        got = self.source.cache.refresh()
        self.deltas += got
        return got

    def until(self, done: Callable[[], bool]) -> None:
        """Take changes in as they come until `done()`."""
        for _ in range(200):
            if done():
                return
            self.woken.wait(0.1)
            self.take()
        raise AssertionError("the source never got there")

    def services(self) -> dict[str, int]:
        """Service key -> the resourceVersion the cache has."""
        return {s.metadata.key: s.metadata.resource_version for s in self.source.objects("Service")}


@pytest.fixture
def followed(config_file: Path) -> Iterator[Followed]:
    f = Followed(config_file)
    yield f
    f.source.close()


def stored_rv(api: KubeApiServer, name: str) -> int:
    """The resourceVersion of Service default/<name> in the API server."""
    obj = api.get("Service", "default", name)
    assert obj is not None
    return int(obj["metadata"]["resourceVersion"])


def ops(deltas: list[Delta]) -> list[tuple[str, str, str]]:
    return [(d.kind, d.op, d.obj.metadata.key) for d in deltas]


def test_the_first_list_reads_every_page_at_one_revision(api: KubeApiServer, config_file: Path) -> None:
    """Test that 1200 services (more than two pages of 500) are listed through continue tokens, each
    one handed over once, and that the watch starts from the list's resourceVersion (no ADDED replay)."""
    for k in range(1200):
        api.put(service(f"s{k}", 80 + k % 100))
    f = Followed(config_file)
    try:
        assert len(f.services()) == 1200
        assert len(ops(f.deltas)) == 1200 + 1  # the services and the namespace; no duplicate
        assert api.count("list", "services") == 3
        informer = next(i for i in f.source.informers if i.resource is SERVICES)
        assert int(informer.resource_version) == stored_rv(api, "s1199")
        assert f.source.storage_status()["connected"] is True
    finally:
        f.source.close()


def test_watch_events_become_deltas_in_order(api: KubeApiServer, followed: Followed) -> None:
    """Test that ADDED, MODIFIED and DELETED reach the cache as upsert, upsert, delete of that Service."""
    api.put(service("web"))
    api.put(service("web", 8080))
    api.remove("Service", "default", "web")
    followed.until(lambda: len(followed.deltas) >= 4)
    assert ops(followed.deltas[1:]) == [("Service", "upsert", "default/web")] * 2 + [
        ("Service", "delete", "default/web")]
    first, second = followed.deltas[1].obj, followed.deltas[2].obj
    assert isinstance(first, Service)
    assert isinstance(second, Service)
    assert [p.port for p in second.spec.ports] == [8080]
    assert first.metadata.uid == second.metadata.uid
    assert followed.services() == {}


def test_only_this_nodes_pods_and_a_pod_leaving_the_selector_is_deleted(api: KubeApiServer,
                                                                        followed: Followed) -> None:
    """Test that the pod informer's field selector keeps other nodes' pods out, and that a pod no longer
    on this node (a MODIFIED that leaves the selector) is a delete."""
    api.put(pod("web-aa"))
    api.put(pod("web-bb", node="node-b", ip="10.244.1.5"))
    followed.until(lambda: followed.source.find("Pod", "default", "web-aa") is not None)
    assert [p.metadata.name for p in followed.source.objects("Pod")] == ["web-aa"]
    found = followed.source.find("Pod", "default", "web-aa")
    assert isinstance(found, Pod)
    assert found.status.pod_ip == "10.244.0.5"
    api.put(pod("web-aa", node="node-b"))
    followed.until(lambda: followed.source.objects("Pod") == [])
    assert ops(followed.deltas)[-1] == ("Pod", "delete", "default/web-aa")
    assert ("list", "", "pods") in api.requests
    assert ("watch", "", "pods") in api.requests


def test_a_bookmark_advances_the_resource_version(api: KubeApiServer, followed: Followed) -> None:
    """Test that a bookmark on a quiet resource moves its watch's resourceVersion to the server's, without
    a delta, so a later watch starts from there."""
    informer = next(i for i in followed.source.informers if i.resource is SERVICES)
    before = informer.resource_version
    for k in range(3):
        api.put(pod(f"web-{k}a"))
    api.bookmark()
    followed.until(lambda: informer.resource_version != before)
    assert int(informer.resource_version) == api.state.revision
    assert all(d.kind == "Pod" for d in followed.deltas[1:])


def test_a_watch_cut_mid_stream_resumes_from_its_revision_without_loss(api: KubeApiServer,
                                                                       followed: Followed) -> None:
    """Test that after every watch is cut, changes made meanwhile arrive once each, through a new watch
    from the last resourceVersion: no second list."""
    api.put(service("a"))
    followed.until(lambda: "default/a" in followed.services())
    lists = len([r for r in api.requests if r[0] == "list"])
    api.cut_watches()
    api.put(service("b"))
    api.put(service("a", 81))
    api.remove("Service", "default", "b")
    api.put(service("c"))
    followed.until(lambda: "default/c" in followed.services())
    assert ops(followed.deltas[2:]) == [
        ("Service", "upsert", "default/b"), ("Service", "upsert", "default/a"),
        ("Service", "delete", "default/b"), ("Service", "upsert", "default/c")]
    assert len([r for r in api.requests if r[0] == "list"]) == lists


def test_410_gone_lists_again_and_hands_over_only_the_difference(api: KubeApiServer,
                                                                  followed: Followed) -> None:
    """Test that with the API server down while 100 services exist, one changed, one deleted, one added
    and the history compacted, the watch's 410 leads to one list per resource and exactly three deltas:
    the 98 unchanged services are not handed over again."""
    for k in range(100):
        api.put(service(f"s{k}"))
    followed.until(lambda: len(followed.services()) == 100)
    before = len(followed.deltas)
    api.stop()
    api.put(service("s1", 8080))
    api.remove("Service", "default", "s2")
    api.put(service("new"))
    api.compact()
    lists = api.count("list", "services")
    api.start()
    followed.until(lambda: "default/new" in followed.services())
    assert sorted(ops(followed.deltas[before:])) == [("Service", "delete", "default/s2"),
                                                     ("Service", "upsert", "default/new"),
                                                     ("Service", "upsert", "default/s1")]
    assert api.count("list", "services") == lists + 1
    # every informer reconnects on its own backoff (up to 5 s), not with the services' relist
    followed.until(lambda: followed.source.storage_status()["connected"] is True)


def test_a_restarted_api_server_is_followed_from_the_last_revision(api: KubeApiServer,
                                                                   followed: Followed) -> None:
    """Test that an API server restarted with its history (not compacted) is watched again from the
    revision the source had: the change made while it was down arrives, nothing is listed again."""
    api.put(service("a"))
    followed.until(lambda: "default/a" in followed.services())
    lists = len([r for r in api.requests if r[0] == "list"])
    api.stop()
    followed.until(lambda: followed.source.storage_status()["connected"] is False)
    assert "default/a" in followed.services()  # the cache keeps its view while disconnected
    api.put(service("a", 81))
    api.start()
    followed.until(lambda: followed.services()["default/a"] == stored_rv(api, "a"))
    followed.until(lambda: followed.source.storage_status()["connected"] is True)
    assert len([r for r in api.requests if r[0] == "list"]) == lists
    assert ops(followed.deltas[1:]) == [("Service", "upsert", "default/a")] * 2


def test_a_slow_api_server_loses_and_repeats_nothing(api: KubeApiServer, config_file: Path) -> None:
    """Test that with every answer delayed, the list and the watch still deliver each change once."""
    for k in range(20):
        api.put(service(f"s{k}"))
    api.delay = 0.3
    f = Followed(config_file)
    try:
        for k in range(20, 25):
            api.put(service(f"s{k}"))
        f.until(lambda: len(f.services()) == 25)
        keys = [key for _, _, key in ops(f.deltas) if key.startswith("default/")]
        assert sorted(keys) == sorted(f"default/s{k}" for k in range(25))
    finally:
        f.source.close()


def test_an_unreachable_api_server_is_retried_with_backoff_not_a_busy_loop() -> None:
    """Test that an informer facing a closed port waits 0.5 s doubling to the 5 s cap between attempts:
    one attempt per wait, and says it is disconnected."""
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 8:
            raise asyncio.CancelledError

    async def run() -> Informer:
        api = KubeApi(load_config_for("http://127.0.0.1:9"))
        informer = Informer(api, SERVICES, lambda changes: None, sleep=record)
        with pytest.raises(asyncio.CancelledError):
            await informer.run()
        await api.close()
        return informer

    informer = asyncio.run(run())
    assert waits == [0.5, 1.0, 2.0, 4.0, BACKOFF_MAX_SECONDS, BACKOFF_MAX_SECONDS, BACKOFF_MAX_SECONDS,
                     BACKOFF_MAX_SECONDS]
    assert informer.lists == 0
    assert not informer.connected
    assert "127.0.0.1:9" in informer.error


def load_config_for(url: str) -> Any:
    """A configuration for `url` through a kubeconfig file, as the agent loads one."""
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".kubeconfig", delete=False) as handle:
        handle.write(kubeconfig(url))
    path = Path(handle.name)
    try:
        return load_config(path)
    finally:
        path.unlink()


def test_an_api_server_refusing_lists_is_retried_and_nothing_is_rewritten(api: KubeApiServer,
                                                                          followed: Followed) -> None:
    """Test that after a compaction, while the API server answers every list with 500, the source says
    it is disconnected with the server's message and keeps its view; once lists work again, the relist
    hands over nothing (no object changed)."""
    api.put(service("a"))
    followed.until(lambda: "default/a" in followed.services())
    before = len(followed.deltas)
    api.refuse_lists = status(500, "InternalError", "etcdserver: request timed out")
    lists = api.count("list", "services")
    api.put(pod("web-xx", node="node-b"))  # a revision past every informer's, then compacted away
    api.compact()
    api.cut_watches()
    followed.until(lambda: api.count("list", "services") >= lists + 3)
    state = followed.source.storage_status()
    assert state["connected"] is False
    assert "etcdserver: request timed out" in state["error"]
    assert "default/a" in followed.services()
    api.refuse_lists = None
    followed.until(lambda: followed.source.storage_status()["connected"] is True)
    assert len(followed.deltas) == before


def test_an_object_that_does_not_decode_is_one_log_line_and_skipped(api: KubeApiServer, followed: Followed,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Test that a Service with a port out of range is skipped with one line naming it, and the others
    are still taken in."""
    bad = service("bad")
    bad["spec"]["ports"][0]["port"] = 70000
    with caplog.at_level(logging.WARNING, logger="velvet.kube"):
        api.put(bad)
        api.put(service("good"))
        followed.until(lambda: "default/good" in followed.services())
    assert "default/bad" not in followed.services()
    lines = [r.getMessage() for r in caplog.records if "bad" in r.getMessage()]
    assert len(lines) == 1
    assert "Service default/bad" in lines[0]
    assert "70000" in lines[0]
    assert followed.source.storage_status()["skipped"] == 1


def test_nodes_give_routing_targets_and_this_nodes_pod_cidr(api: KubeApiServer, followed: Followed,
                                                           config_file: Path) -> None:
    """Test that Nodes with an InternalIP and podCIDRs are routing targets (a node without a pod CIDR yet
    is not), and that the agent's pod CIDR is its own Node's."""
    api.put(node("node-b", "192.168.77.3", "10.244.1.0/24"))
    api.put(node("node-c", "192.168.77.4", None))
    followed.until(lambda: len(followed.source.registered() or ()) == 3)
    assert [(n.name, n.internal_ip, n.pod_cidr) for n in followed.source.nodes()] == [
        (NODE, "192.168.77.2", "10.244.0.0/24"), ("node-b", "192.168.77.3", "10.244.1.0/24")]
    assert followed.source.registered() == frozenset({NODE, "node-b", "node-c"})
    config = load_config(config_file)
    assert node_pod_cidr(config, "node-b") == "10.244.1.0/24"
    waits: list[float] = []
    with pytest.raises(Exception, match="node-c: no pod CIDR"):
        node_pod_cidr(config, "node-c", attempts=3, sleep=waits.append)
    assert waits == [0.5, 1.0]


def test_a_change_taken_in_twice_is_one_delta() -> None:
    """Test that the cache publishes nothing for an object handed over again unchanged (a relist)."""
    from velvet.sources.kube_cache import KubeCache
    cache = KubeCache()
    raw = {**service("web"), "metadata": {**service("web")["metadata"], "resourceVersion": "7", "uid": "u"}}
    cache.put([Change("Service", "upsert", "default/web", raw)])
    assert len(cache.refresh()) == 1
    cache.put([Change("Service", "upsert", "default/web", raw)])
    assert cache.refresh() == []
    assert cache.version == 7


def test_unreachable_is_a_typed_error() -> None:
    """Test that a list against a closed port raises `Unreachable` naming the server."""
    async def run() -> None:
        api = KubeApi(load_config_for("http://127.0.0.1:9"))
        try:
            with pytest.raises(Unreachable, match="127.0.0.1:9"):
                await api.list_page(SERVICES, {})
        finally:
            await api.close()
    asyncio.run(run())
