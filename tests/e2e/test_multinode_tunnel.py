"""Test a three-node sandbox in tunnel mode (`sandbox up --nodes 3 --routing tunnel`), through the CLI.

One sandbox for the story, torn down whatever happens: the nodes route each other's pod CIDRs through
`velvet_vxlan` (VXLAN in external mode, UDP 8472) and have no native routes; pods talk TCP and UDP
across nodes through the tunnel (its counters rise on both ends) and the server sees the client's pod
IP; a ClusterIP's backend on another node answers; NetworkPolicy holds across nodes by identity in both
directions with named ports. VXLAN packets crafted on the underlay show that the receiver takes the
source identity from the VNI: an inner source no ipcache knows is admitted under the VNI of the
identity the policy allows and dropped under another. A restarted agent adopts its device, and
`sandbox down` leaves nothing.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from harness import Sandbox, sandbox
from test_multinode import (
    CROSS_NODE_POLICIES,
    FAR_SERVICE,
    NODES,
    check_cluster_ip,
    check_cluster_ip_per_packet,
    etcd_keys,
    eventually,
    forwarded_datagrams,
    manifests,
    on_node,
    on_node_json,
    pods_by_name,
    policy_pods,
    restart_agent,
    trace,
)

from velvet.sandbox.cleanup import find_leftovers
from velvet.sandbox.naming import SandboxNames, node_config
from velvet.sources.etcd_endpoints import ENDPOINTS_PREFIX
from velvet.sources.etcd_nodes import NODES_PREFIX
from velvet.system.netns import NETNS_RUN_DIR, call_in_netns

pytestmark = pytest.mark.privileged

DEVICE = "velvet_vxlan"
VXLAN_PORT = 8472
STRANGER = "10.99.0.7"  # an inner source address no node's ipcache knows


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    """A three-node sandbox in tunnel mode with the echo pods (spread) and the far service."""
    with sandbox("tun", "--nodes", "3", "--routing", "tunnel") as box:
        box.apply(manifests())
        box.apply(FAR_SERVICE)
        box.wait_ready([f"mn/echo-{i}" for i in range(3)])
        yield box


@pytest.fixture(scope="module")
def pol(sb: Sandbox) -> dict[str, str]:
    """The pol pods ready, web / a / b on nodes 0 / 1 / 2; their IPs by name."""
    sb.apply(policy_pods())
    ips = sb.wait_ready(["pol/web", "pol/a", "pol/b"])
    return {key.split("/")[1]: ip for key, ip in ips.items()}


def in_node(sb: Sandbox, node: int, *argv: str) -> str:
    """Run a command in node `node`'s network namespace; its stdout."""
    netns = node_config(sb.name, node).names.node_netns
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True,
                          check=True).stdout


def tunnel_counters(sb: Sandbox, node: int) -> tuple[int, int]:
    """(tx, rx) packets of node `node`'s VXLAN device."""
    stats = "/sys/class/net/velvet_vxlan/statistics"
    out = in_node(sb, node, "cat", f"{stats}/tx_packets", f"{stats}/rx_packets")
    tx, rx = out.split()
    return int(tx), int(rx)


def test_nodes_route_through_the_vxlan_device_and_say_so(sb: Sandbox) -> None:
    """Test that every node has an external-mode VXLAN device on UDP 8472 with room for VXLAN below the
    underlay's MTU, as have the pods, routes each other node's pod CIDR through it (no route via a node
    IP), and that `velvet status` on every node names the mode."""
    for k in range(3):
        device = in_node(sb, k, "ip", "-d", "link", "show", DEVICE)
        assert "vxlan external" in device
        assert f"dstport {VXLAN_PORT}" in device
        assert " mtu 1450 " in device
        assert " mtu 1500 " in in_node(sb, k, "ip", "link", "show", "uplink0")
        routes = in_node(sb, k, "ip", "route", "show", "proto", "198").splitlines()
        assert sorted(routes) == [f"10.244.{j}.0/24 dev {DEVICE} " for j in range(3) if j != k]
        status = on_node_json(sb, k, "status")
        assert status["agent"]["routing"]["mode"] == "tunnel"
        text = on_node(sb, k, "status").stdout
        assert "Routing:       tunnel (vxlan velvet_vxlan, UDP 8472, VNI = source identity)" in text
    for i in range(3):
        assert " mtu 1450 " in sb.exec(f"mn/echo-{i}", "ip", "link", "show", "eth0").stdout


