"""Datapath tests of host routing (node_config NODE_F_HOST_ROUTING): lxc_from_pod and node_from_uplink
forward what they pass themselves, FIB lookup + redirect, or leave it to the node's stack
(BPF_PROG_TEST_RUN). What they send into a local pod gets the to-pod datapath (conntrack, policy,
events) from them, as lxc_to_pod would give it on the pod's veth, unless the pod's MAC is not known.

The programs run inside a namespace of the test's own shaped like a node: two pod host veths `lxc0`
(pod 10.244.0.20) and `lxc1` (pod 10.244.0.30), each with its /32 route and the pod's MAC as a permanent
neighbour, the pod gateway 10.244.0.1 on `gw0`, and the uplink `up0` (192.168.77.2/24) with the other
node's pod CIDR 10.244.1.0/24 via 192.168.77.3 (a permanent neighbour too).
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fixtures_datapath import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, Loaded, ct_key, lxc, node, sh
from packets import ACK, RST, SYN, TCP, checksums_ok, eth, ipv4, parse, tcp, tcp_segment, udp
from seeding import add_pods, lb_change, set_identity

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
    Verdict,
)
from velvet.datapath.structs import ipv4 as ip_int
from velvet.datapath.tables import EndpointEntry, NodeSettings
from velvet.datapath.testrun import SkBuff, TestRunResult, skb_ctx, test_run
from velvet.system.netns import in_netns

pytestmark = [pytest.mark.privileged]
__all__ = ["lxc", "node"]  # the fixtures, imported for pytest

NODE_IP, PEER_NODE, GATEWAY = "192.168.77.2", "192.168.77.3", "10.244.0.1"
POD, OTHER_POD, REMOTE_POD = "10.244.0.20", "10.244.0.30", "10.244.1.20"
POD_MAC, OTHER_POD_MAC = bytes.fromhex("0a00000000a0"), bytes.fromhex("0a00000000a1")
PEER_MAC = bytes.fromhex("0a00000000b3")
ID_POD, ID_OTHER, ID_REMOTE = 2001, 2002, 2000
EP_POD, EP_OTHER = 7, 8
CLIENT, NODE_PORT, REV = "192.168.77.9", 30080, 9


@dataclass(frozen=True)
class Node:
    """The test namespace: its interfaces' ifindex and MAC by name."""

    netns: str
    ifindex: dict[str, int]
    mac: dict[str, bytes]


@pytest.fixture
def topo() -> Iterator[Node]:
    """A namespace shaped like a node (see the module docstring), forwarding on."""
    ns = f"velvet-dp-{secrets.token_hex(3)}-hr"
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for dev in ("lxc0", "lxc1", "gw0", "up0"):
            sh("ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", f"{dev}p")
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", f"{dev}p", "up")
        sh("ip", "-n", ns, "addr", "add", f"{GATEWAY}/32", "dev", "gw0")
        sh("ip", "-n", ns, "addr", "add", f"{NODE_IP}/24", "dev", "up0")
        for pod, lladdr, dev in ((POD, POD_MAC, "lxc0"), (OTHER_POD, OTHER_POD_MAC, "lxc1"),
                                 (PEER_NODE, PEER_MAC, "up0")):
            sh("ip", "-n", ns, "neigh", "replace", pod, "lladdr", lladdr.hex(":"), "dev", dev,
               "nud", "permanent")
            if dev != "up0":
                sh("ip", "-n", ns, "route", "add", f"{pod}/32", "dev", dev, "src", GATEWAY)
        sh("ip", "-n", ns, "route", "add", "10.244.1.0/24", "via", PEER_NODE, "dev", "up0")
        ifindex: dict[str, int] = {}
        mac: dict[str, bytes] = {}
        for dev in ("lxc0", "lxc1", "up0"):
            ifindex[dev] = int(sh("ip", "netns", "exec", ns, "cat", f"/sys/class/net/{dev}/ifindex"))
            mac[dev] = bytes.fromhex(sh("ip", "netns", "exec", ns, "cat", f"/sys/class/net/{dev}/address")
                                     .strip().replace(":", ""))
        yield Node(ns, ifindex, mac)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def seed(obj: Loaded, topo: Node, *, host_routing: bool = True, pod_flags: int = 0) -> None:
    """The two local pods, the remote pod's identity, the node's address, and the host routing flag."""
    add_pods(obj.tables, [(POD, topo.ifindex["lxc0"], ID_POD, EP_POD, pod_flags),
                          (OTHER_POD, topo.ifindex["lxc1"], ID_OTHER, EP_OTHER, 0)])
    set_identity(obj.tables, f"{REMOTE_POD}/32", ID_REMOTE)
    set_identity(obj.tables, f"{NODE_IP}/32", ReservedIdentity.HOST)
    obj.tables.write("node_config", {0: NodeSettings(NODE_IP, host_routing=host_routing)}, ())


