"""Test an agent on the Kubernetes source against the stand-in API server, with the in-memory datapath.

The same objects reach one agent through `velvet apply` (the local store) and another through the API
server (as kubectl, the scheduler, the kubelet and the endpointslice controller would have written
them); both must program the same tables. The Kubernetes agent refuses `velvet apply` in one line,
routes to the other Nodes, and `velvet status` says whether its source is connected.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_apiserver import KubeApiServer, kubeconfig, status
from test_agent import MANIFEST, POLICY, apply, run_pod
from test_kube_source import node
from test_nodes import DictRoutes

from velvet.agent import queries
from velvet.agent.config import AgentConfig
from velvet.agent.node import Agent, Dirty
from velvet.cli.status import render
from velvet.datapath.fake import FakeDatapath
from velvet.errors import BadRequest
from velvet.model.codec import to_dict

NODE = "velvet-node"
SECOND_SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  selector: {app: web}
  type: NodePort
  ports: [{port: 8080, targetPort: 8080}]
"""


@pytest.fixture
def api() -> Iterator[KubeApiServer]:
    server = KubeApiServer()
    server.start()
    server.put(node(NODE, "192.168.77.2", "10.244.0.0/24"))
    yield server
    server.stop()


def kube_agent(api: KubeApiServer, tmp_path: Path) -> tuple[Agent, FakeDatapath, DictRoutes]:
    """An agent on the Kubernetes source (kubeconfig to the stand-in), started, with the fake datapath."""
    path = tmp_path / "kubeconfig"
    path.write_text(kubeconfig(api.url))
    dp, routes = FakeDatapath(), DictRoutes()
    agent = Agent(AgentConfig(sandbox="unit", node_ips=("192.168.77.2",), state_dir=tmp_path / "kube",
                              source="kubernetes", kubeconfig=path, pod_cidr="10.99.0.0/24"),
                  dp, routes=routes)
    agent.start()
    return agent, dp, routes


def local_agent(tmp_path: Path) -> tuple[Agent, FakeDatapath]:
    dp = FakeDatapath()
    agent = Agent(AgentConfig(sandbox="unit", node_ips=("192.168.77.2",), state_dir=tmp_path / "local"), dp,
                  routes=DictRoutes())
    agent.start()
    return agent, dp


def settle(agent: Agent) -> None:
    """Take in what the informers queued and reconcile everything, as the daemon's loop does."""
    agent.store.refresh()
    agent.reconcile(Dirty({s.metadata.key for s in agent.store.objects("Service")}, policy=True))


def tables(dp: FakeDatapath) -> dict[str, dict[Any, Any]]:
    return {name: dict(contents) for name, contents in dp.tables.items() if contents}


def test_the_kubernetes_source_programs_what_the_local_store_does(api: KubeApiServer, tmp_path: Path) -> None:
    """Test that services (ClusterIP and NodePort), their slices, pods and a NetworkPolicy read from the
    API server give the same datapath tables as the same objects applied to the local store."""
    local, local_dp = local_agent(tmp_path)
    apply(local, MANIFEST + "---" + SECOND_SERVICE + "---" + POLICY)
    run_pod(local)
    apply(local, "")
    for kind in ("Namespace", "Pod", "Service", "EndpointSlice", "NetworkPolicy"):
        for obj in local.store.objects(kind):
            api.put(to_dict(obj))
    agent, dp, _ = kube_agent(api, tmp_path)
    try:
        agent.add_endpoint("shop", "web", {"ip": "10.244.0.10", "ifname": "vv00000001", "ifindex": 7})
        settle(agent)
        assert tables(dp) == tables(local_dp)
        assert len(dp.tables["lb4_services"]) >= 4
        writes = dp.writes
        settle(agent)  # nothing changed: nothing written
        assert dp.writes == writes
    finally:
        agent.close()
        local.close()


