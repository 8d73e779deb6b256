"""Test that NodePort, ExternalIP and LoadBalancer frontends serve clients outside the node.

The client is the sandbox's external namespace (192.168.77.1, attached to the node's uplink
192.168.77.2); its packets meet the per-packet LB of node_from_uplink. A second node is emulated
by EndpointSlice entries whose nodeName is "other-node" and whose address is a real pod of this
node: the datapath could reach them, so only the traffic policy keeps them out (for eTP=Local).
One sandbox for the module; pods that are deleted gracefully come last in the module.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from harness import Sandbox, echo_pod, namespace, sandbox
from test_services import (
    NS,
    backend_addresses,
    cluster_ip,
    drop_count,
    endpoint_slice,
    eventually,
    ext_probe,
    frontends,
    pods_of,
    probe,
    service,
    service_spec,
    tcp_port,
    wait_backends,
)

from velvet.control.maglev import lookup_table
from velvet.sandbox import SandboxConfig
from velvet.sandbox.process import enter

pytestmark = pytest.mark.privileged

NODE_IP = "192.168.77.2"
EXT_IP = "192.168.77.1"
WEB = ["web-0", "web-1", "web-2"]
CLIENT = f"{NS}/client"
LUT_SIZE = 1021  # LB_MAGLEV_LUT_SIZE


IGNORE_SIGTERM = ("import signal, sys, runpy; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "sys.argv = ['echo', '--tcp', '8080', '--udp', '8081']; "
                  "runpy.run_module('velvet.sandbox.echo', run_name='__main__')")


def draining_pod(name: str, labels: str, probe_port: int = 8080) -> str:
    """An echo pod that ignores SIGTERM (keeps serving through its grace period)."""
    return f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NS}, labels: {{{labels}}}}}
spec:
  terminationGracePeriodSeconds: 600
  containers:
  - name: echo
    command: ["python3", "-c", "{IGNORE_SIGTERM}"]
    readinessProbe: {{tcpSocket: {{port: {probe_port}}}, periodSeconds: 1}}
"""


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    """The module's sandbox: web-0..2 (app=web), a client pod, a draining pod and an unready one."""
    with sandbox("svx") as box:
        box.apply(namespace(NS) + "".join(echo_pod(NS, n, {"app": "web"}) for n in WEB)
                  + echo_pod(NS, "client", {"app": "client"})
                  + draining_pod("drain", "app: drain") + draining_pod("unready", "app: unready", 9999))
        box.wait_ready([f"{NS}/{n}" for n in [*WEB, "client", "drain"]])
        yield box


@pytest.fixture(scope="module")
def ips(sb: Sandbox) -> dict[str, str]:
    """Pod name -> pod IP (the unready pod has one too)."""
    def found() -> dict[str, str]:
        got = {p["metadata"]["name"]: p["status"].get("podIP", "") for p in sb.pods()}
        return got if all(got.values()) and "unready" in got else {}
    result: dict[str, str] = eventually(found, "pod IPs")
    return result


def node_port(sb: Sandbox, name: str, index: int = 0) -> int:
    """The nodePort the store allocated to a service port."""
    port: int = service_spec(sb, name)["ports"][index]["nodePort"]
    return port


def test_should_be_able_to_create_a_functioning_nodeport_service(sb: Sandbox) -> None:
    """The nodePort answers on the node IP from outside and from a pod, and the ClusterIP too."""
    sb.apply(service("np", tcp_port(80, 8080), extra="  type: NodePort\n"))
    vip, port = cluster_ip(sb, "np"), node_port(sb, "np")
    assert 30000 <= port <= 32767
    wait_backends(sb, f"{NS}/np", f"{NODE_IP}:{port}/TCP", 3)
    outside = ext_probe(sb, f"tcp://{NODE_IP}:{port}", 20)
    assert set(pods_of(outside)) <= set(WEB), outside
    assert len(pods_of(outside)) > 1, outside
    assert {a.split()[1].split(":")[0] for a in outside} == {EXT_IP}
    assert set(pods_of(probe(sb, CLIENT, f"tcp://{NODE_IP}:{port}", 10))) <= set(WEB)
    assert set(pods_of(probe(sb, CLIENT, f"tcp://{vip}:80", 10))) <= set(WEB)


