"""Test that an apply waiting for the datapath does not wait for the reconcile loop's debounce."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_agent import make_agent

from velvet.agent import daemon
from velvet.agent.daemon import reconcile_loop
from velvet.agent.handlers import AgentHandlers

NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"
SERVICE = ("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n"
           "spec:\n  ports: [{port: 80}]\n")


def test_an_apply_is_programmed_without_waiting_out_the_debounce(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that with an hour of debounce, two applies in a row are both answered programmed (no "not yet
    programmed" warning): the first change after a quiet spell starts a pass at once, and so does a request
    that waits in the middle of a burst."""
    monkeypatch.setattr(daemon, "RECONCILE_DEBOUNCE_SECONDS", 3600.0)
    agent, dp = make_agent(tmp_path)

    async def scenario() -> list[dict[str, object]]:
        handlers = AgentHandlers(agent)
        loop = asyncio.create_task(reconcile_loop(handlers))
        try:
            return [dict(await asyncio.wait_for(handlers.apply([{"path": "s.yaml", "text": text}]), 60))
                    for text in (NAMESPACE, SERVICE)]
        finally:
            loop.cancel()
            handlers.close()

    answers = asyncio.run(scenario())
    assert [answer["warnings"] for answer in answers] == [[], []]
    assert any(not key.backend_slot for key in dp.tables["lb4_services"])
