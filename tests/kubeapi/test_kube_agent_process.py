"""Test `velvet agent --source kubernetes` as a process, driven through the CLI as a user would.

The stand-in API server listens on the loopback of a network namespace this test creates; the agents
run in that namespace (`ip netns exec`). With the in-memory datapath: the command line, the daemon's
wake-up on the informers' changes, `velvet apply`'s answer, `velvet status` and `velvet service list`.
With the kernel datapath: the load-balancing maps of an agent fed by `velvet apply` and of one fed by
the API server. Everything made is removed by exact name: the processes, the namespace, the
sandboxes' run, state and bpffs directories.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kube_apiserver import KubeApiServer, kubeconfig
from test_kube_source import node, service

from velvet.api.client import ApiClient
from velvet.cli.runner import unique_name
from velvet.paths import AgentPaths
from velvet.sandbox import netlink

pytestmark = pytest.mark.privileged
NODE = "node-a"
SERVICES = Path(__file__).with_name("services.yaml")  # selector-less, with their slices


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


class Agents:
    """Agent processes started in one namespace, each its own sandbox name; all stopped and removed."""

    def __init__(self, netns: str, logs: Path) -> None:
        self.netns = netns
        self.logs = logs
        self.started: list[tuple[subprocess.Popen[bytes], str]] = []

    def start(self, *args: str) -> str:
        """An agent with `args` (besides its sandbox, node and log options), up; its sandbox name."""
        sandbox = unique_name("k")
        self.started.append((subprocess.Popen(
            # only the network namespace, as the sandbox runs agents: `ip netns exec` also remounts /sys,
            # which hides the cgroup v2 mount the kernel datapath attaches to
            ["nsenter", f"--net=/run/netns/{self.netns}", sys.executable, "-m", "velvet.cli.main",
             "--sandbox", sandbox,
             "agent", "--node-name", NODE, "--node-ip", "192.168.77.2", "--metrics-address", "",
             "--log-file", str(self.logs / f"{sandbox}.log"), *args]), sandbox))
        client = ApiClient(AgentPaths(sandbox).socket, timeout=2.0)
        for _ in range(300):
            if client.healthy() or self.started[-1][0].poll() is not None:
                break
            time.sleep(0.1)
        assert client.healthy(), (self.logs / f"{sandbox}.log").read_text()
        return sandbox

    def close(self) -> None:
        for process, sandbox in self.started:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            paths = AgentPaths(sandbox)
            for directory in (paths.run_dir, paths.sandbox_dir, paths.pin_dir):
                shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def netns_api(tmp_path: Path) -> Iterator[tuple[KubeApiServer, Agents, Path]]:
    """The stand-in on the loopback of a fresh namespace, and agents to start there; (server, agents,
    kubeconfig)."""
    netns = f"velvet-{unique_name('t')}-kapi"
    netlink.create_netns(netns)
    api = KubeApiServer(netns=f"/run/netns/{netns}")
    agents = Agents(netns, tmp_path)
    try:
        with netlink.ipr(netns) as route:
            netlink.set_up(route, "lo")
        api.start()
        api.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
        api.put(node(NODE, "192.168.77.2", "10.244.0.0/24"))
        config = tmp_path / "kubeconfig"
        config.write_text(kubeconfig(api.url))
        yield api, agents, config
    finally:
        agents.close()
        api.stop()
        netlink.remove_netns(netns)


@pytest.fixture
def cluster(netns_api: tuple[KubeApiServer, Agents, Path]) -> tuple[KubeApiServer, str]:
    """The stand-in with Service web and its slice, an agent on it (in-memory datapath); (server, sandbox)."""
    api, agents, config = netns_api
    api.put(service("web"))
    api.put(slice_for("web", "10.244.0.5"))
    return api, agents.start("--source", "kubernetes", "--kubeconfig", str(config), "--fake-datapath")


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


def test_the_kernel_datapath_of_the_kubernetes_source_is_the_local_stores(
        netns_api: tuple[KubeApiServer, Agents, Path]) -> None:
    """Test that two agents with the kernel datapath, one given Services and EndpointSlices (ClusterIP and
    NodePort) by `velvet apply`, the other reading the same objects from the API server, hold the same
    load-balancing maps (`velvet bpf lb list`)."""
    api, agents, config = netns_api
    local = agents.start()
    applied = velvet(local, "apply", "-f", str(SERVICES))
    assert applied.returncode == 0, applied.stderr
    for doc in yaml.safe_load_all(SERVICES.read_text()):
        api.put(doc)
    kube = agents.start("--source", "kubernetes", "--kubeconfig", str(config))
    want = velvet(local, "bpf", "lb", "list", "-o", "json")
    assert want.returncode == 0, want.stderr
    assert len(json.loads(want.stdout)["lb4_services"]) == 9
    expected = lb_maps(want.stdout)
    for _ in range(100):
        got = lb_maps(velvet(kube, "bpf", "lb", "list", "-o", "json").stdout or '{"lb4_services": []}')
        if got == expected:
            break
        time.sleep(0.1)
    assert got == expected
    assert sum("10.244.0.5" in row for row in got) == 1  # the slot of web's ClusterIP that names it


def lb_maps(dump: str) -> list[str]:
    """The load-balancing maps with backend ids and rev-NAT indexes replaced by what they name (each
    agent numbers them in the order it met the services), as sorted JSON lines."""
    maps = json.loads(dump)
    backends = {row["key"]: row["value"] for row in maps.get("lb4_backends", [])}
    revnat = {row["key"]: row["value"] for row in maps.get("lb4_revnat", [])}
    rows = []
    for row in maps["lb4_services"]:
        value = dict(row["value"])
        value["backend_id"] = backends.get(value["backend_id"]) if value["backend_id"] else 0
        value["rev_nat_index"] = revnat.get(value["rev_nat_index"])
        rows.append(json.dumps({"key": row["key"], "value": value}, sort_keys=True))
    return sorted(rows)
