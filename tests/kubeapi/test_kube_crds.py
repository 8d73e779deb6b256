"""Test cluster identities and endpoints through VelvetIdentity and VelvetEndpoint objects (CRD mode).

Against the stand-in API server: allocators that race for a label set get one number (the API server's
409 decides, the loser reads the winner's), unused identities are collected after a grace, the endpoint
publisher writes only the difference and only its node's objects, and two agents on two nodes number
the same labels alike and see each other's pods in their ipcache.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_apiserver import KubeApiServer, kubeconfig
from test_kube_source import node, pod
from test_nodes import DictRoutes

from velvet.agent.config import AgentConfig
from velvet.agent.node import Agent, Dirty
from velvet.datapath.fake import FakeDatapath
from velvet.datapath.tables import RemoteIdentity
from velvet.install.render import InstallOptions, rbac_rules, render
from velvet.model import FIRST_ALLOCATED_IDENTITY
from velvet.model.cluster_endpoint import ClusterEndpoint
from velvet.sources.kube_client import KubeCalls, load_config
from velvet.sources.kube_endpoints import KubeEndpoints
from velvet.sources.kube_identities import GC_GRACE_SECONDS, KubeIdentities

# The install's ClusterRole (deploy/kubernetes): (verb, API group, resource) the agent may call.
CLUSTER_ROLE = {(verb, group, resource) for group, resource, verb in rbac_rules(render(InstallOptions()))}
NUMBERS = range(FIRST_ALLOCATED_IDENTITY, 0x10000)
WEB = {"k8s:app": "web", "k8s:io.kubernetes.pod.namespace": "shop"}
DB = {"k8s:app": "db", "k8s:io.kubernetes.pod.namespace": "shop"}


@pytest.fixture
def api() -> Iterator[KubeApiServer]:
    server = KubeApiServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def calls(api: KubeApiServer, tmp_path: Path) -> Iterator[Callable[[], KubeCalls]]:
    """A factory of clients of the stand-in (one per allocator, as each agent has its own)."""
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig(api.url))
    made: list[KubeCalls] = []

    def make() -> KubeCalls:
        made.append(KubeCalls(load_config(path)))
        return made[-1]
    yield make
    for c in made:
        c.close()


def objects(api: KubeApiServer, plural: str) -> dict[str, dict[str, Any]]:
    """What the API server holds of a resource, by key, as an informer would give it."""
    return {(f"{k[1]}/{k[2]}" if k[1] else k[2]): o for k, o in api.state.objects.items() if k[0] == plural}


def allocator(make: Callable[[], KubeCalls], view: Callable[[], dict[str, Any]] = dict,
              endpoints: Callable[[], dict[str, Any]] = dict,
              clock: Callable[[], float] = time.monotonic) -> KubeIdentities:
    return KubeIdentities(make(), NUMBERS, view, endpoints, clock)


def test_racing_allocators_get_one_number_for_one_label_set(api: KubeApiServer,
                                                            calls: Callable[[], KubeCalls]) -> None:
    """Test that eight allocators that have not seen each other's identities (empty views) and allocate
    the same labels at once all get the same number: one create wins, the others' 409 reads it."""
    allocators = [allocator(calls) for _ in range(8)]
    got: list[int] = []
    start = threading.Barrier(len(allocators))

    def run(a: KubeIdentities) -> None:
        start.wait()
        got.append(a.allocate(WEB))
    threads = [threading.Thread(target=run, args=(a,)) for a in allocators]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert got == [FIRST_ALLOCATED_IDENTITY] * 8
    stored = objects(api, "velvetidentities")
    assert list(stored) == [str(FIRST_ALLOCATED_IDENTITY)]
    assert stored[str(FIRST_ALLOCATED_IDENTITY)]["securityLabels"] == WEB
    assert api.count("create", "velvetidentities") == 8
    assert api.count("get", "velvetidentities") == 7


def test_a_number_taken_by_other_labels_moves_on_and_the_view_is_used(api: KubeApiServer,
                                                                      calls: Callable[[], KubeCalls]) -> None:
    """Test that an allocator that did not see a number taken by other labels gets the next one, and one
    that sees the labels' identity in its view answers from it without a call."""
    assert allocator(calls).allocate(WEB) == FIRST_ALLOCATED_IDENTITY
    assert allocator(calls).allocate(DB) == FIRST_ALLOCATED_IDENTITY + 1
    seen = allocator(calls, view=lambda: objects(api, "velvetidentities"))
    requests = len(api.requests)
    assert seen.allocate(DB) == FIRST_ALLOCATED_IDENTITY + 1
    assert len(api.requests) == requests


