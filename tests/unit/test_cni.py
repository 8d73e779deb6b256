"""Test velvet-cni's checks and the agent's side of it against the fake datapath and a fake wiring."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from velvet.agent import queries
from velvet.agent.config import AgentConfig
from velvet.agent.node import Agent, Dirty
from velvet.cni import plugin
from velvet.cni.install import PACKAGE_HOME, conflist, install
from velvet.cni.spec import CniError
from velvet.cni.wiring import Veth, Wired
from velvet.datapath.fake import FakeDatapath
from velvet.errors import VelvetError
from velvet.ipam import FIRST_POD_HOST, PodIpam, ipam_file
from velvet.model.identity import ReservedIdentity
from velvet.sandbox.naming import SandboxConfig

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/run/netns/cni-1",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt",
       "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web;K8S_POD_UID=u-1"}
CONFIG = {"cniVersion": "1.0.0", "name": "velvet", "type": "velvet-cni"}
RUNTIME_POD = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}, annotations: {velvet.io/runtime: cni}}
spec:
  containers: [{name: web, image: busybox}]
"""


class FakeWiring:
    """Veths as a dict: what `check` finds is what `add` made minus what a test broke."""

    def __init__(self) -> None:
        self.veths: dict[str, Veth] = {}
        self.next_index = 40

    def add(self, veth: Veth) -> Wired:
        if any(v.netns == veth.netns and v.ifname == veth.ifname for v in self.veths.values()):
            raise CniError(100, f"CNI_IFNAME {veth.ifname} already exists in {veth.netns}")
        self.veths[veth.host_veth] = veth
        self.next_index += 1
        return Wired(self.next_index, "02:00:00:00:00:01", "02:00:00:00:00:02", 4026531999)

    def check(self, veth: Veth) -> list[str]:
        return [] if veth.host_veth in self.veths else [f"{veth.host_veth} is gone"]

    def remove(self, host_veth: str) -> None:
        self.veths.pop(host_veth, None)


def request(command: str, **env: str) -> dict[str, Any]:
    """What velvet-cni relays for `command` (ADD of shop/web unless env says otherwise)."""
    merged = {**ENV, "CNI_COMMAND": command, **env}
    return {"command": command, "containerID": merged["CNI_CONTAINERID"], "netns": merged["CNI_NETNS"],
            "ifname": merged["CNI_IFNAME"],
            "args": dict(p.split("=", 1) for p in merged["CNI_ARGS"].split(";")),
            "config": CONFIG}


@pytest.fixture
def node(tmp_path: Path) -> tuple[Agent, FakeDatapath, FakeWiring]:
    """A started agent whose state is in tmp_path/agent (so its leases are in tmp_path/ipam.json)."""
    dp, wiring = FakeDatapath(), FakeWiring()
    agent = Agent(AgentConfig(sandbox="unit", node_ips=("192.168.77.2",), state_dir=tmp_path / "agent"), dp,
                  wiring)
    agent.start()
    return agent, dp, wiring


def apply(agent: Agent, text: str) -> None:
    """velvet apply, then the reconcile passes that follow."""
    agent.apply([{"path": "m.yaml", "text": text}])
    agent.reconcile(Dirty(policy=True))
    agent.reconcile(Dirty(policy=True))


def test_environment_and_config_errors_carry_the_spec_codes() -> None:
    """Test that a missing variable is code 4, garbage stdin 6, an unknown version 1, a bad mtu or dns 7."""
    cases = [({**ENV, "CNI_CONTAINERID": ""}, json.dumps(CONFIG), 4, "CNI_CONTAINERID"),
             ({**ENV, "CNI_COMMAND": "BOOT"}, json.dumps(CONFIG), 4, "CNI_COMMAND"),
             ({**ENV, "CNI_CONTAINERID": "../x"}, json.dumps(CONFIG), 4, "CNI_CONTAINERID"),
             ({**ENV, "CNI_ARGS": "K8S_POD_NAME"}, json.dumps(CONFIG), 4, "CNI_ARGS"),
             (ENV, "{not json", 6, "not JSON"),
             (ENV, "[1]", 6, "not an object"),
             (ENV, json.dumps({**CONFIG, "cniVersion": "9.9.9"}), 1, "9.9.9"),
             (ENV, json.dumps({**CONFIG, "mtu": "big"}), 7, "mtu"),
             (ENV, json.dumps({**CONFIG, "dns": {"nameservers": ["10.96.0.300"]}}), 7, "dns.nameservers"),
             (ENV, json.dumps({**CONFIG, "dns": {"search": "a.b"}}), 7, "dns.search"),
             (ENV, json.dumps({**CONFIG, "dns": {"server": "x"}}), 7, "dns")]
    for env, stdin, code, named in cases:
        out = io.StringIO()
        assert plugin.run(env, io.BytesIO(stdin.encode()), out) == 1
        error = json.loads(out.getvalue())
        assert (error["code"], named in error["msg"]) == (code, True), (env, stdin, error)