def run(obj: Loaded, topo: Node, program: str, dev: str, frame: bytes) -> TestRunResult:
    """A program on a frame received by `dev`, inside the test namespace."""
    with in_netns(topo.netns):
        return test_run(obj.obj.program(program), frame, ctx=skb_ctx(ifindex=topo.ifindex[dev]))


def forwarded(src: str, dst: str, dst_mac: bytes, src_mac: bytes) -> bytes:
    """The SYN src:40000 -> dst:8080 as a router sends it on: TTL 63, the next hop's MAC."""
    segment = tcp_segment(src, dst, 40000, 8080, SYN)
    return eth(ipv4(src, dst, TCP, segment, ttl=63), dst=dst_mac, src=src_mac)


@pytest.mark.parametrize(("dst", "dev", "dst_mac"), [(REMOTE_POD, "up0", PEER_MAC),
                                                      (OTHER_POD, "lxc1", OTHER_POD_MAC)],
                         ids=["remote-pod", "local-pod"])
def test_pod_traffic_is_forwarded_by_the_program(lxc: Loaded, topo: Node, dst: str, dev: str,
                                                 dst_mac: bytes) -> None:
    """Test that with host routing lxc_from_pod redirects a pod's packet out of the interface the FIB
    names (the uplink towards another node's pod, a local pod's host veth) as a router would: TTL
    decremented with a valid checksum, the next hop's MAC, the interface's own as source, and that the
    packet is reported once leaving its pod (a new connection's trace event), and for a local pod once
    more entering it, on that pod's veth (the to-pod datapath ran: its conntrack entry exists)."""
    seed(lxc, topo)
    result = run(lxc, topo, "lxc_from_pod", "lxc0", tcp(POD, dst, 40000, 8080))
    assert result.retval == TC_ACT_REDIRECT
    assert result.data_out == forwarded(POD, dst, dst_mac, topo.mac[dev])
    assert checksums_ok(result.data_out)
    events = lxc.events()
    expected = [(EventType.TRACE, ObsPoint.FROM_ENDPOINT, Verdict.FORWARDED, topo.ifindex["lxc0"])]
    if dev != "up0":
        expected.append((EventType.TRACE, ObsPoint.TO_ENDPOINT, Verdict.FORWARDED, topo.ifindex[dev]))
    assert [(e["type"], e["obs_point"], e["verdict"], e["ifindex"]) for e in events] == expected
    accepted = lxc.conntrack(POD, dst, 40000, 8080, TCP, CtDir.INGRESS)
    assert (accepted is not None) == (dev != "up0")


def with_macs(obj: Loaded, topo: Node) -> None:
    """OTHER_POD's endpoint with its MACs, as the agent writes it when the runtime reported them."""
    entry = EndpointEntry(topo.ifindex["lxc1"], ID_OTHER, EP_OTHER, 0, OTHER_POD_MAC.hex(":"),
                          topo.mac["lxc1"].hex(":"))
    obj.tables.write("lxc_endpoints", {OTHER_POD: entry}, ())


@pytest.mark.parametrize("ttl", [64, 1], ids=["forwarded", "ttl-1"])
def test_a_local_pod_with_known_macs_is_reached_without_the_fib(lxc: Loaded, topo: Node, ttl: int) -> None:
    """Test that a packet for a local pod whose MACs the endpoint map holds goes straight into it (the
    to-pod datapath run, TTL decremented, the pod's MAC, its veth's as source) even where the FIB would not
    name its veth (its route and neighbour removed here: no FIB lookup is made), and that a TTL about to
    expire still goes to the stack for its time-exceeded."""
    seed(lxc, topo)
    with_macs(lxc, topo)
    sh("ip", "-n", topo.netns, "route", "del", f"{OTHER_POD}/32")
    sh("ip", "-n", topo.netns, "neigh", "del", OTHER_POD, "dev", "lxc1")
    frame = eth(ipv4(POD, OTHER_POD, TCP, tcp_segment(POD, OTHER_POD, 40000, 8080, SYN), ttl=ttl))
    result = run(lxc, topo, "lxc_from_pod", "lxc0", frame)
    if ttl == 1:
        assert (result.retval, result.data_out) == (TC_ACT_OK, frame)
        return
    assert result.retval == TC_ACT_REDIRECT
    assert result.data_out == forwarded(POD, OTHER_POD, OTHER_POD_MAC, topo.mac["lxc1"])
    assert checksums_ok(result.data_out)
    assert lxc.conntrack(POD, OTHER_POD, 40000, 8080, TCP, CtDir.INGRESS) is not None
    assert [e["obs_point"] for e in lxc.events()] == [ObsPoint.FROM_ENDPOINT, ObsPoint.TO_ENDPOINT]


