"""Test FlowPipeline end to end on synthetic batches: ingest, query, follow, monitor, status."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

import numpy as np

from bench.flow_events import events, random_events
from velvet.observe.codes import EventFlag, EventType, Verdict
from velvet.observe.enrich import DictResolver, EndpointInfo, NamedRef
from velvet.observe.filters import FilterArg, FlowQuery, build_spec, compile_spec
from velvet.observe.flow import rfc3339_ns
from velvet.observe.pipeline import FlowPipeline, event_types
from velvet.observe.ui import NODE_FLOWS_LIMIT, build_graph, flow_edges, node_flows, node_matches
from velvet.observe.vector_filter import spec_match


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
    assert got[3] == {"lost_events": {"source": "OBSERVER_EVENTS_QUEUE", "num_events_lost": 2},
                      "node_name": "n1"}


def test_a_follower_is_told_what_the_kernels_ring_lost_where_it_was_found() -> None:
    """Test stream(): records the kernel's ring had no room for come as Hubble's PERF_EVENT_RING_BUFFER
    notice after the flows read with them, with the node's name."""
    async def scenario() -> list[dict[str, Any]]:
        lost = [3]
        p = FlowPipeline(DictResolver(), node_name="n1", clock_offset_ns=0, kernel_lost=lambda: lost[0])
        stream = p.stream(FlowQuery())
        first = asyncio.create_task(anext(stream))
        await asyncio.sleep(0)  # subscribed: losses from now on
        lost[0] = 40
        p.ingest(events({"ts_ns": 1}, {"ts_ns": 2}))
        p.ingest(events({"ts_ns": 3}))
        got = [await first] + [await anext(stream) for _ in range(3)]
        await stream.aclose()
        return got

    got = asyncio.run(scenario())
    assert [g.get("time", "")[-4:] for g in got] == ["001Z", "002Z", "", "003Z"]
    assert got[2] == {"lost_events": {"source": "PERF_EVENT_RING_BUFFER", "num_events_lost": 37},
                      "node_name": "n1"}


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


# --- vectorised filters and the service map agree with the per-flow code ---------------------------

FILTER_VALUES = {
    "ip": ("10.0.0.3", "10.0.0.0/30", "0.0.0.0/0"), "pod": ("x/a", "b", "y/"), "namespace": ("x",),
    "label": ("app=a", "k8s:app in (b,c)", "!tier"), "identity": ("257", "world"), "port": ("80", "53"),
    "service": ("x/web", "web"), "protocol": ("tcp", "UDP"), "verdict": ("DROPPED", "forwarded"),
    "type": ("trace", "drop", "trace:to-endpoint", "policy-verdict", "sock"),
}


def _mixed_pipeline() -> FlowPipeline:
    """A pipeline holding 3000 random records between pods, identities and services of x and y."""
    resolver = DictResolver()
    for i in range(1, 51):
        ns, app = ("x", "a") if i % 3 else ("y", "c")
        labels = (f"k8s:app={app}", "k8s:tier=web") if i % 2 else (f"k8s:app={'b' if i % 5 else app}",)
        pod = f"{app if i % 4 else 'b'}-{i}"
        resolver.set_endpoint(f"10.0.0.{i}", EndpointInfo(ns, pod, labels, i, 256 + i % 10))
    resolver.set_identity(257, "x", {"k8s:app": "a"})
    resolver.set_service(1, NamedRef("x", "web"))
    resolver.set_service(2, NamedRef("y", "web"))
    p = FlowPipeline(resolver, capacity=3000, clock_offset_ns=0)
    batch = random_events(3000, seed=11, pods=60)
    rng = np.random.default_rng(11)
    batch["rev_nat_index"] = rng.choice([0, 1, 2, 3], 3000)
    batch["flags"] |= rng.choice(np.array([0, int(EventFlag.REV_NAT)], np.uint8), 3000)
    batch["type"] = rng.choice([1, 2, 3, 4], 3000)
    batch["dst_identity"] = rng.choice([2, 257, 300], 3000)
    batch["saddr"][::7] = 0
    batch["daddr"][::14] = 0
    batch["sport"][::5] = 80
    p.ingest(batch)
    return p


def test_a_query_answer_shares_equal_parts_and_says_what_each_flow_alone_says() -> None:
    """Test that a query's answer is, flow for flow, the JSON each flow gives alone (every event type,
    verdict, service and policy of the mixed store), while equal endpoints, event types, TCP flags and
    services are one object in it (a 4,000-flow answer was ~8.6 MB of small objects at once)."""
    p = _mixed_pipeline()
    answer = p.query(FlowQuery(last=3000))
    alone = [p._json(flow) for flow in p.store.last(3000)]
    assert answer == alone
    assert json.dumps(answer) == json.dumps(alone)
    parts = [(flow["source"], flow["event_type"], flow["l4"].get("TCP", {}).get("flags")) for flow in answer]
    distinct = [len({id(part[i]) for part in parts if part[i] is not None}) for i in range(3)]
    equal = [len({json.dumps(part[i], sort_keys=True) for part in parts if part[i] is not None})
             for i in range(3)]
    assert distinct == equal
    services = {id(f["destination_service"]) for f in answer if "destination_service" in f}
    assert 0 < len(services) <= 3


