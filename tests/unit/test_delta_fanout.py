"""Test that deltas published on another thread reach a watcher's loop in order, in one hand-off."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from velvet.model import Namespace, ObjectMeta
from velvet.sources.delta import Delta, DeltaFanout


def test_a_published_batch_is_one_wake_up_of_the_loop_and_keeps_its_order() -> None:
    """Test that 500 deltas published from a worker thread are handed to the loop once, all in order."""
    deltas = [Delta("Namespace", "upsert", Namespace(ObjectMeta(name=f"n{i}"))) for i in range(500)]

    async def main() -> tuple[list[str], int]:
        loop = asyncio.get_running_loop()
        handoffs = 0
        original = loop.call_soon_threadsafe

        def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal handoffs
            handoffs += 1
            return original(*args, **kwargs)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign,assignment]
        fanout = DeltaFanout()
        watch = fanout.subscribe()
        worker = threading.Thread(target=fanout.publish, args=(deltas,))
        worker.start()
        got = [(await watch.__anext__()).obj.metadata.name for _ in deltas]
        worker.join()
        return got, handoffs

    names, handoffs = asyncio.run(main())
    assert names == [f"n{i}" for i in range(500)]
    assert handoffs == 1