@pytest.mark.parametrize(("desc", "dst", "ttl"), [
    ("the node's own address is delivered by the stack", GATEWAY, 64),
    ("a destination without a route gets the stack's unreachable", "203.0.113.9", 64),
    ("a TTL about to expire gets the stack's time-exceeded", REMOTE_POD, 1),
], ids=["node-address", "no-route", "ttl-1"])
def test_what_the_fib_does_not_forward_goes_to_the_stack(lxc: Loaded, topo: Node, desc: str, dst: str,
                                                         ttl: int) -> None:
    """Test that with host routing a packet the FIB does not forward passes to the node's stack
    untouched (TC_ACT_OK, the same bytes)."""
    seed(lxc, topo)
    frame = eth(ipv4(POD, dst, TCP, tcp_segment(POD, dst, 40000, 8080, SYN), ttl=ttl))
    result = run(lxc, topo, "lxc_from_pod", "lxc0", frame)
    assert (result.retval, result.data_out) == (TC_ACT_OK, frame), desc


def test_legacy_host_routing_leaves_forwarding_to_the_stack(lxc: Loaded, topo: Node) -> None:
    """Test that without the flag lxc_from_pod passes a packet to another node's pod to the node's
    stack unchanged, as before host routing."""
    seed(lxc, topo, host_routing=False)
    frame = tcp(POD, REMOTE_POD, 40000, 8080)
    result = run(lxc, topo, "lxc_from_pod", "lxc0", frame)
    assert (result.retval, result.data_out) == (TC_ACT_OK, frame)


def test_policy_still_drops_with_host_routing(lxc: Loaded, topo: Node) -> None:
    """Test that a pod isolated for egress with no rule is still dropped (and reported) with host
    routing on: the redirect comes after the verdict."""
    seed(lxc, topo, pod_flags=EndpointFlag.POLICY_EGRESS)
    result = run(lxc, topo, "lxc_from_pod", "lxc0", tcp(POD, REMOTE_POD, 40000, 8080))
    assert result.retval == TC_ACT_SHOT
    drops = [e for e in lxc.events() if e["type"] == EventType.DROP]
    assert [e["drop_reason"] for e in drops] == [DropReason.POLICY_DENIED]


@pytest.mark.parametrize("host_routing", [True, False], ids=["bpf", "legacy"])
def test_uplink_sends_a_local_pods_packet_to_its_veth(node: Loaded, topo: Node, host_routing: bool) -> None:
    """Test that node_from_uplink redirects a packet from another node's pod to a local pod out of the
    pod's host veth (TTL 63, the pod's MAC) with host routing, and leaves it to the stack without."""
    seed(node, topo, host_routing=host_routing)
    frame = tcp(REMOTE_POD, POD, 40000, 8080)
    result = run(node, topo, "node_from_uplink", "up0", frame)
    if host_routing:
        assert result.retval == TC_ACT_REDIRECT
        assert result.data_out == forwarded(REMOTE_POD, POD, POD_MAC, topo.mac["lxc0"])
    else:
        assert (result.retval, result.data_out) == (TC_ACT_OK, frame)
    # with host routing the pod's to-pod datapath ran here; without, lxc_to_pod runs on its veth later
    accepted = node.conntrack(REMOTE_POD, POD, 40000, 8080, TCP, CtDir.INGRESS)
    assert (accepted is not None) == host_routing
    entering = [(e["type"], e["ifindex"], e["src_identity"], e["dst_identity"]) for e in node.events()
                if e["obs_point"] == ObsPoint.TO_ENDPOINT]
    assert entering == ([(EventType.TRACE, topo.ifindex["lxc0"], ID_REMOTE, ID_POD)] if host_routing else [])


