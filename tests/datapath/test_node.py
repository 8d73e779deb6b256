"""Datapath tests of node.bpf.o (node_from_uplink / node_to_uplink) with BPF_PROG_TEST_RUN."""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import sys
import textwrap

import pytest
from fixtures_datapath import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, Loaded, node, sh
from packets import (
    ACK,
    HOST_MAC,
    IP_DF,
    POD_MAC,
    RST,
    SYN,
    TCP,
    UDP,
    checksums_ok,
    eth,
    ipv4,
    parse,
    tcp,
    tcp_segment,
    udp,
)
from seeding import compile_service, endpoint_slice, k8s_service, lb_change, set_identity

from velvet.control.services import ServiceCompiler
from velvet.datapath import build
from velvet.datapath.attach import Link, attach_tcx
from velvet.datapath.bpfobject import BpfObject
from velvet.datapath.structs import (
    LB_MAGLEV_LUT_SIZE,
    CtDir,
    CtFlag,
    DropReason,
    EventFlag,
    EventType,
    LbScope,
    MetricDir,
    ObsPoint,
    ReservedIdentity,
    SvcFlag,
)
from velvet.datapath.structs import ipv4 as ip_int
from velvet.datapath.tablemaps import TableMaps
from velvet.datapath.tables import SourceRangeKey, StaleBackend
from velvet.datapath.testrun import skb_ctx, test_run
from velvet.datapath.views import MAP_VIEWS, ConntrackMap, EventsRing, open_views
from velvet.model.service import EndpointPort, ServicePort
from velvet.system import mounts
from velvet.system.netns import in_netns

pytestmark = [pytest.mark.privileged]
__all__ = ["node"]  # the fixture, imported for pytest

CLIENT = "198.51.100.7"
NODE = "node-a"
NODE_IP, NODE_PORT = "172.18.0.2", 30080
LB_IP, LB_PORT = "203.0.113.10", 443
POD_B, POD_C, ID_B = "10.244.0.20", "10.244.0.30", 2000
REV = 9
FROM, TO = "node_from_uplink", "node_to_uplink"


def seed_frontend(tables: TableMaps, backends: list[tuple[int, str, int]], *, address: str = NODE_IP,
                  port: int = NODE_PORT, proto: int = TCP, flags: SvcFlag = SvcFlag.NODEPORT,
                  scope: LbScope = LbScope.EXT, rev: int = REV, affinity_timeout: int = 0) -> None:
    """An external frontend with backends (id, address, port) and its reverse NAT entry, written as the
    agent writes them, and the identities of pod B and of the node's address."""
    with lb_change(tables) as lb:
        lb.service(address, port, proto, backends, rev=rev, flags=flags, scope=scope,
                   affinity_timeout=affinity_timeout)
    set_identity(tables, f"{POD_B}/32", ID_B)
    set_identity(tables, f"{NODE_IP}/32", ReservedIdentity.HOST)


def test_nodeport_dnat_and_reverse_nat(node: Loaded) -> None:
    """Test that NodePort traffic from outside is DNATed to the backend keeping the client address, the
    flow sticks, and replies leaving the uplink come from the NodePort again."""
    seed_frontend(node.tables, [(1, POD_B, 8080)])
    result = node.run(FROM, tcp(CLIENT, NODE_IP, 50000, NODE_PORT, SYN))
    assert result.retval == TC_ACT_OK
    assert result.data_out == tcp(CLIENT, POD_B, 50000, 8080, SYN)
    assert checksums_ok(result.data_out)

    svc = node.conntrack(CLIENT, NODE_IP, 50000, NODE_PORT, TCP, CtDir.SERVICE)
    assert svc is not None
    assert svc.backend_id == 1
    assert svc.flags & CtFlag.NODEPORT
    np_entry = node.conntrack(CLIENT, POD_B, 50000, 8080, TCP, CtDir.NODEPORT)
    assert np_entry is not None
    assert (np_entry.nat_addr, np_entry.nat_port) == (ip_int(NODE_IP), NODE_PORT)
    events = node.events()
    assert len(events) == 1
    ev = events[0]
    assert (ev["type"], ev["obs_point"], ev["flags"] & EventFlag.NEW_CT) == (
        EventType.TRACE, ObsPoint.FROM_NETWORK, EventFlag.NEW_CT)
    assert (ev["orig_daddr"], ev["orig_dport"], ev["daddr"], ev["dport"]) == (
        ip_int(NODE_IP), NODE_PORT, ip_int(POD_B), 8080)
    assert (ev["src_identity"], ev["dst_identity"]) == (ReservedIdentity.WORLD, ID_B)

    second = node.run(FROM, tcp(CLIENT, NODE_IP, 50000, NODE_PORT, ACK))
    assert parse(second.data_out).dst == POD_B
    assert len(node.events()) == 0

    reply = node.run(TO, tcp(POD_B, CLIENT, 8080, 50000, SYN | ACK))
    assert reply.retval == TC_ACT_OK
    assert reply.data_out == tcp(NODE_IP, CLIENT, NODE_PORT, 50000, SYN | ACK)
    assert checksums_ok(reply.data_out)
    ev = node.events()
    assert len(ev) == 1
    assert ev[0]["obs_point"] == ObsPoint.TO_NETWORK
    assert ev[0]["src_identity"] == ID_B
    assert node.forwarded(MetricDir.INGRESS) == 2
    assert node.forwarded(MetricDir.EGRESS) == 1


