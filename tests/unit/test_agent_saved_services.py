"""Test that a restarted agent takes back its saved service compiler instead of compiling every service.

Each restart below is a second agent on the same state directory and the same (fake) datapath, as after
`kill -9`; compiles are counted (`ServiceCompiler.update` calls), not timed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from test_agent import MANIFEST, apply, make_agent, reconcile_all, run_pod

from velvet.agent import daemon, queries
from velvet.agent.config import AgentConfig
from velvet.agent.handlers import AgentHandlers
from velvet.agent.node import Agent
from velvet.control.services import ServiceCompiler
from velvet.controllers.saved_services import SAVED_FILE
from velvet.datapath.fake import FakeDatapath
from velvet.datapath.tables import LbState
from velvet.model import Service

SERVICES = "".join(
    f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: shop}}\n"
    f"spec:\n  selector: {{app: web}}\n  ports: [{{port: {80 + i}, targetPort: http}}]\n" for i in range(5))


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The key of every service compiled from now on."""
    seen: list[str] = []
    real = ServiceCompiler.update

    def counting(self: ServiceCompiler, service: Service | None, slices: object, key: str) -> object:
        seen.append(key)
        return real(self, service, slices, key)  # type: ignore[arg-type]

    monkeypatch.setattr(ServiceCompiler, "update", counting)
    return seen


def running(tmp_path: Path) -> tuple[Agent, FakeDatapath]:
    """An agent with shop/web, five more services on its pod, their compiled state saved."""
    agent, dp = make_agent(tmp_path)
    apply(agent, MANIFEST + SERVICES)
    run_pod(agent)
    reconcile_all(agent)
    agent.save_services()
    agent.store.close()
    return agent, dp


def store_only(state_dir: Path) -> Agent:
    """An agent not started, for changing the store while no agent runs."""
    return Agent(AgentConfig(sandbox="unit", node_ips=("192.168.77.2",), state_dir=state_dir), FakeDatapath())


def cluster_ip(agent: Agent, name: str) -> str:
    service = agent.store.find("Service", "shop", name)
    assert isinstance(service, Service)
    assert service.spec.cluster_ip
    return service.spec.cluster_ip


def lb_state(dp: FakeDatapath) -> LbState:
    return LbState(*(dict(dp.tables.get(m, {})) for m in
                     ("lb4_services", "lb4_backends", "lb4_revnat", "lb4_src_range", "lb4_maglev")))


def test_a_restart_with_nothing_changed_compiles_no_service_and_writes_nothing(
        tmp_path: Path, compiles: list[str]) -> None:
    """Test that a restart on unchanged objects and maps compiles no service, writes no map, and still
    names every service (service list) as before."""
    agent, dp = running(tmp_path)
    tables, writes = lb_state(dp), dp.writes
    listed = queries.query(agent, "services", {})
    compiles.clear()
    restarted, _ = make_agent(tmp_path, dp)
    assert compiles == []
    assert dp.writes == writes
    assert lb_state(dp) == tables
    assert queries.query(restarted, "services", {}) == listed
    assert len(listed) == 6


def test_a_service_changed_while_down_is_compiled_again_and_rewritten(
        tmp_path: Path, compiles: list[str]) -> None:
    """Test that a Service changed while no agent ran is the only one compiled, and its new port is
    programmed (its old one removed) as a full compile would."""
    agent, dp = running(tmp_path)
    address = cluster_ip(agent, "s1")
    offline = store_only(tmp_path)
    offline.apply([{"path": "m.yaml", "text": SERVICES.split("---")[2].replace("port: 81,", "port: 9081,")}])
    offline.store.close()
    compiles.clear()
    restarted, _ = make_agent(tmp_path, dp)
    assert compiles == ["shop/s1"]
    fronts = {(k.address, k.dport) for k in dp.tables["lb4_services"] if not k.backend_slot}
    assert (address, 9081) in fronts
    assert (address, 81) not in fronts
    assert {row["service"] for row in queries.query(restarted, "services", {})} >= {"shop/s1"}


def test_a_service_deleted_while_down_leaves_the_maps(tmp_path: Path, compiles: list[str]) -> None:
    """Test that a Service deleted while no agent ran (the saved state names an object the store lost) has
    every service compiled again, and its frontend removed."""
    agent, dp = running(tmp_path)
    address = cluster_ip(agent, "s2")
    offline = store_only(tmp_path)
    offline.delete([{"path": "d.yaml", "text": SERVICES.split("---")[3]}], None)
    offline.store.close()
    compiles.clear()
    make_agent(tmp_path, dp)
    assert sorted(compiles) == ["shop/s0", "shop/s1", "shop/s3", "shop/s4", "shop/web"]
    assert address not in {k.address for k in dp.tables["lb4_services"]}


