"""Datapath tests of tunnel mode with BPF_PROG_TEST_RUN: lxc_from_pod's hand-off to the VXLAN device,
lxc_to_pod's source identity from the tunnel, and the overlay programs of velvet_vxlan.

BPF_PROG_TEST_RUN reports a redirect as TC_ACT_REDIRECT without sending the packet, and cannot hand a
program a received tunnel key: that the VNI really carries the identity across nodes is shown by
tests/e2e/test_multinode_tunnel.py with real VXLAN packets.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fixtures_datapath import LO_IFINDEX, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, Loaded, ct_key, loaded, lxc
from packets import ACK, ETH_P_ARP, SYN, TCP, checksums_ok, eth, parse, tcp, udp
from seeding import add_pods, allow, lb_change, rule, set_identity

from velvet.datapath.structs import (
    Ct4Entry,
    CtDir,
    CtFlag,
    DropReason,
    EndpointFlag,
    EventFlag,
    EventType,
    MetricDir,
    ObsPoint,
    ReservedIdentity,
    SvcFlag,
)
from velvet.datapath.structs import ipv4 as ip_int
from velvet.datapath.tables import Direction, RemoteIdentity
from velvet.datapath.testrun import skb_ctx, test_run

pytestmark = [pytest.mark.privileged]
__all__ = ["lxc"]  # the fixture, imported for pytest

POD_A, ID_A, EP_A = "10.244.0.10", 1000, 10
POD_B, ID_B, EP_B = "10.244.0.20", 2000, 20
REMOTE, ID_REMOTE, REMOTE_NODE_IP = "10.244.1.10", 3000, "192.168.77.3"
STRANGER = "10.99.0.7"  # an address no ipcache knows
NODE_IP = "192.168.77.2"
TUNNEL_MARK_MAGIC = 0xA5
FROM, TO = "lxc_from_pod", "lxc_to_pod"


@pytest.fixture
def overlay() -> Iterator[Loaded]:
    """overlay.bpf.o, loaded with empty maps."""
    with loaded("overlay") as obj:
        yield obj


def seed(dp: Loaded, *, tunnel: bool, b_flags: int = 0) -> None:
    """Local pods A and B, a pod on another node with its tunnel endpoint, and the node's mode."""
    add_pods(dp.tables, [(POD_A, LO_IFINDEX, ID_A, EP_A, 0), (POD_B, LO_IFINDEX, ID_B, EP_B, b_flags)])
    dp.tables.write("ipcache", {f"{REMOTE}/32": RemoteIdentity(ID_REMOTE, REMOTE_NODE_IP)}, ())
    dp.tables.write("tunnel_config", {0: LO_IFINDEX if tunnel else 0}, ())


def tunnel_mark(identity: int) -> int:
    """skb->mark as overlay_from_tunnel leaves it for a VNI."""
    return (identity << 8) | TUNNEL_MARK_MAGIC


def test_tables_round_trip_tunnel_endpoints(lxc: Loaded) -> None:
    """Test that ipcache values with a tunnel endpoint and plain identities read back as written."""
    seed(lxc, tunnel=True)
    ipcache = lxc.tables.read("ipcache")
    assert ipcache[f"{REMOTE}/32"] == RemoteIdentity(ID_REMOTE, REMOTE_NODE_IP)
    assert ipcache[f"{POD_A}/32"] == ID_A
    assert lxc.tables.read("tunnel_config") == {0: LO_IFINDEX}