def test_unused_identities_are_collected_after_the_grace(api: KubeApiServer,
                                                          calls: Callable[[], KubeCalls]) -> None:
    """Test that an identity no VelvetEndpoint refers to and nobody here holds is deleted once unused for
    the grace, while one an endpoint refers to and one held here stay."""
    now = [0.0]
    writer = allocator(calls)
    web, db, held = writer.allocate(WEB), writer.allocate(DB), writer.allocate({"k8s:app": "cache"})
    api.put({"apiVersion": "velvet.io/v1alpha1", "kind": "VelvetEndpoint",
             "metadata": {"name": "web-1", "namespace": "shop"},
             "spec": {"podIP": "10.244.1.5", "identity": web, "nodeName": "node-b"}})
    collector = allocator(calls, view=lambda: objects(api, "velvetidentities"),
                          endpoints=lambda: objects(api, "velvetendpoints"), clock=lambda: now[0])
    collector.held[held] = {"k8s:app": "cache"}
    assert collector.collect() == []
    now[0] = GC_GRACE_SECONDS - 1
    assert collector.collect() == []
    now[0] = GC_GRACE_SECONDS
    assert collector.collect() == [db]
    assert sorted(objects(api, "velvetidentities")) == sorted([str(web), str(held)])
    assert api.count("delete", "velvetidentities") == 1


def test_the_publisher_writes_only_the_difference_and_only_its_nodes(api: KubeApiServer,
                                                                     calls: Callable[[], KubeCalls]) -> None:
    """Test that publishing creates, updates and deletes this node's VelvetEndpoints to match, leaves
    another node's alone, writes nothing when nothing changed, and that the view has every node's."""
    api.put({"apiVersion": "velvet.io/v1alpha1", "kind": "VelvetEndpoint",
             "metadata": {"name": "db-1", "namespace": "shop"},
             "spec": {"podIP": "10.244.1.7", "identity": 300, "nodeName": "node-b"}})
    pub = KubeEndpoints(calls(), "node-a", lambda: objects(api, "velvetendpoints"), lambda _: True)
    web = ClusterEndpoint("10.244.0.5", 256, "node-a", "shop/web-1")
    old = ClusterEndpoint("10.244.0.6", 256, "node-a", "shop/web-2")
    pub.publish({web.ip: web, old.ip: old})
    assert pub.sync_once() == 2
    assert pub.sync_once() == 0
    moved = ClusterEndpoint("10.244.0.5", 257, "node-a", "shop/web-1")
    pub.publish({moved.ip: moved})
    assert pub.sync_once() == 2  # one update, one delete
    stored = objects(api, "velvetendpoints")
    assert sorted(stored) == ["shop/db-1", "shop/web-1"]
    assert stored["shop/web-1"]["spec"] == {"podIP": "10.244.0.5", "identity": 257, "nodeName": "node-a"}
    assert pub.view() == {"10.244.0.5": moved,
                          "10.244.1.7": ClusterEndpoint("10.244.1.7", 300, "node-b", "shop/db-1")}
    assert api.count("update", "velvetendpoints") == 1


