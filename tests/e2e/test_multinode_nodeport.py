"""Test NodePort and LoadBalancer on three-node sandboxes (native, tunnel) reaching backends on other nodes.

One sandbox for the module: an echo pod pinned to each node (`at-<k>` on node k) and, for each, a
LoadBalancer Service (nodePorts on every node, an ingress IP) whose only backend is that pod. The
external client (192.168.77.1) sits on the nodes' segment: it reaches each node's IP directly, and
the LoadBalancer IPs through its default route, node 0. The echo server answers with its name and
the source it saw, so every answer shows both who served and whether the node SNATed. Probes use
connected sockets: a UDP answer from any other address than the one asked would not be received.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import yaml
from harness import Sandbox, echo_pod, namespace, sandbox
from test_multinode import eventually as poll_until

from velvet.datapath.structs import DropReason, SnatDir
from velvet.paths import AgentPaths
from velvet.sandbox import SandboxConfig, run_in_netns

pytestmark = pytest.mark.privileged

NS = "npx"
NODES = ("velvet-node", "velvet-node-1", "velvet-node-2")
NODE_IPS = ("192.168.77.2", "192.168.77.3", "192.168.77.4")
EXT_IP = "192.168.77.1"
LB_IPS = ("198.51.100.10", "198.51.100.11", "198.51.100.12")

# Queries from the external client, one process: argv[1] is a JSON list of URLs; prints the answers
# ("<pod> <source it saw>:<port>") or "ERR <errno name or exception>".
PROBE = r"""
import errno, json, socket, sys
out = []
for url in json.loads(sys.argv[1]):
    scheme, _, rest = url.partition("://")
    host, _, port = rest.rpartition(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if scheme == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(2.0)
    try:
        s.connect((host, int(port)))
        s.sendall(b"hello\n")
        out.append((s.makefile("rb").readline() if scheme == "tcp" else s.recv(65535)).decode().strip())
    except OSError as e:
        out.append("ERR " + (errno.errorcode.get(e.errno or 0) or type(e).__name__))
    finally:
        s.close()
print(json.dumps(out))
"""


def pinned_pod(name: str, node: int) -> str:
    """An echo pod (TCP 8080, UDP 8081) labelled app=<name>, pinned to node `node`."""
    pod = yaml.safe_load(echo_pod(NS, name, {"app": name}))
    pod["spec"]["nodeName"] = NODES[node]
    return yaml.safe_dump(pod)


def lb_service(name: str, app: str, ingress_ip: str, extra: str = "") -> str:
    """A LoadBalancer Service (TCP 80 -> 8080, UDP 81 -> 8081) for pods app=<app>."""
    return f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {NS}}}
spec:
  type: LoadBalancer
  selector: {{app: {app}}}
{extra}  ports:
  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}
  - {{name: udp, port: 81, targetPort: 8081, protocol: UDP}}
status: {{loadBalancer: {{ingress: [{{ip: {ingress_ip}}}]}}}}
"""


def on_node_json(sb: Sandbox, node: int, *args: str) -> Any:
    """Node `node`'s `velvet ARGS -o json` (through its own agent's socket), decoded."""
    socket = AgentPaths(sb.name, f"node{node}" if node else "").socket
    done = subprocess.run(sb.argv(*args, "-o", "json"), capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, "VELVET_API_SOCKET": str(socket)})
    assert done.stdout, done.stderr
    return json.loads(done.stdout)


eventually = partial(poll_until, timeout=30.0)  # this module's changes take up to 30 s


def node_ports(sb: Sandbox, name: str) -> tuple[int, int]:
    """The (TCP, UDP) nodePorts the store allocated to a service."""
    spec = sb.json("get", "svc", name, "-n", NS)["spec"]
    return spec["ports"][0]["nodePort"], spec["ports"][1]["nodePort"]


def programmed_everywhere(sb: Sandbox, name: str, port: int) -> None:
    """Wait until every node's agent has its own nodePort frontend of the service with one backend."""
    for k in range(3):
        frontend = f"{NODE_IPS[k]}:{port}/TCP"
        eventually(f"{name} {frontend} on node {k}", lambda k=k, frontend=frontend: any(  # type: ignore[misc]
            r["frontend"] == frontend and r["service"] == f"{NS}/{name}" and r["backends"]
            for r in on_node_json(sb, k, "service", "list")))


