"""The unit of change streamed from a source to the agent, and a fan-out to any number of watchers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from velvet.model import KubeObject

Op = Literal["upsert", "delete"]


@dataclass(frozen=True)
class Delta:
    """One object created or updated ("upsert", the new state) or removed ("delete", its last state)."""

    kind: str
    op: Op
    obj: KubeObject


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Watch:
    """An async iterator of deltas for one watcher; ends when closed or when its source closes."""

    def __init__(self, fanout: DeltaFanout) -> None:
        self._fanout = fanout
        self._queue: asyncio.Queue[Delta | None] = asyncio.Queue()
        self._closed = False
        self._loop = _running_loop()  # deltas published on another thread are handed to this loop

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> Delta:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is None:
            self._closed = True
            raise StopAsyncIteration
        return item

    def put(self, delta: Delta | None) -> None:
        """Queue a delta (None ends the stream); safe from any thread."""
        self.put_all([delta])

    def put_all(self, deltas: list[Delta | None]) -> None:
        """Queue deltas in order, handed to the watcher's loop at once (one wake-up, not one per delta)."""
        if self._loop is not None and _running_loop() is not self._loop:
            self._loop.call_soon_threadsafe(self._queue_all, deltas)
        else:
            self._queue_all(deltas)

    def _queue_all(self, deltas: list[Delta | None]) -> None:
        for delta in deltas:
            self._queue.put_nowait(delta)

    def close(self) -> None:
        """Stop watching; iteration ends after the deltas already queued."""
        self._fanout.unsubscribe(self)
        self.put(None)


class DeltaFanout:
    """Delivers every published delta, in order, to each watch subscribed at the time."""

    def __init__(self) -> None:
        self._watches: list[Watch] = []

    def subscribe(self) -> Watch:
        """A new watch that sees every delta published from now on."""
        watch = Watch(self)
        self._watches.append(watch)
        return watch

    def unsubscribe(self, watch: Watch) -> None:
        """Forget `watch` (no-op when already gone)."""
        if watch in self._watches:
            self._watches.remove(watch)

    def publish(self, deltas: Iterable[Delta]) -> None:
        """Queue `deltas` for every watch."""
        batch: list[Delta | None] = list(deltas)
        if batch:
            for watch in self._watches:
                watch.put_all(batch)

    def close(self) -> None:
        """End every watch."""
        for watch in list(self._watches):
            watch.close()
