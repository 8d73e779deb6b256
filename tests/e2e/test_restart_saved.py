"""Test that an agent killed on a steady node comes back on its saved compiled services.

Real sandbox: the agent saves its service compiler's state once its passes are quiet; `kill -9` and the
supervisor's restart then compile no service (the agent's log says how many it compiled), the
load-balancing maps are as they were, and `velvet service list` names every service as before.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from harness import EXAMPLES, Sandbox, sandbox

from velvet.controllers.saved_services import SAVED_FILE
from velvet.paths import AgentPaths
from velvet.sandbox.naming import SandboxNames

pytestmark = pytest.mark.privileged
PODS = ["blue/echo-1", "blue/echo-2", "green/echo-1", "green/echo-2"]
ADOPTED = "adopted the pinned load-balancing maps; "


def adopt_lines(sb: Sandbox) -> list[str]:
    """The agent log's lines saying how many services each start compiled."""
    text = SandboxNames(sb.name).log_file("agent").read_text(errors="replace")
    return [line.split(ADOPTED, 1)[1] for line in text.splitlines() if ADOPTED in line]


def wait_for(what: str, check: Any, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what} within {seconds:g} s"
        time.sleep(0.2)


def test_a_killed_agent_on_a_steady_node_compiles_no_service() -> None:
    """Test that after `kill -9` of an agent whose services were saved, the new agent compiles none, the
    maps are unchanged and every service is listed by name as before."""
    with sandbox("rs") as sb:
        sb.apply(EXAMPLES / "echo")
        sb.wait_ready(PODS)
        saved = AgentPaths(sb.name).state_dir / SAVED_FILE
        wait_for("the compiled services saved", saved.exists)
        wait_for("the node steady (no save for 5 s)", lambda: time.time() - saved.stat().st_mtime > 5.0)
        maps = sb.json("bpf", "lb", "list")
        services = sb.json("service", "list")
        pid_file = AgentPaths(sb.name).run_dir / "agent.pid"
        old = int(pid_file.read_text().split()[0])
        starts = len(adopt_lines(sb))
        os.kill(old, 9)
        wait_for("the agent restarted", lambda: int(pid_file.read_text().split()[0]) != old)
        wait_for("the restarted agent serving its state", lambda: len(adopt_lines(sb)) > starts)
        assert adopt_lines(sb)[-1] == "0 services compiled"
        assert sb.json("service", "list") == services
        assert sb.json("bpf", "lb", "list") == maps
