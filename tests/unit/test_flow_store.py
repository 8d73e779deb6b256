"""Test the bounded flow store, its counters, and followers that never block the reader."""

from __future__ import annotations

import asyncio

import pytest
from flow_events import make_flow

from velvet.observe.flow import Flow
from velvet.observe.store import DEFAULT_CAPACITY, FlowStore, RateMeter, Subscription


def flows(n: int, start: int = 0) -> list[Flow]:
    """`n` flows with time_ns start, start+1, ..."""
    return [make_flow(time_ns=start + i, src_port=1000 + start + i) for i in range(n)]


def test_default_capacity_is_hubble_s() -> None:
    """Test that the store keeps 4095 flows by default."""
    assert FlowStore().capacity == DEFAULT_CAPACITY == 4095


def test_ring_is_bounded_and_counts_overwrites() -> None:
    """Test that the oldest flows are overwritten and counted."""
    store = FlowStore(capacity=10)
    store.add(flows(6))
    store.add(flows(6, start=6))
    stats = store.stats()
    assert (stats.seen, stats.stored, stats.overwritten) == (12, 10, 2)
    assert [f.time_ns for f in store.last()] == list(range(2, 12))


def test_records_not_materialised_count_as_seen_and_overwritten() -> None:
    """Test add(seen=...) for a batch the pipeline trimmed to the store's capacity."""
    store = FlowStore(capacity=4)
    store.add(flows(4), seen=100)
    assert (store.seen, store.overwritten, store.stats().stored) == (100, 96, 4)


def test_last_filters_and_orders_oldest_first() -> None:
    """Test last(n, predicate, since, until)."""
    store = FlowStore(capacity=100)
    store.add(flows(20))
    assert [f.time_ns for f in store.last(3)] == [17, 18, 19]
    assert [f.time_ns for f in store.last(2, lambda f: f.time_ns % 2 == 0)] == [16, 18]
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
        store = FlowStore(capacity=10)
        store.add(flows(3))
        subs = [store.subscribe() for _ in range(3)]
        store.add(flows(2, start=3))
        for sub in subs:
            assert [(await anext(sub)).time_ns for _ in range(2)] == [3, 4]
        assert store.stats().followers == 3
    asyncio.run(scenario())


def test_follower_predicate() -> None:
    """Test that a follower only queues flows matching its predicate."""
    async def scenario() -> int:
        store = FlowStore()
        sub = store.subscribe(lambda f: f.time_ns == 2)
        store.add(flows(4))
        return (await anext(sub)).time_ns
    assert asyncio.run(scenario()) == 2


def test_slow_follower_drops_and_counts_without_blocking() -> None:
    """Test that a full follower queue drops flows, counts them, and the store goes on."""
    async def scenario() -> None:
        store = FlowStore(capacity=1000)
        slow = store.subscribe(maxsize=5)
        fast = store.subscribe(maxsize=1000)
        store.add(flows(50))
        assert store.stats().stored == 50
        assert slow.dropped == 45
        assert fast.dropped == 0
        assert store.stats().follower_dropped == 45
        assert slow.take_lost() == 45
        assert slow.take_lost() == 0
        assert [(await anext(slow)).time_ns for _ in range(5)] == [0, 1, 2, 3, 4]
    asyncio.run(scenario())


def test_close_ends_iteration() -> None:
    """Test that closing the store ends a waiting `async for`, even on a full queue, and unsubscribes."""
    async def scenario() -> None:
        store = FlowStore()
        waiting, full = store.subscribe(), store.subscribe(maxsize=1)
        store.add(flows(3))
        await anext(waiting)

        async def drain(sub: Subscription) -> list[int]:
            return [f.time_ns async for f in sub]

        task = asyncio.create_task(drain(waiting))
        await asyncio.sleep(0)
        store.close()
        assert await asyncio.wait_for(task, 1) == [1, 2]
        assert await asyncio.wait_for(drain(full), 1) == []
        assert store.stats().followers == 0
        store.add(flows(1))
    asyncio.run(scenario())
