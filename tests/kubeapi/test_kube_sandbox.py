"""Test a sandbox node whose agent reads the Kubernetes API: real pods, real traffic, real datapath.

`velvet sandbox up --kubeconfig FILE` starts the node's agent with `--source kubernetes`; the stand-in
API server listens on the loopback of the node's own namespace (made by the sandbox, removed by
`sandbox down`). The test plays the cluster's other parts: kubectl (objects), the controller manager
(the Node's pod CIDR, EndpointSlices) and the kubelet's status writes (pod IPs from the sandbox's
runtime, which ran the pods the agent listed for it). A Service then load-balances pod traffic, and
NetworkPolicies from the shared conformance subset (deny all ingress, then allow one peer) decide it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_apiserver import KubeApiServer, kubeconfig
from test_kube_source import node

from velvet.cli.runner import SandboxCli, unique_name
from velvet.connectivity.manifests import TCP_PORT, echo_pod
from velvet.sandbox.naming import SandboxConfig, node_config
from velvet.sandbox.pods import PodRuntime

pytestmark = pytest.mark.privileged
PORT = 16443  # inside the node's namespace only
CLUSTER_IP = "10.96.0.50"


def pod_object(name: str, app: str, node_name: str) -> dict[str, Any]:
    """An echo pod as the scheduler leaves it in the API: bound to the node."""
    obj: dict[str, Any] = yaml.safe_load(echo_pod("default", name, {"app": app}))
    obj["spec"]["nodeName"] = node_name
    return obj


def eventually(done: Callable[[], bool], what: str, tries: int = 150) -> None:
    """Poll `done` 0.2 s apart (pods start, the agent follows the API server on its own thread)."""
    for _ in range(tries):
        if done():
            return
        time.sleep(0.2)
    raise AssertionError(f"never: {what}")


@pytest.fixture
def kube_node(tmp_path: Path) -> Iterator[tuple[SandboxCli, SandboxConfig, KubeApiServer]]:
    """A one-node sandbox on the Kubernetes source, the stand-in in its node namespace."""
    sb = SandboxCli(unique_name("ks"))
    cfg = node_config(sb.name, 0)
    netns = Path("/run/netns") / cfg.names.node_netns
    config = tmp_path / "kubeconfig"
    config.write_text(kubeconfig(f"http://127.0.0.1:{PORT}"))
    api = KubeApiServer(netns=str(netns), port=PORT)
    up = subprocess.Popen(sb.argv("sandbox", "up", "--kubeconfig", str(config)), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        eventually(netns.exists, f"{netns} made by sandbox up")
        api.start()
        api.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
        api.put(node(cfg.node_name, cfg.node_uplink_ip, cfg.pod_cidr))
        out, _ = up.communicate(timeout=120)
        assert up.returncode == 0, out
        yield sb, cfg, api
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        api.stop()
        sb.down()


def test_services_and_network_policy_from_the_api_server(kube_node: tuple[SandboxCli, SandboxConfig,
                                                                          KubeApiServer]) -> None:
    """Test that pods the API server binds to the node run, that their Service (with the slice the
    controller would write) reaches both backends from a client pod, that a deny-all ingress policy
    blocks it, and that a policy admitting app=client lets it through again."""
    sb, cfg, api = kube_node
    for name, app in (("web-0", "web"), ("web-1", "web"), ("client", "client")):
        api.put(pod_object(name, app, cfg.node_name))
    runtime = PodRuntime(cfg)
    eventually(lambda: all(runtime.find("default", n) is not None for n in ("web-0", "web-1", "client")),
               "the kubelet ran the pods the agent listed")
    ips = {}
    for name in ("web-0", "web-1", "client"):
        record = runtime.find("default", name)
        assert record is not None
        ips[name] = record.ip
        obj = api.get("Pod", "default", name)
        assert obj is not None
        obj["status"] = {"phase": "Running", "podIP": record.ip, "podIPs": [{"ip": record.ip}],
                         "hostIP": cfg.node_uplink_ip,
                         "conditions": [{"type": "Ready", "status": "True"}]}
        api.put(obj)  # as the kubelet writes pod status
    api.put({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
             "spec": {"clusterIP": CLUSTER_IP, "clusterIPs": [CLUSTER_IP], "selector": {"app": "web"},
                      "ports": [{"name": "tcp", "port": 80, "targetPort": TCP_PORT, "protocol": "TCP"}]}})
    api.put({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": "web-x1", "namespace": "default",
                          "labels": {"kubernetes.io/service-name": "web"}},
             "addressType": "IPv4",
             "endpoints": [{"addresses": [ips[n]], "nodeName": cfg.node_name,
                            "targetRef": {"kind": "Pod", "namespace": "default", "name": n},
                            "conditions": {"ready": True, "serving": True, "terminating": False}}
                           for n in ("web-0", "web-1")],
             "ports": [{"name": "tcp", "port": TCP_PORT, "protocol": "TCP"}]})
    url = f"tcp://{CLUSTER_IP}:80"
    seen: set[str] = set()

    def both_backends() -> bool:
        answer = sb.query("default/client", url)
        if answer:
            seen.add(answer.split()[0])
        return seen == {"web-0", "web-1"}
    eventually(both_backends, "both backends answer through the Service")

    api.put({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "deny-ingress", "namespace": "default"},
             "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}})
    eventually(lambda: sb.query("default/client", url, timeout=1.0) is None, "deny-all blocks the client")
    assert sb.query("default/client", f"tcp://{ips['web-0']}:{TCP_PORT}", timeout=1.0) is None
    api.put({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "allow-client", "namespace": "default"},
             "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                      "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                                   "ports": [{"port": TCP_PORT, "protocol": "TCP"}]}]}})
    eventually(lambda: sb.query("default/client", url, timeout=1.0) is not None, "allow-client admits it")
    assert sb.query("default/web-1", f"tcp://{ips['web-0']}:{TCP_PORT}", timeout=1.0) is None
    status = sb.velvet("status").stdout
    assert f"Source:        kubernetes http://127.0.0.1:{PORT}  connected" in status
