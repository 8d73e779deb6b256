"""Test that flow metrics use Hubble's names and labels and parse as Prometheus exposition."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bench.flow_events import events, random_events
from velvet.observe.codes import EventFlag, EventType, ObsPoint, TcpFlag, Verdict
from velvet.observe.metrics import FlowMetrics, metrics_app
from velvet.observe.store import FlowStore

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(metrics: FlowMetrics) -> Samples:
    """Every sample of the exposition, parsed back by prometheus_client's parser."""
    text = generate_latest(metrics.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


BATCH = events(
    {},  # trace to-endpoint SYN
    {"tcp_flags": TcpFlag.SYN | TcpFlag.ACK, "flags": EventFlag.REPLY, "obs_point": ObsPoint.FROM_ENDPOINT},
    {"type": EventType.DROP, "verdict": Verdict.DROPPED, "drop_reason": 133},
    {"type": EventType.DROP, "verdict": Verdict.DROPPED, "drop_reason": 133, "proto": 17, "tcp_flags": 0},
    {"type": EventType.POLICY_VERDICT, "flags": EventFlag.POLICY_L4},
    {"type": EventType.POLICY_VERDICT, "obs_point": ObsPoint.FROM_ENDPOINT, "verdict": Verdict.DROPPED,
     "drop_reason": 133, "flags": EventFlag.POLICY_DEFAULT},
    {"type": EventType.SOCK, "obs_point": ObsPoint.SOCK_CONNECT, "verdict": Verdict.TRANSLATED, "proto": 6,
     "tcp_flags": 0},
)


def test_hubble_metric_names_and_labels() -> None:
    """Test hubble_flows_processed/drop/tcp_flags/policy_verdicts counts for a mixed batch."""
    metrics = FlowMetrics()
    metrics.observe_batch(BATCH)
    s = samples(metrics)
    key = "hubble_flows_processed_total"
    assert s[(key, (("subtype", "to-endpoint"), ("type", "Trace"), ("verdict", "FORWARDED")))] == 1
    assert s[(key, (("subtype", "from-endpoint"), ("type", "Trace"), ("verdict", "FORWARDED")))] == 1
    assert s[(key, (("subtype", ""), ("type", "Drop"), ("verdict", "DROPPED")))] == 2
    assert s[(key, (("subtype", ""), ("type", "PolicyVerdict"), ("verdict", "FORWARDED")))] == 1
    assert s[(key, (("subtype", ""), ("type", "Sock"), ("verdict", "TRANSLATED")))] == 1
    assert s[("hubble_drop_total", (("protocol", "TCP"), ("reason", "POLICY_DENIED")))] == 1
    assert s[("hubble_drop_total", (("protocol", "UDP"), ("reason", "POLICY_DENIED")))] == 1
    assert s[("hubble_tcp_flags_total", (("family", "IPv4"), ("flag", "SYN")))] == 2
    assert s[("hubble_tcp_flags_total", (("family", "IPv4"), ("flag", "SYN-ACK")))] == 1
    verdicts = "hubble_policy_verdicts_total"
    assert s[(verdicts, (("action", "forwarded"), ("direction", "ingress"), ("match", "l3-l4")))] == 1
    assert s[(verdicts, (("action", "dropped"), ("direction", "egress"), ("match", "none")))] == 1


def test_counts_accumulate_over_batches() -> None:
    """Test that a large random batch is counted exactly (totals equal the batch size)."""
    metrics = FlowMetrics()
    batch = random_events(10_000, seed=1)
    metrics.observe_batch(batch)
    metrics.observe_batch(batch[:0])
    s = samples(metrics)
    assert sum(v for (name, _), v in s.items() if name == "hubble_flows_processed_total") == 10_000
    drops = int(((batch["verdict"] == 2) & (batch["type"] != 3)).sum())
    assert sum(v for (name, _), v in s.items() if name == "hubble_drop_total") == drops


def test_velvet_metrics() -> None:
    """Test velvet_map_fill_ratio, velvet_reconcile_duration_seconds and the store's counters."""
    lost = [5]
    store = FlowStore(capacity=10, kernel_lost=lambda: lost[0])
    metrics = FlowMetrics(store_stats=store.stats)
    metrics.map_fill_ratio.labels("lb4_services").set(0.25)
    metrics.reconcile_duration.labels("services").observe(0.003)
    s = samples(metrics)
    assert s[("velvet_map_fill_ratio", (("map", "lb4_services"),))] == 0.25
    assert s[("velvet_reconcile_duration_seconds_count", (("what", "services"),))] == 1
    assert s[("velvet_events_lost_total", ())] == 5
    assert s[("velvet_flows_stored", ())] == 0


def test_metrics_endpoint_serves_the_exposition() -> None:
    """Test GET /metrics on the aiohttp app."""
    metrics = FlowMetrics()
    metrics.observe_batch(BATCH)

    async def scenario() -> tuple[int, str, str]:
        async with TestClient(TestServer(metrics_app(metrics.registry))) as http:
            resp = await http.get("/metrics")
            return resp.status, resp.headers["Content-Type"], await resp.text()

    status, content_type, body = asyncio.run(scenario())
    assert status == 200
    assert content_type.startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(body)}
    assert {"hubble_flows_processed", "hubble_drop", "hubble_tcp_flags", "hubble_policy_verdicts"} <= names


def test_a_batch_updates_each_label_set_once_and_names_it_once_per_agent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that a batch of 7,000 records (the mixed batch 1,000 times) updates each label set's counter
    once, that a later batch finds its counters without prometheus_client's `labels` (the agent's CPU
    per flow competes with the node's connections), and that the values stay exact."""
    batch = np.concatenate([BATCH] * 1000)
    once = FlowMetrics()
    once.observe_batch(BATCH)
    label_sets = sum(1 for (name, _), _ in samples(once).items()
                     if name.startswith("hubble_") and name.endswith("_total"))
    metrics = FlowMetrics()
    metrics.observe_batch(BATCH)
    incs: list[float] = []
    labels: list[tuple[str, ...]] = []
    real_inc, real_labels = Counter.inc, Counter.labels

    def inc(self: Counter, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        incs.append(amount)
        real_inc(self, amount, exemplar)

    def named(self: Counter, *values: str, **by_name: str) -> Counter:
        labels.append(values)
        return real_labels(self, *values, **by_name)

    monkeypatch.setattr(Counter, "inc", inc)
    monkeypatch.setattr(Counter, "labels", named)
    metrics.observe_batch(batch)
    assert len(incs) == label_sets
    assert labels == []
    expected = {key: value * 1001 for key, value in samples(once).items()
                if key[0].startswith("hubble_") and key[0].endswith("_total")}
    assert {key: value for key, value in samples(metrics).items() if key in expected} == expected