def test_from_pod_sends_remote_pods_packets_to_the_tunnel(lxc: Loaded) -> None:
    """Test that in tunnel mode a new connection to another node's pod is tracked, reported and redirected
    to the VXLAN device, while one to a local pod goes to the node's routing."""
    seed(lxc, tunnel=True)
    assert lxc.run(FROM, tcp(POD_A, REMOTE, 40000, 80)).retval == TC_ACT_REDIRECT
    assert lxc.conntrack(POD_A, REMOTE, 40000, 80, TCP, CtDir.EGRESS) is not None
    traces = [e for e in lxc.events() if e["type"] == EventType.TRACE]
    assert [(e["src_identity"], e["dst_identity"]) for e in traces] == [(ID_A, ID_REMOTE)]
    assert lxc.run(FROM, tcp(POD_A, REMOTE, 40000, 80, ACK)).retval == TC_ACT_REDIRECT  # established
    assert lxc.run(FROM, udp(POD_A, POD_B, 40000, 53)).retval == TC_ACT_OK
    assert lxc.forwarded(MetricDir.EGRESS) == 3


def test_from_pod_tunnels_replies_to_remote_clients(lxc: Loaded) -> None:
    """Test that the reply of a connection a remote pod opened through the tunnel goes back through it."""
    seed(lxc, tunnel=True)
    frame = tcp(REMOTE, POD_A, 50000, 8080)
    assert test_run(lxc.obj.program(TO), frame, ctx=skb_ctx(mark=tunnel_mark(ID_REMOTE))).retval == TC_ACT_OK
    assert lxc.run(FROM, tcp(POD_A, REMOTE, 8080, 50000, SYN | ACK)).retval == TC_ACT_REDIRECT


def test_from_pod_gives_a_nodeport_reply_its_frontend_before_the_tunnel(lxc: Loaded) -> None:
    """Test that in tunnel mode the reply of a connection a remote pod opened to this node's NodePort (the
    uplink DNATed it to pod A) leaves through the tunnel with the NodePort as source, reported as leaving
    the node with the reverse NAT, as node_to_uplink translates it in native mode: encapsulated, the
    uplink only sees the tunnel's packet."""
    seed(lxc, tunnel=True)
    with lb_change(lxc.tables) as lb:
        lb.service(NODE_IP, 30080, TCP, [(1, POD_A, 8080)], rev=9, flags=SvcFlag.NODEPORT)
    # what node_from_uplink leaves behind for the client's SYN (both objects share ct4 on a node)
    now = time.monotonic_ns()
    lxc.map("ct4").update(ct_key(REMOTE, POD_A, 50000, 8080, TCP, CtDir.NODEPORT),
                          Ct4Entry(created_ns=now, last_seen_ns=now, packets=1, nat_addr=ip_int(NODE_IP),
                                   nat_port=30080, rev_nat_index=9, flags=CtFlag.NODEPORT, tx_flags_seen=SYN))
    assert lxc.run(TO, tcp(REMOTE, POD_A, 50000, 8080)).retval == TC_ACT_OK
    lxc.events()
    reply = lxc.run(FROM, tcp(POD_A, REMOTE, 8080, 50000, SYN | ACK))
    assert reply.retval == TC_ACT_REDIRECT
    sent = parse(reply.data_out)
    assert (sent.src, sent.sport, sent.dst, sent.dport) == (NODE_IP, 30080, REMOTE, 50000)
    assert checksums_ok(reply.data_out)
    leaving = [e for e in lxc.events() if e["obs_point"] == ObsPoint.TO_NETWORK]
    assert [(e["saddr"], e["sport"], bool(e["flags"] & EventFlag.REV_NAT)) for e in leaving] == [
        (ip_int(NODE_IP), 30080, True)]
    # a reply of a connection the remote pod opened to pod A itself keeps pod A as source
    assert lxc.run(TO, tcp(REMOTE, POD_A, 50001, 8080)).retval == TC_ACT_OK
    direct = lxc.run(FROM, tcp(POD_A, REMOTE, 8080, 50001, SYN | ACK))
    assert (direct.retval, parse(direct.data_out).src) == (TC_ACT_REDIRECT, POD_A)


def test_native_mode_leaves_remote_pods_to_routing(lxc: Loaded) -> None:
    """Test that with tunnel_config 0 (native routing) the same packet is passed to the node's routing."""
    seed(lxc, tunnel=False)
    assert lxc.run(FROM, tcp(POD_A, REMOTE, 40000, 80)).retval == TC_ACT_OK