def test_version_answers_in_the_version_asked() -> None:
    """Test that VERSION lists 1.0.0 and 1.1.0 and echoes the asked version, needing no agent."""
    out = io.StringIO()
    assert plugin.run({"CNI_COMMAND": "VERSION"}, io.BytesIO(b'{"cniVersion": "0.4.0"}'), out) == 0
    answer = json.loads(out.getvalue())
    assert answer["cniVersion"] == "0.4.0"
    assert {"1.0.0", "1.1.0"} <= set(answer["supportedVersions"])


def test_add_with_a_previous_result_says_velvet_does_not_chain(tmp_path: Path) -> None:
    """Test that ADD with prevResult is refused with code 2 naming prevResult, before any agent call."""
    out = io.StringIO()
    config = {**CONFIG, "socket": str(tmp_path / "none.sock"), "prevResult": {"ips": []}}
    assert plugin.run(ENV, io.BytesIO(json.dumps(config).encode()), out) == 1
    error = json.loads(out.getvalue())
    assert error["code"] == 2
    assert "prevResult" in error["msg"]
    assert "chain" in error["msg"]


def test_no_agent_is_try_again_later_and_del_is_queued(tmp_path: Path) -> None:
    """Test that ADD without an agent is code 11, STATUS 50, and DEL succeeds by queueing itself on disk."""
    config = {**CONFIG, "socket": str(tmp_path / "none.sock"), "deleteQueue": str(tmp_path / "queue")}
    out = io.StringIO()
    assert plugin.run(ENV, io.BytesIO(json.dumps(config).encode()), out) == 1
    assert json.loads(out.getvalue())["code"] == 11
    out = io.StringIO()
    assert plugin.run({"CNI_COMMAND": "STATUS"}, io.BytesIO(json.dumps(config).encode()), out) == 1
    assert json.loads(out.getvalue())["code"] == 50
    out = io.StringIO()
    delete = {**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}
    assert plugin.run(delete, io.BytesIO(json.dumps(config).encode()), out) == 0
    assert out.getvalue() == ""
    queued = json.loads((tmp_path / "queue" / "c0ffee_eth0.json").read_text())
    assert (queued["command"], queued["containerID"], queued["ifname"]) == ("DEL", "c0ffee", "eth0")


def test_unknown_pod_gets_init_identity_then_its_own(node: tuple[Agent, FakeDatapath, FakeWiring]) -> None:
    """Test that a runtime pod unknown to the store is reserved:init, then gets its labels' identity."""
    agent, dp, _ = node
    answer = agent.cni_call(request("ADD"))
    result = answer["result"]
    ip = result["ips"][0]["address"].split("/")[0]
    assert result["ips"][0]["interface"] == 1
    assert result["interfaces"][1]["sandbox"] == ENV["CNI_NETNS"]
    assert dp.tables["lxc_endpoints"][ip].identity == ReservedIdentity.INIT
    assert dp.tables["ipcache"][f"{ip}/32"] == ReservedIdentity.INIT
    [row] = queries.query(agent, "endpoints", {})
    assert (row["pod"], row["identity"], row["ipv4"]) == ("shop/web", ReservedIdentity.INIT, ip)
    [pod] = agent.get_objects("pods", "shop", None)["items"]
    assert pod["status"]["podIP"] == ip
    assert pod["metadata"]["annotations"]["velvet.io/identity"] == "reserved:init"

    apply(agent, RUNTIME_POD)
    identity = dp.tables["lxc_endpoints"][ip].identity
    assert identity >= 256
    assert agent.identities.lookup(identity).labels["k8s:app"] == "web"  # type: ignore[union-attr]
    [pod] = agent.get_objects("pods", "shop", "web")["items"]
    assert pod["status"]["podIP"] == ip
    assert pod["status"]["phase"] == "Running"
    assert agent.list_node_pods() == []  # the sandbox kubelet leaves it to the runtime


