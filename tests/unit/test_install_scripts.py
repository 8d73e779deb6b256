"""Test what the DaemonSet's containers run: the agent's flags from velvet-config, the CNI install step,
and the health probes against a real agent API socket."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from install_render import find, kustomize
from test_api_answers import served

from velvet.agent.config import AgentConfig
from velvet.agent.handlers import AgentHandlers
from velvet.agent.node import Agent
from velvet.cli.main import build_parser
from velvet.datapath.fake import FakeDatapath
from velvet.install.render import InstallOptions, render

SOCKET = "/run/velvet/default/agent.sock"


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The DaemonSet's pod template spec."""
    spec: dict[str, Any] = find(objects, "DaemonSet", "velvet")["spec"]["template"]["spec"]
    return spec


def container_env(container: dict[str, Any], objects: list[dict[str, Any]]) -> dict[str, str]:
    """The environment the kubelet gives `container`: ConfigMap keys (optional ones only when present), and
    the node's name and IP from the downward API."""
    config = find(objects, "ConfigMap", "velvet-config")["data"]
    fields = {"spec.nodeName": "node-1", "status.hostIP": "192.0.2.10"}
    env = {}
    for var in container.get("env", ()):
        source = var["valueFrom"]
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            assert ref["name"] == "velvet-config"
            if ref["key"] in config:
                env[var["name"]] = config[ref["key"]]
            else:
                assert ref.get("optional"), f"{var['name']}: key {ref['key']} is not in velvet-config"
        else:
            env[var["name"]] = fields[source["fieldRef"]["fieldPath"]]
    return env


def run_agent_script(objects: list[dict[str, Any]], tmp_path: Path,
                     **overrides: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the agent container's shell script with a `velvet` on PATH that records its arguments."""
    (agent,) = pod_spec(objects)["containers"]
    assert agent["command"] == ["/bin/sh", "-ec"]
    stub = tmp_path / "bin" / "velvet"
    stub.parent.mkdir()
    stub.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {tmp_path / 'argv'}\n")
    stub.chmod(0o755)
    env = {"PATH": f"{stub.parent}:/usr/bin:/bin", **container_env(agent, objects), **overrides}
    done = subprocess.run(["/bin/sh", "-ec", agent["args"][0]], env=env, capture_output=True, text=True,
                          check=False)
    argv = (tmp_path / "argv").read_text().splitlines() if (tmp_path / "argv").exists() else []
    return done, argv


def test_the_agent_gets_the_default_config_as_flags(tmp_path: Path) -> None:
    """Test that the container runs `velvet agent` with the node's name and IP, the host's cgroup root and
    velvet-config's values, and that `velvet agent` knows every flag it is given."""
    done, argv = run_agent_script(kustomize(), tmp_path)
    assert done.returncode == 0, done.stderr
    assert argv[0] == "agent"
    args, unknown = build_parser("agent").parse_known_args(argv)
    assert unknown == [], f"the DaemonSet passes flags velvet agent does not know: {unknown}"
    assert (args.source, args.kube_proxy_replacement) == ("kubernetes", "true")
    assert (args.node_name, args.node_ip, args.cgroup) == ("node-1", ["192.0.2.10"], "/host/sys/fs/cgroup")
    assert (args.routing, args.policy_audit_mode, args.uplink, args.metrics_address) == (
        "native", False, None, "127.0.0.1:9962")


def test_rendered_options_reach_the_agent(tmp_path: Path) -> None:
    """Test that --routing tunnel, --policy-audit-mode and --uplink become the agent's flags, and
    --api-server-host/--api-server-port the service address its in-cluster config reads."""
    objects = render(InstallOptions(routing="tunnel", policy_audit_mode=True, uplink="eth0",
                                    api_server_host="10.0.0.1", api_server_port="443"))
    done, argv = run_agent_script(objects, tmp_path)
    assert done.returncode == 0, done.stderr
    args, _ = build_parser("agent").parse_known_args(argv)
    assert (args.routing, args.policy_audit_mode, args.uplink) == ("tunnel", True, "eth0")
    (agent,) = pod_spec(objects)["containers"]
    env = container_env(agent, objects)
    assert (env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]) == ("10.0.0.1", "443")
    assert "KUBERNETES_SERVICE_HOST" not in container_env(agent, kustomize())