def test_a_followed_stream_shares_equal_parts_and_says_what_each_flow_alone_says() -> None:
    """Test that `observe --follow`'s flows (history and live) are the JSON each flow gives alone, with
    equal endpoints one object among them."""
    async def scenario() -> list[dict[str, Any]]:
        p = _mixed_pipeline()
        stream = p.stream(FlowQuery(last=500))
        got = [await anext(stream) for _ in range(500)]
        p.ingest(random_events(500, seed=12, pods=60))
        got += [await anext(stream) for _ in range(500)]
        await stream.aclose()
        assert got[500:] == [p._json(flow) for flow in p.store.last(500)]
        return got

    got = asyncio.run(scenario())
    sources = [flow["source"] for flow in got]
    assert len({id(source) for source in sources}) == len({json.dumps(s, sort_keys=True) for s in sources})


def test_numpy_masks_equal_the_flow_predicates_for_every_filter() -> None:
    """Test that every filter flag (and --not, from-/to- forms, combinations) selects the same records."""
    p = _mixed_pipeline()
    records = p.store.records()
    flows = p.store.flows(records)
    specs = [[FilterArg(name, value)] for name, values in FILTER_VALUES.items() for value in values]
    specs += [[FilterArg(f"{side}-{name}", values[0])] for side in ("from", "to")
              for name, values in FILTER_VALUES.items() if name in _SIDED]
    specs += [[FilterArg(name, values[-1], negated=True)] for name, values in FILTER_VALUES.items()]
    specs += [
        [FilterArg("pod", "x/"), FilterArg("verdict", "FORWARDED"), FilterArg("port", "443", negated=True)],
        [FilterArg("from-label", "app=a"), FilterArg("to-service", "web"), FilterArg("protocol", "tcp")],
    ]
    for args in specs:
        spec = build_spec(args)
        match = spec_match(spec, p.decoder)
        assert match is not None
        predicate = compile_spec(spec)
        expected = [predicate(f) for f in flows]
        assert match(records).tolist() == expected, args
        assert 0 < sum(expected) < len(flows), args  # every case tells matching records from others
        query = FlowQuery(spec=spec, last=25)
        assert p.query(query) == [f.to_hubble_json() for f in [f for f in flows if predicate(f)][-25:]]


_SIDED = {"ip", "pod", "namespace", "label", "identity", "port", "service"}


def test_service_map_groups_draw_what_every_flow_draws() -> None:
    """Test that the graph built from groups of records equals the graph built flow by flow."""
    p = _mixed_pipeline()
    flows = p.store.last()
    edges: dict[tuple[str, str, str], tuple[int, int]] = {}
    for flow in flows:
        for src, dst, verdict in flow_edges(flow):
            count, last = edges.get((src["id"], dst["id"], verdict), (0, 0))
            edges[(src["id"], dst["id"], verdict)] = (count + 1, max(last, flow.time_ns))
    graph = build_graph(p.store)
    drawn = {(e["source"], e["target"], e["verdict"]): (e["count"], e["last_ns"]) for e in graph["edges"]}
    assert drawn == edges
    ends = {end for key in edges for end in key[:2]}
    assert {n["id"] for n in graph["nodes"] if n["kind"] != "namespace"} == ends
    node = "pod:x/a-1"
    expected = [f for f in flows if node_matches(node)(f)][-NODE_FLOWS_LIMIT:]
    assert expected
    listed = [line["time"] for line in node_flows(p.store, node)]
    assert listed == [rfc3339_ns(f.time_ns) for f in reversed(expected)]


def test_node_name_mask_is_the_whole_store_or_nothing() -> None:
    """Test that --node-name selects every record of the node's store or none, as the predicate does."""
    p = _mixed_pipeline()
    p.decoder.node_name = "velvet-node-1"
    records = p.store.records()
    flows = p.store.flows(records)
    for values, negated, hits in ((["velvet-node-1"], False, len(flows)), (["velvet-node-2"], False, 0),
                                  (["velvet-node-2", "velvet-node-?"], False, len(flows)),
                                  (["velvet-node-1"], True, 0)):
        spec = build_spec([FilterArg("node-name", v, negated) for v in values])
        match = spec_match(spec, p.decoder)
        assert match is not None
        expected = [compile_spec(spec)(f) for f in flows]
        assert match(records).tolist() == expected
        assert sum(expected) == hits, values