def test_two_agents_number_the_same_labels_alike_and_see_each_others_pods(api: KubeApiServer,
                                                                          tmp_path: Path) -> None:
    """Test that agents on two nodes, each following only its own pods, give pods with the same labels the
    same identity, that each has the other's pod in its ipcache with that identity (from the
    VelvetEndpoint the other published), and that a policy on node-a admits db, whose only pod runs on
    node-b (its labels come from its VelvetIdentity)."""
    api.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    agents: list[tuple[Agent, FakeDatapath]] = []
    for k, name in enumerate(("node-a", "node-b")):
        api.put(node(name, f"192.168.77.{2 + k}", f"10.244.{k}.0/24"))
        web = pod(f"web-{k}x", node=name, ip=f"10.244.{k}.5")
        web["metadata"]["namespace"] = "shop"
        api.put(web)
    db = pod("db-1x", node="node-b", ip="10.244.1.6")  # numbered first on node-b when alone (db < web)
    db["metadata"].update(namespace="shop", labels={"app": "db"})
    api.put(db)
    api.put({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "web-from-db", "namespace": "shop"},
             "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                      "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "db"}}}]}]}})
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig(api.url))
    try:
        for k, name in enumerate(("node-a", "node-b")):
            dp = FakeDatapath()
            agent = Agent(AgentConfig(sandbox="unit", node_name=name, node_ips=(f"192.168.77.{2 + k}",),
                                      state_dir=tmp_path / name, source="kubernetes", kubeconfig=path),
                          dp, routes=DictRoutes())
            agents.append((agent, dp))
            agent.start()
            agent.add_endpoint("shop", f"web-{k}x", {"ip": f"10.244.{k}.5", "ifname": f"vv0000000{k}",
                                                      "ifindex": 7 + k})
        agents[1][0].add_endpoint("shop", "db-1x", {"ip": "10.244.1.6", "ifname": "vv00000009", "ifindex": 9})

        def converged() -> bool:
            for agent, _ in agents:
                agent.catch_up()
                agent.reconcile(Dirty(policy=True))
            return all(len(dp.tables.get("ipcache", {}).keys() & {"10.244.0.5/32", "10.244.1.5/32"}) == 2
                       for _, dp in agents)
        eventually(converged)
        identities = {agent.config.node_name: {ep.pod: ep.identity
                                               for ep in agent.policy.compiled.endpoints.values()}
                      for agent, _ in agents if agent.policy.compiled is not None}
        a, b = identities["node-a"]["shop/web-0x"], identities["node-b"]["shop/web-1x"]
        assert a == b
        assert a >= FIRST_ALLOCATED_IDENTITY
        for _, dp in agents:
            assert {identity_of(dp.tables["ipcache"][ip]) for ip in ("10.244.0.5/32", "10.244.1.5/32")} == {a}
        assert set(api.requests) <= CLUSTER_ROLE, set(api.requests) - CLUSTER_ROLE
        node_a = agents[0][0].policy.compiled
        assert node_a is not None
        web_a = next(ep for ep in node_a.endpoints.values() if ep.pod == "shop/web-0x")
        assert web_a.ingress_isolated
        admitted = {key.identity for key in web_a.entries}
        assert identities["node-b"]["shop/db-1x"] in admitted
        assert a not in admitted
        db_identity = identities["node-b"]["shop/db-1x"]
        assert db_identity != a
        assert sorted(objects(api, "velvetidentities")) == sorted([str(a), str(db_identity)])
    finally:
        for agent, _ in agents:
            agent.close()


def identity_of(entry: object) -> int:
    """The identity of an ipcache value: a number, or a RemoteIdentity (tunnel mode) that carries one."""
    assert isinstance(entry, int | RemoteIdentity)
    return entry if isinstance(entry, int) else entry.identity


def eventually(done: Callable[[], bool]) -> None:
    """Poll `done` (50 ms apart, at most 15 s): informers and publishers run on their own threads."""
    for _ in range(300):
        if done():
            return
        time.sleep(0.05)
    raise AssertionError("never happened")


def test_tracing_policies_from_the_api_set_the_guard_rules(api: KubeApiServer, tmp_path: Path) -> None:
    """Test that an agent following the Kubernetes API takes a VelvetTracingPolicy from its CRD into the
    guard's rules (a connect deny named by the policy), drops them when the object is deleted, and asks
    only what the ClusterRole grants."""
    from test_enforce import CLUSTER_DENY, RecordingGuard

    api.put(node("node-a", "192.168.77.2", "10.244.0.0/24"))
    policy = yaml.safe_load(CLUSTER_DENY)
    api.put(policy)
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig(api.url))
    guard = RecordingGuard()
    config = AgentConfig(sandbox="unit", node_name="node-a", node_ips=("192.168.77.2",), state_dir=tmp_path,
                         source="kubernetes", kubeconfig=path)
    agent = Agent(config, FakeDatapath(), routes=DictRoutes(), guard_source=guard)
    try:
        agent.start()

        def rules() -> list[Any]:
            agent.catch_up()
            agent.reconcile(Dirty(policy=True))
            agent.program_tracing()
            return guard.calls[-1] if guard.calls else []
        eventually(lambda: len(rules()) == 1)
        assert agent.guard.events.policy_names == {rules()[0].policy: "no-https"}
        api.remove("VelvetTracingPolicy", "", "no-https")
        eventually(lambda: rules() == [])
        assert set(api.requests) <= CLUSTER_ROLE, set(api.requests) - CLUSTER_ROLE
        assert ("list", "velvet.io", "velvettracingpoliciesnamespaced") in api.requests
    finally:
        agent.close()
