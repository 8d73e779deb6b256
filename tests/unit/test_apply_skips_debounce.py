"""Test that an apply waiting for the datapath does not wait for the reconcile loop's debounce."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_agent import make_agent

from velvet.agent import daemon
from velvet.agent.daemon import reconcile_loop
from velvet.agent.handlers import AgentHandlers

SERVICE = ("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: Service\n"
           "metadata: {name: web, namespace: shop}\nspec:\n  ports: [{port: 80}]\n")


def test_an_apply_is_programmed_without_waiting_out_the_debounce(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that with an hour of debounce, an apply is still answered programmed (no "not yet programmed"
    warning): a request that waits starts the pass at once."""
    monkeypatch.setattr(daemon, "RECONCILE_DEBOUNCE_SECONDS", 3600.0)
    agent, dp = make_agent(tmp_path)

    async def scenario() -> dict[str, object]:
        handlers = AgentHandlers(agent)
        loop = asyncio.create_task(reconcile_loop(handlers))
        try:
            return dict(await asyncio.wait_for(handlers.apply([{"path": "s.yaml", "text": SERVICE}]), 60))
        finally:
            loop.cancel()
            handlers.close()

    answer = asyncio.run(scenario())
    assert answer["warnings"] == []
    assert any(not key.backend_slot for key in dp.tables["lb4_services"])