def test_uplink_leaves_what_is_not_for_a_local_pod_to_the_stack(node: Loaded, topo: Node) -> None:
    """Test that node_from_uplink does not route for others: a packet to the node itself, or to an
    address that is no local endpoint, passes to the stack untouched even with host routing."""
    seed(node, topo)
    for dst in (NODE_IP, REMOTE_POD):
        frame = tcp("192.168.77.9", dst, 40000, 8080)
        result = run(node, topo, "node_from_uplink", "up0", frame)
        assert (result.retval, result.data_out) == (TC_ACT_OK, frame), dst


def test_uplink_runs_the_pods_ingress_policy_before_delivering(node: Loaded, topo: Node) -> None:
    """Test that node_from_uplink, sending a packet straight into a local pod, gives it the pod's
    ingress datapath: a pod isolated for ingress without a rule has the new connection dropped
    (TC_ACT_SHOT, a POLICY_DENIED drop observed at the pod's veth) and nothing tracked; a reply of a
    connection the pod opened passes as a reply."""
    seed(node, topo, pod_flags=EndpointFlag.POLICY_INGRESS)
    result = run(node, topo, "node_from_uplink", "up0", tcp(REMOTE_POD, POD, 40000, 8080))
    assert result.retval == TC_ACT_SHOT
    drops = [e for e in node.events() if e["type"] == EventType.DROP]
    assert [(e["drop_reason"], e["obs_point"], e["ifindex"], e["src_identity"]) for e in drops] == [
        (DropReason.POLICY_DENIED, ObsPoint.TO_ENDPOINT, topo.ifindex["lxc0"], ID_REMOTE)]
    assert node.conntrack(REMOTE_POD, POD, 40000, 8080, TCP, CtDir.INGRESS) is None
    # the pod opened 40001 -> remote:8080 (the entry lxc_from_pod makes, in the maps both objects share)
    now = time.monotonic_ns()
    node.map("ct4").update(ct_key(POD, REMOTE_POD, 40001, 8080, TCP, CtDir.EGRESS),
                           Ct4Entry(created_ns=now, last_seen_ns=now, packets=1, src_identity=ID_POD,
                                    dst_identity=ID_REMOTE, tx_flags_seen=SYN))
    result = run(node, topo, "node_from_uplink", "up0", tcp(REMOTE_POD, POD, 8080, 40001, SYN | ACK))
    assert result.retval == TC_ACT_REDIRECT
    replies = [e for e in node.events() if e["obs_point"] == ObsPoint.TO_ENDPOINT]
    assert [(e["type"], bool(e["flags"] & EventFlag.REPLY), e["ifindex"]) for e in replies] == [
        (EventType.TRACE, True, topo.ifindex["lxc0"])]


def test_what_enters_a_pod_directly_leaves_the_nodes_mark_behind(node: Loaded, topo: Node) -> None:
    """Test that a packet node_from_uplink sends straight into a pod carries no skb mark of the node's
    (as one crossing the veth into the pod's namespace), while one left to the stack keeps it."""
    seed(node, topo)
    with in_netns(topo.netns):
        prog = node.obj.program("node_from_uplink")
        into_pod = test_run(prog, tcp(REMOTE_POD, POD, 40000, 8080),
                            ctx=skb_ctx(ifindex=topo.ifindex["up0"], mark=0x1234))
        to_stack = test_run(prog, tcp("192.168.77.9", NODE_IP, 40000, 8080),
                            ctx=skb_ctx(ifindex=topo.ifindex["up0"], mark=0x1234))
    assert (into_pod.retval, SkBuff.from_buffer_copy(into_pod.ctx_out).mark) == (TC_ACT_REDIRECT, 0)
    assert (to_stack.retval, SkBuff.from_buffer_copy(to_stack.ctx_out).mark) == (TC_ACT_OK, 0x1234)


def test_uplink_without_the_pods_mac_leaves_its_datapath_to_its_veth(node: Loaded, topo: Node) -> None:
    """Test that when the pod's neighbour entry is missing node_from_uplink still forwards (redirect
    with neighbour resolution) but leaves the to-pod datapath to lxc_to_pod on the veth: no entry, no
    to-pod event from the uplink."""
    seed(node, topo)
    sh("ip", "-n", topo.netns, "neigh", "del", POD, "dev", "lxc0")
    result = run(node, topo, "node_from_uplink", "up0", tcp(REMOTE_POD, POD, 40000, 8080))
    assert result.retval == TC_ACT_REDIRECT
    assert node.conntrack(REMOTE_POD, POD, 40000, 8080, TCP, CtDir.INGRESS) is None
    assert not [e for e in node.events() if e["obs_point"] == ObsPoint.TO_ENDPOINT]


