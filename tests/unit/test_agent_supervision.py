"""Test that the agent's background loops never die unseen: a failed loop is logged and runs again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from velvet.agent.daemon import supervised


def _supervise_until(name: str, run: Callable[[], Awaitable[None]], settled: asyncio.Event,
                     caplog: pytest.LogCaptureFixture) -> None:
    """Supervise `run` (10 ms between runs) until it sets `settled`, then cancel the supervision."""
    async def main() -> None:
        task = asyncio.create_task(supervised(name, run, pause=0.01))
        await asyncio.wait_for(settled.wait(), 30.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.ERROR, logger="velvet.agent"):
        asyncio.run(main())


def test_a_failed_loop_is_logged_with_its_traceback_and_runs_again(caplog: pytest.LogCaptureFixture) -> None:
    """Test that a loop raising is started again after the pause, each failure logged with the loop's
    name and the exception, until it runs for good; a dead flow reader would otherwise stop every flow
    while the agent still answered."""
    runs: list[int] = []
    running_for_good = asyncio.Event()

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) <= 2:
            raise RuntimeError(f"bad batch {len(runs)}")
        running_for_good.set()
        await asyncio.Event().wait()

    _supervise_until("flow event reader", flaky, running_for_good, caplog)
    assert len(runs) == 3
    failures = [r for r in caplog.records if "flow event reader failed" in r.getMessage()]
    assert [str(r.exc_info[1]) for r in failures if r.exc_info] == ["bad batch 1", "bad batch 2"]


def test_a_loop_that_ends_is_said_and_runs_again(caplog: pytest.LogCaptureFixture) -> None:
    """Test that a loop returning (they are meant to run for good) is logged and started again."""
    runs: list[int] = []
    again = asyncio.Event()

    async def ends_once() -> None:
        runs.append(len(runs))
        if len(runs) > 1:
            again.set()
            await asyncio.Event().wait()

    _supervise_until("conntrack sweeper", ends_once, again, caplog)
    assert runs == [0, 1]
    assert any("conntrack sweeper ended" in r.getMessage() for r in caplog.records)
