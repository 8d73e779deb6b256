"""Test that a service the datapath's maps cannot hold is reported by apply, status and service list."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from test_agent import make_agent

from velvet.agent import queries
from velvet.agent.daemon import reconcile_loop
from velvet.agent.handlers import AgentHandlers
from velvet.control.services import LB_CAPACITY, ServiceCompiler
from velvet.datapath.tables import LbMap

NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"


def service(name: str, ports: int) -> str:
    """A selector-less ClusterIP service with `ports` ports (one rev-NAT id each)."""
    listed = ", ".join(f"{{name: p{i}, port: {1000 + i}}}" for i in range(ports))
    return f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\n" \
           f"spec:\n  ports: [{listed}]\n"


def test_a_service_beyond_the_rev_nat_ids_is_reported_and_programmed_once_room_frees(tmp_path: Path) -> None:
    """Test that apply names the service that did not fit, status and service list show it, the
    services that fit keep their ids, and deleting one makes room for it."""
    agent, dp = make_agent(tmp_path)
    agent.services.compiler = ServiceCompiler("velvet-node", ("192.168.77.2",),
                                              capacity={**LB_CAPACITY, LbMap.REVNAT: 4})

    async def scenario() -> tuple[Any, ...]:
        handlers = AgentHandlers(agent)
        loop = asyncio.create_task(reconcile_loop(handlers))
        first = await handlers.apply([{"path": "a.yaml", "text": NAMESPACE + service("small", 3)}])
        second = await handlers.apply([{"path": "b.yaml", "text": service("big", 2)}])
        status = await handlers.status()
        listed = await handlers.query("services", {})
        await handlers.delete([{"path": "a.yaml", "text": service("small", 3)}], None)
        after = await handlers.query("services", {})
        loop.cancel()
        handlers.close()
        return first, second, status, listed, after

    first, second, status, listed, after = asyncio.run(scenario())
    assert first["problems"] == {}
    assert list(second["problems"]) == ["shop/big"]
    assert "lb4_revnat is full" in second["problems"]["shop/big"]
    assert [p["service"] for p in status["problems"]] == ["shop/big"]
    assert {r["service"] for r in listed if r["frontend"]} == {"shop/small"}
    assert [(r["service"], r["frontend"]) for r in listed if r["problem"]] == [("shop/big", None)]
    assert {r["service"] for r in after if r["frontend"]} == {"shop/big"}
    assert not any(r["problem"] for r in after)
    assert queries.status(agent)["problems"] == []
    assert len(dp.tables["lb4_revnat"]) == 2
