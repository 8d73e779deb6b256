"""Datapath tests of lxc.bpf.o (lxc_from_pod / lxc_to_pod) with BPF_PROG_TEST_RUN.

Every test loads a fresh object, seeds its tables as the agent writes them (seeding.py: records of
datapath/tables.py through the agent's codecs, load-balancer changes in LbDelta order), runs a
frame through a program and checks the verdict, the output frame, the maps and the events.
"""

from __future__ import annotations

import json
import secrets
import struct
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
from fixtures_datapath import (
    LO_IFINDEX,
    TC_ACT_OK,
    TC_ACT_REDIRECT,
    TC_ACT_SHOT,
    Loaded,
    ct_key,
    lxc,
    sh,
)
from packets import (
    ACK,
    ETH_P_ARP,
    ETH_P_IPV6,
    FIN,
    HOST_MAC,
    ICMP,
    IP_DF,
    IP_MF,
    POD_MAC,
    PSH,
    RST,
    SYN,
    TCP,
    UDP,
    checksums_ok,
    eth,
    fragments,
    icmp_echo,
    icmp_error,
    icmp_message,
    ipv4,
    parse,
    tcp,
    tcp_segment,
    udp,
    udp_datagram,
)
from seeding import (
    add_pods,
    allow,
    compile_service,
    endpoint_slice,
    k8s_service,
    lb_change,
    revoke,
    rule,
    set_identity,
)

from velvet.control.services import ServiceCompiler
from velvet.datapath.attach import Link, attach_tcx
from velvet.datapath.structs import (
    CT_LIFETIME_CLOSE_S,
    CT_LIFETIME_NONTCP_S,
    CT_LIFETIME_SYN_S,
    CT_LIFETIME_TCP_S,
    CT_REPORT_INTERVAL_S,
    LB_MAGLEV_LUT_SIZE,
    BackendState,
    Ct4Entry,
    CtDir,
    CtFlag,
    DropReason,
    EndpointFlag,
    EventFlag,
    EventType,
    Lb4AffinityKey,
    Lb4AffinityVal,
    LbScope,
    MetricDir,
    ObsPoint,
    ReservedIdentity,
    SvcFlag,
    Verdict,
)
from velvet.datapath.structs import ipv4 as ip_int
from velvet.datapath.tables import Direction, StaleBackend
from velvet.datapath.views import ConntrackMap
from velvet.model.service import EndpointPort, ServicePort
from velvet.system import mounts
from velvet.system.netns import in_netns

pytestmark = [pytest.mark.privileged]
__all__ = ["lxc"]  # the fixture, imported for pytest

POD_A, ID_A, EP_A = "10.244.0.10", 1000, 10
POD_B, ID_B, EP_B = "10.244.0.20", 2000, 20
POD_C, ID_C, EP_C = "10.244.0.30", 3000, 30
WORLD_IP = "192.0.2.7"
NODE, NODE_IP = "node-a", "172.18.0.2"
VIP, VPORT, REV = "10.96.0.10", 80, 5
FROM, TO = "lxc_from_pod", "lxc_to_pod"
NSEC_PER_SEC = 10**9


def seed_pods(dp: Loaded, a_flags: int = 0, b_flags: int = 0) -> None:
    """Pods A, B and C on the node (A and B with policy flags), and their identities."""
    add_pods(dp.tables, [(POD_A, LO_IFINDEX, ID_A, EP_A, a_flags), (POD_B, LO_IFINDEX, ID_B, EP_B, b_flags),
                         (POD_C, LO_IFINDEX, ID_C, EP_C, 0)])


def seed_service(dp: Loaded, backends: list[tuple[int, str, int]], *, proto: int = TCP,
                 flags: SvcFlag = SvcFlag.CLUSTERIP, affinity_timeout: int = 0, vip: str = VIP,
                 vport: int = VPORT, rev: int = REV, scope: LbScope = LbScope.EXT) -> None:
    """A frontend with backends (id, address, port) and its reverse NAT entry, written as the agent does."""
    with lb_change(dp.tables) as lb:
        lb.service(vip, vport, proto, backends, rev=rev, flags=flags, affinity_timeout=affinity_timeout,
                   scope=scope)


def only(events: npt.NDArray[np.void], event_type: EventType) -> npt.NDArray[np.void]:
    """The events of one type."""
    selected: npt.NDArray[np.void] = events[events["type"] == event_type]
    return selected


# --- parsing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("program", [FROM, TO])
@pytest.mark.parametrize(("ethertype", "desc"), [(ETH_P_ARP, "ARP"), (ETH_P_IPV6, "IPv6")])
def test_non_ipv4_passes_untouched(lxc: Loaded, program: str, ethertype: int, desc: str) -> None:
    """Test that non-IPv4 frames (ARP, IPv6) pass unchanged and count as forwarded."""
    frame = eth(b"\x00" * 40, ethertype)
    result = lxc.run(program, frame)
    assert result.retval == TC_ACT_OK, desc
    assert result.data_out == frame
    direction = MetricDir.EGRESS if program == FROM else MetricDir.INGRESS
    assert lxc.forwarded(direction) == 1
    assert len(lxc.events()) == 0


def _doff(segment: bytes, doff: int) -> bytes:
    """A TCP segment with its data offset forced."""
    return segment[:12] + bytes([doff << 4]) + segment[13:]


A, B = POD_A, POD_B
SEG = tcp_segment(A, B, 40000, 80, SYN)
MALFORMED = [
    # (shorter frames cannot be tested: BPF_PROG_TEST_RUN refuses IPv4 frames without a full header)
    ("Test that a TCP packet with no transport header at all is dropped", eth(ipv4(A, B, TCP, b""))),
    ("Test that an IPv4 header whose options are missing is dropped", eth(ipv4(A, B, TCP, b"", ihl=6))),
    ("Test that IP version 6 inside an IPv4 ethertype is dropped", eth(ipv4(A, B, TCP, SEG, version=6))),
    ("Test that an IPv4 header length below 5 words is dropped", eth(ipv4(A, B, TCP, SEG, ihl=4))),
    ("Test that tot_len beyond the end of the frame is dropped", eth(ipv4(A, B, TCP, SEG, tot_len=200))),
    ("Test that tot_len below the header length is dropped", eth(ipv4(A, B, TCP, SEG, tot_len=12))),
    ("Test that a truncated TCP header is dropped", eth(ipv4(A, B, TCP, SEG[:10]))),
    ("Test that a TCP data offset below 5 is dropped", eth(ipv4(A, B, TCP, _doff(SEG, 4)))),
    ("Test that a TCP data offset beyond the packet is dropped", eth(ipv4(A, B, TCP, _doff(SEG, 15)))),
    ("Test that a truncated UDP header is dropped", eth(ipv4(A, B, UDP, udp_datagram(A, B, 1, 2)[:4]))),
    ("Test that a truncated ICMP header is dropped", eth(ipv4(A, B, ICMP, b"\x08\x00\x00\x00"))),
    ("Test that a first fragment with a truncated TCP header is dropped",
     eth(ipv4(A, B, TCP, SEG[:8], frag=IP_MF))),
]


