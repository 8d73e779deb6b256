"""Test the bounded flow store, its counters, and followers that never block the reader."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bench.flow_events import events
from velvet.observe.decode import FlowDecoder, Records
from velvet.observe.enrich import DictResolver, EndpointInfo
from velvet.observe.flow import Flow
from velvet.observe.store import (
    DEFAULT_CAPACITY,
    QUEUE_LOST,
    RING_LOST,
    FlowStore,
    LostEvents,
    RateMeter,
    Subscription,
)

DECODER = FlowDecoder(DictResolver(), clock_offset_ns=0)


def flows(n: int, start: int = 0) -> Records:
    """`n` records with time_ns start, start+1, ... (the store takes enriched records)."""
    return DECODER.enrich(events(*({"ts_ns": start + i, "sport": 1000 + start + i} for i in range(n))))


def time_or_notice(item: Flow | LostEvents) -> int | LostEvents:
    """A follower's flow as its time; a notice as it is."""
    return item if isinstance(item, LostEvents) else item.time_ns


def store_of(capacity: int = DEFAULT_CAPACITY) -> FlowStore:
    """A store reading records with the test decoder."""
    return FlowStore(capacity=capacity, decoder=DECODER)


def test_default_capacity_is_hubble_s() -> None:
    """Test that the store keeps 4095 flows by default."""
    assert FlowStore().capacity == DEFAULT_CAPACITY == 4095


def test_ring_is_bounded_and_counts_overwrites() -> None:
    """Test that the oldest flows are overwritten and counted."""
    store = store_of(10)
    store.add(flows(6))
    store.add(flows(6, start=6))
    stats = store.stats()
    assert (stats.seen, stats.stored, stats.overwritten) == (12, 10, 2)
    assert [f.time_ns for f in store.last()] == list(range(2, 12))


def test_records_not_materialised_count_as_seen_and_overwritten() -> None:
    """Test add(seen=...) for a batch the pipeline trimmed to the store's capacity."""
    store = store_of(4)
    store.add(flows(4), seen=100)
    assert (store.seen, store.overwritten, store.stats().stored) == (100, 96, 4)


def test_last_filters_and_orders_oldest_first() -> None:
    """Test last(n, predicate, since, until)."""
    store = store_of(100)
    store.add(flows(20))
    assert [f.time_ns for f in store.last(3)] == [17, 18, 19]
    assert [f.time_ns for f in store.last(2, predicate=lambda f: f.time_ns % 2 == 0)] == [16, 18]
    assert [f.time_ns for f in store.last(2, match=lambda r: r["time_ns"] % 3 == 0)] == [15, 18]
    even_of_thirds = store.last(None, lambda r: r["time_ns"] % 3 == 0, lambda f: f.time_ns % 2 == 0)
    assert [f.time_ns for f in even_of_thirds] == [0, 6, 12, 18]
    assert [f.time_ns for f in store.last(None, since_ns=5, until_ns=8)] == [5, 6, 7, 8]
    assert store.last(0) == []


def test_kernel_losses_come_from_the_counter() -> None:
    """Test that `lost` is read from the callable the agent passes in."""
    lost = [0]
    store = FlowStore(kernel_lost=lambda: lost[0])
    lost[0] = 17
    assert store.stats().lost == 17


def test_capacity_must_be_positive() -> None:
    """Test that a store of zero flows is refused."""
    with pytest.raises(ValueError, match="capacity"):
        FlowStore(capacity=0)


def test_rate_over_window() -> None:
    """Test the events/s meter with a fake clock."""
    now = [100.0]
    meter = RateMeter(window=10.0, clock=lambda: now[0])
    assert meter.rate(0) == 0.0
    meter.record(0)
    now[0] = 105.0
    assert meter.rate(500) == 100.0
    now[0] = 200.0
    assert meter.rate(500) == 0.0


def test_followers_get_new_flows_only() -> None:
    """Test that any number of followers each receive the flows added after subscribing."""
    async def scenario() -> None:
        store = store_of(10)
        store.add(flows(3))
        subs = [store.subscribe() for _ in range(3)]
        store.add(flows(2, start=3))
        for sub in subs:
            assert [time_or_notice(await anext(sub)) for _ in range(2)] == [3, 4]
        assert store.stats().followers == 3
    asyncio.run(scenario())


def test_follower_predicate() -> None:
    """Test that a follower queues the records its match selects and yields the flows its predicate takes."""
    async def scenario() -> list[int | LostEvents]:
        store = store_of()
        sub = store.subscribe(lambda r: r["time_ns"] >= 2, lambda f: f.time_ns != 3)
        store.add(flows(5))
        assert sub.pending == 3
        store.close()
        return [time_or_notice(f) async for f in sub]
    assert asyncio.run(scenario()) == [2, 4]


def test_slow_follower_drops_and_counts_without_blocking() -> None:
    """Test that a full follower queue drops flows, counts them, and the store goes on."""
    async def scenario() -> None:
        store = store_of(1000)
        slow = store.subscribe(maxsize=5)
        fast = store.subscribe(maxsize=1000)
        store.add(flows(50))
        assert store.stats().stored == 50
        assert slow.dropped == 45
        assert fast.dropped == 0
        assert store.stats().follower_dropped == 45
        assert slow.take_lost() == LostEvents(QUEUE_LOST, 45)
        assert slow.take_lost() is None
        assert [time_or_notice(await anext(slow)) for _ in range(5)] == [0, 1, 2, 3, 4]
    asyncio.run(scenario())


