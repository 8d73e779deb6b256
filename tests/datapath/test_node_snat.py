"""Datapath tests of NodePort to backends on other nodes: node_from_uplink SNATs to the node and
forwards through the FIB, and translates the replies back (BPF_PROG_TEST_RUN).

The programs run inside a namespace of the test's own whose uplink `up0` (172.18.0.2/24) has
permanent neighbours: the backends' node 172.18.0.3 (route 10.244.1.0/24 via it) and the router
172.18.0.1 towards the client's network, so the FIB lookups of the programs resolve there and the
frames they forward carry known MAC addresses.
"""

from __future__ import annotations

import secrets
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fixtures_datapath import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, Loaded, ct_key, node, sh
from packets import (
    ACK,
    SYN,
    TCP,
    UDP,
    checksums_ok,
    csum,
    eth,
    icmp_error,
    ipv4,
    parse,
    tcp,
    tcp_segment,
    udp,
    udp_datagram,
)
from seeding import add_pods, lb_change, set_identity

from velvet.datapath.structs import (
    CT_LIFETIME_SYN_S,
    CtDir,
    CtFlag,
    DropReason,
    EventFlag,
    EventType,
    LbScope,
    MetricDir,
    ObsPoint,
    ReservedIdentity,
    Snat4Entry,
    Snat4Key,
    SnatDir,
    SvcFlag,
)
from velvet.datapath.structs import ipv4 as ip_int
from velvet.datapath.tables import SNAT_PORT_MAX, SNAT_PORT_MIN, NodeSettings
from velvet.datapath.testrun import TestRunResult, skb_ctx, test_run
from velvet.system.netns import in_netns

pytestmark = [pytest.mark.privileged]
__all__ = ["node"]  # the fixture, imported for pytest

CLIENT = "198.51.100.7"
NODE_IP, NODE_PORT = "172.18.0.2", 30080
PEER_NODE, ROUTER = "172.18.0.3", "172.18.0.1"
PEER_MAC, ROUTER_MAC = bytes.fromhex("0a00000000b3"), bytes.fromhex("0a00000000b1")
REMOTE_POD, LOCAL_POD, ID_REMOTE, ID_LOCAL = "10.244.1.20", "10.244.0.20", 2000, 2001
REV = 9
FROM = "node_from_uplink"


@dataclass(frozen=True)
class Uplink:
    """The test namespace and its uplink."""

    netns: str
    ifindex: int
    mac: bytes


@pytest.fixture
def uplink() -> Iterator[Uplink]:
    """A namespace with `up0` (a veth whose peer stays inside), its routes and permanent neighbours."""
    ns = f"velvet-dp-{secrets.token_hex(3)}-snat"
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("ip", "-n", ns, "link", "add", "up0", "type", "veth", "peer", "name", "up0p")
        sh("ip", "-n", ns, "addr", "add", f"{NODE_IP}/24", "dev", "up0")
        for dev in ("lo", "up0", "up0p"):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        for addr, mac in ((PEER_NODE, PEER_MAC), (ROUTER, ROUTER_MAC)):
            sh("ip", "-n", ns, "neigh", "replace", addr, "lladdr", mac.hex(":"), "dev", "up0",
               "nud", "permanent")
        sh("ip", "-n", ns, "route", "add", "10.244.1.0/24", "via", PEER_NODE, "dev", "up0")
        sh("ip", "-n", ns, "route", "add", "198.51.100.0/24", "via", ROUTER, "dev", "up0")
        ifindex = int(sh("ip", "netns", "exec", ns, "cat", "/sys/class/net/up0/ifindex"))
        mac = bytes.fromhex(sh("ip", "netns", "exec", ns, "cat", "/sys/class/net/up0/address")
                            .strip().replace(":", ""))
        yield Uplink(ns, ifindex, mac)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def run(node: Loaded, up: Uplink, frame: bytes) -> TestRunResult:
    """node_from_uplink on a frame received by `up0`, inside the test namespace."""
    with in_netns(up.netns):
        return test_run(node.obj.program(FROM), frame, ctx=skb_ctx(ifindex=up.ifindex))


