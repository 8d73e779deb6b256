"""Test that a reconcile pass writes many new services in a few map batches, in the same safe order."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from velvet.agent.config import AgentConfig
from velvet.agent.node import Agent, Dirty
from velvet.controllers import services as service_controller
from velvet.controllers.services import LB_TABLES
from velvet.datapath.fake import FakeDatapath


class CountingDatapath(FakeDatapath):
    """A fake datapath that records which table each write went to."""

    def __init__(self) -> None:
        super().__init__()
        self.lb_writes: list[str] = []

    def write(self, table: str, upserts: Mapping[Any, Any], deletes: Iterable[Any]) -> None:
        if table in LB_TABLES:
            self.lb_writes.append(table)
        super().write(table, upserts, deletes)


def services(names: Iterable[int], port: int = 80) -> str:
    """ClusterIP services of one backend-less selector in namespace `default`."""
    return "".join(f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\n"
                   f"spec:\n  clusterIP: 10.96.{i // 250}.{i % 250 + 1}\n  selector: {{app: s{i}}}\n"
                   f"  ports: [{{port: {port}}}]\n" for i in names)


def agent_with(tmp_path: Path) -> tuple[Agent, CountingDatapath]:
    """A started agent on a counting fake datapath."""
    dp = CountingDatapath()
    agent = Agent(AgentConfig(sandbox="unit", node_ips=("192.168.77.2",), state_dir=tmp_path), dp)
    agent.start()
    return agent, dp


def apply_and_reconcile(agent: Agent, text: str) -> None:
    """Apply `text`, then one pass over every service."""
    agent.apply([{"path": "s.yaml", "text": text}])
    agent.reconcile(Dirty({s.metadata.key for s in agent.store.objects("Service")}))


def test_new_services_take_as_many_map_writes_for_10_as_for_200(tmp_path: Path) -> None:
    """Test that one pass over 10 or 200 new services writes the same few batches, and every frontend."""
    counts = {}
    for count in (10, 200):
        agent, dp = agent_with(tmp_path / str(count))
        dp.lb_writes.clear()
        apply_and_reconcile(agent, services(range(count)))
        counts[count] = len(dp.lb_writes)
        fronts = [k for k in dp.tables["lb4_services"] if not k.backend_slot]
        assert len(fronts) == count
        agent.store.close()
    assert counts[10] == counts[200] <= len(LB_TABLES) + 1


def test_a_pass_over_many_new_services_writes_every_held_services_and_ends_as_one_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that a pass holds at most HELD_SERVICES add-only changes before writing them (a 9,000-service
    pass no longer holds every delta at once), and leaves the maps as one batch of all of them does."""
    whole, dp_whole = agent_with(tmp_path / "whole")
    apply_and_reconcile(whole, services(range(20)))
    monkeypatch.setattr(service_controller, "HELD_SERVICES", 8)
    counts = {}
    for count in (8, 20):  # one group of held changes, then three (8 + 8 + 4)
        agent, dp = agent_with(tmp_path / str(count))
        dp.lb_writes.clear()
        apply_and_reconcile(agent, services(range(count)))
        counts[count] = len(dp.lb_writes)
        agent.store.close()
    assert counts[20] == 3 * counts[8]
    assert {t: dp.tables.get(t) for t in LB_TABLES} == {t: dp_whole.tables.get(t) for t in LB_TABLES}
    whole.store.close()


def test_a_pass_that_deletes_and_adds_ends_as_one_by_one(tmp_path: Path) -> None:
    """Test that a pass mixing removed, changed and new services leaves the maps as service-by-service
    passes do."""
    batched, dp = agent_with(tmp_path / "batched")
    single, dp_single = agent_with(tmp_path / "single")
    for agent in (batched, single):
        apply_and_reconcile(agent, services(range(20)))
    change = services(range(10, 30), port=81)
    removed = services(range(10))
    for agent in (batched, single):
        agent.delete([{"path": "d.yaml", "text": removed}], None)
        agent.apply([{"path": "c.yaml", "text": change}])
    batched.reconcile(Dirty({f"default/s{i}" for i in range(30)}))
    for i in range(30):
        single.reconcile(Dirty({f"default/s{i}"}))
    assert {t: dp.tables.get(t) for t in LB_TABLES} == {t: dp_single.tables.get(t) for t in LB_TABLES}
    fronts = {(k.address, k.dport) for k in dp.tables["lb4_services"] if not k.backend_slot}
    assert len(fronts) == 20
    assert {port for _, port in fronts} == {81}


class CountingCache:
    """The store as the service controller reads it, counting whole-kind listings."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.listings = 0

    def objects(self, kind: str) -> Any:
        self.listings += 1
        return self.store.objects(kind)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_a_pass_over_one_service_lists_no_kind(tmp_path: Path) -> None:
    """Test that recompiling one service among 300 reads its own objects, never a whole kind."""
    agent, dp = agent_with(tmp_path)
    apply_and_reconcile(agent, services(range(300)))
    cache = CountingCache(agent.store)
    agent.services.cache = cache
    agent.apply([{"path": "one.yaml", "text": services([300])}])
    agent.reconcile(Dirty({"default/s300"}))
    assert cache.listings == 0
    assert len([k for k in dp.tables["lb4_services"] if not k.backend_slot]) == 301