def test_udp_nodeport(node: Loaded) -> None:
    """Test that a UDP NodePort is translated both ways with valid checksums."""
    seed_frontend(node.tables, [(1, POD_B, 5353)], proto=UDP)
    out = node.run(FROM, udp(CLIENT, NODE_IP, 50000, NODE_PORT, b"q")).data_out
    assert out == udp(CLIENT, POD_B, 50000, 5353, b"q")
    back = node.run(TO, udp(POD_B, CLIENT, 5353, 50000, b"a")).data_out
    assert back == udp(NODE_IP, CLIENT, NODE_PORT, 50000, b"a")


def test_unrelated_traffic_passes_untouched(node: Loaded) -> None:
    """Test that traffic to other addresses or ports, and replies of untranslated flows, are not touched."""
    seed_frontend(node.tables, [(1, POD_B, 8080)])
    for program, frame in ((FROM, tcp(CLIENT, NODE_IP, 50000, 22)), (FROM, tcp(CLIENT, POD_B, 50000, 8080)),
                           (TO, tcp(POD_B, CLIENT, 8080, 50001, SYN | ACK))):
        result = node.run(program, frame)
        assert (result.retval, result.data_out) == (TC_ACT_OK, frame)
    assert len(node.events()) == 0


def test_clusterip_is_not_exposed_on_the_uplink(node: Loaded) -> None:
    """Test that a ClusterIP-only frontend is not translated for traffic from outside."""
    seed_frontend(node.tables, [(1, POD_B, 8080)], address="10.96.0.10", port=80, flags=SvcFlag.CLUSTERIP)
    frame = tcp(CLIENT, "10.96.0.10", 50000, 80)
    assert node.run(FROM, frame).data_out == frame


@pytest.mark.parametrize(("client", "allowed"), [("198.51.100.7", True), ("198.51.100.200", True),
                                                 ("192.0.2.1", False)])
def test_load_balancer_source_ranges(node: Loaded, client: str, allowed: bool) -> None:
    """Test that a LoadBalancer frontend with source ranges only admits clients inside them."""
    seed_frontend(node.tables, [(1, POD_B, 8443)], address=LB_IP, port=LB_PORT,
                  flags=SvcFlag.LOADBALANCER | SvcFlag.SOURCE_RANGE)
    with lb_change(node.tables) as lb:
        for cidr in ("198.51.100.0/24", "10.0.0.0/8"):
            lb.src_range[SourceRangeKey(REV, cidr)] = None
    assert sorted(k.cidr for k in node.tables.read("lb4_src_range")) == ["10.0.0.0/8", "198.51.100.0/24"]
    result = node.run(FROM, tcp(client, LB_IP, 50000, LB_PORT))
    if allowed:
        assert (result.retval, parse(result.data_out).dst) == (TC_ACT_OK, POD_B)
    else:
        assert result.retval == TC_ACT_SHOT
        drops = node.events()
        assert len(drops) == 1
        assert drops[0]["drop_reason"] == DropReason.LB_SOURCE_RANGE
        assert node.packets(DropReason.LB_SOURCE_RANGE, MetricDir.INGRESS) == 1