def seed(node: Loaded, backends: list[tuple[int, str, int]], *, proto: int = TCP,
         flags: SvcFlag = SvcFlag.NODEPORT, scope: LbScope = LbScope.EXT, port_min: int = SNAT_PORT_MIN,
         port_max: int = SNAT_PORT_MAX, snat: str = NODE_IP) -> None:
    """A NodePort frontend with backends (id, address, port), the local pod in lxc_endpoints, the
    identities, and the node's SNAT settings, all written as the agent writes them."""
    with lb_change(node.tables) as lb:
        lb.service(NODE_IP, NODE_PORT, proto, backends, rev=REV, flags=flags, scope=scope)
    add_pods(node.tables, [(LOCAL_POD, 42, ID_LOCAL, 7, 0)])
    set_identity(node.tables, f"{REMOTE_POD}/32", ID_REMOTE)
    set_identity(node.tables, f"{NODE_IP}/32", ReservedIdentity.HOST)
    node.tables.write("node_config", {0: NodeSettings(snat, port_min, port_max)}, ())


def snat_entry(node: Loaded, saddr: str, daddr: str, sport: int, dport: int, proto: int,
               direction: SnatDir) -> Snat4Entry | None:
    """The snat4 entry of a tuple, or None."""
    key = Snat4Key(saddr=ip_int(saddr), daddr=ip_int(daddr), sport=sport, dport=dport, proto=proto,
                   dir=direction)
    entry: Snat4Entry | None = node.map("snat4").lookup(key)
    return entry


def test_remote_backend_is_snated_to_the_node_and_forwarded(node: Loaded, uplink: Uplink) -> None:
    """Test that a NodePort connection whose backend is on another node leaves the uplink towards that
    node with the node's address and a SNAT port as source (TTL decremented, the peer's MAC), that its
    later packets keep the port, and that the event names the client, the backend and the frontend."""
    seed(node, [(1, REMOTE_POD, 8080)])
    result = run(node, uplink, tcp(CLIENT, NODE_IP, 50000, NODE_PORT, SYN))
    assert result.retval == TC_ACT_REDIRECT
    port = parse(result.data_out).sport
    assert SNAT_PORT_MIN <= port <= SNAT_PORT_MAX
    segment = tcp_segment(NODE_IP, REMOTE_POD, port, 8080, SYN)
    expected = eth(ipv4(NODE_IP, REMOTE_POD, TCP, segment, ttl=63), dst=PEER_MAC, src=uplink.mac)
    assert result.data_out == expected
    assert checksums_ok(result.data_out)

    out = snat_entry(node, CLIENT, REMOTE_POD, 50000, 8080, TCP, SnatDir.OUT)
    back = snat_entry(node, REMOTE_POD, NODE_IP, 8080, port, TCP, SnatDir.IN)
    assert out is not None
    assert back is not None
    assert (out.addr, out.port, back.addr, back.port) == (ip_int(NODE_IP), port, ip_int(CLIENT), 50000)
    np_entry = node.conntrack(CLIENT, REMOTE_POD, 50000, 8080, TCP, CtDir.NODEPORT)
    assert np_entry is not None
    assert (np_entry.nat_addr, np_entry.nat_port) == (ip_int(NODE_IP), NODE_PORT)
    events = node.events()
    assert len(events) == 1
    ev = events[0]
    assert (ev["type"], ev["obs_point"], ev["flags"] & EventFlag.NEW_CT) == (
        EventType.TRACE, ObsPoint.FROM_NETWORK, EventFlag.NEW_CT)
    assert (ev["saddr"], ev["daddr"], ev["dport"], ev["orig_daddr"], ev["orig_dport"]) == (
        ip_int(CLIENT), ip_int(REMOTE_POD), 8080, ip_int(NODE_IP), NODE_PORT)
    assert (ev["src_identity"], ev["dst_identity"]) == (ReservedIdentity.WORLD, ID_REMOTE)

    again = run(node, uplink, tcp(CLIENT, NODE_IP, 50000, NODE_PORT, ACK))
    assert again.retval == TC_ACT_REDIRECT
    assert (parse(again.data_out).src, parse(again.data_out).sport) == (NODE_IP, port)


