"""Test that removed backends' conntrack flushes share one walk per burst, on a low-priority thread."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import cast

import pytest

from velvet.agent import daemon
from velvet.agent.node import Agent


class _Walks:
    """Stands in for the agent: counts flushes and the nice value of the thread that ran each."""

    def __init__(self) -> None:
        self.nice: list[int] = []
        self.done = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def flush_stale(self) -> int:
        self.nice.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        self._loop.call_soon_threadsafe(self.done.set)
        return 0


def test_a_burst_of_passes_shares_one_low_priority_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that three passes asking for a flush within the interval cause one walk, and a later pass
    another; each runs on a thread at the lowest priority, not the agent's."""
    monkeypatch.setattr(daemon, "FLUSH_INTERVAL_SECONDS", 0.05)

    async def scenario() -> list[int]:
        walks = _Walks()
        wanted = asyncio.Event()
        task = asyncio.create_task(daemon.flush_stale(cast(Agent, walks), wanted))
        try:
            for _ in range(3):  # one burst
                wanted.set()
                await asyncio.sleep(0)
            await asyncio.wait_for(walks.done.wait(), 60)
            await asyncio.sleep(4 * daemon.FLUSH_INTERVAL_SECONDS)  # room for a second walk, were there one
            assert len(walks.nice) == 1
            walks.done.clear()
            wanted.set()  # a later pass
            await asyncio.wait_for(walks.done.wait(), 60)
            return walks.nice
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    nice = asyncio.run(scenario())
    assert nice == [daemon.HOUSEKEEPING_NICE, daemon.HOUSEKEEPING_NICE]
    assert os.getpriority(os.PRIO_PROCESS, 0) != daemon.HOUSEKEEPING_NICE  # the agent's threads keep theirs
