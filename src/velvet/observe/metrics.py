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
    EGRESS_OBS_POINTS,
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
from velvet.observe.store import StoreStats

_TCP_FLAG_LABELS = (("SYN", TcpFlag.SYN, TcpFlag.ACK), ("SYN-ACK", TcpFlag.SYN | TcpFlag.ACK, 0),
                    ("FIN", TcpFlag.FIN, 0), ("RST", TcpFlag.RST, 0))
"""(label, bits that must be set, bits that must be clear), as Hubble's tcp handler counts."""


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
        self.reconcile_duration = Histogram("velvet_reconcile_duration_seconds",
                                            "Time to apply one reconcile of desired state to the datapath",
                                            ["what"], registry=r)
        if store_stats is not None:
            r.register(_StoreCollector(store_stats))

    def observe_batch(self, batch: npt.NDArray[Any]) -> None:
        """Count one ring-buffer batch; Python work is per distinct label set, not per record."""
        if len(batch) == 0:
            return
        typ, obs, verdict = _column(batch, "type"), _column(batch, "obs_point"), _column(batch, "verdict")
        proto, flags = _column(batch, "proto"), _column(batch, "flags")
        self._processed(typ, obs, verdict)
        self._drops(typ, verdict, proto, _column(batch, "drop_reason"))
        self._tcp(typ, proto, _column(batch, "tcp_flags"))
        self._policy(typ, obs, verdict, flags)

    def _processed(self, typ: npt.NDArray[np.int64], obs: npt.NDArray[np.int64],
                   verdict: npt.NDArray[np.int64]) -> None:
        sub = np.where(typ == EventType.TRACE, obs, 0)
        for key, n in _counts((typ << 16) | (sub << 8) | verdict):
            t, o, v = key >> 16, (key >> 8) & 0xFF, key & 0xFF
            subtype = OBS_POINTS[o][1] if t == EventType.TRACE and o in OBS_POINTS else ""
            self.flows_processed.labels(METRIC_TYPE_NAMES.get(t, "Unknown"), subtype, verdict_name(v)).inc(n)

    def _drops(self, typ: npt.NDArray[np.int64], verdict: npt.NDArray[np.int64], proto: npt.NDArray[np.int64],
               reason: npt.NDArray[np.int64]) -> None:
        # A policy verdict and the drop it causes describe one packet: count the drop only.
        mask = (verdict == Verdict.DROPPED) & (typ != EventType.POLICY_VERDICT)
        for key, n in _counts((reason[mask] << 8) | proto[mask]):
            protocol = PROTOCOL_NAMES.get(key & 0xFF, str(key & 0xFF))
            self.drops.labels(drop_reason_names(key >> 8)[0], protocol).inc(n)

    def _tcp(self, typ: npt.NDArray[np.int64], proto: npt.NDArray[np.int64],
             flags: npt.NDArray[np.int64]) -> None:
        flags = flags[(proto == 6) & ((typ == EventType.TRACE) | (typ == EventType.DROP))]
        for label, need, clear in _TCP_FLAG_LABELS:
            n = int(np.count_nonzero(((flags & need) == need) & ((flags & clear) == 0)))
            if n:
                self.tcp_flags.labels(label, "IPv4").inc(n)

    def _policy(self, typ: npt.NDArray[np.int64], obs: npt.NDArray[np.int64], verdict: npt.NDArray[np.int64],
                flags: npt.NDArray[np.int64]) -> None:
        mask = typ == EventType.POLICY_VERDICT
        flags = flags[mask]
        egress = np.isin(obs[mask], list(EGRESS_OBS_POINTS)) != ((flags & EventFlag.REPLY) != 0)
        for key, n in _counts((egress.astype(np.int64) << 16) | (verdict[mask] << 8) | flags):
            direction = "egress" if key >> 16 else "ingress"
            action = verdict_name((key >> 8) & 0xFF).lower()
            self.policy_verdicts.labels(direction, match_type(key & 0xFF).lower(), action).inc(n)


def metrics_app(registry: CollectorRegistry) -> web.Application:
    """An aiohttp application answering GET /metrics with the Prometheus text exposition."""

    async def handler(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app