def test_pods_talk_tcp_and_udp_across_nodes_through_the_tunnel(sb: Sandbox) -> None:
    """Test that every echo pod reaches the others on other nodes over TCP and UDP, that the server sees
    the client's own pod IP, and that each exchange went through the tunnel: the client node's VXLAN
    device sent packets and the server node's received them."""
    pods = pods_by_name(sb)
    for i in range(3):
        for j in range(3):
            if i == j:
                continue
            here, there = (NODES.index(pods[f"echo-{n}"]["node"]) for n in (i, j))
            for url in (f"tcp://{pods[f'echo-{j}']['ip']}:8080", f"udp://{pods[f'echo-{j}']['ip']}:8081"):
                (tx0, _), (_, rx0) = tunnel_counters(sb, here), tunnel_counters(sb, there)
                reply = sb.query(f"mn/echo-{i}", url)
                assert reply is not None, f"echo-{i} on node {here} -> {url}"
                name, source = reply.split()
                assert name == f"echo-{j}"
                assert source.split(":")[0] == pods[f"echo-{i}"]["ip"]
                (tx1, _), (_, rx1) = tunnel_counters(sb, here), tunnel_counters(sb, there)
                assert tx1 > tx0, f"node {here} sent nothing through {DEVICE} for {url}"
                assert rx1 > rx0, f"node {there} received nothing through {DEVICE} for {url}"


def test_host_routing_delivers_tunnel_traffic_without_the_nodes_ip_stack(sb: Sandbox) -> None:
    """Test that in tunnel mode with host routing (BPF here) what comes out of the tunnel for a local pod
    goes straight to the pod's veth: pods talk across nodes in both directions while no node's IP stack
    forwards a packet (Ip ForwDatagrams unchanged everywhere)."""
    pods = pods_by_name(sb)
    assert on_node_json(sb, 0, "status")["agent"]["host_routing"]["mode"] == "BPF"
    before = [forwarded_datagrams(sb, k) for k in range(3)]
    for i, j in ((0, 1), (1, 0), (2, 1)):
        reply = sb.query(f"mn/echo-{i}", f"tcp://{pods[f'echo-{j}']['ip']}:8080")
        assert reply is not None, f"echo-{i} -> echo-{j}"
        assert reply.split()[0] == f"echo-{j}"
    assert [forwarded_datagrams(sb, k) for k in range(3)] == before


SINK = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9000))
s.listen(1)
c, _ = s.accept(); n = 0
while data := c.recv(1 << 16):
    n += len(data)