def test_apply_is_refused_in_one_line_and_the_pod_cidr_is_the_nodes(api: KubeApiServer,
                                                                    tmp_path: Path) -> None:
    """Test that `velvet apply` on the Kubernetes source says where objects come from, and that the
    agent's pod CIDR is its Node's podCIDRs, not the --pod-cidr given."""
    agent, _, _ = kube_agent(api, tmp_path)
    try:
        with pytest.raises(BadRequest, match="objects come from the Kubernetes API .*use kubectl"):
            agent.apply([{"path": "m.yaml", "text": MANIFEST}])
        with pytest.raises(BadRequest, match="use kubectl to delete"):
            agent.delete([{"path": "m.yaml", "text": MANIFEST}], None)
        assert agent.config.pod_cidr == "10.244.0.0/24"
    finally:
        agent.close()


def test_other_nodes_are_routed_and_status_says_whether_the_source_is_connected(api: KubeApiServer,
                                                                                tmp_path: Path) -> None:
    """Test that another Node's pod CIDR is routed via its InternalIP, that a Node leaving takes its route,
    and that `velvet status` shows the source connected, then disconnected while the API server is down
    (the datapath keeps its state)."""
    agent, dp, routes = kube_agent(api, tmp_path)
    try:
        api.put(node("node-b", "192.168.77.3", "10.244.1.0/24"))

        def routed() -> bool:
            agent.catch_up()  # as on the informers' wake-up: take the Node in, route to it
            return bool(routes.routes)
        eventually(routed)
        assert routes.routes == {"10.244.1.0/24": "192.168.77.3"}
        status = queries.status(agent)
        assert status["store"]["kind"] == "kubernetes"
        assert status["store"]["connected"] is True
        assert f"Source:        kubernetes {api.url}  connected" in render(status)
        before = tables(dp)
        api.stop()
        eventually(lambda: not queries.status(agent)["store"]["connected"])
        assert f"Source:        kubernetes {api.url}  DISCONNECTED: " in render(queries.status(agent))
        agent.catch_up()
        settle(agent)
        assert tables(dp) == before
        assert routes.routes == {"10.244.1.0/24": "192.168.77.3"}
    finally:
        agent.close()


def eventually(done: Callable[[], bool]) -> None:
    """Poll `done` (20 ms apart, at most 10 s): the informers run on their own thread."""
    for _ in range(500):
        if done():
            return
        time.sleep(0.02)
    raise AssertionError("never happened")


def test_a_restarted_agent_keeps_the_datapath_until_the_api_server_lists(api: KubeApiServer,
                                                                        tmp_path: Path) -> None:
    """Test that an agent restarted while the API server answers no list leaves the pinned tables as they
    were (no pass over an empty cache), and once the lists come, writes nothing: nothing changed."""
    local, _ = local_agent(tmp_path)
    apply(local, MANIFEST + "---" + SECOND_SERVICE)
    run_pod(local)
    for kind in ("Namespace", "Pod", "Service", "EndpointSlice"):
        for obj in local.store.objects(kind):
            api.put(to_dict(obj))
    local.close()
    first, dp, _ = kube_agent(api, tmp_path)
    first.add_endpoint("shop", "web", {"ip": "10.244.0.10", "ifname": "vv00000001", "ifindex": 7})
    settle(first)
    first.close()
    before, writes = tables(dp), dp.writes
    api.refuse_lists = status(500, "InternalError", "etcdserver: request timed out")
    path = tmp_path / "kubeconfig"
    again = Agent(AgentConfig(sandbox="unit", node_ips=("192.168.77.2",), state_dir=tmp_path / "kube",
                              source="kubernetes", kubeconfig=path), dp, routes=DictRoutes())
    starting = threading.Thread(target=again.start)
    starting.start()
    eventually(lambda: api.count("list", "services") >= 3)  # lists refused, tried again
    assert starting.is_alive()
    assert tables(dp) == before
    api.refuse_lists = None
    starting.join(30)
    assert not starting.is_alive()
    try:
        settle(again)
        assert tables(dp) == before
        assert dp.writes == writes
    finally:
        again.close()