def test_changes_after_an_adopted_restart_are_programmed_as_after_a_full_compile(tmp_path: Path) -> None:
    """Test that the adopted compiler serves incremental changes: a service added and another deleted
    after the restart leave the maps exactly as on an agent that compiled every service at its start."""
    extra = SERVICES.split("---")[3].replace("name: s2,", "name: s9,").replace("port: 82,", "port: 90,")
    states = []
    for adopted in (True, False):
        state_dir = tmp_path / str(adopted)
        _, dp = running(state_dir)
        if not adopted:
            (state_dir / SAVED_FILE).unlink()
        restarted, _ = make_agent(state_dir, dp)
        restarted.apply([{"path": "m.yaml", "text": extra}])
        restarted.delete([{"path": "d.yaml", "text": SERVICES.split("---")[4]}], None)
        reconcile_all(restarted)
        rows = {row["service"] for row in queries.query(restarted, "services", {})}
        assert "shop/s9" in rows
        assert "shop/s3" not in rows
        states.append(lb_state(dp))
    assert states[0] == states[1]


def test_a_damaged_or_foreign_saved_state_means_compiling_every_service(
        tmp_path: Path, compiles: list[str]) -> None:
    """Test that a saved state that cannot be used (damaged file, another compiler's settings) is logged
    and ignored: every service is compiled and the maps stay as they were."""
    agent, dp = running(tmp_path)
    tables = lb_state(dp)
    saved = tmp_path / SAVED_FILE
    saved.write_bytes(saved.read_bytes()[:-40])
    compiles.clear()
    restarted, _ = make_agent(tmp_path, dp)
    assert len(compiles) == 6
    assert lb_state(dp) == tables
    restarted.save_services()
    restarted.store.close()
    other = Agent(AgentConfig(sandbox="unit", node_ips=("192.168.77.9",), state_dir=tmp_path), dp)
    compiles.clear()
    other.start()
    assert len(compiles) == 6


def test_the_running_agent_saves_its_compiled_services_once_quiet(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that the daemon saves the compiled services once no pass ran for a while, and only then."""
    monkeypatch.setattr(daemon, "SAVE_QUIET_SECONDS", 0.01)
    agent, _ = make_agent(tmp_path)
    apply(agent, MANIFEST)
    saved = threading.Event()
    save = agent.save_services

    def save_and_tell() -> None:
        save()
        saved.set()

    monkeypatch.setattr(agent, "save_services", save_and_tell)

    async def scenario() -> bool:
        handlers = AgentHandlers(agent)
        saver = asyncio.create_task(daemon.save_when_quiet(handlers))
        try:
            return await asyncio.to_thread(saved.wait, 10)
        finally:
            saver.cancel()
            handlers.close()

    assert agent.services.unsaved
    assert not (tmp_path / SAVED_FILE).exists()
    assert asyncio.run(scenario())
    assert (tmp_path / SAVED_FILE).exists()
    assert not agent.services.unsaved


def test_a_save_waits_for_a_quiet_spell_a_hundred_times_its_own_length(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that after a save that took 20 ms the next one waits for 2 s without passes (SAVE_SHARE), so
    saving never takes more than 1 % of the state worker, and then happens."""
    monkeypatch.setattr(daemon, "SAVE_QUIET_SECONDS", 0.01)
    agent, _ = make_agent(tmp_path)
    apply(agent, MANIFEST)
    saves: list[float] = []
    done = [threading.Event(), threading.Event()]
    save = agent.save_services

    def slow_save() -> None:
        time.sleep(0.02)
        save()
        saves.append(time.monotonic())
        done[len(saves) - 1].set()

    monkeypatch.setattr(agent, "save_services", slow_save)

    async def scenario() -> None:
        handlers = AgentHandlers(agent)
        saver = asyncio.create_task(daemon.save_when_quiet(handlers))
        try:
            assert await asyncio.to_thread(done[0].wait, 10)
            agent.reconcile_stats["passes"] += 1  # a pass that changed the services
            agent.services.unsaved = True
            assert not await asyncio.to_thread(done[1].wait, 0.5), "saved again too soon"
            assert await asyncio.to_thread(done[1].wait, 10)
        finally:
            saver.cancel()
            handlers.close()

    asyncio.run(scenario())
    assert saves[1] - saves[0] >= 100 * 0.02
