"""The bounded flow store (Hubble's ring of recent flows) and its followers."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from velvet.observe.flow import Flow

DEFAULT_CAPACITY = 4095
DEFAULT_FOLLOWER_QUEUE = 4096

Predicate = Callable[[Flow], bool]


def _everything(_: Flow) -> bool:
    return True


class Subscription:
    """One follower: an async iterator over new flows that match its predicate.

    The store never waits for a follower: when the follower's queue is full, the flow is dropped
    and counted in `dropped`; `take_lost()` tells the follower how many it missed since last asked.
    """

    def __init__(self, store: FlowStore, predicate: Predicate, maxsize: int) -> None:
        self._store = store
        self._queue: asyncio.Queue[Flow | None] = asyncio.Queue(maxsize)
        self._unreported = 0
        self.predicate = predicate
        self.dropped = 0
        self.closed = False

    def offer(self, flow: Flow) -> None:
        """Queue `flow` if it matches; drop and count it when the follower lags."""
        if self.closed or not self.predicate(flow):
            return
        try:
            self._queue.put_nowait(flow)
        except asyncio.QueueFull:
            self.dropped += 1
            self._unreported += 1
            self._store.follower_dropped += 1

    @property
    def pending(self) -> int:
        """Flows queued and not yet taken."""
        return self._queue.qsize()

    def take_lost(self) -> int:
        """Flows dropped for this follower since the last call."""
        lost, self._unreported = self._unreported, 0
        return lost

    def close(self) -> None:
        """Stop following; a pending `__anext__` ends the iteration."""
        if self.closed:
            return
        self.closed = True
        self._store.unsubscribe(self)
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Flow:
        flow = await self._queue.get()
        if flow is None:
            raise StopAsyncIteration
        return flow


class RateMeter:
    """Events per second over a sliding window, from a running total sampled at most once a second."""

    def __init__(self, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window
        self._clock = clock
        self._samples: deque[tuple[float, int]] = deque()

    def record(self, total_before: int) -> None:
        """Note the running total just before new events are counted."""
        now = self._clock()
        if not self._samples or now - self._samples[-1][0] >= 1.0:
            self._samples.append((now, total_before))
        while len(self._samples) > 1 and self._samples[0][0] < now - self._window:
            self._samples.popleft()

    def rate(self, total: int) -> float:
        """Events per second since the oldest sample inside the window (0 when idle that long)."""
        now = self._clock()
        recent = [(t, n) for t, n in self._samples if t >= now - self._window]
        if not recent:
            return 0.0
        t0, n0 = recent[0]
        return (total - n0) / max(now - t0, 1.0)


@dataclass(frozen=True)
class StoreStats:
    """Counters of the flow store, as `velvet status` shows them."""

    seen: int
    stored: int
    capacity: int
    overwritten: int
    lost: int
    follower_dropped: int
    followers: int
    rate: float

    def to_json(self) -> dict[str, Any]:
        """Plain dict for the API."""
        return asdict(self)


class FlowStore:
    """The last `capacity` flows, counters of what was seen, overwritten and lost, and followers.

    Not thread-safe: call it from the agent's event loop thread only.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY, kernel_lost: Callable[[], int] = lambda: 0,
                 follower_queue: int = DEFAULT_FOLLOWER_QUEUE) -> None:
        if capacity < 1:
            raise ValueError(f"flow store capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self._flows: deque[Flow] = deque(maxlen=capacity)
        self._kernel_lost = kernel_lost
        self._follower_queue = follower_queue
        self._followers: list[Subscription] = []
        self._rate = RateMeter()
        self.seen = 0
        self.overwritten = 0
        self.follower_dropped = 0

    @property
    def has_followers(self) -> bool:
        """Whether any follower wants every new flow."""
        return bool(self._followers)

    def add(self, flows: Sequence[Flow], seen: int | None = None) -> None:
        """Store and publish `flows`; `seen` counts records of the batch not turned into flows too.

        Records beyond `flows` (the caller skipped them because the ring would overwrite them
        anyway) count as overwritten.
        """
        seen = len(flows) if seen is None else seen
        self._rate.record(self.seen)
        self.seen += seen
        self.overwritten += seen - len(flows) + max(0, len(self._flows) + len(flows) - self.capacity)
        self._flows.extend(flows)
        for follower in self._followers:
            for flow in flows:
                follower.offer(flow)

    def last(self, n: int | None = None, predicate: Predicate = _everything, since_ns: int | None = None,
             until_ns: int | None = None) -> list[Flow]:
        """The newest `n` (all when None) stored flows that match, oldest first."""
        out: list[Flow] = []
        for flow in reversed(self._flows):
            if n is not None and len(out) >= n:
                break
            if since_ns is not None and flow.time_ns < since_ns:
                continue
            if until_ns is not None and flow.time_ns > until_ns:
                continue
            if predicate(flow):
                out.append(flow)
        out.reverse()
        return out

    def subscribe(self, predicate: Predicate = _everything, maxsize: int | None = None) -> Subscription:
        """A new follower of flows stored from now on."""
        sub = Subscription(self, predicate, maxsize or self._follower_queue)
        self._followers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Remove a follower (its `close()` calls this)."""
        if sub in self._followers:
            self._followers.remove(sub)

    def close(self) -> None:
        """End every follower's iteration (agent shutdown)."""
        for sub in list(self._followers):
            sub.close()

    def stats(self) -> StoreStats:
        """Current counters."""
        return StoreStats(
            seen=self.seen, stored=len(self._flows), capacity=self.capacity, overwritten=self.overwritten,
            lost=self._kernel_lost(), follower_dropped=self.follower_dropped,
            followers=len(self._followers), rate=round(self._rate.rate(self.seen), 1),
        )
