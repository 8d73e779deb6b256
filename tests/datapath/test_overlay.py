"""Datapath tests of tunnel mode with BPF_PROG_TEST_RUN: lxc_from_pod's hand-off to the VXLAN device,
lxc_to_pod's source identity from the tunnel, and the overlay programs of velvet_vxlan.

BPF_PROG_TEST_RUN reports a redirect as TC_ACT_REDIRECT without sending the packet, and cannot hand a
program a received tunnel key: that the VNI really carries the identity across nodes is shown by
tests/e2e/test_multinode_tunnel.py with real VXLAN packets.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fixtures_datapath import LO_IFINDEX, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, Loaded, loaded, lxc
from packets import ACK, ETH_P_ARP, SYN, TCP, eth, tcp, udp
from seeding import add_pods, allow, rule, set_identity

from velvet.datapath.structs import CtDir, DropReason, EndpointFlag, EventType, MetricDir, ReservedIdentity
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