def test_reply_is_translated_back_to_the_client(node: Loaded, uplink: Uplink) -> None:
    """Test that the backend's reply to the SNAT port leaves towards the client (the router's MAC) from the
    frontend the client used, counts as the connection's reply, and is reported as leaving the node."""
    seed(node, [(1, REMOTE_POD, 8080)])
    port = parse(run(node, uplink, tcp(CLIENT, NODE_IP, 50000, NODE_PORT, SYN)).data_out).sport
    node.events()
    reply = run(node, uplink, tcp(REMOTE_POD, NODE_IP, 8080, port, SYN | ACK))
    assert reply.retval == TC_ACT_REDIRECT
    segment = tcp_segment(NODE_IP, CLIENT, NODE_PORT, 50000, SYN | ACK)
    assert reply.data_out == eth(ipv4(NODE_IP, CLIENT, TCP, segment, ttl=63), dst=ROUTER_MAC, src=uplink.mac)
    assert checksums_ok(reply.data_out)
    entry = node.conntrack(CLIENT, REMOTE_POD, 50000, 8080, TCP, CtDir.NODEPORT)
    assert entry is not None
    assert entry.rx_packets == 1
    assert entry.flags & CtFlag.SEEN_REPLY
    events = node.events()
    assert len(events) == 1
    ev = events[0]
    assert ev["obs_point"] == ObsPoint.TO_NETWORK
    assert ev["flags"] & (EventFlag.REPLY | EventFlag.REV_NAT) == EventFlag.REPLY | EventFlag.REV_NAT
    assert (ev["saddr"], ev["sport"], ev["daddr"], ev["dport"]) == (
        ip_int(NODE_IP), NODE_PORT, ip_int(CLIENT), 50000)
    assert (ev["src_identity"], ev["dst_identity"]) == (ID_REMOTE, ReservedIdentity.WORLD)
    assert node.forwarded(MetricDir.EGRESS) == 1


def test_udp_to_a_remote_backend_both_ways(node: Loaded, uplink: Uplink) -> None:
    """Test that a UDP NodePort to a remote backend is SNATed out and its answer translated back, with
    valid checksums."""
    seed(node, [(1, REMOTE_POD, 5353)], proto=UDP)
    out = run(node, uplink, udp(CLIENT, NODE_IP, 50000, NODE_PORT, b"q"))
    assert out.retval == TC_ACT_REDIRECT
    port = parse(out.data_out).sport
    datagram = udp_datagram(NODE_IP, REMOTE_POD, port, 5353, b"q")
    assert out.data_out == eth(ipv4(NODE_IP, REMOTE_POD, UDP, datagram, ttl=63), dst=PEER_MAC, src=uplink.mac)
    back = run(node, uplink, udp(REMOTE_POD, NODE_IP, 5353, port, b"a"))
    assert back.retval == TC_ACT_REDIRECT
    datagram = udp_datagram(NODE_IP, CLIENT, NODE_PORT, 50000, b"a")
    assert back.data_out == eth(ipv4(NODE_IP, CLIENT, UDP, datagram, ttl=63), dst=ROUTER_MAC, src=uplink.mac)


def quoted_tuple(frame: bytes) -> tuple[str, str, int, int]:
    """(source, destination, source port, destination port) quoted by an ICMP error frame, whose quoted
    IPv4 header (20 bytes) must have a valid checksum."""
    quoted = parse(frame).l4[8:]
    assert csum(quoted[:20]) == 0
    sport, dport = struct.unpack("!HH", quoted[20:24])
    return socket.inet_ntoa(quoted[12:16]), socket.inet_ntoa(quoted[16:20]), sport, dport


