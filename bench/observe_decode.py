"""Micro-measurement of the flow pipeline's hot path: events/s for enrich, metrics, store and ingest.

Run: .venv/bin/python -m bench.observe_decode [--events N] [--batch B]
Synthetic batches (bench/flow_events.py), no privileges; compare ratios within one run.
Ingest is vectorised end to end; the reader-side lines show what building Flows costs where it remains.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy.typing as npt

from bench.flow_events import random_events
from velvet.observe.decode import FlowDecoder
from velvet.observe.enrich import DictResolver, EndpointInfo
from velvet.observe.filters import FilterArg, FlowQuery, build_spec
from velvet.observe.metrics import FlowMetrics
from velvet.observe.pipeline import FlowPipeline
from velvet.observe.vector_filter import spec_match


def resolver(pods: int = 50) -> DictResolver:
    """A resolver knowing every pod of the synthetic batches."""
    r = DictResolver()
    for i in range(1, pods + 1):
        r.set_endpoint(f"10.0.0.{i}", EndpointInfo("bench", f"pod-{i}", (f"k8s:app=app{i % 10}",), i))
    for ident in range(256, 266):
        r.set_identity(ident, "bench", {"k8s:app": f"app{ident - 256}"})
    return r


def measure(name: str, batches: list[npt.NDArray[Any]], step: Callable[[npt.NDArray[Any]], object]) -> None:
    """Run `step` over every batch (best of 3) and print events/s."""
    total = sum(len(b) for b in batches)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for batch in batches:
            step(batch)
        best = min(best, time.perf_counter() - start)
    report(name, total, best)


def report(name: str, events: int, seconds: float) -> None:
    """Print one measurement line."""
    rate = events / seconds / 1e6
    print(f"{name:<52} {rate:8.2f} M events/s  ({seconds * 1e3:7.1f} ms for {events} events)")


def main() -> None:
    """Print the measurements."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=262_144)
    parser.add_argument("--batch", type=int, default=4096)
    args = parser.parse_args()
    data = random_events(args.events, seed=7)
    batches = [data[i:i + args.batch] for i in range(0, len(data), args.batch)]
    decoder = FlowDecoder(resolver())
    metrics = FlowMetrics()
    print(f"{args.events} events in batches of {args.batch}")
    measure("metrics only (vectorised counters)", batches, metrics.observe_batch)
    measure("enrich into stored records (vectorised)", batches, decoder.enrich)
    measure("decode into Flow objects (what readers pay)", batches, decoder.decode)
    idle = FlowPipeline(resolver())
    measure("ingest, no follower (metrics+enrich+store tail)", batches, idle.ingest)

    async def followed() -> None:
        busy = FlowPipeline(resolver(), follower_queue=args.events * 4)
        sub = busy.store.subscribe()
        measure("ingest with one follower (every record queued)", batches, busy.ingest)
        sub.close()
        picky = FlowPipeline(resolver(), follower_queue=args.events * 4)
        drops = build_spec([FilterArg("verdict", "DROPPED"), FilterArg("pod", "bench/pod-1")])
        sub = picky.store.subscribe(spec_match(drops, picky.decoder))
        measure("ingest with one filtered follower (--verdict --pod)", batches, picky.ingest)
        sub.close()
        drain = FlowPipeline(resolver(), follower_queue=args.events * 4)
        reader = drain.stream(FlowQuery())
        pending = asyncio.ensure_future(anext(reader))
        await asyncio.sleep(0)
        for batch in batches:
            drain.ingest(batch)
        start = time.perf_counter()
        await pending
        for _ in range(args.events - 1):
            await anext(reader)
        took = time.perf_counter() - start
        await reader.aclose()
        report("follower takes every record as Hubble JSON", args.events, took)

    asyncio.run(followed())
    big = FlowPipeline(resolver())
    measure("ingest, no follower, one 65536-event batch", [data[:65536]], big.ingest)
    query = FlowQuery(spec=build_spec([FilterArg("verdict", "DROPPED"), FilterArg("port", "443")]), last=20)
    measure("query --verdict DROPPED --port 443 --last 20 (x4095)", [data[:idle.store.capacity]],
            lambda _: idle.query(query))


if __name__ == "__main__":
    main()
