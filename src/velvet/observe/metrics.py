"""Prometheus metrics with Hubble's names, counted per batch with numpy (served by observe/ui.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from velvet.observe.codes import (
    METRIC_TYPE_NAMES,
    OBS_POINTS,
    PROTOCOL_NAMES,
    EventFlag,
    EventType,
    TcpFlag,
    Verdict,
    drop_reason_names,
    match_type,
    verdict_name,
)
from velvet.observe.decode import EGRESS_TABLE
from velvet.observe.store import StoreStats

_TCP_FLAG_LABELS = (("SYN", TcpFlag.SYN, TcpFlag.ACK), ("SYN-ACK", TcpFlag.SYN | TcpFlag.ACK, 0),
                    ("FIN", TcpFlag.FIN, 0), ("RST", TcpFlag.RST, 0))
"""(label, bits that must be set, bits that must be clear), as Hubble's tcp handler counts."""


_TCP_FLAG_BITS = [(i, int(need), int(clear)) for i, (_, need, clear) in enumerate(_TCP_FLAG_LABELS)]
_PROCESSED, _DROPS, _TCP, _POLICY = range(4)
"""The counted metrics (the first part of a label set's key)."""
# Plain ints and a table: numpy compares a column with an enum member, or runs isin, far slower.
_TRACE, _DROP, _POLICY_VERDICT = int(EventType.TRACE), int(EventType.DROP), int(EventType.POLICY_VERDICT)
_DROPPED, _REPLY = int(Verdict.DROPPED), int(EventFlag.REPLY)


def _column(batch: npt.NDArray[Any], name: str) -> npt.NDArray[np.int64]:
    names = batch.dtype.names or ()
    return batch[name].astype(np.int64) if name in names else np.zeros(len(batch), np.int64)


def _counts(keys: npt.NDArray[np.int64]) -> Iterator[tuple[int, int]]:
    """(distinct key, how many times) over a batch column."""
    uniq, counts = np.unique(keys, return_counts=True)
    return zip(uniq.tolist(), counts.tolist(), strict=True)


