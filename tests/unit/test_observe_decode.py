"""Test that ring-buffer batches decode into enriched Flows whatever the declared byte order."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pytest

from bench.flow_events import events, random_events
from velvet.datapath.structs import FLOW_EVENT_DTYPE
from velvet.observe.codes import EventFlag, EventType, ObsPoint, Verdict
from velvet.observe.decode import RECORD_DTYPE, FlowDecoder, ipv4_text
from velvet.observe.enrich import DictResolver, EndpointInfo, NamedRef
from velvet.observe.flow import Flow


def _resolver() -> DictResolver:
    r = DictResolver()
    r.set_endpoint("10.0.0.1", EndpointInfo("shop", "client-7d9f", ("k8s:app=client",), 12))
    r.set_identity(257, "shop", {"k8s:app": "web"})
    r.set_service(5, NamedRef("shop", "web"))
    r.set_policies(9, ["shop/allow-client", NamedRef("shop", "baseline")])
    return r


def _with_byte_order(order: Literal["<", ">", "="]) -> np.dtype[Any]:
    """FLOW_EVENT_DTYPE with every multi-byte field declared in `order` (same offsets)."""
    fields = FLOW_EVENT_DTYPE.fields
    assert fields is not None
    spec: Any = {
        "names": list(fields), "offsets": [fields[n][1] for n in fields],
        "itemsize": FLOW_EVENT_DTYPE.itemsize,
        "formats": [fields[n][0].newbyteorder(order) if fields[n][0].itemsize > 1 else fields[n][0]
                    for n in fields],
    }
    dtype: np.dtype[Any] = np.dtype(spec)
    return dtype


def test_addresses_and_ports_are_read_in_network_order() -> None:
    """Test that saddr/daddr/ports given in network byte order come out as the wire values."""
    batch = events({"saddr": "10.1.2.3", "daddr": "192.168.0.254", "sport": 41234, "dport": 8080,
                    "orig_daddr": "10.96.0.10", "orig_dport": 80})
    flow = FlowDecoder(DictResolver(), clock_offset_ns=0).decode(batch)[0]
    assert (flow.src_ip, flow.dst_ip) == ("10.1.2.3", "192.168.0.254")
    assert (flow.src_port, flow.dst_port) == (41234, 8080)
    assert (flow.orig_dst_ip, flow.orig_dst_port) == ("10.96.0.10", 80)


@pytest.mark.parametrize("order", ["<", ">", "="])
def test_declared_byte_order_does_not_matter(order: Literal["<", ">", "="]) -> None:
    """Test that a dtype declaring addresses little-endian (raw bytes) decodes the same."""
    batch = events({"saddr": "10.1.2.3", "sport": 41234, "src_identity": 300}).view(_with_byte_order(order))
    flow = FlowDecoder(DictResolver(), clock_offset_ns=0).decode(batch)[0]
    assert (flow.src_ip, flow.src_port) == ("10.1.2.3", 41234)
    if order != ">":
        assert flow.source.identity == 300


def test_ring_layout_fast_path_equals_field_by_field() -> None:
    """Test that the ring's own layout (copied as bytes) and a re-declared layout give equal records."""
    batch = random_events(500, seed=9)
    decoder = FlowDecoder(_resolver(), clock_offset_ns=123)
    fast = decoder.enrich(batch)
    slow = decoder.enrich(batch.view(_with_byte_order("<")))
    assert fast.tobytes() == slow.tobytes()
    assert fast["saddr"].tolist() == batch["saddr"].tolist()


def test_monotonic_time_becomes_wall_clock() -> None:
    """Test that ts_ns (CLOCK_MONOTONIC) is shifted by the decoder's offset."""
    batch = events({"ts_ns": 5_000}, {"ts_ns": 7_000})
    flows = FlowDecoder(DictResolver(), clock_offset_ns=1_700_000_000_000_000_000).decode(batch)
    assert [f.time_ns for f in flows] == [1_700_000_000_000_005_000, 1_700_000_000_000_007_000]


def test_default_offset_is_measured() -> None:
    """Test that without an offset the decoder measures time.time_ns() - time.monotonic_ns()."""
    import time

    decoder = FlowDecoder(DictResolver())
    assert abs(decoder.clock_offset_ns - (time.time_ns() - time.monotonic_ns())) < 10**9


