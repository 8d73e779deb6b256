"""Test the agent's sweeps of expired conntrack entries: their pace, their thread and their metrics."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import cast

import pytest
from prometheus_client import generate_latest

from velvet.agent import daemon
from velvet.agent.config import AgentConfig
from velvet.agent.node import Agent
from velvet.datapath.fake import FakeDatapath
from velvet.datapath.tables import ConntrackSweep

CAPACITY = 262_144


@pytest.mark.parametrize(("interval", "sweep", "alive_before", "expected"), [
    # no churn: the interval doubles, up to the longest
    (20.0, ConntrackSweep(500, 0, CAPACITY), 500, 40.0),
    (200.0, ConntrackSweep(500, 0, CAPACITY), 500, daemon.CT_SWEEP_MAX_SECONDS),
    # 1,000 entries came and went in 10 s: half the free room lasts ~1,300 s, so the longest
    (10.0, ConntrackSweep(2_000, 1_000, CAPACITY), 2_000, daemon.CT_SWEEP_MAX_SECONDS),
    # 20,000 expired and 20,000 more alive in 30 s: half the free room at that pace in 98.3 s
    (30.0, ConntrackSweep(22_144, 20_000, CAPACITY), 2_144, 30.0 * 240_000 / 80_000),
    # a table nearly full of what one interval brought: the shortest
    (60.0, ConntrackSweep(CAPACITY - 100, 100_000, CAPACITY), 0, daemon.CT_SWEEP_MIN_SECONDS),
    # a datapath without a conntrack table
    (5.0, ConntrackSweep(0, 0, 0), 0, daemon.CT_SWEEP_MAX_SECONDS),
])
def test_the_next_sweep_comes_before_the_churn_fills_half_the_free_room(
        interval: float, sweep: ConntrackSweep, alive_before: int, expected: float) -> None:
    """Test that the interval follows what appeared in the table since the last sweep."""
    assert daemon.next_sweep(interval, sweep, alive_before) == pytest.approx(expected)


class _Sweeps:
    """Stands in for the agent: counts sweeps and the nice value of the thread that ran each."""

    def __init__(self) -> None:
        self.nice: list[int] = []
        self.done = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def sweep_conntrack(self) -> ConntrackSweep:
        self.nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        if len(self.nice) == 2:
            self._loop.call_soon_threadsafe(self.done.set)
        return ConntrackSweep(CAPACITY - 10, 100_000, CAPACITY)  # churn: the shortest interval again


def test_the_agent_sweeps_again_and_again_on_a_low_priority_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that the sweeps repeat, each on a thread at the lowest priority, not the agent's."""
    monkeypatch.setattr(daemon, "CT_SWEEP_MIN_SECONDS", 0.01)

    async def scenario() -> list[int]:
        sweeps = _Sweeps()
        task = asyncio.create_task(daemon.sweep_conntrack(cast(Agent, sweeps)))
        try:
            await asyncio.wait_for(sweeps.done.wait(), 60)
            return sweeps.nice
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    assert asyncio.run(scenario())[:2] == [daemon.HOUSEKEEPING_NICE] * 2
    assert os.getpriority(os.PRIO_PROCESS, 0) != daemon.HOUSEKEEPING_NICE


class _SweptDatapath(FakeDatapath):
    """A fake datapath whose conntrack sweep finds 7 entries alive and removes 3."""

    def sweep_conntrack(self) -> ConntrackSweep:
        return ConntrackSweep(7, 3, CAPACITY)


def test_a_sweep_is_counted_in_the_metrics(tmp_path: Path) -> None:
    """Test that /metrics shows the sweeps, with what the last one kept and removed."""
    config = AgentConfig(sandbox="unit", node_ips=("192.168.77.2",), state_dir=tmp_path)
    agent = Agent(config, _SweptDatapath())
    agent.sweep_conntrack()
    agent.sweep_conntrack()
    text = generate_latest(agent.flows.metrics.registry).decode()
    assert "velvet_conntrack_gc_runs_total 2.0" in text
    assert 'velvet_conntrack_gc_entries{status="alive"} 7.0' in text
    assert 'velvet_conntrack_gc_entries{status="deleted"} 3.0' in text
    assert "velvet_conntrack_gc_duration_seconds_count 2.0" in text