def test_should_support_basic_nodeport_udp_functionality(sb: Sandbox) -> None:
    """A UDP nodePort answers datagrams from outside (and the reply comes from the node IP)."""
    sb.apply(service("np-udp", tcp_port(80, 8081, "udp", "UDP"), extra="  type: NodePort\n"))
    port = node_port(sb, "np-udp")
    wait_backends(sb, f"{NS}/np-udp", f"{NODE_IP}:{port}/UDP", 3)
    answers = ext_probe(sb, f"udp://{NODE_IP}:{port}", 10, sport=41000, vary=True)
    assert set(pods_of(answers)) <= set(WEB), answers


def test_should_reject_a_nodeport_without_endpoints(sb: Sandbox) -> None:
    """From outside, a nodePort without endpoints refuses the connect at once (RST)."""
    sb.apply(service("np-empty", tcp_port(80, 8080), selector="app: nothing", extra="  type: NodePort\n"))
    port = node_port(sb, "np-empty")
    wait_backends(sb, f"{NS}/np-empty", f"{NODE_IP}:{port}/TCP", 0)
    assert ext_probe(sb, f"tcp://{NODE_IP}:{port}", 3, timeout=5.0) == ["ERR ECONNREFUSED"] * 3


def test_should_be_possible_to_connect_to_a_service_via_externalip_from_outside_the_node(sb: Sandbox) -> None:
    """An external client reaches spec.externalIPs:port through the node; source IP kept."""
    sb.apply(service("ext-ip", tcp_port(80, 8080, "tcp") + tcp_port(80, 8081, "udp", "UDP"),
                     extra="  externalIPs: [\"203.0.113.9\"]\n"))
    wait_backends(sb, f"{NS}/ext-ip", "203.0.113.9:80/UDP", 3)
    answers = ext_probe(sb, "tcp://203.0.113.9:80", 10)
    assert set(pods_of(answers)) <= set(WEB), answers
    assert {a.split()[1].split(":")[0] for a in answers} == {EXT_IP}
    assert set(pods_of(ext_probe(sb, "udp://203.0.113.9:80", 5))) <= set(WEB)


def test_should_have_session_affinity_work_for_nodeport_service(sb: Sandbox) -> None:
    """From outside, 15 connections (new source ports each) land on one backend."""
    sb.apply(service("np-sticky", tcp_port(80, 8080),
                     extra="  type: NodePort\n  sessionAffinity: ClientIP\n"))
    port = node_port(sb, "np-sticky")
    wait_backends(sb, f"{NS}/np-sticky", f"{NODE_IP}:{port}/TCP", 3)
    answers = ext_probe(sb, f"tcp://{NODE_IP}:{port}", 15)
    assert len(pods_of(answers)) == 1, answers
    assert set(pods_of(answers)) <= set(WEB)


def test_should_only_allow_access_from_service_loadbalancer_source_ranges(sb: Sandbox) -> None:
    """The LB ingress IP serves clients inside loadBalancerSourceRanges and drops the others."""
    def apply(ranges: str) -> None:
        sb.apply(service("lb", tcp_port(80, 8080), extra=(
            f"  type: LoadBalancer\n  loadBalancerSourceRanges: [{ranges}]\n"))
            + "status: {loadBalancer: {ingress: [{ip: 198.51.100.10}]}}\n")
    apply("\"192.168.77.0/30\"")
    row = wait_backends(sb, f"{NS}/lb", "198.51.100.10:80/TCP", 3)
    assert row["type"] == "LoadBalancer"
    assert "SOURCE_RANGE" in row["flags"]
    assert set(pods_of(ext_probe(sb, "tcp://198.51.100.10:80", 5))) <= set(WEB)
    apply("\"10.0.0.0/8\"")
    eventually(lambda: ext_probe(sb, "tcp://198.51.100.10:80", timeout=1.0) == ["ERR TimeoutError"],
               "the client outside the ranges to be dropped")
    assert drop_count(sb, 177) > 0  # DROP_LB_SOURCE_RANGE


