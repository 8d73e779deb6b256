"""Micro-measurement of the flow pipeline's hot path: events/s for decode, metrics, store and ingest.

Run: .venv/bin/python bench/observe_decode.py [--events N] [--batch B]
Synthetic batches (tests/unit/flow_events.py), no privileges; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "unit"))

from flow_events import random_events  # noqa: E402

from velvet.observe.decode import FlowDecoder, decode_columns  # noqa: E402
from velvet.observe.enrich import DictResolver, EndpointInfo  # noqa: E402
from velvet.observe.metrics import FlowMetrics  # noqa: E402
from velvet.observe.pipeline import FlowPipeline  # noqa: E402


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
    print(f"{name:<48} {total / best / 1e6:8.2f} M events/s  ({best * 1e3:7.1f} ms for {total} events)")


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
    measure("columns only (numpy -> host-order ints)", batches, lambda b: decode_columns(b, 0))
    measure("metrics only (vectorised counters)", batches, metrics.observe_batch)
    measure("decode + enrich every record into Flow", batches, decoder.decode)
    idle = FlowPipeline(resolver())
    measure("ingest, no follower (decode+enrich+store tail)", batches, idle.ingest)

    async def followed() -> None:
        busy = FlowPipeline(resolver(), follower_queue=args.events * 4)
        sub = busy.store.subscribe()
        measure("ingest with one follower (every record)", batches, busy.ingest)
        sub.close()

    asyncio.run(followed())
    big = FlowPipeline(resolver())
    measure("ingest, no follower, one 65536-event batch", [data[:65536]], big.ingest)


if __name__ == "__main__":
    main()