class _StoreCollector(Collector):
    """Reads the flow store's counters at scrape time (the kernel's loss count is cumulative)."""

    def __init__(self, stats: Callable[[], StoreStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        yield CounterMetricFamily("velvet_events_lost", "Datapath events lost before the agent read them",
                                  value=s.lost)
        yield CounterMetricFamily("velvet_flows_seen", "Flow events read from the ring buffer", value=s.seen)
        yield CounterMetricFamily("velvet_flows_overwritten", "Flows overwritten in the flow store",
                                  value=s.overwritten)
        yield CounterMetricFamily("velvet_flow_follower_dropped", "Flows dropped for slow followers",
                                  value=s.follower_dropped)
        yield GaugeMetricFamily("velvet_flows_stored", "Flows held in the flow store", value=s.stored)


class FlowMetrics:
    """The metrics registry; flow counters are fed batch by batch, the agent sets the rest."""

    def __init__(self, registry: CollectorRegistry | None = None,
                 store_stats: Callable[[], StoreStats] | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.flows_processed = Counter("hubble_flows_processed", "Total number of flows processed",
                                       ["type", "subtype", "verdict"], registry=r)
        self.drops = Counter("hubble_drop", "Number of drops", ["reason", "protocol"], registry=r)
        self.tcp_flags = Counter("hubble_tcp_flags", "TCP flag occurrences", ["flag", "family"], registry=r)
        self.policy_verdicts = Counter("hubble_policy_verdicts", "Number of policy verdicts",
                                       ["direction", "match", "action"], registry=r)
        self.map_fill_ratio = Gauge("velvet_map_fill_ratio", "Entries over capacity of a BPF map", ["map"],
                                    registry=r)
        # after Cilium's cilium_datapath_conntrack_gc_*: the agent's sweeps of expired conntrack entries
        self.conntrack_gc_runs = Counter("velvet_conntrack_gc_runs", "Sweeps of the conntrack table",
                                         registry=r)
        self.conntrack_gc_entries = Gauge("velvet_conntrack_gc_entries",
                                          "Conntrack entries the last sweep kept (alive) and removed",
                                          ["status"], registry=r)
        self.conntrack_gc_duration = Histogram("velvet_conntrack_gc_duration_seconds",
                                               "Time of one sweep of the conntrack table", registry=r)
        self.reconcile_duration = Histogram("velvet_reconcile_duration_seconds",
                                            "Time to apply one reconcile of desired state to the datapath",
                                            ["what"], registry=r)
        if store_stats is not None:
            r.register(_StoreCollector(store_stats))
        self._children: dict[tuple[int, int], Any] = {}

    def observe_batch(self, batch: npt.NDArray[Any]) -> None:
        """Count one ring-buffer batch: one counter update per distinct label set, not per record.

        A label set's counter is found once per agent (by its numbers; prometheus_client's `labels` costs
        microseconds), so a batch's fixed cost is a few numpy operations per metric.
        """
        if len(batch) == 0:
            return
        typ, obs, verdict = _column(batch, "type"), _column(batch, "obs_point"), _column(batch, "verdict")
        proto, flags = _column(batch, "proto"), _column(batch, "flags")
        trace = typ == _TRACE
        self._count(_PROCESSED, (typ << 16) | (np.where(trace, obs, 0) << 8) | verdict)
        # A policy verdict and the drop it causes describe one packet: count the drop only.
        policy = typ == _POLICY_VERDICT
        drops = (verdict == _DROPPED) & ~policy
        if drops.any():
            self._count(_DROPS, (_column(batch, "drop_reason")[drops] << 8) | proto[drops])
        tcp = (proto == 6) & (trace | (typ == _DROP))
        if tcp.any():
            tcp_flags = _column(batch, "tcp_flags")[tcp]
            for label, need, clear in _TCP_FLAG_BITS:
                n = int(np.count_nonzero(((tcp_flags & need) == need) & ((tcp_flags & clear) == 0)))
                if n:
                    self._counter(_TCP, label).inc(n)
        if policy.any():
            flags = flags[policy]
            egress = EGRESS_TABLE[obs[policy] & 0xFF] != ((flags & _REPLY) != 0)
            self._count(_POLICY, (egress.astype(np.int64) << 16) | (verdict[policy] << 8) | flags)

    def _count(self, kind: int, keys: npt.NDArray[np.int64]) -> None:
        """Add each distinct key's count to its label set's counter."""
        for key, n in _counts(keys):
            self._counter(kind, key).inc(n)

    def _counter(self, kind: int, key: int) -> Any:
        """The counter of a metric's label set, by the numbers it is made of."""
        child = self._children.get((kind, key))
        if child is None:
            child = self._children[(kind, key)] = self._label_set(kind, key)
        return child

    def _label_set(self, kind: int, key: int) -> Any:
        """The metric's counter for the labels a key stands for (see `observe_batch` for the keys)."""
        if kind == _PROCESSED:
            t, o, v = key >> 16, (key >> 8) & 0xFF, key & 0xFF
            subtype = OBS_POINTS[o][1] if t == EventType.TRACE and o in OBS_POINTS else ""
            return self.flows_processed.labels(METRIC_TYPE_NAMES.get(t, "Unknown"), subtype, verdict_name(v))
        if kind == _DROPS:
            protocol = PROTOCOL_NAMES.get(key & 0xFF, str(key & 0xFF))
            return self.drops.labels(drop_reason_names(key >> 8)[0], protocol)
        if kind == _TCP:
            return self.tcp_flags.labels(_TCP_FLAG_LABELS[key][0], "IPv4")
        direction = "egress" if key >> 16 else "ingress"
        action = verdict_name((key >> 8) & 0xFF).lower()
        return self.policy_verdicts.labels(direction, match_type(key & 0xFF).lower(), action)


def metrics_app(registry: CollectorRegistry) -> web.Application:
    """An aiohttp application answering GET /metrics with the Prometheus text exposition."""

    async def handler(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app
