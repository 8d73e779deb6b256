"""Test the Hubble JSON of a Flow and the compact / table / monitor renderings of it."""

from __future__ import annotations

import re
from datetime import UTC

from bench.flow_events import make_flow
from velvet.observe import format as fmt
from velvet.observe.codes import EventFlag, EventType, ObsPoint, TcpFlag, Verdict
from velvet.observe.enrich import NamedRef
from velvet.observe.flow import Endpoint

ALLOWED = make_flow(type=EventType.POLICY_VERDICT, flags=EventFlag.NEW_CT | EventFlag.POLICY_L4, policy_id=3,
                    policies=(NamedRef("x", "allow-a"),))
DENIED = make_flow(type=EventType.POLICY_VERDICT, verdict=Verdict.DROPPED, drop_reason=133,
                   flags=EventFlag.POLICY_DEFAULT)
DROP = make_flow(type=EventType.DROP, verdict=Verdict.DROPPED, drop_reason=133)


def test_compact_policy_verdict_allowed() -> None:
    """Test the compact line of an allowed policy verdict, as Hubble prints it."""
    assert fmt.compact(ALLOWED.to_hubble_json(), UTC) == (
        "Nov 27 11:22:33.123: x/a:41234 (ID:256) -> x/b:80 (ID:257) "
        "policy-verdict:L3-L4 INGRESS ALLOWED (TCP Flags: SYN)")


def test_compact_drops_end_with_the_reason() -> None:
    """Test '... DROPPED (TCP Flags: SYN) Policy denied' for drops and denied verdicts."""
    assert fmt.compact(DROP.to_hubble_json(), UTC).endswith(
        "x/a:41234 (ID:256) -> x/b:80 (ID:257) drop DROPPED (TCP Flags: SYN) Policy denied")
    assert fmt.compact(DENIED.to_hubble_json(), UTC).endswith(
        "policy-verdict:none INGRESS DROPPED (TCP Flags: SYN) Policy denied")


def test_compact_shape_for_traces_replies_services_and_reserved() -> None:
    """Test trace obs points, reply arrows, service names and reserved identities in compact lines."""
    line_re = re.compile(r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d\.\d{3}: "
                         r"\S+ (\(\S+\) )?(->|<-) \S+ (\(\S+\) )?\S+ [A-Z]+ \(.*\)")
    reply = make_flow(is_reply=True, obs_point=ObsPoint.FROM_ENDPOINT, tcp_flags=TcpFlag.SYN | TcpFlag.ACK,
                      src_ip="10.0.0.2", dst_ip="10.0.0.1", src_port=80, dst_port=41234,
                      source=Endpoint(257, "x", "b"), destination=Endpoint(256, "x", "a"))
    line = fmt.compact(reply.to_hubble_json(), UTC)
    assert line_re.match(line)
    assert "x/a:41234 (ID:256) <- x/b:80 (ID:257) from-endpoint FORWARDED (TCP Flags: SYN, ACK)" in line
    world = make_flow(source=Endpoint(2), src_ip="1.2.3.4", proto=17, tcp_flags=0, dst_port=53,
                      destination=Endpoint(300), dst_ip="10.96.0.10",
                      destination_service=NamedRef("kube-system", "kube-dns"))
    line = fmt.compact(world.to_hubble_json(), UTC)
    assert line_re.match(line)
    assert "1.2.3.4:41234 (world) -> kube-system/kube-dns:53 (ID:300) to-endpoint FORWARDED (UDP)" in line


def test_hubble_json_field_names() -> None:
    """Test that the JSON uses Hubble's flow field names and shapes."""
    out = ALLOWED.to_hubble_json()
    assert out["time"] == "2024-11-27T11:22:33.123456789Z"
    assert out["verdict"] == "FORWARDED"
    assert out["IP"] == {"source": "10.0.0.1", "destination": "10.0.0.2", "ipVersion": "IPv4"}
    assert out["l4"] == {"TCP": {"source_port": 41234, "destination_port": 80, "flags": {"SYN": True}}}
    assert out["source"] == {"identity": 256, "namespace": "x", "labels": ["k8s:app=a"], "pod_name": "a"}
    assert out["Type"] == "L3_L4"
    assert out["node_name"] == "node-1"
    assert out["event_type"] == {"type": 5, "sub_type": 0}
    assert out["traffic_direction"] == "INGRESS"
    assert out["is_reply"] is False
    assert out["trace_observation_point"] == "TO_ENDPOINT"
    assert out["ingress_allowed_by"] == [{"name": "allow-a", "namespace": "x"}]
    assert out["policy_match_type"] == 2
    assert out["Summary"] == "TCP Flags: SYN"
    assert "drop_reason_desc" not in out


