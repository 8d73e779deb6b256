"""Test FlowPipeline end to end on synthetic batches: ingest, query, follow, monitor, status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from flow_events import events, random_events

from velvet.observe.codes import EventType, Verdict
from velvet.observe.enrich import DictResolver, EndpointInfo
from velvet.observe.filters import FilterArg, FlowQuery, build_spec
from velvet.observe.pipeline import FlowPipeline, event_types


def pipeline(capacity: int = 100, follower_queue: int = 4096) -> FlowPipeline:
    """A pipeline whose clock offset is 0 and which knows pod x/a at 10.0.0.1."""
    resolver = DictResolver()
    resolver.set_endpoint("10.0.0.1", EndpointInfo("x", "a", ("k8s:app=a",)))
    return FlowPipeline(resolver, node_name="n1", capacity=capacity, clock_offset_ns=0,
                        follower_queue=follower_queue, kernel_lost=lambda: 3)


async def collect(stream: AsyncGenerator[dict[str, Any]]) -> list[dict[str, Any]]:
    """Everything a stream yields until it ends (streams subscribe when first iterated)."""
    return [item async for item in stream]


def test_ingest_then_query_with_filters() -> None:
    """Test that ingested records are queryable as Hubble JSON, filtered and limited."""
    p = pipeline()
    p.ingest(events({"ts_ns": 1}, {"ts_ns": 2, "type": EventType.DROP, "verdict": Verdict.DROPPED,
                                    "drop_reason": 133}, {"ts_ns": 3}))
    assert [f["time"][-4:] for f in p.query(FlowQuery())] == ["001Z", "002Z", "003Z"]
    drops = p.query(FlowQuery(spec=build_spec([FilterArg("verdict", "DROPPED")])))
    assert [f["drop_reason_desc"] for f in drops] == ["POLICY_DENIED"]
    assert drops[0]["source"]["pod_name"] == "a"
    assert drops[0]["node_name"] == "n1"
    assert len(p.query(FlowQuery(last=2))) == 2
    assert len(p.query(FlowQuery(since_ns=2, until_ns=2))) == 1


def test_large_batch_keeps_the_newest_and_counts_everything() -> None:
    """Test that a batch larger than the store keeps its tail and counts all records."""
    p = pipeline(capacity=100)
    p.ingest(random_events(10_000))
    p.ingest(random_events(0))
    status = p.status()
    assert (status["seen"], status["stored"]) == (10_000, 100)
    assert (status["overwritten"], status["lost"]) == (9_900, 3)
    newest = p.query(FlowQuery(last=1))[0]
    assert newest["time"] == "1970-01-01T00:00:01.009999000Z"


def test_stream_history_then_live_with_lost_notices() -> None:
    """Test stream(): the last N, then new flows; a lagging follower gets a lost_events notice."""
    async def scenario() -> list[dict[str, Any]]:
        p = pipeline(follower_queue=2)
        p.ingest(events({"ts_ns": 1}, {"ts_ns": 2}))
        stream = p.stream(FlowQuery(last=1))
        got = [await anext(stream)]
        p.ingest(events({"ts_ns": 3}, {"ts_ns": 4}, {"ts_ns": 5}, {"ts_ns": 6}))
        got += [await anext(stream) for _ in range(3)]
        await stream.aclose()
        assert p.status()["followers"] == 0
        return got

    got = asyncio.run(scenario())
    assert got[0]["time"].endswith("002Z")
    assert got[1]["time"].endswith("003Z")
    assert got[2]["time"].endswith("004Z")
    assert got[3] == {"lost_events": {"source": "OBSERVER_EVENTS_QUEUE", "num_events_lost": 2}}


def test_stream_ends_after_until() -> None:
    """Test that a followed query with until stops at the first newer flow."""
    async def scenario() -> list[dict[str, Any]]:
        p = pipeline()
        task = asyncio.create_task(collect(p.stream(FlowQuery(until_ns=5))))
        await asyncio.sleep(0)
        p.ingest(events({"ts_ns": 4}, {"ts_ns": 6}, {"ts_ns": 5}))
        return await asyncio.wait_for(task, 1)

    assert [i["time"][-4:] for i in asyncio.run(scenario())] == ["004Z"]


def test_stream_events_by_type() -> None:
    """Test the raw event stream for `velvet monitor -t drop`."""
    async def scenario() -> dict[str, Any]:
        p = pipeline()
        task = asyncio.create_task(collect(p.stream_events(event_types("drop"))))
        await asyncio.sleep(0)
        p.ingest(events({}, {"type": EventType.DROP, "verdict": Verdict.DROPPED, "drop_reason": 134}))
        await asyncio.sleep(0)
        p.close()
        (event,) = await asyncio.wait_for(task, 1)
        return event

    event = asyncio.run(scenario())
    assert (event["type"], event["drop_reason_desc"], event["src"]) == ("drop", "Invalid packet", "10.0.0.1")


def test_event_types() -> None:
    """Test parsing of `-t` lists."""
    assert event_types("") == frozenset()
    assert event_types("drop, trace,sock") == {EventType.DROP, EventType.TRACE, EventType.SOCK}