def run_marked(obj: Loaded, topo: Node, program: str, dev: str, frame: bytes,
               mark: int = 0) -> tuple[TestRunResult, int]:
    """A program on a frame received by (or sent out of) `dev` with skb->mark: the result, the mark after."""
    with in_netns(topo.netns):
        result = test_run(obj.obj.program(program), frame, ctx=skb_ctx(ifindex=topo.ifindex[dev], mark=mark))
    return result, SkBuff.from_buffer_copy(result.ctx_out).mark


def share_entry(src: Loaded, dst: Loaded, key: tuple[str, str, int, int, int, CtDir]) -> Ct4Entry:
    """Copy a ct4 entry one object made into the other's map (on a node, both objects share the map)."""
    entry = src.conntrack(*key)
    assert entry is not None, key
    dst.map("ct4").update(ct_key(*key), entry)
    return entry


def test_a_pods_connection_passes_the_uplink_at_once(lxc: Loaded, node: Loaded, topo: Node) -> None:
    """Test that a TCP connection a pod opens to another node's pod, forwarded out of the uplink by
    lxc_from_pod (host routing), carries the mark that tells node_to_uplink there is nothing to do
    (its entry says so: opened by a pure SYN), SYN, ACK and RST alike, and that node_to_uplink then
    passes it unchanged, counted as forwarded, without an event, the mark cleared before it leaves."""
    seed(lxc, topo)
    seed(node, topo)
    marks = []
    for flags in (SYN, ACK, RST):
        frame = tcp(POD, REMOTE_POD, 40000, 8080, flags)
        result, mark = run_marked(lxc, topo, "lxc_from_pod", "lxc0", frame)
        assert result.retval == TC_ACT_REDIRECT
        marks.append(mark)
        out, after = run_marked(node, topo, "node_to_uplink", "up0", result.data_out, mark)
        assert (out.retval, out.data_out, after) == (TC_ACT_OK, result.data_out, 0)
    assert len(set(marks)) == 1
    assert marks[0] != 0
    opened = lxc.conntrack(POD, REMOTE_POD, 40000, 8080, TCP, CtDir.EGRESS)
    assert opened is not None
    assert opened.flags & CtFlag.NO_UPLINK_NAT
    # the pod's side was reported as before; the uplink's counters still see every packet
    assert [e["obs_point"] for e in lxc.events()] == [ObsPoint.FROM_ENDPOINT] * 2
    assert (node.events().size, node.forwarded(MetricDir.EGRESS)) == (0, 3)


@pytest.mark.parametrize(("desc", "frame"), [
    ("UDP: its first packet may answer a NodePort client", udp(POD, REMOTE_POD, 40000, 8080)),
    ("a TCP segment that is no pure SYN may answer one too", tcp(POD, REMOTE_POD, 40000, 8080, ACK)),
], ids=["udp", "tcp-ack"])
def test_a_connection_that_may_be_a_reply_leaves_unmarked(lxc: Loaded, topo: Node, desc: str,
                                                          frame: bytes) -> None:
    """Test that lxc_from_pod marks nothing it cannot prove needs no reverse NAT at the uplink: a new
    connection opened by anything but a pure TCP SYN (a reply of a NodePort connection whose other
    entries were evicted looks like that), nor its later packets."""
    seed(lxc, topo)
    for _ in range(2):
        result, mark = run_marked(lxc, topo, "lxc_from_pod", "lxc0", frame)
        assert (result.retval, mark) == (TC_ACT_REDIRECT, 0), desc