def test_add_result_repeats_the_config_dns(node: tuple[Agent, FakeDatapath, FakeWiring]) -> None:
    """Test that ADD's result carries the network config's dns, as the spec's plugins pass it on."""
    agent, _, _ = node
    dns = {"nameservers": ["10.96.0.10"], "domain": "cluster.local", "search": ["shop.svc.cluster.local"],
           "options": ["ndots:5"]}
    answer = agent.cni_call({**request("ADD"), "config": {**CONFIG, "dns": dns}})
    assert answer["result"]["dns"] == dns
    other = agent.cni_call(request("ADD", CNI_CONTAINERID="other", CNI_NETNS="/run/netns/cni-2",
                                   CNI_ARGS="K8S_POD_NAME=other"))
    assert other["result"]["dns"] == {}, other


def test_del_is_idempotent_and_frees_everything(node: tuple[Agent, FakeDatapath, FakeWiring]) -> None:
    """Test that DEL (twice, the second without netns) removes veth, lease, endpoint and map entries."""
    agent, dp, wiring = node
    ip = agent.cni_call(request("ADD"))["result"]["ips"][0]["address"].split("/")[0]
    assert agent.cni_call(request("DEL")) == {}
    assert agent.cni_call(request("DEL", CNI_NETNS="")) == {}
    assert wiring.veths == {}
    assert list(agent.endpoints) == []
    assert list(agent.cni) == []
    assert ip not in dp.tables["lxc_endpoints"]
    assert f"{ip}/32" not in dp.tables["ipcache"]
    assert agent.get_objects("pods", None, None)["items"] == []
    assert not any(k.startswith("cni:") for k in agent.cni._ipam.leases())


def test_add_twice_and_check(node: tuple[Agent, FakeDatapath, FakeWiring]) -> None:
    """Test that a second ADD of the same attachment errors, CHECK passes, and fails once the datapath lost
    the endpoint's map entry or programs, or the veth is gone."""
    agent, dp, wiring = node
    agent.cni_call(request("ADD"))
    assert agent.cni_call(request("ADD"))["error"]["code"] == 100
    assert agent.cni_call(request("CHECK")) == {}
    ip = next(iter(agent.cni)).ip
    entry = dp.tables["lxc_endpoints"].pop(ip)
    assert "endpoint map has no entry" in agent.cni_call(request("CHECK"))["error"]["msg"]
    dp.tables["lxc_endpoints"][ip] = entry
    dp.attached.clear()
    assert "no programs attached" in agent.cni_call(request("CHECK"))["error"]["msg"]
    wiring.veths.clear()
    error = agent.cni_call(request("CHECK"))["error"]
    assert error["code"] == 100
    assert "gone" in error["msg"]
    assert agent.cni_call(request("CHECK", CNI_CONTAINERID="other"))["error"]["code"] == 3


def test_gc_removes_what_the_runtime_no_longer_lists(node: tuple[Agent, FakeDatapath, FakeWiring]) -> None:
    """Test that GC keeps the listed attachment and frees the others' veths and leases."""
    agent, _, wiring = node
    agent.cni_call(request("ADD"))
    other = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=db"
    agent.cni_call(request("ADD", CNI_CONTAINERID="beef", CNI_NETNS="/run/netns/cni-2", CNI_ARGS=other))
    gc = {"command": "GC", "containerID": "", "netns": "", "ifname": "", "args": {},
          "config": {**CONFIG, "cniVersion": "1.1.0",
                     "cni.dev/valid-attachments": [{"containerID": "beef", "ifname": "eth0"}]}}
    assert agent.cni_call(gc) == {}
    assert [a.pod for a in agent.cni] == ["shop/db"]
    assert [v.ip for v in wiring.veths.values()] == [agent.cni.by_pod("shop/db").ip]  # type: ignore[union-attr]
    assert [k for k in agent.cni._ipam.leases() if k.startswith("cni:")] == ["cni:beef/eth0"]


def test_queued_deletes_run_when_the_agent_starts(tmp_path: Path) -> None:
    """Test that a DEL queued while the agent was down is done by the next agent at start."""
    config = AgentConfig(sandbox="unit", state_dir=tmp_path / "agent")
    wiring = FakeWiring()
    first = Agent(config, FakeDatapath(), wiring)
    first.start()
    first.cni_call(request("ADD"))
    queue = tmp_path / "agent" / "cni-delete-queue"
    queue.mkdir()
    (queue / "c0ffee_eth0.json").write_text(json.dumps(request("DEL", CNI_NETNS="")))
    second = Agent(config, FakeDatapath(), wiring)
    second.start()
    assert list(second.cni) == []
    assert wiring.veths == {}
    assert not list(queue.iterdir())


