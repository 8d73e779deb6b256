"""Test `velvet agent --source kubernetes` as a process, driven through the CLI as a user would.

The stand-in API server listens on the loopback of a network namespace this test creates; the agent
runs in that namespace (`ip netns exec`), with the in-memory datapath: this checks the command line,
the daemon's wake-up on the informers' changes, `velvet apply`'s answer, `velvet status` and
`velvet service list`, not the kernel (tests/kubeapi/test_kube_agent.py compares the tables with the
local store's). Everything it made is removed by exact name: the process, the namespace, the
sandbox's run and state directories.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_apiserver import KubeApiServer, kubeconfig
from test_kube_source import node, service

from velvet.api.client import ApiClient
from velvet.cli.runner import unique_name
from velvet.paths import AgentPaths
from velvet.sandbox import netlink

pytestmark = pytest.mark.privileged
NODE = "node-a"


def slice_for(name: str, ip: str) -> dict[str, object]:
    """The EndpointSlice the endpointslice controller writes for Service default/<name>."""
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-abcde", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": name,
                                    "endpointslice.kubernetes.io/managed-by":
                                        "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "nodeName": NODE,
                           "conditions": {"ready": True, "serving": True, "terminating": False}}],
            "ports": [{"name": "", "port": 80, "protocol": "TCP"}]}


def velvet(sandbox: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "velvet.cli.main", "--sandbox", sandbox, *args],
                          capture_output=True, text=True, timeout=60, check=False)


def wait_for(sandbox: str, args: tuple[str, ...], text: str, present: bool = True) -> str:
    """Run `velvet args` until its output contains `text` (or no longer does); the last output."""
    out = ""
    for _ in range(150):
        done = velvet(sandbox, *args)
        out = done.stdout + done.stderr
        if (text in out) == present:
            return out
        time.sleep(0.1)
    raise AssertionError(f"velvet {' '.join(args)} never {'showed' if present else 'lost'} {text!r}:\n{out}")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[KubeApiServer, str]]:
    """The stand-in in a fresh namespace, an agent on it there; (server, sandbox name)."""
    sandbox = unique_name("k")
    netns = f"velvet-{sandbox}-kapi"
    paths = AgentPaths(sandbox)
    netlink.create_netns(netns)
    agent: subprocess.Popen[bytes] | None = None
    api = KubeApiServer(netns=f"/run/netns/{netns}")
    try:
        with netlink.ipr(netns) as route:
            netlink.set_up(route, "lo")
        api.start()
        api.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
        api.put(node(NODE, "192.168.77.2", "10.244.0.0/24"))
        api.put(service("web"))
        api.put(slice_for("web", "10.244.0.5"))
        config = tmp_path / "kubeconfig"
        config.write_text(kubeconfig(api.url))
        agent = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "velvet.cli.main", "--sandbox", sandbox,
             "agent", "--source", "kubernetes", "--kubeconfig", str(config), "--node-name", NODE,
             "--node-ip", "192.168.77.2", "--fake-datapath", "--metrics-address", "",
             "--log-file", str(tmp_path / "agent.log")])
        client = ApiClient(paths.socket, timeout=2.0)
        for _ in range(300):
            if client.healthy() or agent.poll() is not None:
                break
            time.sleep(0.1)
        assert client.healthy(), (tmp_path / "agent.log").read_text()
        yield api, sandbox
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(20)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        api.stop()
        netlink.remove_netns(netns)
        for directory in (paths.run_dir, paths.sandbox_dir):
            shutil.rmtree(directory, ignore_errors=True)


def test_the_agent_process_follows_the_api_server(cluster: tuple[KubeApiServer, str], tmp_path: Path) -> None:
    """Test that the agent serves the API server's Services (one added later appears without any call),
    refuses `velvet apply` in one line, and that `velvet status` says whether its source is connected
    while `service list` keeps its frontends with the API server gone."""
    api, sandbox = cluster
    listed = wait_for(sandbox, ("service", "list"), "10.244.0.5:80")
    assert "default/web" in listed
    api.put(service("later", 8080))
    api.put(slice_for("later", "10.244.0.6"))
    wait_for(sandbox, ("service", "list"), "10.244.0.6:80")
    manifest = tmp_path / "shop.yaml"
    manifest.write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n")
    refused = velvet(sandbox, "apply", "-f", str(manifest))
    assert refused.returncode != 0
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "objects come from the Kubernetes API" in lines[0]
    assert "use kubectl" in lines[0]
    wait_for(sandbox, ("status",), f"Source:        kubernetes {api.url}  connected")
    before = velvet(sandbox, "service", "list").stdout
    api.stop()
    wait_for(sandbox, ("status",), f"Source:        kubernetes {api.url}  DISCONNECTED")
    assert velvet(sandbox, "service", "list").stdout == before
