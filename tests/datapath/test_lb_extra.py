"""Datapath tests (BPF_PROG_TEST_RUN) of service cases the per-program suites leave out.

Affinity expiry and terminating backends, a terminating backend keeping its tracked flow,
ExternalIP and LoadBalancer frontends at the uplink, UDP refusal at the uplink, and the
one-scope ClusterIP of an iTP=Local service whose endpoints are all remote.
"""

from __future__ import annotations

import time

import pytest
from fixtures_datapath import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, Loaded, lxc, node
from packets import ACK, ICMP, SYN, TCP, UDP, checksums_ok, parse, tcp, udp
from seeding import lb_change
from test_lxc import POD_A, VIP, VPORT, seed_pods, seed_service
from test_node import CLIENT, LB_IP, LB_PORT, NODE_IP, NODE_PORT, POD_B, POD_C, REV, seed_frontend

from velvet.datapath.structs import BackendState, DropReason, MetricDir, SvcFlag

pytestmark = [pytest.mark.privileged]
__all__ = ["lxc", "node"]  # the fixtures, imported for pytest

FROM, TO = "node_from_uplink", "node_to_uplink"
AFFINITY = SvcFlag.NODEPORT | SvcFlag.AFFINITY


def _sticky_frontend(node: Loaded, backend_2: BackendState = BackendState.ACTIVE) -> None:
    """A NodePort with affinity (60 s) whose only slot is backend 1 (POD_B); backend 2 is POD_C, in
    lb4_backends without a slot (as the compiler keeps a draining endpoint's backend)."""
    seed_frontend(node.tables, [(1, POD_B, 8080)], flags=AFFINITY, affinity_timeout=60)
    with lb_change(node.tables) as lb:
        lb.backend(2, POD_C, 8080, TCP, backend_2)


def test_recent_affinity_is_followed_and_an_expired_one_is_not(node: Loaded) -> None:
    """Test that a remembered backend wins while younger than the timeout, and not once older."""
    _sticky_frontend(node)
    node.remember(CLIENT, REV, 2, time.monotonic_ns())
    assert parse(node.run(FROM, tcp(CLIENT, NODE_IP, 50000, NODE_PORT)).data_out).dst == POD_C
    node.remember(CLIENT, REV, 2, time.monotonic_ns() - 61 * 10**9)
    assert parse(node.run(FROM, tcp(CLIENT, NODE_IP, 50001, NODE_PORT)).data_out).dst == POD_B
    remembered = node.affinity(CLIENT, REV)
    assert remembered is not None
    assert remembered.backend_id == 1


def test_affinity_to_a_terminating_backend_is_not_followed(node: Loaded) -> None:
    """Test that a new connection never follows affinity to a TERMINATING backend."""
    _sticky_frontend(node, BackendState.TERMINATING)
    node.remember(CLIENT, REV, 2, time.monotonic_ns())
    assert parse(node.run(FROM, tcp(CLIENT, NODE_IP, 50000, NODE_PORT)).data_out).dst == POD_B


def test_terminating_backend_keeps_its_tracked_connection(node: Loaded) -> None:
    """Test that a flow stays on its backend after the backend turns TERMINATING and leaves the slots,
    while a new flow goes to the remaining backend."""
    seed_frontend(node.tables, [(1, POD_B, 8080)])
    assert parse(node.run(FROM, tcp(CLIENT, NODE_IP, 50000, NODE_PORT, SYN)).data_out).dst == POD_B
    with lb_change(node.tables) as lb:
        lb.backend(1, POD_B, 8080, TCP, BackendState.TERMINATING)
        lb.backend(2, POD_C, 8080, TCP)
        lb.frontend(NODE_IP, NODE_PORT, TCP, [2], rev=REV, flags=SvcFlag.NODEPORT)
    assert parse(node.run(FROM, tcp(CLIENT, NODE_IP, 50000, NODE_PORT, ACK)).data_out).dst == POD_B
    assert parse(node.run(FROM, tcp(CLIENT, NODE_IP, 50001, NODE_PORT, SYN)).data_out).dst == POD_C


@pytest.mark.parametrize("flags", [SvcFlag.EXTERNAL_IP, SvcFlag.LOADBALANCER], ids=["externalip", "lb"])
def test_external_ip_and_load_balancer_frontends_translate_both_ways(node: Loaded, flags: SvcFlag) -> None:
    """Test that an ExternalIP / LB ingress frontend arriving on the uplink is DNATed keeping the client,
    and the reply leaves with the frontend as source."""
    seed_frontend(node.tables, [(1, POD_B, 8443)], address=LB_IP, port=LB_PORT, flags=flags)
    result = node.run(FROM, tcp(CLIENT, LB_IP, 50000, LB_PORT))
    assert result.retval == TC_ACT_OK
    assert result.data_out == tcp(CLIENT, POD_B, 50000, 8443)
    reply = node.run(TO, tcp(POD_B, CLIENT, 8443, 50000, SYN | ACK))
    assert reply.data_out == tcp(LB_IP, CLIENT, LB_PORT, 50000, SYN | ACK)
    assert checksums_ok(reply.data_out)


def test_udp_to_a_nodeport_without_backends_gets_port_unreachable(node: Loaded) -> None:
    """Test that a datagram to a UDP NodePort without backends is answered with ICMP port unreachable
    sent back out of the uplink from the node address."""
    seed_frontend(node.tables, [], proto=UDP)
    result = node.run(FROM, udp(CLIENT, NODE_IP, 50000, NODE_PORT))
    assert result.retval == TC_ACT_REDIRECT
    answer = parse(result.data_out)
    assert (answer.src, answer.dst, answer.proto, answer.icmp_type, answer.icmp_code) == (
        NODE_IP, CLIENT, ICMP, 3, 3)
    assert node.packets(DropReason.NO_SERVICE_BACKEND, MetricDir.INGRESS) == 1


@pytest.mark.parametrize(("flags", "verdict", "reason"), [
    (SvcFlag.CLUSTERIP | SvcFlag.LOCAL_ONLY_INT, TC_ACT_SHOT, DropReason.NO_LOCAL_BACKEND),
    (SvcFlag.CLUSTERIP, TC_ACT_REDIRECT, DropReason.NO_SERVICE_BACKEND),
], ids=["remote-endpoints-only", "no-endpoints"])
def test_empty_clusterip_of_itp_local_drops_and_without_endpoints_rejects(
        lxc: Loaded, flags: SvcFlag, verdict: int, reason: DropReason) -> None:
    """Test that a one-scope ClusterIP flagged LOCAL_ONLY_INT (remote endpoints only) drops, while
    one without the flag (no endpoint anywhere) is refused."""
    seed_pods(lxc)
    seed_service(lxc, [], flags=flags)
    assert lxc.run("lxc_from_pod", tcp(POD_A, VIP, 40000, VPORT)).retval == verdict
    assert lxc.packets(reason, MetricDir.EGRESS) == 1