def test_denied_packet_is_not_tunnelled(lxc: Loaded) -> None:
    """Test that an egress-isolated pod's packet nothing allows is dropped, not sent to the tunnel."""
    seed(lxc, tunnel=True)
    add_pods(lxc.tables, [(POD_A, LO_IFINDEX, ID_A, EP_A, EndpointFlag.POLICY_EGRESS)])
    assert lxc.run(FROM, tcp(POD_A, REMOTE, 40000, 80)).retval == TC_ACT_SHOT
    assert lxc.packets(DropReason.POLICY_DENIED, MetricDir.EGRESS) == 1


@pytest.mark.parametrize(("mark", "allowed", "seen"), [
    (tunnel_mark(ID_A), True, ID_A),
    (tunnel_mark(ID_REMOTE), False, ID_REMOTE),
    (0, False, ReservedIdentity.WORLD),
    ((ID_A << 8) | 0x11, False, ReservedIdentity.WORLD),
], ids=["vni-allowed", "vni-other", "no-mark", "foreign-mark"])
def test_to_pod_takes_the_source_identity_from_the_tunnel(lxc: Loaded, mark: int, allowed: bool,
                                                          seen: int) -> None:
    """Test that lxc_to_pod decides ingress policy on the identity a tunnelled packet carried (not the
    ipcache's WORLD for an address it does not know), and that marks without Velvet's magic count for
    nothing."""
    seed(lxc, tunnel=True, b_flags=EndpointFlag.POLICY_INGRESS)
    allow(lxc.tables, rule(EP_B, Direction.INGRESS, ID_A, TCP, 8080), 4)
    result = test_run(lxc.obj.program(TO), tcp(STRANGER, POD_B, 40000, 8080), ctx=skb_ctx(mark=mark))
    assert result.retval == (TC_ACT_OK if allowed else TC_ACT_SHOT)
    verdicts = [e for e in lxc.events() if e["type"] == EventType.POLICY_VERDICT]
    assert [(e["src_identity"], e["dst_identity"]) for e in verdicts] == [(seen, ID_B)]
    tracked = lxc.conntrack(STRANGER, POD_B, 40000, 8080, TCP, CtDir.INGRESS)
    assert (tracked is not None) == allowed
    if tracked is not None:
        assert tracked.src_identity == ID_A


def test_overlay_keys_host_packets_to_remote_pods(overlay: Loaded) -> None:
    """Test that overlay_to_tunnel passes the node's own packets to a remote pod (its tunnel key set from
    the ipcache) and drops, naming the reason, those to an address no node is known for."""
    seed(overlay, tunnel=True)
    set_identity(overlay.tables, f"{NODE_IP}/32", ReservedIdentity.HOST)
    assert overlay.run("overlay_to_tunnel", tcp(NODE_IP, REMOTE, 40000, 80)).retval == TC_ACT_OK
    assert overlay.run("overlay_to_tunnel", tcp(NODE_IP, STRANGER, 40000, 80)).retval == TC_ACT_SHOT
    drops = [e for e in overlay.events() if e["type"] == EventType.DROP]
    assert [(e["drop_reason"], e["src_identity"]) for e in drops] == [
        (DropReason.NO_TUNNEL_ENDPOINT, ReservedIdentity.HOST)]
    assert overlay.run("overlay_to_tunnel", eth(b"\0" * 28, ETH_P_ARP)).retval == TC_ACT_SHOT


def test_overlay_refuses_packets_without_a_tunnel_key(overlay: Loaded) -> None:
    """Test that overlay_from_tunnel drops what did not come through the tunnel (no key, no identity)."""
    assert overlay.run("overlay_from_tunnel", tcp(STRANGER, POD_B, 40000, 8080)).retval == TC_ACT_SHOT