def test_hubble_json_of_drops_egress_udp_and_sock() -> None:
    """Test drop_reason_desc, egress policies, UDP l4, trace sub types and socket-LB events."""
    drop = DROP.to_hubble_json()
    assert (drop["drop_reason"], drop["drop_reason_desc"], drop["event_type"]) == (
        133, "POLICY_DENIED", {"type": 1, "sub_type": 133})
    egress = make_flow(obs_point=ObsPoint.FROM_ENDPOINT, proto=17, tcp_flags=0, verdict=Verdict.DROPPED,
                       type=EventType.POLICY_VERDICT, policies=(NamedRef("x", "deny-dns"),), drop_reason=181)
    out = egress.to_hubble_json()
    assert out["traffic_direction"] == "EGRESS"
    assert out["egress_denied_by"] == [{"name": "deny-dns", "namespace": "x"}]
    assert out["l4"] == {"UDP": {"source_port": 41234, "destination_port": 80}}
    assert out["Summary"] == "UDP"
    trace = make_flow(obs_point=ObsPoint.FROM_ENDPOINT).to_hubble_json()
    assert trace["event_type"] == {"type": 4, "sub_type": 5}
    sock = make_flow(type=EventType.SOCK, obs_point=ObsPoint.SOCK_CONNECT, verdict=Verdict.TRANSLATED,
                     cgroup_id=77, destination_service=NamedRef("x", "web")).to_hubble_json()
    assert (sock["Type"], sock["cgroup_id"], sock["destination_service"]) == (
        "SOCK", 77, {"name": "web", "namespace": "x"})
    assert "SOCK_XLATE_POINT" in sock["sock_xlate_point"]
    assert fmt.flow_type(sock) == "post-xlate-fwd"


def test_table_rows() -> None:
    """Test Hubble's table columns."""
    assert fmt.TABLE_HEADERS == ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
    assert fmt.table_row(DROP.to_hubble_json(), UTC) == [
        "Nov 27 11:22:33.123", "x/a:41234 (ID:256)", "x/b:80 (ID:257)", "drop", "DROPPED",
        "TCP Flags: SYN Policy denied"]


def test_monitor_lines() -> None:
    """Test the cilium-monitor-like text of raw events."""
    assert fmt.monitor_line(DROP.to_event_json()) == (
        "xx drop (Policy denied) to-endpoint, ifindex 0, identity 256->257: "
        "10.0.0.1:41234 -> 10.0.0.2:80 tcp SYN")
    assert fmt.monitor_line(ALLOWED.to_event_json()).startswith(
        "Policy verdict log: policy 3, remote ID 256, ingress, action allow: ")
    trace = make_flow(flags=EventFlag.NEW_CT, ifindex=7, bytes=60).to_event_json()
    assert fmt.monitor_line(trace) == (
        "-> to-endpoint ifindex 7, identity 256->257, state new: 10.0.0.1:41234 -> 10.0.0.2:80 tcp SYN")
    verbose = fmt.monitor_line(trace, verbose=True)
    assert verbose.startswith("2024-11-27T11:22:33.123456789Z ")
    assert verbose.endswith("bytes 60, flags 0x2, cgroup 0")
    sock = make_flow(type=EventType.SOCK, obs_point=ObsPoint.SOCK_CONNECT, verdict=Verdict.TRANSLATED,
                     orig_dst_ip="10.96.0.10", orig_dst_port=80, rev_nat_index=4, cgroup_id=9)
    assert fmt.monitor_line(sock.to_event_json()) == (
        "[post-xlate-fwd] cgroup 9: 10.96.0.10:80 => 10.0.0.2:80 rev-nat 4")


def test_lost_and_json_lines() -> None:
    """Test the lost-events warning and one-line JSON."""
    assert fmt.lost_text({"lost_events": {"source": "OBSERVER_EVENTS_QUEUE", "num_events_lost": 3}}) == (
        "EVENTS LOST: OBSERVER_EVENTS_QUEUE 3")
    assert fmt.lost_text({"lost_events": {"source": "PERF_EVENT_RING_BUFFER", "num_events_lost": 9},
                          "node_name": "velvet-node-1"}) == (
        "EVENTS LOST: PERF_EVENT_RING_BUFFER 9 on velvet-node-1")
    assert "\n" not in fmt.json_line(ALLOWED.to_hubble_json())