def test_icmp_error_about_a_snated_connection_reaches_the_client(node: Loaded, uplink: Uplink) -> None:
    """Test that the backend's ICMP port unreachable about the SNATed datagram reaches the client as the
    frontend's error about the client's own datagram (outer and quoted tuple translated, checksums valid),
    reported as related."""
    seed(node, [(1, REMOTE_POD, 5353)], proto=UDP)
    port = parse(run(node, uplink, udp(CLIENT, NODE_IP, 50000, NODE_PORT, b"q")).data_out).sport
    node.events()
    error = icmp_error(REMOTE_POD, NODE_IP, udp(NODE_IP, REMOTE_POD, port, 5353, b"q"))
    result = run(node, uplink, error)
    assert result.retval == TC_ACT_REDIRECT
    out = parse(result.data_out)
    assert (out.src, out.dst, out.icmp_type, out.icmp_code) == (NODE_IP, CLIENT, 3, 3)
    assert (result.data_out[:6], result.data_out[6:12]) == (ROUTER_MAC, uplink.mac)
    assert checksums_ok(result.data_out)
    assert quoted_tuple(result.data_out) == (CLIENT, NODE_IP, 50000, NODE_PORT)
    events = node.events()
    assert len(events) == 1
    assert events[0]["flags"] & EventFlag.RELATED
    assert events[0]["obs_point"] == ObsPoint.TO_NETWORK


def test_icmp_error_of_a_local_backend_names_the_frontend(node: Loaded) -> None:
    """Test that a local backend's ICMP port unreachable about a NodePort datagram leaves the uplink as
    the frontend's error about the client's datagram (outer source and quoted destination translated)."""
    seed(node, [(1, LOCAL_POD, 5353)], proto=UDP)
    assert node.run(FROM, udp(CLIENT, NODE_IP, 50000, NODE_PORT, b"q")).retval == TC_ACT_OK
    node.events()
    error = icmp_error(LOCAL_POD, CLIENT, udp(CLIENT, LOCAL_POD, 50000, 5353, b"q"))
    result = node.run("node_to_uplink", error)
    assert result.retval == TC_ACT_OK
    out = parse(result.data_out)
    assert (out.src, out.dst, out.icmp_type) == (NODE_IP, CLIENT, 3)
    assert checksums_ok(result.data_out)
    assert quoted_tuple(result.data_out) == (CLIENT, NODE_IP, 50000, NODE_PORT)
    assert [e["flags"] & EventFlag.RELATED for e in node.events()] == [EventFlag.RELATED]


def test_local_backend_keeps_the_client_address(node: Loaded, uplink: Uplink) -> None:
    """Test that with SNAT configured a local backend is still only DNATed (the pod sees the client) and
    handed to the kernel, and no SNAT entry is made."""
    seed(node, [(1, LOCAL_POD, 8080)])
    result = run(node, uplink, tcp(CLIENT, NODE_IP, 50000, NODE_PORT, SYN))
    assert (result.retval, result.data_out) == (TC_ACT_OK, tcp(CLIENT, LOCAL_POD, 50000, 8080, SYN))
    assert node.map("snat4").count() == 0


def test_etp_local_serves_local_backends_with_the_client_address(node: Loaded, uplink: Uplink) -> None:
    """Test that eTP=Local sends external clients to the node-local backend only, unSNATed, although
    the internal scope has a remote one too; and that without a local backend nothing answers."""
    flags = SvcFlag.NODEPORT | SvcFlag.LOCAL_ONLY_EXT | SvcFlag.TWO_SCOPES
    seed(node, [(1, LOCAL_POD, 8080)], flags=flags)
    seed(node, [(1, LOCAL_POD, 8080), (2, REMOTE_POD, 8080)], flags=flags, scope=LbScope.INT)
    for i in range(10):
        result = run(node, uplink, tcp(CLIENT, NODE_IP, 50000 + i, NODE_PORT, SYN))
        assert (result.retval, result.data_out) == (TC_ACT_OK, tcp(CLIENT, LOCAL_POD, 50000 + i, 8080, SYN))
    seed(node, [], flags=flags)
    node.events()
    assert run(node, uplink, tcp(CLIENT, NODE_IP, 51000, NODE_PORT, SYN)).retval == TC_ACT_SHOT
    assert [e["drop_reason"] for e in node.events()] == [DropReason.NO_LOCAL_BACKEND]
    assert node.map("snat4").count() == 0