def test_should_preserve_source_ip_and_use_only_local_endpoints_with_external_traffic_policy_local(
        sb: Sandbox, ips: dict[str, str]) -> None:
    """eTP=Local: outside traffic reaches only this node's endpoint and keeps the client's IP."""
    local, remote = (ips["web-0"], "velvet-node"), (ips["web-1"], "other-node")
    sb.apply(service("etp", tcp_port(80, 8080), selector=None,
                     extra="  type: NodePort\n  externalTrafficPolicy: Local\n")
             + endpoint_slice("etp-1", "etp", [local, remote], 8080))
    port = node_port(sb, "etp")
    row = wait_backends(sb, f"{NS}/etp", f"{NODE_IP}:{port}/TCP", 1)
    assert backend_addresses(row) == {f"{ips['web-0']}:8080"}
    answers = ext_probe(sb, f"tcp://{NODE_IP}:{port}", 10)
    assert pods_of(answers) == {"web-0": 10}, answers
    assert {a.split()[1].split(":")[0] for a in answers} == {EXT_IP}
    # pods are internal clients: the ClusterIP (iTP=Cluster) uses both endpoints
    assert set(pods_of(probe(sb, CLIENT, f"tcp://{cluster_ip(sb, 'etp')}:80", 20))) == {"web-0", "web-1"}


def test_should_drop_external_traffic_on_a_node_without_local_endpoints_with_external_traffic_policy_local(
        sb: Sandbox, ips: dict[str, str]) -> None:
    """eTP=Local with only a remote endpoint: outside traffic is dropped, pods still reach it."""
    remote = (ips["web-1"], "other-node")
    sb.apply(service("etp-remote", tcp_port(80, 8080), selector=None,
                     extra="  type: NodePort\n  externalTrafficPolicy: Local\n")
             + endpoint_slice("etp-remote-1", "etp-remote", [remote], 8080))
    port = node_port(sb, "etp-remote")
    wait_backends(sb, f"{NS}/etp-remote", f"{NODE_IP}:{port}/TCP", 0)
    assert ext_probe(sb, f"tcp://{NODE_IP}:{port}", timeout=2.0) == ["ERR TimeoutError"]
    assert drop_count(sb, 230) > 0  # DROP_NO_LOCAL_BACKEND
    assert pods_of(probe(sb, CLIENT, f"tcp://{cluster_ip(sb, 'etp-remote')}:80", 3)) == {"web-1": 3}
    # the same endpoint serves outside clients once the policy is Cluster
    sb.apply(service("etp-remote", tcp_port(80, 8080), selector=None, extra="  type: NodePort\n"))
    wait_backends(sb, f"{NS}/etp-remote", f"{NODE_IP}:{port}/TCP", 1)
    assert pods_of(ext_probe(sb, f"tcp://{NODE_IP}:{port}", 3)) == {"web-1": 3}


def _jhash_3words(a: int, b: int, c: int, initval: int) -> int:
    """The kernel's jhash_3words (lib/lb.h), for predicting the datapath's Maglev choice."""
    mask = 0xFFFFFFFF

    def rol(word: int, shift: int) -> int:
        return ((word << shift) | (word >> (32 - shift))) & mask
    initval = (initval + 0xDEADBEEF + (3 << 2)) & mask
    a, b, c = (a + initval) & mask, (b + initval) & mask, (c + initval) & mask
    c ^= b; c = (c - rol(b, 14)) & mask  # noqa: E702
    a ^= c; a = (a - rol(c, 11)) & mask  # noqa: E702
    b ^= a; b = (b - rol(a, 25)) & mask  # noqa: E702
    c ^= b; c = (c - rol(b, 16)) & mask  # noqa: E702
    a ^= c; a = (a - rol(c, 4)) & mask  # noqa: E702
    b ^= a; b = (b - rol(a, 14)) & mask  # noqa: E702
    c ^= b; c = (c - rol(b, 24)) & mask  # noqa: E702
    return c


def _as_loaded(ip: str) -> int:
    """An address as the datapath's u32 load of its network-order bytes (little-endian host)."""
    return int.from_bytes(socket.inet_aton(ip), "little")


def test_maglev_picks_the_backend_its_lookup_table_names_for_external_traffic(
        sb: Sandbox, ips: dict[str, str]) -> None:
    """Each new UDP flow from outside lands on the backend the frontend's Maglev table assigns."""
    sb.apply(service("mg", tcp_port(80, 8081, "udp", "UDP"), extra="  type: NodePort\n"))
    port = node_port(sb, "mg")
    row = wait_backends(sb, f"{NS}/mg", f"{NODE_IP}:{port}/UDP", 3)
    assert "MAGLEV" in row["flags"]
    by_address = {f"{ip}:8081": name for name, ip in ips.items()}
    members = sorted((b["address"].split(":")[0], 8081, 17) for b in row["backends"])
    owners = lookup_table([f"{a}:{p}/{proto}" for a, p, proto in members])
    sports = range(42000, 42060)
    answers = ext_probe(sb, f"udp://{NODE_IP}:{port}", len(sports), sport=sports[0], vary=True)
    predicted = []
    for sport in sports:
        words = ((socket.htons(sport) << 16) | socket.htons(port)) & 0xFFFFFFFF
        slot = _jhash_3words(_as_loaded(EXT_IP), _as_loaded(NODE_IP), words, 17) % LUT_SIZE
        predicted.append(by_address[f"{members[owners[slot]][0]}:8081"])
    assert [a.split()[0] for a in answers] == predicted


