"""Test the API of a starting agent: health at once, every other call once the agent has started."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from test_agent import make_agent

from velvet.agent import launch
from velvet.agent.config import AgentConfig
from velvet.agent.daemon import run_agent
from velvet.agent.handlers import AgentHandlers
from velvet.agent.node import Agent
from velvet.agent.starting import NEVER, StartingApi
from velvet.api.server import build_app
from velvet.cli.status import render
from velvet.datapath.fake import FakeDatapath
from velvet.errors import DatapathError


def test_health_answers_while_starting_and_calls_wait_for_the_agent(tmp_path: Path) -> None:
    """Test that health answers before the agent is ready and a get is served once it is."""
    agent, _ = make_agent(tmp_path)

    async def scenario() -> tuple[object, bool, object, object]:
        api = StartingApi()
        early = await api.health()
        get = asyncio.ensure_future(api.get_objects("namespaces", None, None))
        await asyncio.sleep(0.01)
        waiting = not get.done()
        handlers = AgentHandlers(agent)
        api.ready(handlers)
        answer = await get
        later = await api.health()
        handlers.close()
        return early, waiting, answer, later

    early, waiting, answer, later = asyncio.run(scenario())
    assert isinstance(early, dict)
    assert early["ok"] is True
    assert early["starting"] is True
    assert waiting
    assert isinstance(answer, dict)
    assert answer["kind"] == "Namespace"
    assert isinstance(later, dict)
    assert "starting" not in later


def test_calls_waiting_for_an_agent_that_failed_to_start_get_its_error() -> None:
    """Test that a request waiting on a start that failed is answered with the start's error."""

    async def scenario() -> None:
        api = StartingApi()
        status = asyncio.ensure_future(api.status())
        await asyncio.sleep(0)
        api.failed(DatapathError("the kernel refused node.bpf.o"))
        with pytest.raises(DatapathError, match="node.bpf.o"):
            await status
        with pytest.raises(DatapathError):
            await api.query("services", {})

    asyncio.run(scenario())


def test_readiness_fails_while_starting_and_passes_once_started(tmp_path: Path) -> None:
    """Test that `/v1/health?ready` (the DaemonSet's readiness probe) answers 503 while the agent starts
    and 200 once it serves its state, while plain `/v1/health` (liveness) answers 200 throughout."""
    agent, _ = make_agent(tmp_path)

    async def scenario() -> list[tuple[str, int]]:
        api = StartingApi()
        seen: list[tuple[str, int]] = []
        async with TestClient(TestServer(build_app(api))) as client:
            for path in ("/v1/health", "/v1/health?ready"):
                seen.append((path, (await client.get(path)).status))
            handlers = AgentHandlers(agent)
            api.ready(handlers)
            for path in ("/v1/health", "/v1/health?ready"):
                seen.append((path, (await client.get(path)).status))
            handlers.close()
        return seen

    assert asyncio.run(scenario()) == [("/v1/health", 200), ("/v1/health?ready", 503),
                                       ("/v1/health", 200), ("/v1/health?ready", 200)]


def test_the_agent_is_built_with_full_collections_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that the agent is built (its store loaded) with generation-2 collections already off, as it
    runs afterwards: at 10k services they took 0.3-0.7 s of the store's 1.2-1.6 s load."""
    seen: list[int] = []

    def build(config: AgentConfig, fake_datapath: bool) -> Agent:
        seen.append(gc.get_threshold()[2])
        raise DatapathError("stopped after the build began")

    class Runner:
        async def cleanup(self) -> None:
            return None

    async def serve(app: object, path: Path) -> Runner:
        return Runner()

    monkeypatch.setattr(launch, "_build", build)
    monkeypatch.setattr(launch, "serve_unix", serve)
    thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
    try:
        with pytest.raises(DatapathError, match="stopped"):
            asyncio.run(launch.serve_while_starting(AgentConfig(sandbox="unit"), True))
    finally:
        gc.set_threshold(*thresholds)
        sys.setswitchinterval(interval)
    assert seen == [NEVER]


class NoRunner:
    """Stands for the API server's runner: nothing to clean up."""

    async def cleanup(self) -> None:
        return None


def test_status_answers_once_the_state_converged_and_says_the_monitors_are_still_starting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that while the process monitor and the enforcer start, `/v1/status` already answers from the
    adopted state and names them as starting (never as attached), health still says starting and other
    calls still wait; once they started, the status is the full one."""
    agent = Agent(AgentConfig(sandbox="unit", node_ips=("192.168.77.2",), state_dir=tmp_path), FakeDatapath())
    release = threading.Event()
    monitors = agent.start_monitors

    def slow_monitors() -> None:
        assert release.wait(10), "the status was never answered while the monitors started"
        monitors()

    monkeypatch.setattr(agent, "start_monitors", slow_monitors)

    async def scenario() -> tuple[Any, bool, Any, Any]:
        api = StartingApi()
        running = asyncio.ensure_future(run_agent(agent, api, NoRunner()))  # type: ignore[arg-type]
        early = await asyncio.wait_for(api.status(), 10)
        get = asyncio.ensure_future(api.get_objects("namespaces", None, None))
        await asyncio.sleep(0.05)
        waiting = not get.done()
        health = await api.health()
        release.set()
        await asyncio.wait_for(get, 10)
        later = await api.status()
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        return early, waiting, health, later

    thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
    try:
        early, waiting, health, later = asyncio.run(scenario())
    finally:
        gc.set_threshold(*thresholds)
        sys.setswitchinterval(interval)
    assert early["agent"]["starting"] == ["processes", "enforcement"]
    assert early["processes"] == {"starting": True, "attached": False, "error": ""}
    assert early["enforcement"] == {"starting": True, "attached": False, "error": ""}
    assert early["counts"] == later["counts"]  # the state part is whole already
    shown = render(early).splitlines()
    assert any(line.endswith("still starting: processes, enforcement") for line in shown)
    assert "Enforcement:   starting" in shown
    assert "Enforcement:   cgroup hooks" in render(later) or "Enforcement:   OFF" in render(later)
    assert waiting
    assert health["starting"] is True
    assert "starting" not in later["agent"]
    assert "seen" in later["processes"]
    assert "starting" not in later["enforcement"]