def ext_probe(sb: Sandbox, urls: list[str]) -> list[str]:
    """Query each URL once from the external client's namespace."""
    netns = SandboxConfig(sandbox=sb.name).names.ext_netns
    done = run_in_netns(netns, [sys.executable, "-c", PROBE, json.dumps(urls)], capture_output=True,
                        text=True, timeout=30 + 3 * len(urls), check=False)
    assert done.returncode == 0, done.stderr
    answers: list[str] = json.loads(done.stdout)
    return answers


def answer(text: str) -> tuple[str, str]:
    """(pod that answered, source address it saw) of an echo answer."""
    assert not text.startswith("ERR"), text
    pod, source = text.split()
    return pod, source.rsplit(":", 1)[0]


@pytest.fixture(scope="module", params=["native", "tunnel"])
def sb(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """Three nodes in each routing mode, at-<k> pinned to node k, a LoadBalancer Service `svc-<k>` per pod,
    all programmed."""
    with sandbox("npx", "--nodes", "3", "--routing", request.param) as box:
        docs = [namespace(NS), *(pinned_pod(f"at-{k}", k) for k in range(3)),
                *(lb_service(f"svc-{k}", f"at-{k}", LB_IPS[k]) for k in range(3))]
        box.apply("\n---\n".join(doc.strip().removeprefix("---").strip() for doc in docs))
        box.wait_ready([f"{NS}/at-{k}" for k in range(3)])
        for k in range(3):
            programmed_everywhere(box, f"svc-{k}", node_ports(box, f"svc-{k}")[0])
        yield box


def test_every_nodes_nodeport_reaches_backends_on_every_node(sb: Sandbox) -> None:
    """Test that the nodePorts of each node, TCP and UDP, reach the one backend wherever it runs: a
    backend on another node sees that node's IP as source (SNAT), a local backend the client's own."""
    urls, expected = [], []
    for k in range(3):
        tcp_port, udp_port = node_ports(sb, f"svc-{k}")
        for j in range(3):
            source = EXT_IP if j == k else NODE_IPS[j]
            for url in (f"tcp://{NODE_IPS[j]}:{tcp_port}", f"udp://{NODE_IPS[j]}:{udp_port}"):
                urls.append(url)
                expected.append((f"at-{k}", source))
    got = [answer(a) if not a.startswith("ERR") else a for a in ext_probe(sb, urls)]
    assert dict(zip(urls, got, strict=True)) == dict(zip(urls, expected, strict=True))
    nat = on_node_json(sb, 0, "bpf", "nat", "list")
    assert [e["value"]["snat_addr"] for e in nat["node_config"]] == [NODE_IPS[0]]
    pod_ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in sb.pods(NS)}
    replies = {(e["key"]["saddr"], e["key"]["daddr"], e["value"]["addr"])
               for e in nat["snat4"] if e["key"]["dir"] == SnatDir.IN}
    assert replies == {(pod_ips[f"at-{k}"], NODE_IPS[0], EXT_IP) for k in (1, 2)}


def test_a_pod_reaches_a_backend_through_every_nodes_nodeport(sb: Sandbox) -> None:
    """Test that a pod (at-0, node 0) reaches svc-1's backend through every node's TCP nodePort, node 1's
    included: there the uplink DNATs to its local backend, whose reply must leave with the nodePort as
    source (in tunnel mode before the VXLAN encapsulation, which hides it from the uplink's program)."""
    port = node_ports(sb, "svc-1")[0]
    urls = [f"tcp://{NODE_IPS[j]}:{port}" for j in range(3)]
    done = sb.exec(f"{NS}/at-0", "python3", "-c", PROBE, json.dumps(urls), timeout=30 + 3 * len(urls))
    assert done.returncode == 0, done.stderr
    got = dict(zip(urls, (a if a.startswith("ERR") else answer(a)[0] for a in json.loads(done.stdout)),
                   strict=True))
    assert got == dict.fromkeys(urls, "at-1")


def test_load_balancer_ip_reaches_backends_on_other_nodes(sb: Sandbox) -> None:
    """Test that the LoadBalancer IPs, which the client routes through node 0, answer over TCP and UDP
    from the backends on nodes 1 and 2 (seeing node 0 as source) and on node 0 (seeing the client)."""
    urls = [f"{proto}://{LB_IPS[k]}:{port}" for k in range(3) for proto, port in (("tcp", 80), ("udp", 81))]
    got = [answer(a) for a in ext_probe(sb, urls)]
    assert got == [(f"at-{k}", EXT_IP if k == 0 else NODE_IPS[0]) for k in range(3) for _ in range(2)]