@pytest.mark.parametrize("program", [FROM, TO])
@pytest.mark.parametrize(("desc", "frame"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_ipv4_is_dropped_as_invalid(lxc: Loaded, program: str, desc: str, frame: bytes) -> None:
    """Test that malformed or truncated IPv4 is dropped with INVALID_PACKET, counted and reported."""
    seed_pods(lxc)
    result = lxc.run(program, frame)
    assert result.retval == TC_ACT_SHOT, desc
    direction = MetricDir.EGRESS if program == FROM else MetricDir.INGRESS
    assert lxc.packets(DropReason.INVALID_PACKET, direction) == 1
    events = lxc.events()
    assert len(events) == 1
    assert events[0]["type"] == EventType.DROP
    assert events[0]["drop_reason"] == DropReason.INVALID_PACKET
    assert events[0]["verdict"] == Verdict.DROPPED
    assert events[0]["bytes"] == len(frame)


@pytest.mark.parametrize(("desc", "frame", "sport", "dport"), [
    ("TCP", tcp(POD_A, POD_B, 40000, 80), 40000, 80),
    ("UDP", udp(POD_A, POD_B, 40001, 53), 40001, 53),
    ("ICMP echo: the identifier is the source port", icmp_echo(POD_A, POD_B, ident=77), 77, 0),
])
def test_valid_packet_is_tracked_and_reported(lxc: Loaded, desc: str, frame: bytes, sport: int,
                                              dport: int) -> None:
    """Test that a valid TCP/UDP/ICMP packet from a pod passes unchanged, creates its CT_EGRESS entry
    and one trace event with its tuple and identities."""
    seed_pods(lxc)
    proto = parse(frame).proto
    result = lxc.run(FROM, frame)
    assert result.retval == TC_ACT_OK, desc
    assert result.data_out == frame
    entry = lxc.conntrack(POD_A, POD_B, sport, dport, proto, CtDir.EGRESS)
    assert entry is not None
    assert (entry.packets, entry.bytes, entry.src_identity) == (1, len(frame), ID_A)
    events = lxc.events()
    assert len(events) == 1
    ev = events[0]
    assert (ev["type"], ev["obs_point"], ev["verdict"]) == (EventType.TRACE, ObsPoint.FROM_ENDPOINT,
                                                            Verdict.FORWARDED)
    assert (ev["saddr"], ev["daddr"], ev["sport"], ev["dport"], ev["proto"]) == (
        ip_int(POD_A), ip_int(POD_B), sport, dport, proto)
    assert (ev["src_identity"], ev["dst_identity"], ev["ifindex"]) == (ID_A, ID_B, LO_IFINDEX)
    assert ev["flags"] & EventFlag.NEW_CT
    assert lxc.forwarded(MetricDir.EGRESS) == 1


def test_unknown_source_is_dropped(lxc: Loaded) -> None:
    """Test that a packet whose source is not the endpoint behind the veth is dropped (anti-spoofing)."""
    seed_pods(lxc)
    assert lxc.run(FROM, tcp("10.244.9.9", POD_B, 1, 80)).retval == TC_ACT_SHOT
    add_pods(lxc.tables, [(POD_A, 99, ID_A, EP_A, 0)])  # A lives behind another veth
    assert lxc.run(FROM, tcp(POD_A, POD_B, 1, 80)).retval == TC_ACT_SHOT
    assert lxc.packets(DropReason.INVALID_SOURCE, MetricDir.EGRESS) == 2


def test_fragments_take_ports_from_their_first_fragment(lxc: Loaded) -> None:
    """Test that later fragments use the ports of the first; one without a first fragment is dropped."""
    seed_pods(lxc, b_flags=EndpointFlag.POLICY_INGRESS)
    allow(lxc.tables, rule(EP_B, Direction.INGRESS, ID_A, UDP, 53))
    first, later = fragments(udp(POD_A, POD_B, 40000, 53, b"x" * 100, ident=42), 64)
    assert lxc.run(TO, first).retval == TC_ACT_OK
    assert lxc.run(TO, later).retval == TC_ACT_OK
    entry = lxc.conntrack(POD_A, POD_B, 40000, 53, UDP, CtDir.INGRESS)
    assert entry is not None
    assert entry.packets == 2
    _, orphan = fragments(udp(POD_A, POD_B, 40000, 53, b"x" * 100, ident=43), 64)
    assert lxc.run(TO, orphan).retval == TC_ACT_SHOT
    assert lxc.packets(DropReason.FRAG_NOT_FOUND, MetricDir.INGRESS) == 1


# --- policy ------------------------------------------------------------------------------------------

ANY = ReservedIdentity.ANY
DENIED = DropReason.POLICY_DENIED
L3, L4, ANY_PEER, DEFAULT = (EventFlag.POLICY_L3, EventFlag.POLICY_L4, EventFlag.POLICY_ANY_PEER,
                             EventFlag.POLICY_DEFAULT)


@dataclass(frozen=True)
class Rule:
    """A policy entry of endpoint B's ingress (`seeding.rule` arguments)."""

    identity: int
    proto: int = 0
    port: int = 0
    prefix: int = 16


# (description, rules, dport, allowed, drop reason, policy match flags of the verdict event)
INGRESS_CASES: list[tuple[str, list[Rule], int, bool, int, int]] = [
    ("Test that an isolated endpoint without rules denies", [], 80, False, DENIED, DEFAULT),
    ("Test that an identity rule allows any port (L3)", [Rule(ID_A)], 80, True, 0, L3),
    ("Test that an identity rule does not allow another identity", [Rule(ID_C)], 80, False, DENIED, DEFAULT),
    ("Test that an any-peer port rule allows its port (L4-only)", [Rule(ANY, TCP, 80)], 80, True, 0,
     L4 | ANY_PEER),
    ("Test that an any-peer port rule does not allow another port", [Rule(ANY, TCP, 80)], 81, False, DENIED,
     DEFAULT),
    ("Test that a UDP rule does not allow TCP", [Rule(ID_A, UDP, 80)], 80, False, DENIED, DEFAULT),
    ("Test that a protocol rule allows any port of it", [Rule(ID_A, TCP, prefix=0)], 4444, True, 0, L4),
    ("Test that a port-range prefix allows a port inside", [Rule(ID_A, TCP, 8080, 13)], 8087, True, 0, L4),
    ("Test that a port-range prefix denies a port outside", [Rule(ID_A, TCP, 8080, 13)], 8088, False, DENIED,
     DEFAULT),
    ("Test that the peer's own entry decides before an any-peer entry", [Rule(ID_A), Rule(ANY, TCP, 80)], 80,
     True, 0, L3),
    ("Test that an any-peer entry allows a peer whose own entries do not match",
     [Rule(ID_A, TCP, 81), Rule(ANY, TCP, 80)], 80, True, 0, L4 | ANY_PEER),
]


@pytest.mark.parametrize(("desc", "rules", "dport", "allowed", "reason", "flags"), INGRESS_CASES,
                         ids=[c[0] for c in INGRESS_CASES])
def test_ingress_policy(lxc: Loaded, desc: str, rules: list[Rule], dport: int, allowed: bool, reason: int,
                        flags: int) -> None:
    """Test the ingress policy decision of lxc_to_pod on a new connection, and its verdict event."""
    seed_pods(lxc, b_flags=EndpointFlag.POLICY_INGRESS)
    for r in rules:
        allow(lxc.tables, rule(EP_B, Direction.INGRESS, r.identity, r.proto, r.port, r.prefix), 7)
    result = lxc.run(TO, tcp(POD_A, POD_B, 40000, dport))
    assert result.retval == (TC_ACT_OK if allowed else TC_ACT_SHOT), desc
    tracked = lxc.conntrack(POD_A, POD_B, 40000, dport, TCP, CtDir.INGRESS)
    assert (tracked is not None) == allowed
    events = lxc.events()
    verdicts = only(events, EventType.POLICY_VERDICT)
    assert len(verdicts) == 1
    ev = verdicts[0]
    assert ev["verdict"] == (Verdict.FORWARDED if allowed else Verdict.DROPPED)
    assert ev["flags"] & 0x3C == flags
    assert (ev["src_identity"], ev["dst_identity"], ev["obs_point"]) == (ID_A, ID_B, ObsPoint.TO_ENDPOINT)
    if allowed:
        assert ev["policy_id"] == (7 if rules else 0)
        assert len(only(events, EventType.TRACE)) == 1
    else:
        assert ev["drop_reason"] == reason
        drops = only(events, EventType.DROP)
        assert len(drops) == 1
        assert drops[0]["drop_reason"] == reason
        assert lxc.packets(reason, MetricDir.INGRESS) == 1


def test_unisolated_endpoint_allows_without_verdict_event(lxc: Loaded) -> None:
    """Test that an endpoint not isolated for ingress accepts everything and reports no policy verdict."""
    seed_pods(lxc)
    assert lxc.run(TO, tcp(WORLD_IP, POD_B, 1234, 22)).retval == TC_ACT_OK
    events = lxc.events()
    assert len(only(events, EventType.POLICY_VERDICT)) == 0
    trace = only(events, EventType.TRACE)
    assert len(trace) == 1
    assert trace[0]["src_identity"] == ReservedIdentity.WORLD


def test_icmp_rule_matches_by_protocol(lxc: Loaded) -> None:
    """Test that an ICMP rule (protocol, no port) allows echo requests."""
    seed_pods(lxc, b_flags=EndpointFlag.POLICY_INGRESS)
    assert lxc.run(TO, icmp_echo(POD_A, POD_B)).retval == TC_ACT_SHOT
    allow(lxc.tables, rule(EP_B, Direction.INGRESS, ID_A, ICMP, 0, prefix_len=0))
    assert lxc.run(TO, icmp_echo(POD_A, POD_B, ident=8)).retval == TC_ACT_OK


def test_egress_policy(lxc: Loaded) -> None:
    """Test that lxc_from_pod applies the egress policy of the source pod to the destination identity."""
    seed_pods(lxc, a_flags=EndpointFlag.POLICY_EGRESS)
    allow(lxc.tables, rule(EP_A, Direction.EGRESS, ID_B, UDP, 53), 3)
    assert lxc.run(FROM, udp(POD_A, POD_B, 40000, 53)).retval == TC_ACT_OK
    assert lxc.run(FROM, udp(POD_A, POD_B, 40000, 54)).retval == TC_ACT_SHOT
    assert lxc.run(FROM, udp(POD_A, WORLD_IP, 40000, 53)).retval == TC_ACT_SHOT
    verdicts = only(lxc.events(), EventType.POLICY_VERDICT)
    assert list(verdicts["verdict"]) == [Verdict.FORWARDED, Verdict.DROPPED, Verdict.DROPPED]
    assert list(verdicts["dst_identity"]) == [ID_B, ID_B, ReservedIdentity.WORLD]
    assert verdicts[0]["policy_id"] == 3
    assert lxc.packets(DropReason.POLICY_DENIED, MetricDir.EGRESS) == 2


def test_cidr_identity_rule_matches_pod_and_world_addresses(lxc: Loaded) -> None:
    """Test that an ipBlock rule (a CIDR identity from ipcache_cidr) matches a pod IP and an outside IP."""
    cidr_id, except_id = 1 << 24, (1 << 24) + 1
    seed_pods(lxc, a_flags=EndpointFlag.POLICY_EGRESS)
    lxc.tables.write("ipcache_cidr", {"0.0.0.0/0": ReservedIdentity.WORLD, "10.244.0.0/24": cidr_id,
                                      "10.244.0.30/32": except_id}, ())
    allow(lxc.tables, rule(EP_A, Direction.EGRESS, cidr_id, TCP, 80), 4)
    assert lxc.run(FROM, tcp(POD_A, POD_B, 40000, 80)).retval == TC_ACT_OK
    assert lxc.run(FROM, tcp(POD_A, POD_C, 40000, 80)).retval == TC_ACT_SHOT
    assert lxc.run(FROM, tcp(POD_A, WORLD_IP, 40000, 80)).retval == TC_ACT_SHOT
    allow(lxc.tables, rule(EP_A, Direction.EGRESS, ReservedIdentity.WORLD, TCP, 80), 5)
    assert lxc.run(FROM, tcp(POD_A, WORLD_IP, 40001, 80)).retval == TC_ACT_OK
    verdicts = only(lxc.events(), EventType.POLICY_VERDICT)
    assert list(verdicts["policy_id"]) == [4, 0, 0, 5]
    assert list(verdicts["dst_identity"]) == [ID_B, ID_C, ReservedIdentity.WORLD, ReservedIdentity.WORLD]


def test_audit_mode_forwards_and_reports_audit(lxc: Loaded) -> None:
    """Test that an endpoint in audit mode forwards what policy would drop, with an AUDIT verdict."""
    seed_pods(lxc, b_flags=EndpointFlag.POLICY_INGRESS | EndpointFlag.POLICY_AUDIT)
    assert lxc.run(TO, tcp(POD_A, POD_B, 40000, 80)).retval == TC_ACT_OK
    events = lxc.events()
    verdict = only(events, EventType.POLICY_VERDICT)
    assert len(verdict) == 1
    assert verdict[0]["verdict"] == Verdict.AUDIT
    assert verdict[0]["drop_reason"] == DropReason.POLICY_DENIED
    assert len(only(events, EventType.DROP)) == 0
    entry = lxc.conntrack(POD_A, POD_B, 40000, 80, TCP, CtDir.INGRESS)
    assert entry is not None
    assert entry.flags & CtFlag.AUDIT


# --- conntrack ---------------------------------------------------------------------------------------


def test_reply_of_opened_connection_passes_ingress_policy(lxc: Loaded) -> None:
    """Test that replies to a connection the pod opened pass its ingress policy; new inbound ones do not."""
    seed_pods(lxc, a_flags=EndpointFlag.POLICY_INGRESS)
    assert lxc.run(FROM, tcp(POD_A, POD_B, 40000, 80, SYN)).retval == TC_ACT_OK
    assert lxc.run(TO, tcp(POD_B, POD_A, 80, 40000, SYN | ACK)).retval == TC_ACT_OK
    assert lxc.run(TO, tcp(POD_B, POD_A, 80, 40001, SYN)).retval == TC_ACT_SHOT
    entry = lxc.conntrack(POD_A, POD_B, 40000, 80, TCP, CtDir.EGRESS)
    assert entry is not None
    assert (entry.packets, entry.rx_packets) == (1, 1)
    assert entry.flags & CtFlag.SEEN_REPLY
    assert entry.rx_flags_seen == SYN | ACK


def test_reply_of_accepted_connection_passes_egress_policy(lxc: Loaded) -> None:
    """Test that a pod's replies to a connection it accepted pass its egress policy."""
    seed_pods(lxc, b_flags=EndpointFlag.POLICY_EGRESS)
    assert lxc.run(TO, tcp(POD_A, POD_B, 40000, 80, SYN)).retval == TC_ACT_OK
    assert lxc.run(FROM, tcp(POD_B, POD_A, 80, 40000, SYN | ACK)).retval == TC_ACT_OK
    assert lxc.run(FROM, tcp(POD_B, POD_A, 5555, 80, SYN)).retval == TC_ACT_SHOT


def test_tracked_packets_report_the_identities_of_their_connection(lxc: Loaded) -> None:
    """Test that a connection's entry records both identities, and that the events of its later packets
    (the reply's SYN-ACK, a RST) name them from it in both programs, without looking the peer up again:
    a peer relabelled meanwhile still shows the identity the connection was opened with."""
    remote, remote_id, relabelled = "10.244.1.20", 4000, 4001
    seed_pods(lxc)
    set_identity(lxc.tables, f"{remote}/32", remote_id)
    assert lxc.run(FROM, tcp(POD_A, remote, 40000, 80, SYN)).retval == TC_ACT_OK
    assert lxc.run(TO, tcp(remote, POD_B, 40001, 80, SYN)).retval == TC_ACT_OK
    opened = lxc.conntrack(POD_A, remote, 40000, 80, TCP, CtDir.EGRESS)
    accepted = lxc.conntrack(remote, POD_B, 40001, 80, TCP, CtDir.INGRESS)
    assert opened is not None
    assert accepted is not None
    assert (opened.src_identity, opened.dst_identity) == (ID_A, remote_id)
    assert (accepted.src_identity, accepted.dst_identity) == (remote_id, ID_B)
    lxc.events()
    set_identity(lxc.tables, f"{remote}/32", relabelled)
    assert lxc.run(TO, tcp(remote, POD_A, 80, 40000, SYN | ACK)).retval == TC_ACT_OK
    assert lxc.run(FROM, tcp(POD_B, remote, 80, 40001, SYN | ACK)).retval == TC_ACT_OK
    assert lxc.run(FROM, tcp(POD_A, remote, 40000, 80, RST)).retval == TC_ACT_OK
    assert lxc.run(TO, tcp(remote, POD_B, 40001, 80, RST)).retval == TC_ACT_OK
    events = lxc.events()
    assert [(e["tcp_flags"], e["src_identity"], e["dst_identity"]) for e in events] == [
        (SYN | ACK, remote_id, ID_A), (SYN | ACK, ID_B, remote_id), (RST, ID_A, remote_id),
        (RST, remote_id, ID_B)]
    assert lxc.run(FROM, tcp(POD_A, remote, 40002, 80, SYN)).retval == TC_ACT_OK
    assert lxc.events()[0]["dst_identity"] == relabelled  # a new connection looks the peer up


def test_established_flow_events_are_aggregated(lxc: Loaded) -> None:
    """Test that an established flow reports on creation, on new SYN/FIN/RST flags per direction and
    after the report interval, never per packet."""
    seed_pods(lxc)
    flow = [(FROM, tcp(POD_A, POD_B, 40000, 80, SYN), 1),
            (TO, tcp(POD_B, POD_A, 80, 40000, SYN | ACK), 1),
            (FROM, tcp(POD_A, POD_B, 40000, 80, ACK), 0),
            (FROM, tcp(POD_A, POD_B, 40000, 80, PSH | ACK, payload=b"GET /"), 0),
            (TO, tcp(POD_B, POD_A, 80, 40000, PSH | ACK, payload=b"200"), 0),
            (FROM, tcp(POD_A, POD_B, 40000, 80, FIN | ACK), 1),
            (FROM, tcp(POD_A, POD_B, 40000, 80, FIN | ACK), 0)]
    for program, frame, expected in flow:
        assert lxc.run(program, frame).retval == TC_ACT_OK
        assert len(lxc.events()) == expected, parse(frame)
    key, ct4 = ct_key(POD_A, POD_B, 40000, 80, TCP, CtDir.EGRESS), lxc.map("ct4")
    entry = ct4.lookup(key)
    assert entry is not None
    assert (entry.packets, entry.rx_packets) == (5, 2)
    # last report just under CT_REPORT_INTERVAL_S ago: still quiet; just over it: the next packet reports
    for age_s, reports in ((CT_REPORT_INTERVAL_S - 1, 0), (CT_REPORT_INTERVAL_S + 1, 1)):
        entry = ct4.lookup(key)
        assert entry is not None
        entry.last_report_ns = time.monotonic_ns() - age_s * NSEC_PER_SEC
        ct4.update(key, entry)
        assert lxc.run(FROM, tcp(POD_A, POD_B, 40000, 80, ACK)).retval == TC_ACT_OK
        assert len(lxc.events()) == reports, age_s


def lifetime_flows(sport: int) -> list[tuple[str, list[tuple[str, bytes]], int]]:
    """Connections of pod A from `sport` in each state of types.h's lifetimes: (what, packets, lifetime)."""
    def syn() -> tuple[str, bytes]:
        return FROM, tcp(POD_A, POD_B, sport, 53, SYN)
    return [
        ("UDP", [(FROM, udp(POD_A, POD_B, sport, 53))], CT_LIFETIME_NONTCP_S),
        ("TCP without a reply", [syn()], CT_LIFETIME_SYN_S),
        ("established TCP", [syn(), (TO, tcp(POD_B, POD_A, 53, sport, SYN | ACK))], CT_LIFETIME_TCP_S),
        ("closing TCP", [syn(), (FROM, tcp(POD_A, POD_B, sport, 53, RST))], CT_LIFETIME_CLOSE_S),
    ]


@pytest.mark.parametrize(("desc", "flows", "lifetime_s"), lifetime_flows(40000))
def test_entry_lives_for_its_lifetime_then_counts_as_new(
        lxc: Loaded, desc: str, flows: list[tuple[str, bytes]], lifetime_s: int) -> None:
    """Test that a reply passes the pod's ingress policy while its entry is younger than the lifetime
    types.h gives its state, and is dropped as a new connection once the entry is older."""
    seed_pods(lxc, a_flags=EndpointFlag.POLICY_INGRESS)
    for program, frame in flows:
        assert lxc.run(program, frame).retval == TC_ACT_OK, desc
    proto = parse(flows[0][1]).proto
    key, ct4 = ct_key(POD_A, POD_B, 40000, 53, proto, CtDir.EGRESS), lxc.map("ct4")
    reply = udp(POD_B, POD_A, 53, 40000) if proto == UDP else tcp(POD_B, POD_A, 53, 40000, ACK)
    # older first: a reply that passes would change the entry's state (and so its lifetime)
    for age_s, verdict in ((lifetime_s + 1, TC_ACT_SHOT), (lifetime_s - 1, TC_ACT_OK)):
        entry = ct4.lookup(key)
        assert entry is not None
        entry.last_seen_ns = time.monotonic_ns() - age_s * NSEC_PER_SEC
        ct4.update(key, entry)
        assert lxc.run(TO, reply).retval == verdict, f"{desc}: last packet {age_s} s ago"


def test_the_sweep_removes_the_entries_whose_lifetime_ran_out(lxc: Loaded) -> None:
    """Test that the agent's sweep of the conntrack table (it evicts nothing by itself) removes each state's
    entry once its last packet is older than the state's lifetime, and keeps the younger ones."""
    seed_pods(lxc)
    ct4, now = lxc.map("ct4"), time.monotonic_ns()
    young = []
    for state in range(len(lifetime_flows(0))):
        for sport, age_past_lifetime_s in ((40000 + 2 * state, 2), (40001 + 2 * state, -1)):
            desc, flows, lifetime_s = lifetime_flows(sport)[state]
            for program, frame in flows:
                assert lxc.run(program, frame).retval == TC_ACT_OK, desc
            key = ct_key(POD_A, POD_B, sport, 53, parse(flows[0][1]).proto, CtDir.EGRESS)
            entry = ct4.lookup(key)
            assert entry is not None, desc
            entry.last_seen_ns = now - (lifetime_s + age_past_lifetime_s) * NSEC_PER_SEC
            ct4.update(key, entry)
            if age_past_lifetime_s < 0:
                young.append(sport)
    sweep = lxc.views.get(ConntrackMap).delete_expired(time.monotonic_ns())
    assert (sweep.alive, sweep.deleted, sweep.capacity) == (4, 4, ct4.info.max_entries)
    assert sorted(k.sport for k in ct4) == young


def test_a_full_conntrack_table_drops_new_connections_until_the_sweep(lxc: Loaded) -> None:
    """Test that with every conntrack entry taken a new connection is dropped as CT_MAP_FULL (nothing is
    evicted for it) while a tracked one still passes, and that sweeping the expired entries makes room."""
    seed_pods(lxc)
    ct4 = lxc.map("ct4")
    assert lxc.run(FROM, tcp(POD_A, POD_B, 40000, 80, SYN)).retval == TC_ACT_OK
    tracked = ct4.count()
    filler = ct4.info.max_entries - tracked  # UDP entries of other pods, idle for longer than their lifetime
    keys = [ct_key(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", POD_B, 1, 53, UDP, CtDir.EGRESS)
            for i in range(filler)]
    stale = Ct4Entry(last_seen_ns=time.monotonic_ns() - (CT_LIFETIME_NONTCP_S + 10) * NSEC_PER_SEC)
    ct4.update_batch(keys, [stale] * filler)

    assert lxc.run(FROM, tcp(POD_A, POD_B, 40001, 80, SYN)).retval == TC_ACT_SHOT
    assert lxc.packets(DropReason.CT_MAP_FULL, MetricDir.EGRESS) == 1
    assert lxc.run(FROM, tcp(POD_A, POD_B, 40000, 80, ACK)).retval == TC_ACT_OK
    sweep = lxc.views.get(ConntrackMap).delete_expired(time.monotonic_ns())
    assert (sweep.alive, sweep.deleted) == (tracked, filler)
    assert lxc.run(FROM, tcp(POD_A, POD_B, 40001, 80, SYN)).retval == TC_ACT_OK


def test_new_syn_on_closing_entry_is_a_new_connection(lxc: Loaded) -> None:
    """Test that after a RST a SYN on the same tuple is decided by policy again."""
    seed_pods(lxc, b_flags=EndpointFlag.POLICY_INGRESS)
    allow(lxc.tables, rule(EP_B, Direction.INGRESS, ID_A, TCP, 80))
    assert lxc.run(TO, tcp(POD_A, POD_B, 40000, 80, SYN)).retval == TC_ACT_OK
    assert lxc.run(TO, tcp(POD_A, POD_B, 40000, 80, RST)).retval == TC_ACT_OK
    revoke(lxc.tables, rule(EP_B, Direction.INGRESS, ID_A, TCP, 80))
    assert lxc.run(TO, tcp(POD_A, POD_B, 40000, 80, ACK)).retval == TC_ACT_OK  # still tracked (closing)
    assert lxc.run(TO, tcp(POD_A, POD_B, 40000, 80, SYN)).retval == TC_ACT_SHOT


def test_related_icmp_error_passes(lxc: Loaded) -> None:
    """Test that an ICMP error about a connection of the pod passes its ingress policy as related."""
    seed_pods(lxc, a_flags=EndpointFlag.POLICY_INGRESS)
    datagram = udp(POD_A, POD_B, 40000, 53)
    assert lxc.run(FROM, datagram).retval == TC_ACT_OK
    assert lxc.run(TO, icmp_error(POD_B, POD_A, datagram)).retval == TC_ACT_OK
    unrelated = udp(POD_A, POD_B, 40001, 53)
    assert lxc.run(TO, icmp_error(POD_B, POD_A, unrelated)).retval == TC_ACT_SHOT


def test_icmp_echo_reply_is_tracked(lxc: Loaded) -> None:
    """Test that the echo reply of a ping the pod sent passes as a reply."""
    seed_pods(lxc, a_flags=EndpointFlag.POLICY_INGRESS)
    assert lxc.run(FROM, icmp_echo(POD_A, POD_B, ident=9)).retval == TC_ACT_OK
    assert lxc.run(TO, icmp_echo(POD_B, POD_A, ident=9, reply=True)).retval == TC_ACT_OK
    assert lxc.run(TO, icmp_echo(POD_B, POD_A, ident=10, reply=True)).retval == TC_ACT_SHOT


# --- services (per-packet fallback of the socket LB) ------------------------------------------------------


def test_service_dnat_and_reverse_nat(lxc: Loaded) -> None:
    """Test that a packet to a ClusterIP is DNATed to the backend with valid checksums, the flow sticks
    to it, and the reply is translated back to the frontend."""
    seed_pods(lxc)
    seed_service(lxc, [(1, POD_B, 8080)])
    result = lxc.run(FROM, tcp(POD_A, VIP, 40000, VPORT, SYN))
    assert result.retval == TC_ACT_OK
    assert result.data_out == tcp(POD_A, POD_B, 40000, 8080, SYN)
    assert checksums_ok(result.data_out)

    svc = lxc.conntrack(POD_A, VIP, 40000, VPORT, TCP, CtDir.SERVICE)
    assert svc is not None
    assert (svc.backend_id, svc.nat_port, svc.rev_nat_index) == (1, 8080, REV)
    fwd = lxc.conntrack(POD_A, POD_B, 40000, 8080, TCP, CtDir.EGRESS)
    assert fwd is not None
    assert (fwd.rev_nat_index, fwd.nat_addr, fwd.nat_port) == (REV, ip_int(VIP), VPORT)
    trace = only(lxc.events(), EventType.TRACE)
    assert len(trace) == 1
    assert (trace[0]["orig_daddr"], trace[0]["orig_dport"], trace[0]["daddr"], trace[0]["dport"]) == (
        ip_int(VIP), VPORT, ip_int(POD_B), 8080)
    assert (trace[0]["rev_nat_index"], trace[0]["dst_identity"]) == (REV, ID_B)

    reply = lxc.run(TO, tcp(POD_B, POD_A, 8080, 40000, SYN | ACK))
    assert reply.retval == TC_ACT_OK
    assert reply.data_out == tcp(VIP, POD_A, VPORT, 40000, SYN | ACK)
    assert checksums_ok(reply.data_out)
    ev = only(lxc.events(), EventType.TRACE)
    assert len(ev) == 1
    assert ev[0]["flags"] & (EventFlag.REPLY | EventFlag.REV_NAT) == (
        EventFlag.REPLY | EventFlag.REV_NAT)
    assert ev[0]["src_identity"] == ID_B
    assert svc.rx_packets == 0
    refreshed = lxc.conntrack(POD_A, VIP, 40000, VPORT, TCP, CtDir.SERVICE)
    assert refreshed is not None
    assert refreshed.rx_packets == 1


@pytest.mark.parametrize("zero_csum", [False, True])
def test_udp_dnat_checksums(lxc: Loaded, zero_csum: bool) -> None:
    """Test that UDP DNAT keeps a valid checksum, and keeps a zero checksum zero."""
    seed_pods(lxc)
    seed_service(lxc, [(1, POD_B, 5353)], proto=UDP, vport=53)
    result = lxc.run(FROM, udp(POD_A, VIP, 40000, 53, b"query", zero_csum=zero_csum))
    assert result.retval == TC_ACT_OK
    assert result.data_out == udp(POD_A, POD_B, 40000, 5353, b"query", zero_csum=zero_csum)
    assert checksums_ok(result.data_out)


def test_flow_sticks_and_new_flows_spread(lxc: Loaded) -> None:
    """Test that packets of one flow keep their backend and new flows use every backend."""
    seed_pods(lxc)
    seed_service(lxc, [(1, POD_B, 8080), (2, POD_C, 8080), (3, "10.244.0.40", 8080)])
    first = {parse(lxc.run(FROM, tcp(POD_A, VIP, 40000, VPORT, f)).data_out).dst for f in (SYN, ACK, ACK)}
    assert len(first) == 1
    seen = {parse(lxc.run(FROM, tcp(POD_A, VIP, 41000 + i, VPORT)).data_out).dst for i in range(60)}
    assert seen == {POD_B, POD_C, "10.244.0.40"}


def test_compiled_service_translates_and_a_replaced_endpoint_is_flushed(lxc: Loaded) -> None:
    """Test that a Service compiled by the agent's ServiceCompiler and written as the agent writes it
    DNATs a pod's datagrams to its endpoint and translates replies back; that once the endpoint is
    replaced the flow moves to the new one; and that the compiler's stale backend is flushed, so no
    conntrack entry towards the old endpoint is left."""
    seed_pods(lxc)
    compiler = ServiceCompiler(NODE, [NODE_IP])
    dns = k8s_service("dns", [ServicePort(53, "UDP", "dns", "dns")], cluster_ip=VIP)
    port = [EndpointPort(5353, "UDP", "dns")]
    compile_service(lxc.tables, compiler, dns, [endpoint_slice("dns", [POD_B], port, node=NODE)])
    assert lxc.run(FROM, udp(POD_A, VIP, 40000, 53)).data_out == udp(POD_A, POD_B, 40000, 5353)
    assert lxc.run(TO, udp(POD_B, POD_A, 5353, 40000)).data_out == udp(VIP, POD_A, 53, 40000)

    compile_service(lxc.tables, compiler, dns, [endpoint_slice("dns", [POD_C], port, node=NODE)])
    assert [(k.dir, k.daddr) for k, _ in lxc.map("ct4").lookup_batch()] == []
    assert lxc.run(FROM, udp(POD_A, VIP, 40000, 53)).data_out == udp(POD_A, POD_C, 40000, 5353)


def test_flow_moves_when_its_backend_is_deleted(lxc: Loaded) -> None:
    """Test that a flow whose backend was deleted is sent to a remaining backend (UDP server replaced)."""
    seed_pods(lxc)
    seed_service(lxc, [(1, POD_B, 53)], proto=UDP, vport=53)
    assert parse(lxc.run(FROM, udp(POD_A, VIP, 40000, 53)).data_out).dst == POD_B
    with lb_change(lxc.tables) as lb:
        lb.service(VIP, 53, UDP, [(2, POD_C, 53)], rev=REV)
        del lb.backends[1]
    assert parse(lxc.run(FROM, udp(POD_A, VIP, 40000, 53)).data_out).dst == POD_C
    svc = lxc.conntrack(POD_A, VIP, 40000, 53, UDP, CtDir.SERVICE)
    assert svc is not None
    assert svc.backend_id == 2


def test_flushing_a_stale_backend_removes_its_translated_entries(lxc: Loaded) -> None:
    """Test that flushing a backend a frontend dropped (what the agent does with LbDelta.stale) removes
    the CT_SERVICE entry sticking the client to it and the translated entry towards it, and nothing else."""
    seed_pods(lxc)
    seed_service(lxc, [(1, POD_B, 53)], proto=UDP, vport=53)
    lxc.run(FROM, udp(POD_A, VIP, 40000, 53))
    lxc.run(FROM, udp(POD_A, POD_C, 40000, 53))
    assert lxc.map("ct4").count() == 3
    lxc.tables.flush_backends([StaleBackend(VIP, 53, UDP, 1, POD_B, 53)])
    remaining = [(k.dir, k.daddr) for k, _ in lxc.map("ct4").lookup_batch()]
    assert remaining == [(CtDir.EGRESS, ip_int(POD_C))]


def test_one_flush_removes_the_entries_of_every_stale_backend_it_names(lxc: Loaded) -> None:
    """Test that one flush of two backends a frontend dropped (the agent's batch after a pass) removes
    the entries towards both, and keeps the connection to a backend it did not name."""
    seed_pods(lxc)
    seed_service(lxc, [(1, POD_B, 53), (2, POD_C, 53)], proto=UDP, vport=53)
    chosen = {parse(lxc.run(FROM, udp(POD_A, VIP, 40000 + i, 53)).data_out).dst for i in range(40)}
    assert chosen == {POD_B, POD_C}
    lxc.run(FROM, udp(POD_A, "10.244.0.40", 41000, 53))
    lxc.tables.flush_backends([StaleBackend(VIP, 53, UDP, 1, POD_B, 53),
                               StaleBackend(VIP, 53, UDP, 2, POD_C, 53)])
    remaining = [(k.dir, k.daddr) for k, _ in lxc.map("ct4").lookup_batch()]
    assert remaining == [(CtDir.EGRESS, ip_int("10.244.0.40"))]


def test_flushing_stale_backends_forgets_the_affinities_to_them_only(lxc: Loaded) -> None:
    """Test that a flush forgets the sessionAffinity choices of the backends it names, and no other."""
    affinity = lxc.map("lb4_affinity")
    keys = [Lb4AffinityKey(client=ip_int(POD_A) + i, rev_nat_index=REV) for i in range(3)]
    affinity.update_batch(keys, [Lb4AffinityVal(backend_id=i + 1) for i in range(3)])
    lxc.tables.flush_backends([StaleBackend(VIP, 80, TCP, 1, POD_B, 8080),
                               StaleBackend(VIP, 80, TCP, 2, POD_C, 8080)])
    assert [(k.client, v.backend_id) for k, v in affinity.lookup_batch()] == [(ip_int(POD_A) + 2, 3)]


def test_tcp_to_service_without_backends_gets_rst(lxc: Loaded) -> None:
    """Test that a SYN to a frontend without backends is answered with a RST back into the pod."""
    seed_pods(lxc)
    seed_service(lxc, [])
    frame = tcp(POD_A, VIP, 40000, VPORT, SYN, seq=1000, payload=b"abc")
    result = lxc.run(FROM, frame)
    assert result.retval == TC_ACT_REDIRECT
    rst = tcp_segment(VIP, POD_A, VPORT, 40000, RST | ACK, seq=0, ack=1004, window=0)
    expected = eth(ipv4(VIP, POD_A, TCP, rst, ident=0, frag=IP_DF), dst=POD_MAC, src=HOST_MAC)
    assert result.data_out == expected
    assert checksums_ok(result.data_out)
    drops = only(lxc.events(), EventType.DROP)
    assert len(drops) == 1
    assert drops[0]["drop_reason"] == DropReason.NO_SERVICE_BACKEND
    assert drops[0]["daddr"] == ip_int(VIP)
    assert lxc.packets(DropReason.NO_SERVICE_BACKEND, MetricDir.EGRESS) == 1


def test_tcp_ack_to_service_without_backends_gets_plain_rst(lxc: Loaded) -> None:
    """Test that a segment with ACK is refused with RST, seq = its ack number, and a RST is never answered."""
    seed_pods(lxc)
    seed_service(lxc, [])
    result = lxc.run(FROM, tcp(POD_A, VIP, 40000, VPORT, ACK, seq=5, ack=777))
    out = parse(result.data_out)
    assert (result.retval, out.tcp_flags, out.seq, out.ack) == (TC_ACT_REDIRECT, RST, 777, 0)
    assert checksums_ok(result.data_out)
    assert lxc.run(FROM, tcp(POD_A, VIP, 40000, VPORT, RST)).retval == TC_ACT_SHOT


def test_udp_to_service_without_backends_gets_port_unreachable(lxc: Loaded) -> None:
    """Test that a datagram to a frontend without backends is answered with ICMP port unreachable."""
    seed_pods(lxc)
    seed_service(lxc, [], proto=UDP, vport=53)
    frame = udp(POD_A, VIP, 40000, 53, b"query")
    result = lxc.run(FROM, frame)
    assert result.retval == TC_ACT_REDIRECT
    quote = frame[14:14 + 28]
    expected = eth(ipv4(VIP, POD_A, ICMP, icmp_message(3, 3, b"\0" * 4, quote), ident=0, frag=IP_DF),
                   dst=POD_MAC, src=HOST_MAC)
    assert result.data_out == expected
    assert checksums_ok(result.data_out)


def test_local_only_scope_without_backends_drops(lxc: Loaded) -> None:
    """Test that an empty internal scope of an iTP=Local service drops without rejecting."""
    seed_pods(lxc)
    seed_service(lxc, [(1, POD_B, 8080)], flags=SvcFlag.CLUSTERIP | SvcFlag.TWO_SCOPES)
    seed_service(lxc, [], flags=SvcFlag.CLUSTERIP | SvcFlag.LOCAL_ONLY_INT, scope=LbScope.INT)
    result = lxc.run(FROM, tcp(POD_A, VIP, 40000, VPORT))
    assert result.retval == TC_ACT_SHOT
    assert lxc.packets(DropReason.NO_LOCAL_BACKEND, MetricDir.EGRESS) == 1


def test_internal_clients_use_the_internal_scope(lxc: Loaded) -> None:
    """Test that pods are balanced over the internal backend set of a two-scope frontend."""
    seed_pods(lxc)
    flags = SvcFlag.NODEPORT | SvcFlag.TWO_SCOPES
    seed_service(lxc, [(1, POD_B, 8080)], flags=flags)
    seed_service(lxc, [(2, POD_C, 8080)], flags=flags, scope=LbScope.INT)
    seen = {parse(lxc.run(FROM, tcp(POD_A, VIP, 41000 + i, VPORT)).data_out).dst for i in range(10)}
    assert seen == {POD_C}


def test_session_affinity(lxc: Loaded) -> None:
    """Test that ClientIP affinity sends every new connection of a client to one backend, remembers it
    per client address, and ignores a remembered backend that is terminating or too old."""
    seed_pods(lxc)
    backends = [(1, POD_B, 8080), (2, POD_C, 8080), (3, "10.244.0.40", 8080)]
    seed_service(lxc, backends, flags=SvcFlag.CLUSTERIP | SvcFlag.AFFINITY, affinity_timeout=100)
    seen = {parse(lxc.run(FROM, tcp(POD_A, VIP, 41000 + i, VPORT)).data_out).dst for i in range(15)}
    assert len(seen) == 1
    remembered = lxc.affinity(POD_A, REV)
    assert remembered is not None
    assert remembered.backend_id == {b[1]: b[0] for b in backends}[seen.pop()]

    lxc.remember(POD_A, REV, 2, time.monotonic_ns())
    assert parse(lxc.run(FROM, tcp(POD_A, VIP, 42000, VPORT)).data_out).dst == POD_C
    with lb_change(lxc.tables) as lb:
        lb.backend(2, POD_C, 8080, TCP, BackendState.TERMINATING)
        lb.backend(9, "10.244.0.99", 8080, TCP, BackendState.TERMINATING)
    lxc.remember(POD_A, REV, 9, time.monotonic_ns())
    assert parse(lxc.run(FROM, tcp(POD_A, VIP, 42001, VPORT)).data_out).dst != "10.244.0.99"
    lxc.remember(POD_A, REV, 3, time.monotonic_ns() - 101 * NSEC_PER_SEC)
    lxc.run(FROM, tcp(POD_A, VIP, 42002, VPORT))
    fresh = lxc.affinity(POD_A, REV)
    assert fresh is not None
    assert time.monotonic_ns() - fresh.last_used_ns < 10 * NSEC_PER_SEC


def test_maglev_selection(lxc: Loaded) -> None:
    """Test that a Maglev frontend selects through its lookup table."""
    seed_pods(lxc)
    seed_service(lxc, [(1, POD_B, 8080), (2, POD_C, 8080)], flags=SvcFlag.CLUSTERIP | SvcFlag.MAGLEV)
    with lb_change(lxc.tables) as lb:
        lb.maglev[REV] = (2,) * LB_MAGLEV_LUT_SIZE
    seen = {parse(lxc.run(FROM, tcp(POD_A, VIP, 41000 + i, VPORT)).data_out).dst for i in range(10)}
    assert seen == {POD_C}


def test_reply_without_reverse_nat_entry_is_dropped(lxc: Loaded) -> None:
    """Test that once a frontend's rev-NAT entry is gone its replies are dropped, not leaked untranslated."""
    seed_pods(lxc)
    seed_service(lxc, [(1, POD_B, 8080)])
    lxc.run(FROM, tcp(POD_A, VIP, 40000, VPORT))
    with lb_change(lxc.tables) as lb:
        del lb.revnat[REV]
    assert lxc.run(TO, tcp(POD_B, POD_A, 8080, 40000, SYN | ACK)).retval == TC_ACT_SHOT
    assert lxc.packets(DropReason.NAT_NO_MAPPING, MetricDir.INGRESS) == 1


def test_nodeport_wildcard_serves_node_addresses(lxc: Loaded) -> None:
    """Test that a 0.0.0.0 NodePort frontend serves addresses with the HOST identity, and only those."""
    seed_pods(lxc)
    seed_service(lxc, [(1, POD_B, 8080)], flags=SvcFlag.NODEPORT, vip="0.0.0.0", vport=30080)
    frame = tcp(POD_A, NODE_IP, 40000, 30080)
    assert lxc.run(FROM, frame).data_out == frame
    set_identity(lxc.tables, f"{NODE_IP}/32", ReservedIdentity.HOST)
    assert lxc.run(FROM, tcp(POD_A, NODE_IP, 40001, 30080)).data_out == tcp(POD_A, POD_B, 40001, 8080)
    reply = lxc.run(TO, tcp(POD_B, POD_A, 8080, 40001, SYN | ACK))
    assert reply.data_out == tcp(NODE_IP, POD_A, 30080, 40001, SYN | ACK)


def test_fragmented_datagram_to_service(lxc: Loaded) -> None:
    """Test that every fragment of a datagram to a service is DNATed (ports only in the first)."""
    seed_pods(lxc)
    seed_service(lxc, [(1, POD_B, 5353)], proto=UDP, vport=53)
    first, later = fragments(udp(POD_A, VIP, 40000, 53, b"y" * 100, ident=9), 64)
    out_first, out_later = lxc.run(FROM, first).data_out, lxc.run(FROM, later).data_out
    assert (parse(out_first).dst, parse(out_first).dport) == (POD_B, 5353)
    assert parse(out_later).dst == POD_B
    assert out_later[14 + 20:] == later[14 + 20:]
    assert checksums_ok(out_first)
    assert checksums_ok(out_later)
    # reassembled, the datagram carries a valid UDP checksum for the backend address
    payload = out_first[14 + 20:] + out_later[14 + 20:]
    whole = eth(ipv4(POD_A, POD_B, UDP, payload, ident=9))
    assert checksums_ok(whole)
    assert struct.unpack("!H", payload[2:4])[0] == 5353


def test_non_service_traffic_is_untouched(lxc: Loaded) -> None:
    """Test that packets to non-frontend addresses/ports are not rewritten."""
    seed_pods(lxc)
    seed_service(lxc, [(1, POD_B, 8080)])
    for frame in (tcp(POD_A, VIP, 40000, 81), udp(POD_A, VIP, 40000, VPORT), tcp(POD_A, POD_C, 40000, VPORT)):
        assert lxc.run(FROM, frame).data_out == frame


# --- on real veths ---------------------------------------------------------------------------------


def test_real_veths_translate_and_reject(lxc: Loaded) -> None:
    """Test on real veths (node netns + two pod netns, tcx on the host sides) that the per-packet
    service path reaches the backend with the client IP preserved and the ClusterIP as peer, and that
    a frontend without backends is refused at once: RST for TCP, ICMP port unreachable for UDP."""
    tag = secrets.token_hex(3)
    node_ns, pods = f"velvet-dp-{tag}-n", {POD_A: f"velvet-dp-{tag}-a", POD_B: f"velvet-dp-{tag}-b"}
    pin_dir = mounts.ensure_bpffs() / f"velvet-test-{tag}"
    links: list[Link] = []
    server: subprocess.Popen[str] | None = None
    try:
        sh("ip", "netns", "add", node_ns)
        sh("ip", "netns", "exec", node_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for i, (ip, ns) in enumerate(pods.items()):
            host = f"h{i}"
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", node_ns, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/32", "dev", "eth0")
            sh("ip", "-n", ns, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
            sh("ip", "-n", ns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
            sh("ip", "-n", node_ns, "link", "set", host, "up")
            sh("ip", "-n", node_ns, "addr", "add", "169.254.1.1/32", "dev", host)
            sh("ip", "-n", node_ns, "route", "add", f"{ip}/32", "dev", host)
            ifindex = int(sh("ip", "netns", "exec", node_ns, "cat", f"/sys/class/net/{host}/ifindex"))
            identity, ep = (ID_A, EP_A) if ip == POD_A else (ID_B, EP_B)
            add_pods(lxc.tables, [(ip, ifindex, identity, ep, 0)])
            with in_netns(node_ns):
                links.append(attach_tcx(lxc.obj.program(FROM), ifindex, "ingress", pin_dir / f"{host}-from"))
                links.append(attach_tcx(lxc.obj.program(TO), ifindex, "egress", pin_dir / f"{host}-to"))
        seed_service(lxc, [(1, POD_B, 8080)])
        seed_service(lxc, [], vip="10.96.0.11", rev=6)
        seed_service(lxc, [], vip="10.96.0.11", vport=53, proto=UDP, rev=7)

        server = subprocess.Popen(
            ["ip", "netns", "exec", pods[POD_B], sys.executable, "-c", textwrap.dedent("""
                import socket
                srv = socket.socket(); srv.bind(("0.0.0.0", 8080)); srv.listen(); print("up", flush=True)
                while True:
                    conn, peer = srv.accept(); conn.sendall(peer[0].encode()); conn.close()
            """)], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "up"
        out = json.loads(sh("ip", "netns", "exec", pods[POD_A], sys.executable, "-c", textwrap.dedent("""
            import errno, json, socket, time
            out = {}
            c = socket.create_connection(("10.96.0.10", 80), timeout=3)
            out["peer"], out["seen_by_server"] = c.getpeername(), c.recv(100).decode()
            start = time.monotonic()
            try:
                socket.create_connection(("10.96.0.11", 80), timeout=3)
            except OSError as exc:
                out["tcp"] = errno.errorcode[exc.errno]
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(3)
            u.connect(("10.96.0.11", 53)); u.send(b"q")
            try:
                u.recv(100)
            except OSError as exc:
                out["udp"] = errno.errorcode.get(exc.errno, str(exc))
            out["seconds"] = time.monotonic() - start
            print(json.dumps(out))
        """)))
        assert out["peer"] == [VIP, VPORT]
        assert out["seen_by_server"] == POD_A
        assert (out["tcp"], out["udp"]) == ("ECONNREFUSED", "ECONNREFUSED")
        assert out["seconds"] < 2
    finally:
        if server is not None:
            server.kill()
            server.wait()
        for link in links:
            link.detach()
        if pin_dir.exists():
            pin_dir.rmdir()
        for ns in (*pods.values(), node_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