def test_a_nodeport_reply_leaving_a_pod_still_gets_reverse_nat(lxc: Loaded, node: Loaded, topo: Node) -> None:
    """Test that a connection node_from_uplink DNATs to a local pod (NodePort) gets no mark on its
    replies: lxc_from_pod forwards the pod's SYN-ACK out of the uplink unmarked, and node_to_uplink
    gives it the frontend back as source and reports it; while a connection another node's pod opened
    to the same pod directly has its SYN-ACK marked and passed unchanged."""
    seed(lxc, topo)
    seed(node, topo)
    with lb_change(node.tables) as lb:
        lb.service(NODE_IP, NODE_PORT, TCP, [(1, POD, 8080)], rev=REV, flags=SvcFlag.NODEPORT)

    # the client's SYN to the NodePort: DNATed, then the pod's to-pod datapath, into the pod
    result = run(node, topo, "node_from_uplink", "up0", tcp(CLIENT, NODE_IP, 50000, NODE_PORT))
    assert result.retval == TC_ACT_REDIRECT
    accepted = share_entry(node, lxc, (CLIENT, POD, 50000, 8080, TCP, CtDir.INGRESS))
    assert not accepted.flags & CtFlag.NO_UPLINK_NAT
    node.events()
    reply, mark = run_marked(lxc, topo, "lxc_from_pod", "lxc0", tcp(POD, CLIENT, 8080, 50000, SYN | ACK))
    assert (reply.retval, mark) == (TC_ACT_REDIRECT, 0)
    out, _ = run_marked(node, topo, "node_to_uplink", "up0", reply.data_out, mark)
    assert out.retval == TC_ACT_OK
    sent = parse(out.data_out)
    assert (sent.src, sent.sport, sent.dst, sent.dport) == (NODE_IP, NODE_PORT, CLIENT, 50000)
    assert checksums_ok(out.data_out)
    assert [(e["obs_point"], e["saddr"], e["sport"], bool(e["flags"] & EventFlag.REV_NAT))
            for e in node.events()] == [(ObsPoint.TO_NETWORK, ip_int(NODE_IP), NODE_PORT, True)]

    # another node's pod connecting to the pod itself: its reply needs nothing of the uplink
    result = run(node, topo, "node_from_uplink", "up0", tcp(REMOTE_POD, POD, 40000, 8080))
    assert result.retval == TC_ACT_REDIRECT
    direct = share_entry(node, lxc, (REMOTE_POD, POD, 40000, 8080, TCP, CtDir.INGRESS))
    assert direct.flags & CtFlag.NO_UPLINK_NAT
    node.events()
    reply, mark = run_marked(lxc, topo, "lxc_from_pod", "lxc0", tcp(POD, REMOTE_POD, 8080, 40000, SYN | ACK))
    assert reply.retval == TC_ACT_REDIRECT
    assert mark != 0
    out, after = run_marked(node, topo, "node_to_uplink", "up0", reply.data_out, mark)
    assert (out.retval, out.data_out, after, node.events().size) == (TC_ACT_OK, reply.data_out, 0, 0)



@pytest.mark.parametrize("host_routing", [True, False], ids=["bpf", "legacy"])
def test_a_reply_of_a_pods_connection_is_no_new_frontend_connection(node: Loaded, topo: Node,
                                                                   host_routing: bool) -> None:
    """Test that node_from_uplink takes a reply of a connection a local pod opened as that connection's
    (conntrack before the frontends, as the kernel's NAT does) even when an external frontend names the
    pod's address and port: passed untranslated towards the pod, while a new connection to that frontend
    is still DNATed to its backend."""
    seed(node, topo, host_routing=host_routing)
    with lb_change(node.tables) as lb:
        lb.service(POD, 40001, TCP, [(1, OTHER_POD, 8080)], rev=REV, flags=SvcFlag.EXTERNAL_IP)
    now = time.monotonic_ns()
    node.map("ct4").update(ct_key(POD, REMOTE_POD, 40001, 8080, TCP, CtDir.EGRESS),
                           Ct4Entry(created_ns=now, last_seen_ns=now, packets=1, src_identity=ID_POD,
                                    dst_identity=ID_REMOTE, tx_flags_seen=SYN))
    reply = run(node, topo, "node_from_uplink", "up0", tcp(REMOTE_POD, POD, 8080, 40001, SYN | ACK))
    assert (parse(reply.data_out).dst, parse(reply.data_out).dport) == (POD, 40001)
    assert reply.retval == (TC_ACT_REDIRECT if host_routing else TC_ACT_OK)
    assert node.conntrack(REMOTE_POD, POD, 8080, 40001, TCP, CtDir.NODEPORT) is None
    new = run(node, topo, "node_from_uplink", "up0", tcp(REMOTE_POD, POD, 8081, 40001, SYN))
    assert (parse(new.data_out).dst, parse(new.data_out).dport) == (OTHER_POD, 8080)