def test_fields_and_codes_are_carried() -> None:
    """Test that every field of the record reaches the Flow."""
    batch = events({"type": EventType.DROP, "obs_point": ObsPoint.FROM_ENDPOINT, "verdict": Verdict.DROPPED,
                    "drop_reason": 133, "proto": 17, "tcp_flags": 0, "flags": EventFlag.REPLY,
                    "ifindex": 42, "bytes": 1500, "cookie": 99, "policy_id": 0, "rev_nat_index": 0})
    flow = FlowDecoder(DictResolver(), node_name="node-a", clock_offset_ns=0).decode(batch)[0]
    assert (flow.type, flow.obs_point, flow.verdict, flow.drop_reason) == (2, 1, 2, 133)
    assert (flow.proto, flow.is_reply, flow.ifindex, flow.bytes, flow.cgroup_id) == (17, True, 42, 1500, 99)
    assert flow.node_name == "node-a"


def test_enrichment_from_ip_then_identity() -> None:
    """Test that the IP's endpoint names the pod and an identity alone gives namespace and labels."""
    batch = events({"saddr": "10.0.0.1", "daddr": "10.0.0.9", "src_identity": 256, "dst_identity": 257})
    flow = FlowDecoder(_resolver(), clock_offset_ns=0).decode(batch)[0]
    source = flow.source
    assert (source.namespace, source.pod_name, source.endpoint_id) == ("shop", "client-7d9f", 12)
    assert flow.source.labels == ("k8s:app=client",)
    assert (flow.destination.namespace, flow.destination.pod_name) == ("shop", "")
    assert flow.destination.labels == ("k8s:app=web",)


def test_reserved_identities_have_labels() -> None:
    """Test that world and host carry reserved: labels without any registration."""
    flow = FlowDecoder(DictResolver(), clock_offset_ns=0).decode(events({"src_identity": 2}))[0]
    assert flow.source.labels == ("reserved:world",)


def test_services_and_policies() -> None:
    """Test rev-NAT ids -> destination service (source service when reverse-NATed) and policy names."""
    batch = events({"rev_nat_index": 5, "policy_id": 9},
                   {"rev_nat_index": 5, "flags": EventFlag.REPLY | EventFlag.REV_NAT})
    forward, reply = FlowDecoder(_resolver(), clock_offset_ns=0).decode(batch)
    assert forward.destination_service == NamedRef("shop", "web")
    assert forward.source_service is None
    assert forward.policies == (NamedRef("shop", "allow-client"), NamedRef("shop", "baseline"))
    assert reply.source_service == NamedRef("shop", "web")
    assert reply.destination_service is None


def test_missing_optional_fields_read_as_zero_and_alias() -> None:
    """Test that a smaller layout decodes (absent fields 0) and cgroup_id is accepted for cookie."""
    dtype = np.dtype([("ts_ns", "<u8"), ("saddr", ">u4"), ("daddr", ">u4"), ("type", "u1"),
                      ("cgroup_id", "<u8")])
    batch = np.zeros(1, dtype)
    batch["saddr"], batch["type"], batch["cgroup_id"] = 0x0A000001, 1, 77
    flow = FlowDecoder(DictResolver(), clock_offset_ns=0).decode(batch)[0]
    assert (flow.src_ip, flow.dst_ip, flow.src_port) == ("10.0.0.1", "", 0)
    assert (flow.cgroup_id, flow.policies) == (77, ())


def test_missing_required_field_is_an_error() -> None:
    """Test that a batch without addresses is refused with the fields named."""
    with pytest.raises(ValueError, match="saddr"):
        FlowDecoder(DictResolver()).enrich(np.zeros(1, np.dtype([("ts_ns", "<u8"), ("type", "u1")])))


def test_records_are_vectorised_per_field() -> None:
    """Test enrich() on a large batch: host-order columns equal the per-record values, time shifted."""
    batch = random_events(1000, seed=3)
    records = FlowDecoder(DictResolver(), clock_offset_ns=10).enrich(batch)
    assert records.dtype == RECORD_DTYPE
    assert records["time_ns"][:2].tolist() == [10**9 + 10, 10**9 + 1010]
    assert records["saddr"][5] == int(batch["saddr"][5])
    assert records["dport"].tolist() == batch["dport"].tolist()
    assert len(records) == 1000


def test_flows_equal_per_record_decoding_on_a_large_batch() -> None:
    """Test that a batch decoded at once equals its records decoded one by one."""
    batch = random_events(2000, seed=5)
    decoder = FlowDecoder(_resolver(), node_name="n", clock_offset_ns=0)
    together = decoder.decode(batch)
    alone = [FlowDecoder(_resolver(), node_name="n", clock_offset_ns=0).decode(batch[i:i + 1])[0]
             for i in range(0, 2000, 97)]
    assert together[::97] == alone


