"""Test the agent's API handlers: state work runs on its worker, health and flows never wait for it."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from pathlib import Path

import pytest
from test_agent import MANIFEST, make_agent, reconcile_all, run_pod

import velvet.agent.handlers as handlers_module
from velvet.agent.daemon import reconcile_loop
from velvet.agent.handlers import AgentHandlers
from velvet.agent.starting import keep_the_loop_responsive
from velvet.observe.enrich import _ip_key


def test_health_answers_while_state_work_is_running(tmp_path: Path) -> None:
    """Test that /v1/health's handler completes while the state worker is busy (held on an event)."""
    agent, _ = make_agent(tmp_path)
    release = threading.Event()

    async def scenario() -> tuple[bool, object]:
        handlers = AgentHandlers(agent)
        busy = asyncio.ensure_future(handlers.run(release.wait))
        health = await handlers.health()
        still_busy = not busy.done()
        release.set()
        await busy
        handlers.close()
        return still_busy, health

    still_busy, health = asyncio.run(scenario())
    assert still_busy
    assert isinstance(health, dict)
    assert health["ok"] is True


def test_state_calls_run_one_at_a_time_in_order(tmp_path: Path) -> None:
    """Test that state work queued through the handlers runs serially, in the order it was asked."""
    agent, _ = make_agent(tmp_path)
    seen: list[tuple[str, int]] = []

    def step(n: int) -> int:
        seen.append((threading.current_thread().name, n))
        return n

    async def scenario() -> list[int]:
        handlers = AgentHandlers(agent)
        results = await asyncio.gather(*(handlers.run(step, n) for n in range(20)))
        handlers.close()
        return list(results)

    assert asyncio.run(scenario()) == list(range(20))
    assert [n for _, n in seen] == list(range(20))
    assert len({name for name, _ in seen}) == 1


def test_a_deleted_pod_no_longer_names_its_address(tmp_path: Path) -> None:
    """Test that flow enrichment forgets a pod (and its identity) once the pod is gone."""
    agent, _ = make_agent(tmp_path)
    agent.apply([{"path": "m.yaml", "text": MANIFEST}])
    run_pod(agent)
    reconcile_all(agent)
    found = agent.resolver.by_ip(_ip_key("10.244.0.10"))
    assert found is not None
    assert (found.namespace, found.pod_name) == ("shop", "web")
    identity = found.identity
    assert agent.resolver.by_identity(identity) is not None
    agent.delete([{"path": "d.yaml", "text": MANIFEST.split("---")[1]}], 0)
    agent.pod_gone("shop", "web")
    reconcile_all(agent)
    assert agent.resolver.by_ip(_ip_key("10.244.0.10")) is None
    assert agent.resolver.by_identity(identity) is None


def test_no_full_garbage_collection_stalls_the_loop_during_a_big_apply(tmp_path: Path) -> None:
    """Test that with the daemon's settings a big apply runs no full (generation 2) collection, which
    holds the GIL for 40-320 ms over a big store, while young generations are still collected."""
    agent, _ = make_agent(tmp_path)
    services = "".join(f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: shop}}\n"
                       f"spec:\n  ports: [{{port: 80}}]\n" for i in range(3000))
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
    gc.callbacks.append(count)
    try:
        keep_the_loop_responsive()
        agent.apply([{"path": "m.yaml", "text": MANIFEST.split("---")[0] + services}])
        reconcile_all(agent)
    finally:
        gc.callbacks.remove(count)
        gc.set_threshold(*thresholds)
        sys.setswitchinterval(interval)
    assert 2 not in collections
    assert 0 in collections


def test_a_change_committed_before_the_reconcile_loop_watches_is_programmed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that an apply whose commit comes before the reconcile loop subscribes to the store (a request
    served as the agent starts) is still programmed, not left waiting for a pass that never comes."""
    agent, dp = make_agent(tmp_path)
    monkeypatch.setattr(handlers_module, "PROGRAM_WAIT_SECONDS", 5.0)
    text = ("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: Service\n"
            "metadata: {name: web, namespace: shop}\nspec:\n  clusterIP: 10.96.7.7\n"
            "  ports: [{port: 80}]\n")

    async def scenario() -> bool:
        handlers = AgentHandlers(agent)
        answer = await handlers.run(agent.apply, [{"path": "web.yaml", "text": text}])
        loop = asyncio.create_task(reconcile_loop(handlers))
        programmed = await handlers.programmed(answer["version"])
        loop.cancel()
        handlers.close()
        return programmed

    assert asyncio.run(scenario())
    assert any(key.address == "10.96.7.7" for key in dp.tables["lb4_services"])
