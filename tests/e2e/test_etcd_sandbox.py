"""Test a sandbox whose objects live in etcd: traffic, agent restarts and etcd outages, through the CLI.

One sandbox (`sandbox up --store etcd`) for the whole story, torn down whatever happens; etcd is
"stopped" with SIGSTOP (its supervisor would restart a killed one at once) and resumed with SIGCONT.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from harness import EXAMPLES, Sandbox, sandbox
from test_foundation import STREAM_CLIENT, next_line, stdout_lines

from velvet.errors import CommandFailed
from velvet.paths import AgentPaths
from velvet.sandbox.naming import SandboxNames
from velvet.sandbox.process import alive
from velvet.system.netns import NETNS_RUN_DIR

pytestmark = pytest.mark.privileged

BLUE_SERVICE = "tcp://10.96.1.2:80"
EXTRA = """apiVersion: v1
kind: Service
metadata: {name: extra-%d, namespace: blue}
spec:
  selector: {app: echo}
  ports: [{port: 81, targetPort: 8080}]
"""


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    """An etcd-backed sandbox with examples/echo applied and the blue pods ready."""
    with sandbox("etcd", "--store", "etcd") as box:
        box.apply(EXAMPLES / "echo")
        box.wait_ready(["blue/echo-1", "blue/echo-2"])
        yield box


def pid_of(sb: Sandbox, daemon: str) -> int:
    """The pid in a daemon's pid file."""
    return int((AgentPaths(sb.name).run_dir / f"{daemon}.pid").read_text())


def objects(sb: Sandbox) -> dict[str, tuple[str, str]]:
    """Every pod and service by kind/namespace/name, with its uid and resourceVersion."""
    found = {}
    for kind in ("pods", "services"):
        for item in sb.json("get", kind, "-A")["items"]:
            meta = item["metadata"]
            found[f"{kind}/{meta['namespace']}/{meta['name']}"] = (meta["uid"], meta["resourceVersion"])
    return found


def test_etcd_backed_sandbox_survives_agent_kills_and_etcd_outages(sb: Sandbox) -> None:
    """Test that with the store in etcd pods talk and a Service answers; kill -9 of the agent loses no
    traffic and the new agent lists the same objects from etcd; with etcd stopped apply fails in one
    line while traffic flows, and apply works again once etcd is back, without restarting the agent."""
    status = sb.json("status")
    assert status["store"]["kind"] == "etcd"
    assert status["store"]["connected"] is True
    ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in sb.pods("blue")}
    assert sb.query("blue/echo-1", BLUE_SERVICE) is not None
    assert sb.query("blue/echo-1", f"tcp://{ips['echo-2']}:8080") is not None

    before = objects(sb)
    client = subprocess.Popen(
        [sys.executable, "-m", "velvet.cli.main", "--sandbox", sb.name, "sandbox", "exec", "blue/echo-1",
         "--", "python3", "-c", STREAM_CLIENT, ips["echo-2"]],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    assert client.stdin is not None
    lines = stdout_lines(client)
    etcd_pid = pid_of(sb, "etcd")
    try:
        assert next_line(lines, "connected line") == "connected"
        old_agent = pid_of(sb, "agent")
        os.kill(old_agent, signal.SIGKILL)
        client.stdin.write("\n")
        assert next_line(lines, "round trip after the kill") == "ok 1"
        deadline = time.monotonic() + 30
        while not sb.api.healthy() or pid_of(sb, "agent") == old_agent:
            assert time.monotonic() < deadline, "the agent was not restarted"
            time.sleep(0.2)
        assert objects(sb) == before  # listed again from etcd: same uids and resourceVersions
        assert sb.query("blue/echo-2", BLUE_SERVICE) is not None
        agent = pid_of(sb, "agent")

        os.kill(etcd_pid, signal.SIGSTOP)
        try:
            with pytest.raises(CommandFailed) as failed:
                sb.apply(EXTRA % 1)
            assert failed.value.code == 1
            assert len(failed.value.stderr.strip().splitlines()) == 1, failed.value.stderr
            assert "etcd at http://127.0.0.1:2379" in failed.value.stderr
            client.stdin.write("\n")
            assert next_line(lines, "round trip with etcd stopped") == "ok 2"
            assert sb.query("blue/echo-2", BLUE_SERVICE) is not None
            store = sb.json("status")["store"]
            assert store["connected"] is False
        finally:
            os.kill(etcd_pid, signal.SIGCONT)
        sb.apply(EXTRA % 2)
        assert pid_of(sb, "agent") == agent
        assert "extra-1" not in json.dumps(sb.json("get", "services", "-n", "blue"))
        assert sb.query("blue/echo-1", "tcp://" + _cluster_ip(sb, "extra-2") + ":81") is not None
        client.stdin.write("\n")
        assert next_line(lines, "round trip after etcd is back") == "ok 3"
        client.stdin.close()
        assert client.wait(timeout=30) == 0
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()


def _cluster_ip(sb: Sandbox, name: str) -> str:
    svc = sb.json("get", "services", name, "-n", "blue")
    item = svc["items"][0] if "items" in svc else svc
    return str(item["spec"]["clusterIP"])


def test_sandbox_down_leaves_no_etcd() -> None:
    """Test that `sandbox down` stops etcd and removes its data and namespaces."""
    with sandbox("etcdd", "--store", "etcd") as box:
        names = SandboxNames(box.name)
        pid = pid_of(box, "etcd")
        assert alive(pid)
        assert (names.state_dir / "etcd").stat().st_mode & 0o777 == 0o700
    assert not alive(pid)
    assert not names.state_dir.exists()
    assert not any(p.name.startswith(f"velvet-{box.name}-") for p in NETNS_RUN_DIR.iterdir())