print(n)
"""
LISTENING = """
rows = [line.split() for line in open("/proc/net/tcp").readlines()[1:]]
print(any(r[1].endswith(":2328") and r[3] == "0A" for r in rows))
"""
SOURCE = """
import socket, sys
s = socket.create_connection((sys.argv[1], 9000), timeout=10); s.sendall(b"v" * 4_000_000); s.close()
"""


def test_bulk_tcp_crosses_the_tunnel(sb: Sandbox) -> None:
    """Test that 4 MB of TCP (full-size segments) from a pod on one node arrive whole at a pod on
    another through the tunnel."""
    pods = pods_by_name(sb)
    server = next(n for n in range(3) if pods[f"echo-{n}"]["node"] == NODES[1])
    client = next(n for n in range(3) if pods[f"echo-{n}"]["node"] == NODES[0])
    sink = subprocess.Popen(sb.argv("sandbox", "exec", f"mn/echo-{server}", "--", "python3", "-c", SINK),
                            stdout=subprocess.PIPE, text=True)
    try:
        eventually("the sink listening on port 9000",
                   lambda: sb.exec(f"mn/echo-{server}", "python3", "-c", LISTENING).stdout.strip() == "True")
        sent = sb.exec(f"mn/echo-{client}", "python3", "-c", SOURCE, pods[f"echo-{server}"]["ip"])
        assert sent.returncode == 0, sent.stderr
        out, _ = sink.communicate(timeout=30)
    finally:
        sink.kill()
    assert out.strip() == "4000000"


def test_cluster_ip_reaches_a_backend_on_another_node(sb: Sandbox) -> None:
    """Test that a ClusterIP Service whose only backend runs on another node answers over TCP and UDP
    from pods on both other nodes."""
    check_cluster_ip(sb)


def test_cluster_ip_reaches_a_backend_on_another_node_without_the_socket_lb(sb: Sandbox) -> None:
    """Test that the tc path of a ClusterIP (lxc_from_pod's translation) reaches a backend on another
    node through the tunnel, TCP and UDP."""
    check_cluster_ip_per_packet(sb)


def identities(sb: Sandbox) -> dict[str, int]:
    """The pol pods' identity numbers by app label (the cluster's, the same on every node)."""
    return {labels["k8s:app"]: n for n, labels in
            ((i["id"], i["labels"]) for i in on_node_json(sb, 0, "identity", "list"))
            if labels.get("k8s:io.kubernetes.pod.namespace") == "pol" and "k8s:app" in labels}


def flows(sb: Sandbox, node: int, *filters: str) -> list[dict[str, Any]]:
    """`velvet observe --last 200 FILTERS -o json` on one node."""
    done = on_node(sb, node, "observe", "--last", "200", *filters, "-o", "json")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_policy_selects_remote_peers_by_identity_in_both_directions(sb: Sandbox, pol: dict[str, str]) -> None:
    """Test that with web (node 0) taking ingress only from app=a on its named TCP port and a (node 1)
    sending only to app=web on that named port, over the tunnel: a reaches web, b (node 2) does not, a's
    UDP to web is denied, a cannot reach b, b still reaches a; web's node reports a's flow under a's
    identity and b's drop under b's."""
    sb.apply(CROSS_NODE_POLICIES)
    eventually("node 1 compiling a's egress",
               lambda: trace(sb, 1, "a", "b", "8080/tcp")["verdict"] == "DENIED")
    eventually("node 0 compiling web's ingress",
               lambda: not trace(sb, 0, "b", "web", "8080/tcp")["ingress"]["allowed"])
    web, a, b = (f"tcp://{pol[n]}:8080" for n in ("web", "a", "b"))
    reply = sb.query("pol/a", web)
    assert reply is not None
    assert reply.split()[0] == "web"
    assert sb.query("pol/b", web) is None
    assert sb.query("pol/a", f"udp://{pol['web']}:8081") is None
    assert sb.query("pol/a", b) is None
    assert sb.query("pol/b", a) is not None
    number = identities(sb)
    at_web = flows(sb, 0, "--to-pod", "pol/web", "--port", "8080")
    seen = {(f["source"]["identity"], f["verdict"]) for f in at_web
            if f.get("trace_observation_point") == "TO_ENDPOINT" or f["verdict"] == "DROPPED"}
    assert (number["a"], "FORWARDED") in seen
    assert (number["b"], "DROPPED") in seen


def vxlan_frame(vni: int, src: str, dst: str, sport: int, dport: int) -> bytes:
    """A VXLAN payload (header + inner Ethernet/IPv4/TCP SYN, checksums valid) with the given VNI."""
    def csum(data: bytes) -> int:
        total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        return ~total & 0xFFFF

    saddr, daddr = socket.inet_aton(src), socket.inet_aton(dst)
    segment = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    check = csum(saddr + daddr + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(segment)) + segment)
    segment = segment[:16] + struct.pack("!H", check) + segment[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), sport, 0, 64, socket.IPPROTO_TCP, 0,
                     saddr, daddr)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    inner = b"\x02\0\0\0\0\x01" + b"\x02\0\0\0\0\x02" + b"\x08\x00" + ip + segment
    return struct.pack("!II", 0x08 << 24, vni << 8) + inner


def test_the_receiver_takes_the_source_identity_from_the_vni(sb: Sandbox, pol: dict[str, str]) -> None:
    """Test that VXLAN packets sent from the external client on the underlay to web's node, carrying a
    TCP SYN from an address no ipcache knows, are admitted by web's policy (only app=a) when the VNI is
    a's identity and dropped (Policy denied) when it is b's: `velvet observe` on web's node shows each
    under its VNI's identity."""
    number = identities(sb)
    trials = {41001: number["a"], 41002: number["b"]}

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for sport, vni in trials.items():
                sock.sendto(vxlan_frame(vni, STRANGER, pol["web"], sport, 8080), ("192.168.77.2", VXLAN_PORT))

    call_in_netns(SandboxNames(sb.name).ext_netns, send)

    def verdicts() -> dict[int, tuple[int, str]]:
        found: dict[int, tuple[int, str]] = {}
        for f in flows(sb, 0, "--from-ip", STRANGER):
            port = f["l4"]["TCP"]["source_port"]
            if f.get("trace_observation_point") == "TO_ENDPOINT" or f["verdict"] == "DROPPED":
                found[port] = (f["source"]["identity"], f["verdict"])
        return found

    eventually("both crafted packets in web's node's flows", lambda: len(verdicts()) == 2)
    assert verdicts() == {41001: (number["a"], "FORWARDED"), 41002: (number["b"], "DROPPED")}


