"""The bounded flow store (Hubble's ring of recent flows) and its followers.

The ring is a numpy array of `RECORD_DTYPE` records: storing a batch is a copy, and `Flow` objects are
built only for what a reader takes (a query's matches, a follower's next flows, the service map's
distinct edges). Followers queue batches, not flows, so a slow follower costs O(batches).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from velvet.observe.decode import RAW_RECORD, RECORD_DTYPE, FlowDecoder, RecordMatch, Records, join, take
from velvet.observe.enrich import DictResolver
from velvet.observe.flow import Flow

DEFAULT_CAPACITY = 4095
DEFAULT_FOLLOWER_QUEUE = 65536  # records (80 B each): a follower rides out bursts, a slow one still loses
_LAST_CHUNK = 256

Predicate = Callable[[Flow], bool]

RING_LOST = "PERF_EVENT_RING_BUFFER"  # Hubble's name: records the kernel's ring had no room for
QUEUE_LOST = "OBSERVER_EVENTS_QUEUE"  # records a slow follower's queue had no room for


class LostEvents(NamedTuple):
    """A follower's notice of records it will never see: where they were lost, and how many."""

    source: str
    number: int


class Subscription:
    """One follower: an async iterator over new flows that match its record filter and predicate.

    The store never waits for a follower: when the follower's queue holds `maxsize` records, new
    matching records are dropped and counted in `dropped`; `take_lost()` tells the follower how many
    it missed since last asked. Records the kernel's ring lost come in the queue as a `LostEvents`,
    after the records read before the loss was seen.
    """

    def __init__(self, store: FlowStore, match: RecordMatch | None, predicate: Predicate | None,
                 maxsize: int) -> None:
        self._store = store
        self._batches: deque[Records | LostEvents] = deque()
        self._ready = asyncio.Event()
        self._queued = 0
        self._flows: deque[Flow] = deque()
        self._unreported = 0
        self._maxsize = maxsize
        self.match = match
        self.predicate = predicate
        self.dropped = 0
        self.ring_lost_told = 0  # the kernel ring's loss count this follower was last told of
        self.closed = False

    def offer(self, records: Records) -> None:
        """Queue the matching records (a batch); drop and count those beyond the queue's room."""
        if self.closed:
            return
        if self.match is not None:
            records = take(records, self.match(records))
        room = max(0, self._maxsize - self._queued)
        lost = len(records) - room
        if lost > 0:
            self.dropped += lost
            self._unreported += lost
            self._store.follower_dropped += lost
            records = records[:room]
        if len(records):
            self._batches.append(records)
            self._queued += len(records)
            self._ready.set()

    def ring_lost(self, total: int) -> None:
        """Note the kernel ring's running count of lost records: what it lost since this follower was
        last told (or subscribed) is queued as a notice, after the records read before the loss."""
        if total > self.ring_lost_told and not self.closed:
            self._batches.append(LostEvents(RING_LOST, total - self.ring_lost_told))
            self._ready.set()
        self.ring_lost_told = total

    @property
    def queued(self) -> list[Records]:
        """The batches waiting in the queue (the store renumbers their handles when it compacts)."""
        return [b for b in self._batches if not isinstance(b, LostEvents)]

    @property
    def pending(self) -> int:
        """Records queued and not yet taken."""
        return self._queued + len(self._flows)

    def take_lost(self) -> LostEvents | None:
        """The notice of records dropped for this follower since the last call (None: none were)."""
        lost, self._unreported = self._unreported, 0
        return LostEvents(QUEUE_LOST, lost) if lost else None

    def close(self) -> None:
        """Stop following; iteration ends once what was already queued is taken."""
        if self.closed:
            return
        self.closed = True
        self._store.unsubscribe(self)
        self._ready.set()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Flow | LostEvents:
        while True:
            while self._flows:
                flow = self._flows.popleft()
                if self.predicate is None or self.predicate(flow):
                    return flow
            while not self._batches:
                if self.closed:
                    raise StopAsyncIteration
                self._ready.clear()
                await self._ready.wait()
            batch = self._batches.popleft()
            if isinstance(batch, LostEvents):
                return batch
            self._queued -= len(batch)
            self._flows.extend(self._store.flows(batch))


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


@dataclass(frozen=True)
class Groups:
    """Records grouped by equal key columns: one representative Flow, count and newest time per group."""

    flows: list[Flow]
    counts: list[int]
    last_ns: list[int]
    inverse: npt.NDArray[np.intp]
    """The group of every record."""