def test_agent_and_sandbox_kubelet_share_one_allocator(node: tuple[Agent, FakeDatapath, FakeWiring],
                                                       tmp_path: Path) -> None:
    """Test that the sandbox's pod leases and the agent's CNI leases come from one file and never collide."""
    agent, _, _ = node
    cfg = SandboxConfig()
    assert cfg.names.ipam_file == ipam_file(cfg.names.paths.sandbox_dir)
    assert cfg.first_pod_host == FIRST_POD_HOST
    kubelet = PodIpam(ipam_file(tmp_path), cfg.pod_cidr, cfg.first_pod_host, (cfg.pod_gateway,))
    sandbox_ip = kubelet.allocate("uid-of-a-sandbox-pod")
    cni_ip = agent.cni_call(request("ADD"))["result"]["ips"][0]["address"].split("/")[0]
    assert sandbox_ip != cni_ip
    assert set(kubelet.leases()) == {"uid-of-a-sandbox-pod", "cni:c0ffee/eth0"}


def test_bad_pod_name_in_cni_args_changes_nothing(node: tuple[Agent, FakeDatapath, FakeWiring]) -> None:
    """Test that a pod name Kubernetes would refuse is a config error, with no lease or veth left."""
    agent, _, wiring = node
    error = agent.cni_call(request("ADD", CNI_ARGS="K8S_POD_NAMESPACE=Shop;K8S_POD_NAME=web"))["error"]
    assert error["code"] == 7
    assert "Shop/web" in error["msg"]
    assert wiring.veths == {}
    assert list(agent.cni) == []
    assert agent.cni._ipam.leases() == {}


def test_install_writes_an_executable_plugin_and_a_conflist(tmp_path: Path) -> None:
    """Test that cni install writes an executable velvet-cni and a 1.0.0 conflist naming the socket."""
    plugin_path, conf = install(tmp_path / "conf", tmp_path / "bin", "blue")
    assert plugin_path.stat().st_mode & 0o111
    version = subprocess.run([str(plugin_path)], input=b'{"cniVersion": "1.0.0"}', capture_output=True,
                             env={"CNI_COMMAND": "VERSION"}, check=True)
    assert json.loads(version.stdout)["supportedVersions"][-1] == "1.1.0"
    written = json.loads(conf.read_text())
    assert written == conflist("blue", "velvet")
    assert written["cniVersion"] == "1.0.0"
    assert written["plugins"][0]["socket"] == "/run/velvet/blue/agent.sock"


def test_install_takes_the_pod_mtu_of_the_sandbox_s_routing_mode(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that `velvet cni install` gives runtime pods the sandbox pods' MTU (1450 in tunnel mode, room for
    VXLAN), that --mtu overrides it, and that an MTU out of range is one error before anything is written."""
    from velvet.cli import cni as cni_cli
    from velvet.sandbox import routing

    def run(mtu: int) -> int:
        args = argparse.Namespace(sandbox="blue", conf_dir=str(tmp_path / "conf"),
                                  bin_dir=str(tmp_path / "bin"), network="velvet", mtu=mtu)
        cni_cli.cmd_install(args)
        return int(json.loads((tmp_path / "conf" / "10-velvet.conflist").read_text())["plugins"][0]["mtu"])

    monkeypatch.setattr(routing, "recorded", lambda sandbox: "tunnel")
    assert run(0) == 1450
    assert run(9000) == 9000
    monkeypatch.setattr(routing, "recorded", lambda sandbox: "native")
    assert run(0) == 1500
    with pytest.raises(VelvetError, match="--mtu 100"):
        run(100)
    assert run(0) == 1500


def test_plugin_imports_neither_agent_nor_datapath_nor_yaml() -> None:
    """Test that velvet-cni's import path stays small: every ADD pays for it (its budget is 100 ms)."""
    code = (f"import sys; sys.path.insert(0, {str(PACKAGE_HOME)!r}); import velvet.cni.plugin; "
            "print(' '.join(sorted(sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-IS", "-c", code], capture_output=True, text=True,
                                check=True).stdout.split())
    assert {m for m in loaded if m.startswith("velvet")} == {"velvet", "velvet.cni", "velvet.cni.plugin",
                                                             "velvet.cni.spec", "velvet.errors"}
    assert not loaded & {"yaml", "http.client", "ssl", "email", "typing", "dataclasses", "pathlib",
                         "pyroute2", "numpy", "aiohttp"}