def test_a_restarted_agent_adopts_its_tunnel(sb: Sandbox) -> None:
    """Test that after kill -9 of node 1's agent its successor keeps the same VXLAN device (adopted, not
    made anew) and its predecessor's lease (node 1's key and its pods' endpoint keys are the very keys
    they were: never deleted, so no other node lost its route or ipcache entries for a moment), and pods
    on node 0 still reach node 1's pod through it."""
    before = in_node(sb, 1, "ip", "-o", "link", "show", DEVICE).split(":")[0]
    pods = pods_by_name(sb)
    far = next(n for n in range(3) if pods[f"echo-{n}"]["node"] == NODES[1])
    near = next(n for n in range(3) if pods[f"echo-{n}"]["node"] == NODES[0])
    far_ip = pods[f"echo-{far}"]["ip"]
    keys = {"node": etcd_keys(sb, NODES_PREFIX)[NODES[1]].create_revision,
            "endpoint": etcd_keys(sb, ENDPOINTS_PREFIX)[far_ip].create_revision}
    restart_agent(sb, 1)
    assert in_node(sb, 1, "ip", "-o", "link", "show", DEVICE).split(":")[0] == before
    done = sb.exec(f"mn/echo-{near}", "python3", "-m", "velvet.sandbox.echo", "--query", f"tcp://{far_ip}:8080",
                   "--timeout", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == f"echo-{far}"
    after = {"node": etcd_keys(sb, NODES_PREFIX).get(NODES[1]),
             "endpoint": etcd_keys(sb, ENDPOINTS_PREFIX).get(far_ip)}
    assert {what: kv.create_revision if kv else None for what, kv in after.items()} == keys


def test_sandbox_down_removes_every_node_and_its_tunnel(sb: Sandbox) -> None:
    """Test that `sandbox down` of the tunnel-mode sandbox removes every namespace (the VXLAN devices
    live in the nodes' namespaces) and leaves nothing of any node."""
    sb.velvet("sandbox", "down")
    assert find_leftovers(sb.name).empty
    assert not any(p.name.startswith(f"velvet-{sb.name}-") for p in NETNS_RUN_DIR.iterdir())