def test_context_is_captured_at_ingest_time() -> None:
    """Test that a record keeps the names known when it was enriched, and later ones see changes."""
    resolver = _resolver()
    decoder = FlowDecoder(resolver, clock_offset_ns=0)
    before = decoder.enrich(events({"saddr": "10.0.0.1", "rev_nat_index": 5}))
    resolver.sync_pods({}, {}, {}, {})  # the pod was deleted
    resolver.set_service(5, NamedRef("shop", "renamed"))
    after = decoder.enrich(events({"saddr": "10.0.0.1", "rev_nat_index": 5}))
    old, new = decoder.flows(np.concatenate((before, after)))
    assert (old.source.pod_name, old.destination_service) == ("client-7d9f", NamedRef("shop", "web"))
    assert (new.source.pod_name, new.destination_service) == ("", NamedRef("shop", "renamed"))


def test_socket_events_take_the_callers_address_from_its_cgroup() -> None:
    """Test that a record with no source address but a cgroup gets the pod's address and endpoint."""
    resolver = _resolver()
    resolver.set_cgroup(4242, "10.0.0.1")
    batch = events({"saddr": "0.0.0.0", "cookie": 4242, "type": EventType.SOCK},
                   {"saddr": "0.0.0.0", "cookie": 999, "type": EventType.SOCK})
    known, unknown = FlowDecoder(resolver, clock_offset_ns=0).decode(batch)
    assert (known.src_ip, known.source.pod_name, known.cgroup_id) == ("10.0.0.1", "client-7d9f", 4242)
    assert (unknown.src_ip, unknown.source.pod_name) == ("", "")


def test_compaction_keeps_what_live_records_point_to() -> None:
    """Test that compact() drops unreferenced table entries and renumbers live records consistently."""
    resolver = DictResolver()
    decoder = FlowDecoder(resolver, clock_offset_ns=0)
    addresses = [f"10.1.{i // 256}.{i % 256}" for i in range(1, 300)]
    for i, addr in enumerate(addresses):
        resolver.set_endpoint(addr, EndpointInfo("ns", f"old-{i}"))
    decoder.enrich(events(*({"saddr": addr} for addr in addresses)))
    for i, addr in enumerate(addresses[:40]):
        resolver.set_endpoint(addr, EndpointInfo("ns", f"new-{i}"))
    live = decoder.enrich(events(*({"saddr": addr} for addr in addresses[:40])))
    expected = decoder.flows(live)
    assert len(decoder.endpoints.values) > 300
    decoder.compact([live[:20], live[20:]])
    assert len(decoder.endpoints.values) == 42  # none, the 40 new pods, and the destination identity
    assert decoder.flows(live) == expected
    assert [f.source.pod_name for f in decoder.decode(events({"saddr": addresses[7]}))] == ["new-7"]


def test_endpoint_objects_are_shared_within_a_batch() -> None:
    """Test that lookups are memoised: equal endpoints in a batch are one object."""
    flows = FlowDecoder(_resolver(), clock_offset_ns=0).decode(events({}, {}))
    assert flows[0].source is flows[1].source


def test_ipv4_text() -> None:
    """Test the dotted quad of a host-order integer."""
    assert ipv4_text(0x0A000102) == "10.0.1.2"


def test_positional_construction_matches_field_names() -> None:
    """Test that the decoder's positional Flow(...) puts every value in the field of its name."""
    batch = events({"ts_ns": 11, "type": EventType.SOCK, "obs_point": ObsPoint.SOCK_CONNECT, "verdict": 4,
                    "drop_reason": 13, "proto": 17, "tcp_flags": 14, "saddr": "10.0.0.1", "daddr": "10.0.0.2",
                    "sport": 15, "dport": 16, "rev_nat_index": 5, "policy_id": 9, "orig_daddr": "10.96.0.1",
                    "orig_dport": 18, "ifindex": 19, "bytes": 20, "flags": EventFlag.NEW_CT, "cookie": 21,
                    "src_identity": 256, "dst_identity": 257})
    decoder = FlowDecoder(_resolver(), node_name="n", clock_offset_ns=0)
    flow = decoder.decode(batch)[0]
    expected = Flow(
        time_ns=11, type=EventType.SOCK, obs_point=ObsPoint.SOCK_CONNECT, verdict=4, drop_reason=13, proto=17,
        tcp_flags=14, src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=15, dst_port=16,
        source=flow.source, destination=flow.destination, source_service=None,
        destination_service=NamedRef("shop", "web"),
        policies=(NamedRef("shop", "allow-client"), NamedRef("shop", "baseline")),
        orig_dst_ip="10.96.0.1", orig_dst_port=18, rev_nat_index=5, policy_id=9, ifindex=19, bytes=20,
        flags=EventFlag.NEW_CT, cgroup_id=21, node_name="n")
    assert flow == expected
    assert flow.source.pod_name == "client-7d9f"
    assert flow.destination.identity == 257