def _udp_stream(netns: str, url: str, sport: int, until: str) -> subprocess.Popen[str]:
    """One long-lived UDP socket sending from `sport` every 0.1 s until `until` answers (60 s at most)."""
    loop = f"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", {sport}))
s.settimeout(0.2)
host, port = "{url}".rsplit(":", 1)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    s.sendto(b"hello\\n", (host, int(port)))
    try:
        answer = s.recv(65535).decode().split()[0]
    except OSError:
        continue
    print(answer, flush=True)
    if answer == "{until}":
        break
    time.sleep(0.1)
"""
    return subprocess.Popen([sys.executable, "-c", loop], stdout=subprocess.PIPE, text=True,
                            preexec_fn=enter(netns, None))


def test_should_be_able_to_preserve_udp_traffic_when_server_pod_cycles_for_a_nodeport_service(
        sb: Sandbox) -> None:
    """One external UDP socket (fixed source port) keeps working when its only backend is replaced.

    The first backend's conntrack entry must not pin the flow to a pod that is gone.
    """
    sb.apply(echo_pod(NS, "udp-a", {"app": "udpcycle"}, grace=0)
             + service("udp-cycle", tcp_port(80, 8081, "udp", "UDP"), selector="app: udpcycle",
                       extra="  type: NodePort\n"))
    sb.wait_ready([f"{NS}/udp-a"])
    port = node_port(sb, "udp-cycle")
    wait_backends(sb, f"{NS}/udp-cycle", f"{NODE_IP}:{port}/UDP", 1)
    netns = SandboxConfig(sandbox=sb.name).names.ext_netns
    stream = _udp_stream(netns, f"{NODE_IP}:{port}", 43210, "udp-b")
    try:
        assert stream.stdout is not None
        assert stream.stdout.readline().strip() == "udp-a"
        sb.delete(echo_pod(NS, "udp-a", {"app": "udpcycle"}), "--grace-period", "0")
        eventually(lambda: not frontends(sb, f"{NS}/udp-cycle")[f"{NODE_IP}:{port}/UDP"]["backends"],
                   "udp-a to leave the service")
        sb.apply(echo_pod(NS, "udp-b", {"app": "udpcycle"}, grace=0))
        out, _ = stream.communicate(timeout=90)
    finally:
        if stream.poll() is None:
            stream.kill()
            stream.wait()
    assert out.split()[-1:] == ["udp-b"], out


def _start_draining(sb: Sandbox, pod: str, labels: str, probe_port: int = 8080) -> None:
    """Delete `pod` with a long grace period; return once its slice entries show it terminating."""
    sb.delete(draining_pod(pod, labels, probe_port), "--grace-period", "600")

    def terminating() -> bool:
        slices = sb.json("get", "endpointslices", "-n", NS)["items"]
        return any(e.get("targetRef", {}).get("name") == pod and e["conditions"].get("terminating")
                   for s in slices for e in s.get("endpoints") or [])
    eventually(terminating, f"{pod} to be terminating")


def test_should_fallback_to_terminating_endpoints_when_there_are_no_ready_endpoints(
        sb: Sandbox, ips: dict[str, str]) -> None:
    """Only a serving+terminating endpoint left: ClusterIP, nodePort (eTP Cluster/Local) and iTP=Local
    all still use it, marked terminating; the process really is still running its grace period.

    Upstream: "should fallback to terminating endpoints when there are no ready endpoints with
    externallTrafficPolicy=Cluster" / "... internalTrafficPolicy=Cluster" and the "local
    terminating endpoints" variants for eTP=Local and iTP=Local.
    """
    sb.apply(service("drain", tcp_port(80, 8080), selector="app: drain", extra="  type: NodePort\n")
             + service("drain-local", tcp_port(80, 8080), selector="app: drain", extra=(
                 "  type: NodePort\n  externalTrafficPolicy: Local\n  internalTrafficPolicy: Local\n")))
    ports = {name: node_port(sb, name) for name in ("drain", "drain-local")}
    for name in ports:
        wait_backends(sb, f"{NS}/{name}", f"{NODE_IP}:{ports[name]}/TCP", 1)
    _start_draining(sb, "drain", "app: drain")
    for name, port in ports.items():
        row = eventually(lambda n=name, p=port: next(  # type: ignore[misc]
            (r for r in [frontends(sb, f"{NS}/{n}").get(f"{NODE_IP}:{p}/TCP")]
             if r and [b["state"] for b in r["backends"]] == ["terminating"]), None), f"{name} terminating")
        assert backend_addresses(row) == {f"{ips['drain']}:8080"}
        assert pods_of(ext_probe(sb, f"tcp://{NODE_IP}:{port}", 3)) == {"drain": 3}
        assert pods_of(probe(sb, CLIENT, f"tcp://{cluster_ip(sb, name)}:80", 3)) == {"drain": 3}


def test_should_not_use_a_terminating_endpoint_while_a_ready_one_exists(sb: Sandbox) -> None:
    """kube-proxy's rule: ready endpoints first; the draining pod gets nothing new then.

    Its own draining pod and service (the fallback test's are not assumed), so it runs alone too.
    """
    sb.apply(draining_pod("drain-alone", "app: drain-alone")
             + service("drain-alone", tcp_port(80, 8080), selector="app: drain-alone"))
    sb.wait_ready([f"{NS}/drain-alone"])
    vip = cluster_ip(sb, "drain-alone")
    wait_backends(sb, f"{NS}/drain-alone", f"{vip}:80/TCP", 1)
    _start_draining(sb, "drain-alone", "app: drain-alone")
    eventually(lambda: pods_of(probe(sb, CLIENT, f"tcp://{vip}:80", 3)) == {"drain-alone": 3},
               "the terminating drain-alone to serve while it is the only endpoint")
    sb.apply(echo_pod(NS, "drain-peer", {"app": "drain-alone"}))
    sb.wait_ready([f"{NS}/drain-peer"])
    eventually(lambda: pods_of(probe(sb, CLIENT, f"tcp://{vip}:80", 10)) == {"drain-peer": 10},
               "only drain-peer to answer")


def test_should_connect_to_terminating_and_unready_endpoints_only_if_publish_not_ready_addresses(
        sb: Sandbox) -> None:
    """A never-ready pod: hidden without publishNotReadyAddresses, used with it, also once terminating.

    Upstream: "should be able to connect to terminating and unready endpoints if
    PublishNotReadyAddresses is true", "should not be able to connect to terminating and unready
    endpoints if PublishNotReadyAddresses is false", "should create endpoints for unready pods".
    """
    sb.apply(service("hidden", tcp_port(80, 8080), selector="app: unready", extra="  type: NodePort\n")
             + service("published", tcp_port(80, 8080), selector="app: unready",
                       extra="  type: NodePort\n  publishNotReadyAddresses: true\n"))
    hidden, published = node_port(sb, "hidden"), node_port(sb, "published")
    wait_backends(sb, f"{NS}/published", f"{NODE_IP}:{published}/TCP", 1)
    wait_backends(sb, f"{NS}/hidden", f"{NODE_IP}:{hidden}/TCP", 0)

    def check() -> None:
        assert probe(sb, CLIENT, f"tcp://{cluster_ip(sb, 'hidden')}:80", timeout=5.0) == ["ERR ECONNREFUSED"]
        assert ext_probe(sb, f"tcp://{NODE_IP}:{hidden}", timeout=5.0) == ["ERR ECONNREFUSED"]
        assert pods_of(probe(sb, CLIENT, f"tcp://{cluster_ip(sb, 'published')}:80", 3)) == {"unready": 3}
        assert pods_of(ext_probe(sb, f"tcp://{NODE_IP}:{published}", 3)) == {"unready": 3}
    check()
    _start_draining(sb, "unready", "app: unready", 9999)
    eventually(lambda: frontends(sb, f"{NS}/published")[f"{NODE_IP}:{published}/TCP"]["backends"][0]["state"]
               == "terminating", "published's backend to be terminating")
    check()