class FlowStore:
    """The last `capacity` records, counters of what was seen, overwritten and lost, and followers.

    Not thread-safe: call it from the agent's event loop thread only.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY, kernel_lost: Callable[[], int] = lambda: 0,
                 follower_queue: int = DEFAULT_FOLLOWER_QUEUE, decoder: FlowDecoder | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"flow store capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self.decoder = decoder or FlowDecoder(DictResolver())
        self._ring: Records = np.zeros(capacity, RECORD_DTYPE)
        self._next = 0
        self._stored = 0
        self._kernel_lost = kernel_lost
        self._follower_queue = follower_queue
        self._followers: list[Subscription] = []
        self._rate = RateMeter()
        self.seen = 0
        self.overwritten = 0
        self.follower_dropped = 0

    @property
    def has_followers(self) -> bool:
        """Whether any follower wants every new record."""
        return bool(self._followers)

    def add(self, records: Records, seen: int | None = None) -> None:
        """Store and publish `records` (from `FlowDecoder.enrich`); `seen` counts records not passed too.

        Records beyond `records` (the caller skipped them because the ring would overwrite them
        anyway) count as overwritten.
        """
        seen = len(records) if seen is None else seen
        self._rate.record(self.seen)
        self.seen += seen
        self.overwritten += seen - len(records) + max(0, self._stored + len(records) - self.capacity)
        self._write(records[-self.capacity:])
        for follower in self._followers:
            follower.offer(records)
        if self._followers:  # the ring lost what it had no room for while holding these
            lost = self._kernel_lost()
            for follower in self._followers:
                follower.ring_lost(lost)
        if self.decoder.oversized:
            self.decoder.compact([self._ring, *(b for f in self._followers for b in f.queued)])

    def _write(self, records: Records) -> None:
        n = len(records)
        first = min(n, self.capacity - self._next)
        ring, raw = self._ring.view(RAW_RECORD), records.view(RAW_RECORD)
        ring[self._next:self._next + first] = raw[:first]
        ring[:n - first] = raw[first:]
        self._next = (self._next + n) % self.capacity
        self._stored = min(self.capacity, self._stored + n)

    def records(self, since_ns: int | None = None, until_ns: int | None = None) -> Records:
        """The stored records (a copy), oldest first, with a time in [since_ns, until_ns] when given."""
        if self._stored < self.capacity:
            out = take(self._ring, slice(0, self._stored))
        else:
            out = join((self._ring[self._next:], self._ring[:self._next]))
        if since_ns is not None or until_ns is not None:
            t = out["time_ns"]
            keep = np.ones(len(out), np.bool_)
            if since_ns is not None:
                keep &= t >= since_ns
            if until_ns is not None:
                keep &= t <= until_ns
            out = take(out, keep)
        return out

    def flows(self, records: Records) -> list[Flow]:
        """The Flows of `records` (from this store), in order."""
        return self.decoder.flows(records)

    def last(self, n: int | None = None, match: RecordMatch | None = None, predicate: Predicate | None = None,
             since_ns: int | None = None, until_ns: int | None = None) -> list[Flow]:
        """The newest `n` (all when None) stored flows that match both filters, oldest first.

        `match` selects records with numpy; Flows are built for its survivors only, newest first,
        until `predicate` accepted `n` of them.
        """
        if n == 0:
            return []
        records = self.records(since_ns, until_ns)
        if match is not None:
            records = take(records, match(records))
        if predicate is None:
            return self.flows(records if n is None else records[-n:])
        picked: list[Flow] = []
        end = len(records)
        while end > 0 and (n is None or len(picked) < n):
            start = max(0, end - max(_LAST_CHUNK, 0 if n is None else n - len(picked)))
            picked.extend(f for f in reversed(self.flows(records[start:end])) if predicate(f))
            end = start
        picked = picked if n is None else picked[:n]
        picked.reverse()
        return picked

    def groups(self, records: Records, columns: Sequence[str]) -> Groups:
        """`records` grouped by equal values of `columns`; a group's Flow is its first record's."""
        if not len(records):
            return Groups([], [], [], np.zeros(0, np.intp))
        keys = np.zeros(len(records), np.dtype([(c, RECORD_DTYPE[c]) for c in columns]))
        for column in columns:
            keys[column] = records[column]
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        last = np.full(len(first), np.iinfo(np.int64).min, np.int64)
        np.maximum.at(last, inverse, records["time_ns"])
        counts = np.bincount(inverse, minlength=len(first))
        return Groups(self.flows(take(records, first)), counts.tolist(), last.tolist(), inverse)

    def subscribe(self, match: RecordMatch | None = None, predicate: Predicate | None = None,
                  maxsize: int | None = None) -> Subscription:
        """A new follower of records stored from now on (`match` selects records, `predicate` flows)."""
        sub = Subscription(self, match, predicate, maxsize or self._follower_queue)
        sub.ring_lost_told = self._kernel_lost()  # it hears of losses from now on
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
            seen=self.seen, stored=self._stored, capacity=self.capacity, overwritten=self.overwritten,
            lost=self._kernel_lost(), follower_dropped=self.follower_dropped,
            followers=len(self._followers), rate=round(self._rate.rate(self.seen), 1),
        )