def test_no_backend_is_refused_with_rst(node: Loaded) -> None:
    """Test that a SYN to a NodePort without backends is answered with a RST out of the uplink."""
    seed_frontend(node.tables, [])
    result = node.run(FROM, tcp(CLIENT, NODE_IP, 50000, NODE_PORT, SYN, seq=99))
    assert result.retval == TC_ACT_REDIRECT
    expected = eth(ipv4(NODE_IP, CLIENT, TCP, tcp_segment(NODE_IP, CLIENT, NODE_PORT, 50000, RST | ACK, seq=0,
                                                          ack=100, window=0), ident=0, frag=IP_DF),
                   dst=POD_MAC, src=HOST_MAC)
    assert result.data_out == expected
    assert node.packets(DropReason.NO_SERVICE_BACKEND, MetricDir.INGRESS) == 1


def test_etp_local_without_local_backend_drops(node: Loaded) -> None:
    """Test that eTP=Local with no node-local backend drops silently (no RST), as kube-proxy does."""
    seed_frontend(node.tables, [], flags=SvcFlag.NODEPORT | SvcFlag.LOCAL_ONLY_EXT | SvcFlag.TWO_SCOPES)
    seed_frontend(node.tables, [(1, POD_B, 8080)], flags=SvcFlag.NODEPORT | SvcFlag.TWO_SCOPES,
                  scope=LbScope.INT)
    result = node.run(FROM, tcp(CLIENT, NODE_IP, 50000, NODE_PORT))
    assert result.retval == TC_ACT_SHOT
    drops = node.events()
    assert len(drops) == 1
    assert drops[0]["drop_reason"] == DropReason.NO_LOCAL_BACKEND


def test_external_clients_use_the_external_scope(node: Loaded) -> None:
    """Test that traffic from outside is balanced over the external (eTP=Local) backend set."""
    flags = SvcFlag.NODEPORT | SvcFlag.LOCAL_ONLY_EXT | SvcFlag.TWO_SCOPES
    seed_frontend(node.tables, [(1, POD_B, 8080)], flags=flags)
    seed_frontend(node.tables, [(2, POD_C, 8080)], flags=flags, scope=LbScope.INT)
    seen = {parse(node.run(FROM, tcp(CLIENT, NODE_IP, 50000 + i, NODE_PORT)).data_out).dst for i in range(10)}
    assert seen == {POD_B}


def test_compiled_nodeport_service_balances_through_its_maglev_table(node: Loaded) -> None:
    """Test that a NodePort Service compiled by the agent's ServiceCompiler (Maglev for external
    traffic, the default) and written as the agent writes it is DNATed at the uplink on the node
    address, spreads new flows over both endpoints through the compiled table, and keeps each flow
    on its backend."""
    compiler = ServiceCompiler(NODE, [NODE_IP])
    web = k8s_service("web", [ServicePort(80, "TCP", "http", "http", NODE_PORT)], cluster_ip="10.96.0.10",
                      type="NodePort")
    compile_service(node.tables, compiler, web,
                    [endpoint_slice("web", [POD_B, POD_C], [EndpointPort(8080, "TCP", "http")], node=NODE)])
    assert len(node.tables.read("lb4_maglev")) == 2  # one per frontend: the node address and 0.0.0.0
    chosen = {}
    for i in range(40):
        frame = tcp(CLIENT, NODE_IP, 50000 + i, NODE_PORT)
        chosen[i] = parse(node.run(FROM, frame).data_out).dst
    assert set(chosen.values()) == {POD_B, POD_C}
    for i in range(40):
        again = node.run(FROM, tcp(CLIENT, NODE_IP, 50000 + i, NODE_PORT, ACK)).data_out
        assert parse(again).dst == chosen[i]
        assert parse(again).dport == 8080


