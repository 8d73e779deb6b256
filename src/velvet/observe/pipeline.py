"""The flow pipeline: ring-buffer batches in; stored, counted, queryable and followable flows out."""

from __future__ import annotations

import fnmatch
from collections.abc import AsyncGenerator, Callable, Collection
from typing import Any

import numpy.typing as npt
from prometheus_client import CollectorRegistry

from velvet.observe.codes import EVENT_TYPE_ALIASES
from velvet.observe.decode import FlowDecoder
from velvet.observe.enrich import EndpointResolver
from velvet.observe.filters import FlowQuery, Predicate, compile_spec
from velvet.observe.flow import Flow
from velvet.observe.metrics import FlowMetrics
from velvet.observe.store import DEFAULT_CAPACITY, DEFAULT_FOLLOWER_QUEUE, FlowStore, LostEvents, Subscription
from velvet.observe.vector_filter import spec_match, types_match

Json = dict[str, Any]
ProcessLookup = Callable[[Flow], tuple[Json | None, Json | None]]
_SHARED_MAX = 4096  # parts a follower's flows share before they are made anew (a stream never ends)


def event_types(text: str) -> frozenset[int]:
    """Event type numbers from "drop,trace" (`monitor -t`); empty text means every type."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in EVENT_TYPE_ALIASES]
    if unknown:
        raise ValueError(f"unknown event types {unknown} (one of {', '.join(EVENT_TYPE_ALIASES)})")
    return frozenset(EVENT_TYPE_ALIASES[n] for n in names)


def _process_matches(process: Json | None, wanted: tuple[str, ...]) -> bool:
    """Whether a flow end's process is one of `wanted` (binary pattern, pid or exec_id); no filter: yes."""
    if not wanted:
        return True
    if process is None:
        return False
    return any(w in (str(process["pid"]), process["exec_id"]) or fnmatch.fnmatchcase(process["binary"], w)
               for w in wanted)


def _lost_notice(lost: LostEvents, node_name: str) -> Json:
    """Hubble's notice of events a follower will never see, with the node that lost them."""
    notice: Json = {"lost_events": {"source": lost.source, "num_events_lost": lost.number}}
    if node_name:
        notice["node_name"] = node_name
    return notice


class FlowPipeline:
    """Decodes, enriches, stores, counts and publishes flow events; owned by the agent.

    Call every method from the agent's event loop thread: the store and the followers' queues are
    not thread-safe.
    """

    def __init__(self, resolver: EndpointResolver, *, node_name: str = "", capacity: int = DEFAULT_CAPACITY,
                 kernel_lost: Callable[[], int] = lambda: 0, registry: CollectorRegistry | None = None,
                 clock_offset_ns: int | None = None, follower_queue: int = DEFAULT_FOLLOWER_QUEUE) -> None:
        self.resolver = resolver
        self.decoder = FlowDecoder(resolver, node_name, clock_offset_ns)
        self.store = FlowStore(capacity, kernel_lost, follower_queue, self.decoder)
        self.metrics = FlowMetrics(registry, self.store.stats)
        self.processes: ProcessLookup | None = None
        """The processes at a flow's ends (source, destination) as JSON; the agent's process monitor."""

    def ingest(self, batch: npt.NDArray[Any]) -> None:
        """Take one ring-buffer batch of `struct flow_event` records (a numpy structured array).

        Vectorised end to end: metrics count every record; records that stay in the store (or all
        of them while someone follows) are enriched and stored as numpy records, not Flow objects.
        """
        if len(batch) == 0:
            return
        self.metrics.observe_batch(batch)
        keep = batch if self.store.has_followers else batch[-self.store.capacity:]
        self.store.add(self.decoder.enrich(keep), seen=len(batch))

    def _predicate(self, query: FlowQuery) -> Predicate:
        """The query's filters, and its process filters (which need the process monitor's connections)."""
        spec = compile_spec(query.spec)
        if not (query.from_process or query.to_process):
            return spec

        def matches(flow: Flow) -> bool:
            if not spec(flow):
                return False
            source, destination = self.processes(flow) if self.processes is not None else (None, None)
            return (_process_matches(source, query.from_process)
                    and _process_matches(destination, query.to_process))
        return matches

    def _json(self, flow: Flow, shared: dict[Any, Any] | None = None) -> Json:
        """Hubble JSON of a flow, with the processes at its ends where the process monitor knows them
        (`shared`: see `Flow.to_hubble_json`)."""
        out = flow.to_hubble_json(shared)
        if self.processes is not None:
            source, destination = self.processes(flow)
            if source is not None:
                out["source_process"] = source
            if destination is not None:
                out["destination_process"] = destination
        return out

    def query(self, query: FlowQuery) -> list[Json]:
        """Stored flows matching `query`, oldest first, as Hubble JSON."""
        predicate = self._predicate(query)
        match = spec_match(query.spec, self.decoder)
        flows = self.store.last(query.last, match, predicate, query.since_ns, query.until_ns)
        shared: dict[Any, Any] = {}
        return [self._json(f, shared) for f in flows]

    async def stream(self, query: FlowQuery) -> AsyncGenerator[Json]:
        """The last `query.last` matching flows, then new ones as they come (`observe --follow`).

        Yields `{"lost_events": {...}}` where flows were lost: by the kernel's ring (the agent read too
        late) or by this follower's queue (it read too late); ends when a flow is newer than
        `query.until_ns`.
        """
        predicate = self._predicate(query)
        match = spec_match(query.spec, self.decoder)
        sub = self.store.subscribe(match, predicate)
        shared: dict[Any, Any] = {}  # the parts flows share (Flow.to_hubble_json), renewed when it grows
        try:
            if query.last:
                for flow in self.store.last(query.last, match, predicate, query.since_ns, query.until_ns):
                    yield self._json(flow, shared)
            async for item in self._follow(sub):
                if isinstance(item, LostEvents):
                    yield _lost_notice(item, self.decoder.node_name)
                elif query.until_ns is not None and item.time_ns > query.until_ns:
                    return
                else:
                    if len(shared) > _SHARED_MAX:
                        shared = {}
                    yield self._json(item, shared)
        finally:
            sub.close()

    async def stream_events(self, types: Collection[int] = ()) -> AsyncGenerator[Json]:
        """Raw datapath events of the given types (all when empty) as they come (`velvet monitor`)."""
        sub = self.store.subscribe(types_match(frozenset(types)))
        try:
            async for item in self._follow(sub):
                yield (_lost_notice(item, self.decoder.node_name) if isinstance(item, LostEvents)
                       else item.to_event_json())
        finally:
            sub.close()

    @staticmethod
    async def _follow(sub: Subscription) -> AsyncGenerator[Flow | LostEvents]:
        """The follower's flows, and notices of what was lost where the loss happened.

        The queue loses records only while it is full, so its notice comes after everything queued then.
        """
        async for item in sub:
            yield item
            if not sub.pending:
                lost = sub.take_lost()
                if lost is not None:
                    yield lost

    def status(self) -> Json:
        """Flow counters for `velvet status`: seen, stored, capacity, overwritten, lost, rate, ..."""
        return self.store.stats().to_json()

    def close(self) -> None:
        """End every stream (agent shutdown)."""
        self.store.close()
