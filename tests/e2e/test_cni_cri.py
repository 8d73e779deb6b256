"""Test that containerd, driven through its CRI API as the kubelet does, attaches pods through velvet-cni.

containerd runs with its own config, root, state, socket and CNI directories under a temporary
directory (the CNI ones written by `velvet cni install`, with Debian's `loopback` beside the plugin);
the image is Debian's busybox-static, built with umoci + skopeo and imported without a registry. The
test is the kubelet: RunPodSandbox with the pod's metadata and labels, CreateContainer, StartContainer,
ExecSync, StopPodSandbox, RemovePodSandbox. The sandbox node plays the API server: it holds the same
Pod object (annotated `velvet.io/runtime: cni`), so its labels decide identity and NetworkPolicy.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import Sandbox, echo_pod, namespace, sandbox
from runtime_manifests import deny_egress, runtime_pod, server_service

from bench.cri import Containerd, PodSpec, build_image
from velvet.cni.attachments import host_veth_of
from velvet.connectivity.manifests import TCP_PORT
from velvet.sandbox.naming import SandboxNames

pytestmark = pytest.mark.privileged
NS = "cri"
SERVICE = server_service(NS)
CLIENT = PodSpec("default", "criclient", "5b0c7a52-0000-4000-8000-00000000c71e", {"app": "criclient"})
CLIENT_POD = runtime_pod("default", "criclient", CLIENT.uid)
DENY = deny_egress("default", "criclient")
INIT_IDENTITY = 5


@dataclass
class CriNode:
    """A sandbox node with a server behind a Service, and a containerd whose CNI is velvet-cni."""

    sb: Sandbox
    containerd: Containerd
    server_ip: str
    service_ip: str

    def ask(self, container_id: str, host: str, port: int) -> str:
        """Send "hello" from the container to host:port with busybox nc (ExecSync); what came back."""
        _, out = self.containerd.exec(container_id, ["sh", "-c", f"echo hello | nc -w 2 {host} {port}"])
        return out

    def endpoints(self) -> dict[str, dict[str, Any]]:
        """`velvet endpoint list` by pod."""
        return {row["pod"]: row for row in self.sb.json("endpoint", "list", "-o", "json")}

    def node_links(self) -> str:
        """`ip -o link` in the sandbox node's network namespace."""
        return subprocess.run(["ip", "-n", SandboxNames(self.sb.name).node_netns, "-o", "link"],
                              capture_output=True, text=True, check=True).stdout

    def pod_ip(self, name: str) -> str:
        """The podIP `velvet get pods` shows for default/name ("" when none)."""
        pods = {p["metadata"]["name"]: p for p in self.sb.pods("default")}
        return str(pods.get(name, {}).get("status", {}).get("podIP", ""))


@pytest.fixture(scope="module")
def image() -> Iterator[Path]:
    """The busybox-static image archive, built once for the module."""
    work = Path(tempfile.mkdtemp(prefix="vcri-img", dir="/tmp"))
    try:
        yield build_image(work)
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)


@pytest.fixture
def cri_node(image: Path) -> Iterator[CriNode]:
    """A sandbox, velvet-cni installed for a containerd of the test's own, the image imported."""
    root = Path(tempfile.mkdtemp(prefix="vcri", dir="/tmp"))  # short: shim and socket paths must fit
    containerd = Containerd(root)
    with sandbox("cri") as sb:
        try:
            sb.apply(namespace(NS) + echo_pod(NS, "server", {"app": "server"}) + SERVICE)
            server_ip = sb.wait_ready([f"{NS}/server"])[f"{NS}/server"]
            service_ip = sb.json("get", "services", "-n", NS)["items"][0]["spec"]["clusterIP"]
            sb.velvet("cni", "install", "--conf-dir", str(containerd.cni_conf), "--bin-dir",
                      str(containerd.cni_bin), "--sandbox", sb.name)
            containerd.start()
            containerd.import_image(image)
            yield CriNode(sb, containerd, server_ip, service_ip)
        finally:
            containerd.close()
    assert not root.exists()


def test_cri_pod_is_a_velvet_pod(cri_node: CriNode) -> None:
    """Test that a CRI pod gets a pod-CIDR address, reaches pod and Service, obeys policy, and is gone after
    RemovePodSandbox."""
    node, cd = cri_node, cri_node.containerd
    assert cd.network_ready(), cd.log_tail()
    sandbox_id = cd.run_pod(CLIENT)  # before the API server (the sandbox's store) knows the pod
    state, ip, info = cd.pod_status(sandbox_id)
    assert state == "SANDBOX_READY"
    assert ip.startswith("10.244.0.")
    assert node.pod_ip("criclient") == ip
    assert node.endpoints()["default/criclient"]["identity"] == INIT_IDENTITY
    node.sb.apply(CLIENT_POD)
    row = node.endpoints()["default/criclient"]
    assert row["labels"]["k8s:app"] == "criclient"
    assert row["identity"] != INIT_IDENTITY
    netns = _netns_of(info)
    host_veth = host_veth_of(f"{sandbox_id}/eth0")
    assert host_veth in node.node_links()

    container_id = cd.start_container(sandbox_id, CLIENT, "c", ["/bin/sleep", "600"])
    code, out = cd.exec(container_id, ["ip", "-o", "-4", "addr", "show", "eth0"])
    assert code == 0
    assert f"{ip}/32" in out
    assert node.ask(container_id, node.server_ip, TCP_PORT).startswith("server ")
    assert node.ask(container_id, node.service_ip, 80).startswith("server ")
    node.sb.apply(DENY)
    try:
        assert node.ask(container_id, node.server_ip, TCP_PORT) == ""
    finally:
        node.sb.delete(DENY)
    assert node.ask(container_id, node.service_ip, 80).startswith("server ")

    cd.stop_pod(sandbox_id)
    assert "default/criclient" not in node.endpoints()
    cd.remove_pod(sandbox_id)  # the CRI's second DEL: CNI_NETNS is empty now
    assert sandbox_id not in cd.pod_ids()
    assert "default/criclient" not in node.endpoints()
    assert node.pod_ip("criclient") == ""
    leases = json.loads(Path(f"/var/lib/velvet/{node.sb.name}/ipam.json").read_text())
    assert ip not in leases.values()
    assert not netns.exists()
    assert host_veth not in node.node_links()


def _netns_of(info: dict[str, Any]) -> Path:
    """The pod's network namespace path from PodSandboxStatus's verbose info (the runtime spec)."""
    spec = info["runtimeSpec"]
    assert isinstance(spec, dict)
    return Path(next(ns["path"] for ns in spec["linux"]["namespaces"] if ns["type"] == "network"))
