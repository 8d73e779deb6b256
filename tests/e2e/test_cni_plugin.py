"""Test velvet-cni driven exactly as a container runtime drives it (env + stdin), against a real sandbox node.

The test is the runtime: it creates the pod's network namespace (by an exact name it removes), runs
the installed plugin with the CNI environment and the network config on stdin, and checks what a user
sees: the pod's address from the node's pod CIDR, traffic to a sandbox pod and to a Service, a
NetworkPolicy on its labels, `velvet get pods` / `endpoint list` / `observe`, and nothing left after DEL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Sandbox, echo_pod, namespace, sandbox, unique_name
from runtime_manifests import deny_egress, runtime_pod, server_service

from velvet.cni.attachments import host_veth_of
from velvet.connectivity.manifests import TCP_PORT
from velvet.sandbox.naming import SandboxNames

pytestmark = pytest.mark.privileged
NS = "cni"
SERVICE = server_service(NS)
CLIENT = runtime_pod(NS, "client")
DENY_CLIENT_EGRESS = deny_egress(NS, "client")


class Runtime:
    """A hand-held container runtime: one plugin, one network config, netns it creates and removes."""

    def __init__(self, plugin: Path, conflist: dict[str, Any]) -> None:
        self.plugin = plugin
        self.config = {"cniVersion": conflist["cniVersion"], "name": conflist["name"],
                       **conflist["plugins"][0]}
        self.netns: list[str] = []

    def new_netns(self) -> str:
        """A fresh named network namespace; its path."""
        name = unique_name("vcni")
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.netns.append(name)
        return f"/run/netns/{name}"

    def call(self, command: str, container: str, netns: str, pod: str = "",
             extra: dict[str, Any] | None = None, **env: str) -> tuple[int, Any]:
        """Run the plugin as a runtime does; (exit status, decoded stdout or None)."""
        namespace_, _, name = pod.partition("/")
        args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace_};K8S_POD_NAME={name};K8S_POD_UID=uid-{name}"
        environ = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command,
                   "CNI_CONTAINERID": container, "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
                   "CNI_PATH": str(self.plugin.parent),
                   "CNI_ARGS": args if pod else "", **env}
        done = subprocess.run([str(self.plugin)], input=json.dumps({**self.config, **(extra or {})}),
                              env=environ, capture_output=True, text=True, timeout=30)
        return done.returncode, json.loads(done.stdout) if done.stdout.strip() else None

    def query(self, netns: str, url: str) -> str | None:
        """Ask an echo server from inside the runtime pod's namespace; None when it fails."""
        argv = ["ip", "netns", "exec", Path(netns).name, sys.executable, "-m", "velvet.sandbox.echo",
                "--query", url, "--timeout", "2"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return done.stdout.strip() if done.returncode == 0 else None

    def cleanup(self) -> None:
        """Remove every namespace this runtime made, by name."""
        for name in self.netns:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sandbox, Runtime, str]]:
    """A sandbox with a server pod behind a Service, velvet-cni installed for it; the server's IP."""
    root = tmp_path_factory.mktemp("cni")
    with sandbox("cni") as sb:
        sb.apply(namespace(NS) + echo_pod(NS, "server", {"app": "server"}) + SERVICE)
        server_ip = sb.wait_ready([f"{NS}/server"])[f"{NS}/server"]
        sb.velvet("cni", "install", "--conf-dir", str(root / "conf"), "--bin-dir", str(root / "bin"),
                  "--sandbox", sb.name)
        conflist = json.loads((root / "conf" / "10-velvet.conflist").read_text())
        runtime = Runtime(root / "bin" / "velvet-cni", conflist)
        try:
            yield sb, runtime, server_ip
        finally:
            runtime.cleanup()


def _ip(result: Any) -> str:
    return str(result["ips"][0]["address"].split("/")[0])


def _service_ip(sb: Sandbox) -> str:
    return str(sb.json("get", "services", "-n", NS)["items"][0]["spec"]["clusterIP"])