def test_closed_port_is_refused_through_every_node(sb: Sandbox) -> None:
    """Test that a backend port nothing listens on is refused to the client through every node's nodePort:
    the backend's RST (TCP) and its ICMP port unreachable (UDP), translated back on the way, whether the
    backend is local or the node SNATed the connection."""
    sb.apply(f"""apiVersion: v1
kind: Service
metadata: {{name: deaf-1, namespace: {NS}}}
spec:
  type: NodePort
  selector: {{app: at-1}}
  ports:
  - {{name: tcp, port: 82, targetPort: 9999, protocol: TCP}}
  - {{name: udp, port: 83, targetPort: 9999, protocol: UDP}}
""")
    tcp_port, udp_port = node_ports(sb, "deaf-1")
    programmed_everywhere(sb, "deaf-1", tcp_port)
    urls = [f"{proto}://{NODE_IPS[j]}:{port}"
            for j in range(3) for proto, port in (("tcp", tcp_port), ("udp", udp_port))]
    assert dict(zip(urls, ext_probe(sb, urls), strict=True)) == {url: "ERR ECONNREFUSED" for url in urls}


def no_local_backend_drops(sb: Sandbox, node: int) -> int:
    """Packets node `node` dropped for want of a node-local backend (its `bpf metrics list`)."""
    total = 0
    for entry in on_node_json(sb, node, "bpf", "metrics", "list")["metrics"]:
        if entry["key"]["reason"] == DropReason.NO_LOCAL_BACKEND:
            values = entry["value"] if isinstance(entry["value"], list) else [entry["value"]]
            total += sum(v["packets"] for v in values)
    return total


def test_external_traffic_policy_local(sb: Sandbox) -> None:
    """Test that with externalTrafficPolicy Local the node running the backend answers on its nodePort
    and the backend sees the client's own IP, while the other nodes do not answer at all (no refusal:
    the packets are dropped for want of a local backend)."""
    sb.apply(lb_service("local-1", "at-1", "198.51.100.21", extra="  externalTrafficPolicy: Local\n"))
    tcp_port, udp_port = node_ports(sb, "local-1")
    programmed_everywhere(sb, "local-1", tcp_port)
    served = ext_probe(sb, [f"tcp://{NODE_IPS[1]}:{tcp_port}", f"udp://{NODE_IPS[1]}:{udp_port}"])
    assert [answer(a) for a in served] == [("at-1", EXT_IP)] * 2
    before = {j: no_local_backend_drops(sb, j) for j in (0, 2)}
    for j in (0, 2):
        silent = ext_probe(sb, [f"tcp://{NODE_IPS[j]}:{tcp_port}", f"udp://{NODE_IPS[j]}:{udp_port}"])
        assert silent == ["ERR TimeoutError"] * 2, f"node {j}"
        assert no_local_backend_drops(sb, j) > before[j], f"node {j}"


def ingress_only_from(cidr: str) -> str:
    """A NetworkPolicy letting into at-1 only TCP from `cidr`."""
    return f"""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: at-1-from, namespace: {NS}}}
spec:
  podSelector: {{matchLabels: {{app: at-1}}}}
  policyTypes: [Ingress]
  ingress:
  - from: [{{ipBlock: {{cidr: "{cidr}"}}}}]
    ports: [{{port: 8080, protocol: TCP}}]
"""


def test_policy_on_the_backend_sees_the_snat_node(sb: Sandbox) -> None:
    """Test that NetworkPolicy on a backend judges a connection through another node's nodePort by that
    node's IP, as with kube-proxy's SNAT: a policy admitting only the client's IP lets it in through the
    backend's own node but not through node 0; one admitting the nodes' network lets both in."""
    tcp_port, _ = node_ports(sb, "svc-1")
    via_own, via_other = f"tcp://{NODE_IPS[1]}:{tcp_port}", f"tcp://{NODE_IPS[0]}:{tcp_port}"
    sb.apply(ingress_only_from(f"{EXT_IP}/32"))
    eventually("node 1 enforcing the policy", lambda: ext_probe(sb, [via_other]) == ["ERR TimeoutError"])
    assert answer(ext_probe(sb, [via_own])[0]) == ("at-1", EXT_IP)
    sb.apply(ingress_only_from("192.168.77.0/24"))
    eventually("node 1 admitting the nodes' network",
               lambda: not ext_probe(sb, [via_other])[0].startswith("ERR"))
    got = [answer(a) for a in ext_probe(sb, [via_other, via_own])]
    assert got == [("at-1", NODE_IPS[0]), ("at-1", EXT_IP)]