def test_maglev_selects_through_the_table(node: Loaded) -> None:
    """Test that a Maglev frontend maps flows through its lookup table."""
    seed_frontend(node.tables, [(1, POD_B, 8080), (2, POD_C, 8080)], flags=SvcFlag.NODEPORT | SvcFlag.MAGLEV)
    with lb_change(node.tables) as lb:
        lb.maglev[REV] = (1, 2) * (LB_MAGLEV_LUT_SIZE // 2) + (1,)
    seen = {parse(node.run(FROM, tcp(CLIENT, NODE_IP, 50000 + i, NODE_PORT)).data_out).dst for i in range(40)}
    assert seen == {POD_B, POD_C}
    with lb_change(node.tables) as lb:
        lb.maglev[REV] = (2,) * LB_MAGLEV_LUT_SIZE
    seen = {parse(node.run(FROM, tcp(CLIENT, NODE_IP, 51000 + i, NODE_PORT)).data_out).dst for i in range(10)}
    assert seen == {POD_C}


def test_session_affinity_by_client_address(node: Loaded) -> None:
    """Test that ClientIP affinity keeps one external client on one backend."""
    seed_frontend(node.tables, [(1, POD_B, 8080), (2, POD_C, 8080)],
                  flags=SvcFlag.NODEPORT | SvcFlag.AFFINITY, affinity_timeout=60)
    seen = {parse(node.run(FROM, tcp(CLIENT, NODE_IP, 50000 + i, NODE_PORT)).data_out).dst for i in range(15)}
    assert len(seen) == 1
    remembered = node.affinity(CLIENT, REV)
    assert remembered is not None
    assert remembered.backend_id == (1 if seen == {POD_B} else 2)


def test_nodeport_wildcard(node: Loaded) -> None:
    """Test that a 0.0.0.0 NodePort frontend serves the node's addresses; replies carry the address used."""
    seed_frontend(node.tables, [(1, POD_B, 8080)], address="0.0.0.0")
    assert node.run(FROM, tcp(CLIENT, NODE_IP, 50000, NODE_PORT)).data_out == tcp(CLIENT, POD_B, 50000, 8080)
    assert node.run(TO, tcp(POD_B, CLIENT, 8080, 50000, SYN | ACK)).data_out == tcp(
        NODE_IP, CLIENT, NODE_PORT, 50000, SYN | ACK)
    other = tcp(CLIENT, "172.18.0.99", 50000, NODE_PORT)
    assert node.run(FROM, other).data_out == other


def test_stale_backend_conntrack_flush(node: Loaded) -> None:
    """Test that a frontend's flow stays on a backend it dropped (still in lb4_backends, e.g. serving
    another frontend) until the agent flushes that stale backend; the next datagram then chooses again."""
    seed_frontend(node.tables, [(1, POD_B, 53)], proto=UDP)
    assert parse(node.run(FROM, udp(CLIENT, NODE_IP, 50000, NODE_PORT)).data_out).dst == POD_B
    with lb_change(node.tables) as lb:
        lb.backend(2, POD_C, 53, UDP)
        lb.frontend(NODE_IP, NODE_PORT, UDP, [2], rev=REV, flags=SvcFlag.NODEPORT)
    assert parse(node.run(FROM, udp(CLIENT, NODE_IP, 50000, NODE_PORT)).data_out).dst == POD_B  # still pinned
    node.tables.flush_backends([StaleBackend(NODE_IP, NODE_PORT, UDP, 1, POD_B, 53)])
    assert node.conntrack(CLIENT, NODE_IP, 50000, NODE_PORT, UDP, CtDir.SERVICE) is None
    assert node.conntrack(CLIENT, POD_B, 50000, 53, UDP, CtDir.NODEPORT) is None
    assert parse(node.run(FROM, udp(CLIENT, NODE_IP, 50000, NODE_PORT)).data_out).dst == POD_C


def test_objects_share_maps_through_one_pin_directory() -> None:
    """Test that lxc, node and sock objects loaded with one pin directory re-adopt the same maps, and
    that views opened from the pin directory see what the programs see."""
    pin_dir = mounts.ensure_bpffs() / f"velvet-test-{secrets.token_hex(4)}"
    try:
        with contextlib.ExitStack() as stack:
            objects = {}
            for name in ("lxc", "node", "sock"):
                obj = stack.enter_context(BpfObject.open(build.object_path(name), pin_dir=pin_dir))
                objects[name] = obj.load()
            ids = {name: {m: v.info.id for m, v in obj.maps().items()} for name, obj in objects.items()}
            assert ids["lxc"] == ids["node"] == ids["sock"]
            with open_views(pin_dir) as pinned:
                seed_frontend(TableMaps(pinned), [(1, POD_B, 8080)])
                with open_views(objects["node"]) as views:
                    result = test_run(objects["node"].program(FROM), tcp(CLIENT, NODE_IP, 50000, NODE_PORT),
                                      ctx=skb_ctx())
                    assert parse(result.data_out).dst == POD_B
                    assert len(views.get(EventsRing).read()) == 1
                assert pinned.get(ConntrackMap).map.count() == 2
                assert set(MAP_VIEWS) - {"proc_events"} == set(pinned.by_name)
            with open_views(pin_dir, skip=(EventsRing.name,)) as without:  # a ring its own reader maps
                assert set(without.by_name) == set(MAP_VIEWS) - {"proc_events", EventsRing.name}
    finally:
        for pin in pin_dir.glob("*"):
            pin.unlink()
        pin_dir.rmdir()


def test_real_uplink_nodeport(node: Loaded) -> None:
    """Test on real veths (client netns -- uplink -- node netns -- pod netns) that a NodePort reaches the
    backend with the client address kept, replies come back from the NodePort, and a NodePort without
    backends is refused at once with a RST."""
    tag = secrets.token_hex(3)
    client_ns, node_ns, pod_ns = (f"velvet-dp-{tag}-{x}" for x in "cnp")
    uplink_ip, client_ip = "198.51.100.1", "198.51.100.7"
    pin_dir = mounts.ensure_bpffs() / f"velvet-test-{tag}"
    links: list[Link] = []
    server: subprocess.Popen[str] | None = None
    try:
        for ns in (client_ns, node_ns, pod_ns):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", node_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # client -- uplink
        sh("ip", "-n", node_ns, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns",
           client_ns)
        sh("ip", "-n", node_ns, "addr", "add", f"{uplink_ip}/24", "dev", "up0")
        sh("ip", "-n", node_ns, "link", "set", "up0", "up")
        sh("ip", "-n", client_ns, "addr", "add", f"{client_ip}/24", "dev", "eth0")
        sh("ip", "-n", client_ns, "link", "set", "eth0", "up")
        # node -- pod B
        sh("ip", "-n", node_ns, "link", "add", "h0", "type", "veth", "peer", "name", "eth0", "netns", pod_ns)
        sh("ip", "-n", node_ns, "addr", "add", "169.254.1.1/32", "dev", "h0")
        sh("ip", "-n", node_ns, "link", "set", "h0", "up")
        sh("ip", "-n", node_ns, "route", "add", f"{POD_B}/32", "dev", "h0")
        sh("ip", "-n", pod_ns, "addr", "add", f"{POD_B}/32", "dev", "eth0")
        sh("ip", "-n", pod_ns, "link", "set", "eth0", "up")
        sh("ip", "-n", pod_ns, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
        sh("ip", "-n", pod_ns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
        ifindex = int(sh("ip", "netns", "exec", node_ns, "cat", "/sys/class/net/up0/ifindex"))
        with in_netns(node_ns):
            links.append(attach_tcx(node.obj.program(FROM), ifindex, "ingress", pin_dir / "up0-from"))
            links.append(attach_tcx(node.obj.program(TO), ifindex, "egress", pin_dir / "up0-to"))
        seed_frontend(node.tables, [(1, POD_B, 8080)], address=uplink_ip)
        seed_frontend(node.tables, [], address=uplink_ip, port=30081, rev=10)

        server = subprocess.Popen(
            ["ip", "netns", "exec", pod_ns, sys.executable, "-c", textwrap.dedent("""
                import socket
                srv = socket.socket(); srv.bind(("0.0.0.0", 8080)); srv.listen(); print("up", flush=True)
                while True:
                    conn, peer = srv.accept(); conn.sendall(peer[0].encode()); conn.close()
            """)], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "up"
        out = json.loads(sh("ip", "netns", "exec", client_ns, sys.executable, "-c", textwrap.dedent(f"""
            import errno, json, socket, time
            out = {{}}
            c = socket.create_connection(("{uplink_ip}", {NODE_PORT}), timeout=3)
            out["peer"], out["seen_by_server"] = c.getpeername(), c.recv(100).decode()
            start = time.monotonic()
            try:
                socket.create_connection(("{uplink_ip}", 30081), timeout=3)
            except OSError as exc:
                out["refused"] = errno.errorcode[exc.errno]
            out["seconds"] = time.monotonic() - start
            print(json.dumps(out))
        """)))
        assert out["peer"] == [uplink_ip, NODE_PORT]
        assert out["seen_by_server"] == client_ip
        assert out["refused"] == "ECONNREFUSED"
        assert out["seconds"] < 2
    finally:
        if server is not None:
            server.kill()
            server.wait()
        for link in links:
            link.detach()
        if pin_dir.exists():
            pin_dir.rmdir()
        for ns in (client_ns, node_ns, pod_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