def expire(node: Loaded, client_port: int) -> None:
    """Age the CT_NODEPORT entry of the client's connection past its lifetime (as if it had gone quiet)."""
    key_args = (CLIENT, REMOTE_POD, client_port, 8080, TCP, CtDir.NODEPORT)
    entry = node.conntrack(*key_args)
    assert entry is not None
    entry.last_seen_ns = time.monotonic_ns() - (CT_LIFETIME_SYN_S + 1) * 1_000_000_000
    node.map("ct4").update(ct_key(*key_args), entry)


def test_ports_collide_then_retry_run_out_and_free_with_the_connection(node: Loaded, uplink: Uplink) -> None:
    """Test that with two SNAT ports two connections to one backend get one each, a third is dropped for
    want of a port, a reply to the port of an expired connection is no longer translated, and the next
    connection takes that port."""
    seed(node, [(1, REMOTE_POD, 8080)], port_min=61000, port_max=61001)
    ports = [parse(run(node, uplink, tcp(CLIENT, NODE_IP, 50000 + i, NODE_PORT, SYN)).data_out).sport
             for i in range(2)]
    assert sorted(ports) == [61000, 61001]
    node.events()
    assert run(node, uplink, tcp(CLIENT, NODE_IP, 50002, NODE_PORT, SYN)).retval == TC_ACT_SHOT
    drops = node.events()
    assert [(e["type"], e["drop_reason"]) for e in drops] == [(EventType.DROP, DropReason.SNAT_NO_PORT)]
    assert node.packets(DropReason.SNAT_NO_PORT, MetricDir.INGRESS) == 1

    expire(node, 50000)
    stale_reply = tcp(REMOTE_POD, NODE_IP, 8080, ports[0], SYN | ACK)
    assert run(node, uplink, stale_reply).data_out == stale_reply
    result = run(node, uplink, tcp(CLIENT, NODE_IP, 50002, NODE_PORT, SYN))
    assert result.retval == TC_ACT_REDIRECT
    assert parse(result.data_out).sport == ports[0]


def test_backend_without_route_is_dropped(node: Loaded, uplink: Uplink) -> None:
    """Test that a remote backend the node has no route to is dropped for FIB_LOOKUP_FAILED."""
    seed(node, [(1, "10.250.0.9", 8080)])
    assert run(node, uplink, tcp(CLIENT, NODE_IP, 50000, NODE_PORT, SYN)).retval == TC_ACT_SHOT
    assert [e["drop_reason"] for e in node.events()] == [DropReason.NO_FIB]


def test_packet_whose_ttl_would_expire_is_not_forwarded(node: Loaded, uplink: Uplink) -> None:
    """Test that a NodePort packet arriving with TTL 1 for a remote backend is dropped (NO_FIB) rather
    than forwarded with its TTL left at 1, as a router would not pass it on."""
    seed(node, [(1, REMOTE_POD, 8080)])
    segment = tcp_segment(CLIENT, NODE_IP, 50000, NODE_PORT, SYN)
    assert run(node, uplink, eth(ipv4(CLIENT, NODE_IP, TCP, segment, ttl=1))).retval == TC_ACT_SHOT
    assert [e["drop_reason"] for e in node.events()] == [DropReason.NO_FIB]


def test_without_snat_address_remote_backends_are_only_dnated(node: Loaded, uplink: Uplink) -> None:
    """Test that with no SNAT address configured (0.0.0.0) a remote backend is DNATed and handed to the
    kernel, as on a single node."""
    seed(node, [(1, REMOTE_POD, 8080)], snat="0.0.0.0")
    result = run(node, uplink, tcp(CLIENT, NODE_IP, 50000, NODE_PORT, SYN))
    assert (result.retval, result.data_out) == (TC_ACT_OK, tcp(CLIENT, REMOTE_POD, 50000, 8080, SYN))


def test_node_config_reads_back_what_was_written(node: Loaded) -> None:
    """Test that the node's settings survive the codec and the array map both ways (a restarted agent
    compares them before writing)."""
    assert node.tables.read("node_config") == {0: NodeSettings("0.0.0.0", 0, 0)}
    settings = NodeSettings("192.168.77.3", 61000, 65535)
    node.tables.write("node_config", {0: settings}, ())
    assert node.tables.read("node_config") == {0: settings}