def test_turning_kube_proxy_replacement_off_reaches_the_agent(tmp_path: Path) -> None:
    """Test that kube-proxy-replacement=false in velvet-config starts the agent without it."""
    done, argv = run_agent_script(kustomize(), tmp_path, KUBE_PROXY_REPLACEMENT="false")
    assert done.returncode == 0, done.stderr
    args, unknown = build_parser("agent").parse_known_args(argv)
    assert (unknown, args.kube_proxy_replacement) == ([], "false")


def run_install_cni(objects: list[dict[str, Any]], host: Path) -> subprocess.CompletedProcess[str]:
    """Run the init container's script with the host's directories under `host` and this interpreter."""
    (init,) = pod_spec(objects)["initContainers"]
    script = init["args"][0]
    for path in ("/opt/velvet", "/etc/cni/net.d", "/opt/cni/bin"):
        assert path in script
        script = script.replace(path, str(host) + path)
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", **container_env(init, objects)}
    return subprocess.run(["/bin/sh", "-ec", script], env=env, capture_output=True, text=True, check=False)


@pytest.mark.parametrize(("routing", "mtu"), [("native", 1500), ("tunnel", 1450)])
def test_the_init_container_installs_a_plugin_that_runs_from_its_own_copy(tmp_path: Path, routing: str,
                                                                          mtu: int) -> None:
    """Test that the init step writes the conflist (the agent's socket, the routing mode's MTU) and a
    plugin that answers VERSION with only its copied package and the standard library (`-IS`), and that
    running it again keeps the same copy."""
    objects = render(InstallOptions(routing=routing))
    done = run_install_cni(objects, tmp_path)
    assert done.returncode == 0, done.stderr
    conf = json.loads((tmp_path / "etc/cni/net.d/10-velvet.conflist").read_text())
    assert conf["plugins"][0]["socket"] == SOCKET
    assert conf["plugins"][0]["mtu"] == mtu
    plugin = tmp_path / "opt/cni/bin/velvet-cni"
    (home,) = (tmp_path / "opt/velvet").iterdir()
    assert home.name.startswith("cni-")
    assert f"sys.path.insert(0, {str(home)!r})" in plugin.read_text()
    answer = subprocess.run([str(plugin)], input='{"cniVersion": "1.0.0"}', capture_output=True, text=True,
                            env={"CNI_COMMAND": "VERSION"}, check=False)
    assert answer.returncode == 0, answer.stderr
    assert "1.0.0" in json.loads(answer.stdout)["supportedVersions"]
    assert run_install_cni(objects, tmp_path).returncode == 0
    assert list((tmp_path / "opt/velvet").iterdir()) == [home]


@pytest.fixture
def handlers(tmp_path: Path) -> Iterator[AgentHandlers]:
    """The API handlers of a real agent on the in-memory datapath."""
    node = Agent(AgentConfig(sandbox="unit", state_dir=tmp_path), FakeDatapath())
    node.start()
    answering = AgentHandlers(node)
    yield answering
    answering.close()


def test_the_health_probes_pass_on_a_live_agent_and_fail_without_one(handlers: AgentHandlers) -> None:
    """Test that the startup, readiness and liveness probes (/v1/health on the API socket) succeed while
    an agent answers there and fail once it is gone."""
    (agent,) = pod_spec(kustomize())["containers"]
    commands = [agent[probe]["exec"]["command"]
                for probe in ("startupProbe", "readinessProbe", "livenessProbe")]
    assert commands[0] == commands[2]
    for probe in commands:
        assert SOCKET in probe
        with served(handlers) as (path, _):
            command = [str(path) if part == SOCKET else part for part in probe]
            live = subprocess.run(command, capture_output=True, text=True, check=False)
        assert live.returncode == 0, live.stderr
        assert json.loads(live.stdout)["ok"] is True
        gone = subprocess.run(command, capture_output=True, text=True, check=False)
        assert gone.returncode != 0