def test_followers_hear_of_the_kernel_rings_losses_after_the_records_read_before_them() -> None:
    """Test that what the kernel's ring lost reaches each follower once, in place: after the records of
    the read that found the loss, before later ones; a follower hears only of losses after it came."""
    async def scenario() -> None:
        kernel_lost = [5]  # the kernel's running count, lost before anyone followed
        store = FlowStore(decoder=DECODER, kernel_lost=lambda: kernel_lost[0])
        early = store.subscribe()
        store.add(flows(2))
        kernel_lost[0] = 12  # the ring was full while the agent read late
        store.add(flows(2, start=2))
        late = store.subscribe()
        store.add(flows(1, start=4))
        kernel_lost[0] = 13
        store.add(flows(1, start=5))
        store.close()
        seen = [time_or_notice(item) async for item in early]
        assert seen == [0, 1, 2, 3, LostEvents(RING_LOST, 7), 4, 5, LostEvents(RING_LOST, 1)]
        assert [time_or_notice(item) async for item in late] == [4, 5, LostEvents(RING_LOST, 1)]
        assert store.stats().lost == 13
    asyncio.run(scenario())


def test_close_ends_iteration() -> None:
    """Test that closing the store ends a waiting `async for` after what was queued, and unsubscribes."""
    async def scenario() -> None:
        store = store_of()
        waiting, full = store.subscribe(), store.subscribe(maxsize=1)
        store.add(flows(3))
        await anext(waiting)

        async def drain(sub: Subscription) -> list[int | LostEvents]:
            return [time_or_notice(f) async for f in sub]

        task = asyncio.create_task(drain(waiting))
        await asyncio.sleep(0)
        store.close()
        assert await asyncio.wait_for(task, 1) == [1, 2]
        assert await asyncio.wait_for(drain(full), 1) == [0]
        assert store.stats().followers == 0
        store.add(flows(1))
    asyncio.run(scenario())


def test_ring_wraps_many_times_and_keeps_arrival_order() -> None:
    """Test batches of every size against a plain list model of the ring."""
    store = store_of(7)
    model: list[int] = []
    start = 0
    for size in (3, 5, 7, 1, 0, 6, 2, 7, 4):
        store.add(flows(size, start))
        model = (model + list(range(start, start + size)))[-7:]
        start += size
        assert [f.time_ns for f in store.last()] == model
    assert store.records(since_ns=start - 3)["time_ns"].tolist() == model[-3:]


def test_groups_count_records_and_keep_the_newest_time() -> None:
    """Test groups(): one Flow per distinct key, with counts and the newest time of each group."""
    store = store_of(100)
    store.add(DECODER.enrich(events({"ts_ns": 5, "dport": 80}, {"ts_ns": 9, "dport": 53},
                                    {"ts_ns": 7, "dport": 80})))
    groups = store.groups(store.records(), ("dport",))
    drawn = zip(groups.flows, groups.counts, groups.last_ns, strict=True)
    assert [(f.dst_port, n, last) for f, n, last in drawn] == [(53, 1, 9), (80, 2, 7)]
    assert groups.inverse.tolist() == [1, 0, 1]
    assert store.groups(store.records()[:0], ("dport",)).flows == []


def test_compaction_renumbers_the_ring_and_queued_batches() -> None:
    """Test that when the tables outgrow their bound, stored and queued records still read the same."""
    async def scenario() -> None:
        resolver = DictResolver()
        decoder = FlowDecoder(resolver, clock_offset_ns=0)
        store = FlowStore(capacity=50, decoder=decoder)
        sub = store.subscribe(maxsize=10_000)
        addresses = [f"10.2.{i // 256}.{i % 256}" for i in range(1, 501)]
        for generation in range(40):  # every round names the same addresses after new pods
            for i, addr in enumerate(addresses, 1):
                resolver.set_endpoint(addr, EndpointInfo("ns", f"pod-{generation}-{i}"))
            store.add(decoder.enrich(events(*({"ts_ns": generation, "saddr": addr} for addr in addresses))))
        assert len(decoder.endpoints.values) < 40 * 500  # compacted at least once
        assert {f.source.pod_name for f in store.last()} == {f"pod-39-{i}" for i in range(451, 501)}
        first = [await anext(sub) for _ in range(500)]
        assert all(isinstance(f, Flow) for f in first)
        assert [getattr(f.source, "pod_name", None) for f in first] == [f"pod-0-{i}" for i in range(1, 501)]
        sub.close()
    asyncio.run(scenario())


def test_queue_is_measured_in_records_across_batches() -> None:
    """Test that a follower's room is in records: a batch that half fits is cut, later ones dropped whole."""
    store = store_of(100)
    sub = store.subscribe(maxsize=5)
    store.add(flows(3))
    store.add(flows(4, start=3))
    store.add(flows(2, start=7))
    assert (sub.pending, sub.dropped, store.stats().follower_dropped) == (5, 4, 4)
    assert np.array_equal(store.records()["time_ns"], np.arange(9))