def test_runtime_pod_is_first_class(node: tuple[Sandbox, Runtime, str]) -> None:
    """Test that a runtime pod gets a pod-CIDR address, reaches pod and Service, obeys policy, shows up."""
    sb, runtime, server_ip = node
    sb.apply(CLIENT)
    netns = runtime.new_netns()
    code, result = runtime.call("ADD", "client0001", netns, f"{NS}/client")
    assert code == 0, result
    ip = _ip(result)
    assert ip.startswith("10.244.0.")
    assert result["cniVersion"] == runtime.config["cniVersion"]
    assert result["interfaces"][result["ips"][0]["interface"]]["sandbox"] == netns
    assert f"{ip}/32" in subprocess.run(["ip", "-n", Path(netns).name, "addr", "show", "eth0"],
                                        capture_output=True, text=True, check=True).stdout

    pods = {p["metadata"]["name"]: p for p in sb.pods(NS)}
    assert pods["client"]["status"]["podIP"] == ip
    endpoints = {row["pod"]: row for row in sb.json("endpoint", "list", "-o", "json")}
    assert endpoints[f"{NS}/client"]["labels"].get("k8s:app") == "client"
    assert runtime.query(netns, f"tcp://{server_ip}:{TCP_PORT}") is not None
    answer = runtime.query(netns, f"tcp://{_service_ip(sb)}:80")
    assert answer is not None
    assert answer.startswith("server ")
    observed = sb.velvet("observe", "--last", "200", "-o", "json").stdout
    flows = [json.loads(line) for line in observed.splitlines()]
    assert any(f.get("flow", f).get("source", {}).get("pod_name") == "client" for f in flows)

    sb.apply(DENY_CLIENT_EGRESS)
    try:
        assert runtime.query(netns, f"tcp://{server_ip}:{TCP_PORT}") is None
    finally:
        sb.delete(DENY_CLIENT_EGRESS)

    assert runtime.call("CHECK", "client0001", netns, f"{NS}/client", {"prevResult": result})[0] == 0
    node_netns = SandboxNames(sb.name).node_netns  # CHECK reads the kernel: a filter taken off fails it
    subprocess.run(["tc", "-n", node_netns, "filter", "del", "dev", host_veth_of("client0001/eth0"),
                    "egress"], check=True)
    code, error = runtime.call("CHECK", "client0001", netns, f"{NS}/client", {"prevResult": result})
    assert code != 0
    assert error["code"] == 100
    assert "no egress program" in error["msg"]
    assert runtime.call("DEL", "client0001", netns, f"{NS}/client", {"prevResult": result}) == (0, None)
    assert runtime.call("DEL", "client0001", "", f"{NS}/client") == (0, None)  # containerd's second DEL
    assert f"{NS}/client" not in {row["pod"] for row in sb.json("endpoint", "list", "-o", "json")}
    assert not {p["metadata"]["name"]: p for p in sb.pods(NS)}["client"]["status"].get("podIP")


def test_unknown_pod_has_init_identity_and_del_cleans_up(node: tuple[Sandbox, Runtime, str]) -> None:
    """Test that a pod the store does not know is listed with reserved:init, and DEL leaves nothing."""
    sb, runtime, _ = node
    netns = runtime.new_netns()
    code, result = runtime.call("ADD", "stranger01", netns, f"{NS}/stranger")
    assert code == 0, result
    ip = _ip(result)
    rows = {row["pod"]: row for row in sb.json("endpoint", "list", "-o", "json")}
    assert rows[f"{NS}/stranger"]["identity"] == 5
    assert {p["metadata"]["name"]: p["status"].get("podIP") for p in sb.pods(NS)}["stranger"] == ip
    code, error = runtime.call("ADD", "stranger02", netns, f"{NS}/stranger2")
    assert code != 0  # eth0 exists in that namespace already
    assert "eth0" in error["msg"]
    runtime.call("DEL", "stranger02", netns, f"{NS}/stranger2")
    subprocess.run(["ip", "-n", Path(netns).name, "link", "del", "eth0"], check=True)
    code, error = runtime.call("CHECK", "stranger01", netns, f"{NS}/stranger", {"prevResult": result})
    assert code != 0
    assert "gone" in error["msg"]
    assert runtime.call("DEL", "stranger01", netns, f"{NS}/stranger") == (0, None)
    assert "stranger" not in {p["metadata"]["name"] for p in sb.pods(NS)}
    assert f"{NS}/stranger" not in {row["pod"] for row in sb.json("endpoint", "list", "-o", "json")}


def test_gc_and_deleted_netns(node: tuple[Sandbox, Runtime, str]) -> None:
    """Test that DEL succeeds once the netns is gone, and GC with no valid attachments frees every lease."""
    sb, runtime, _ = node
    first, second = runtime.new_netns(), runtime.new_netns()
    assert runtime.call("ADD", "gc000001", first, f"{NS}/gc-one")[0] == 0
    assert runtime.call("ADD", "gc000002", second, f"{NS}/gc-two")[0] == 0
    subprocess.run(["ip", "netns", "del", Path(first).name], check=True)
    assert runtime.call("DEL", "gc000001", first, f"{NS}/gc-one") == (0, None)
    code, out = runtime.call("GC", "", "", extra={"cniVersion": "1.1.0", "cni.dev/valid-attachments": []},
                             CNI_IFNAME="")
    assert (code, out) == (0, None)
    assert not {p["metadata"]["name"] for p in sb.pods(NS)} & {"gc-one", "gc-two"}
    leases = json.loads(Path(f"/var/lib/velvet/{sb.name}/ipam.json").read_text())
    assert not [k for k in leases if k.startswith("cni:")]
    assert os.path.exists(second)
