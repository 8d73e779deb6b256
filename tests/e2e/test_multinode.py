"""Test a three-node sandbox on one etcd with native routing, through the CLI as a user drives it.

One sandbox (`sandbox up --nodes 3`) for the story, torn down whatever happens: nodes registered in
etcd, pods spread over the nodes, pod-to-pod TCP and UDP between nodes, a ClusterIP Service whose only
backend is on another node, identities that mean the same on every node and NetworkPolicy that holds
across nodes, an agent restart that does not take its node out of the cluster, and a removed node's
routes, ipcache entries, backends and endpoint keys gone from the others. A second sandbox shows
that `sandbox down` leaves nothing of any node.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from harness import Sandbox, echo_pod, namespace, sandbox

from velvet.api.client import ApiClient
from velvet.paths import BPFFS_ROOT, RUN_ROOT, STATE_ROOT, AgentPaths
from velvet.sandbox.cleanup import find_leftovers, read_pid
from velvet.sandbox.etcd import LAN_CLIENT_URL
from velvet.sandbox.naming import SandboxNames, node_config
from velvet.sandbox.process import alive
from velvet.sources.etcd_client import EtcdClient, KeyValue
from velvet.sources.etcd_endpoints import ENDPOINTS_PREFIX
from velvet.sources.etcd_nodes import NODES_PREFIX
from velvet.system.netns import NETNS_RUN_DIR, in_netns

pytestmark = pytest.mark.privileged

NODES = ("velvet-node", "velvet-node-1", "velvet-node-2")
FAR_SERVICE = """apiVersion: v1
kind: Service
metadata: {name: far, namespace: mn}
spec:
  selector: {app: far}
  ports: [{name: tcp, port: 80, targetPort: 8080}, {name: udp, port: 53, targetPort: 8081, protocol: UDP}]
"""
PINNED = """apiVersion: v1
kind: Pod
metadata: {name: pinned, namespace: mn, labels: {app: pinned}}
spec:
  nodeName: velvet-node-1
  terminationGracePeriodSeconds: 1
  containers:
  - name: sleep
    command: [python3, -c, "import time; time.sleep(3600)"]
"""

CROSS_NODE_POLICIES = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-a, namespace: pol}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: a}}}]
    ports: [{port: tcp-echo, protocol: TCP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-to-web, namespace: pol}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: tcp-echo, protocol: TCP}]
"""


def manifests() -> str:
    """The namespace, three echo pods (spread by the scheduler) and a pod pinned by spec.nodeName."""
    pods = [echo_pod("mn", f"echo-{i}", {"app": "far" if i == 2 else "near"}) for i in range(3)]
    return "\n---\n".join(doc.strip() for doc in (namespace("mn"), *pods, PINNED))


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    """A three-node sandbox with the echo pods ready."""
    with sandbox("mn", "--nodes", "3") as box:
        box.apply(manifests())
        box.apply(FAR_SERVICE)
        box.wait_ready([f"mn/echo-{i}" for i in range(3)])
        yield box
EVERY_SERVICE = """apiVersion: v1
kind: Service
metadata: {name: every, namespace: mn}
spec:
  selector: {app: every}
  ports: [{name: tcp, port: 80, targetPort: 8080}]
"""


def pinned_pods(ns: str, placed: tuple[tuple[str, int], ...], labels: dict[str, str] | None = None) -> str:
    """Echo pods (name, node index) pinned to their node by spec.nodeName; labels app=<name> unless given."""
    docs = []
    for name, node in placed:
        pod = yaml.safe_load(echo_pod(ns, name, labels or {"app": name}))
        pod["spec"]["nodeName"] = NODES[node]
        docs.append(yaml.safe_dump(pod))
    return "\n---\n".join(doc.strip().removeprefix("---").strip() for doc in docs)


def policy_pods() -> str:
    """Namespace pol: echo pods web on node 0, a on node 1, b on node 2 (pinned by spec.nodeName)."""
    return namespace("pol").strip() + "\n---\n" + pinned_pods("pol", (("web", 0), ("a", 1), ("b", 2)))


def on_node(sb: Sandbox, node: int, *args: str) -> subprocess.CompletedProcess[str]:
    """`velvet ARGS` against node `node`'s agent (its socket, as a user on that node reaches it)."""
    socket = AgentPaths(sb.name, f"node{node}" if node else "").socket
    return subprocess.run(sb.argv(*args), capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "VELVET_API_SOCKET": str(socket)})


def on_node_json(sb: Sandbox, node: int, *args: str) -> Any:
    """A node's `velvet ARGS -o json`, decoded."""
    done = on_node(sb, node, *args, "-o", "json")
    assert done.stdout, done.stderr
    return json.loads(done.stdout)


def label_identities(sb: Sandbox, node: int) -> dict[int, dict[str, str]]:
    """`velvet identity list` of one node: the label identities (no reserved, no node-local CIDR ones)."""
    return {i["id"]: i["labels"] for i in on_node_json(sb, node, "identity", "list")
            if 256 <= i["id"] < 1 << 24}


def eventually(what: str, ok: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `ok` until true; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"{what} not within {timeout:.0f} s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def pol(sb: Sandbox) -> dict[str, str]:
    """The pol pods ready, web / a / b on nodes 0 / 1 / 2; their IPs by name."""
    sb.apply(policy_pods())
    ips = sb.wait_ready(["pol/web", "pol/a", "pol/b"])
    return {key.split("/")[1]: ip for key, ip in ips.items()}


def velvet_routes(sb: Sandbox, node: int) -> dict[str, str]:
    """Velvet's routes (proto 198) in node `node`'s namespace: destination -> gateway."""
    out = subprocess.run(["ip", "netns", "exec", node_config(sb.name, node).names.node_netns,
                          "ip", "route", "show", "proto", "198"], capture_output=True, text=True, check=True)
    return {fields[0]: fields[2] for line in out.stdout.splitlines() if (fields := line.split())}


def pods_by_name(sb: Sandbox) -> dict[str, dict[str, str]]:
    """Each pod's node and IP."""
    return {p["metadata"]["name"]: {"node": p["spec"]["nodeName"], "ip": p["status"].get("podIP", "")}
            for p in sb.pods("mn")}


def test_nodes_are_registered_with_their_pod_cidrs(sb: Sandbox) -> None:
    """Test that `get nodes -o json` lists the three nodes as v1 Nodes with podCIDR and InternalIP."""
    nodes = sb.json("get", "nodes")["items"]
    seen = {n["metadata"]["name"]: (n["spec"]["podCIDR"], n["spec"]["podCIDRs"],
                                    [a["address"] for a in n["status"]["addresses"]
                                     if a["type"] == "InternalIP"])
            for n in nodes}
    assert seen == {
        "velvet-node": ("10.244.0.0/24", ["10.244.0.0/24"], ["192.168.77.2"]),
        "velvet-node-1": ("10.244.1.0/24", ["10.244.1.0/24"], ["192.168.77.3"]),
        "velvet-node-2": ("10.244.2.0/24", ["10.244.2.0/24"], ["192.168.77.4"]),
    }
    assert all(n["kind"] == "Node" and n["apiVersion"] == "v1" for n in nodes)
    table = sb.velvet("get", "nodes").stdout.splitlines()
    assert table[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert [line.split()[:2] for line in table[1:]] == [[n, "Ready"] for n in NODES]


def test_every_node_routes_the_others_pod_cidrs(sb: Sandbox) -> None:
    """Test that each node has a route to every other node's pod CIDR via its IP, and none to its own."""
    for k in range(3):
        want = {f"10.244.{j}.0/24": f"192.168.77.{2 + j}" for j in range(3) if j != k}
        assert velvet_routes(sb, k) == want


def test_pods_are_spread_and_node_name_is_honoured(sb: Sandbox) -> None:
    """Test that pods without spec.nodeName land one per node, each in its node's pod CIDR, and a pod
    naming its node runs there."""
    pods = pods_by_name(sb)
    assert sorted(pods[f"echo-{i}"]["node"] for i in range(3)) == sorted(NODES)
    for i in range(3):
        node = NODES.index(pods[f"echo-{i}"]["node"])
        assert pods[f"echo-{i}"]["ip"].startswith(f"10.244.{node}.")
    assert pods["pinned"]["node"] == "velvet-node-1"


def test_pods_talk_tcp_and_udp_across_nodes(sb: Sandbox) -> None:
    """Test that every echo pod reaches the others (on other nodes) over TCP and UDP, and that the
    server sees the client's own pod IP (routed, not translated)."""
    pods = pods_by_name(sb)
    for i in range(3):
        for j in range(3):
            if i == j:
                continue
            for url in (f"tcp://{pods[f'echo-{j}']['ip']}:8080", f"udp://{pods[f'echo-{j}']['ip']}:8081"):
                reply = sb.query(f"mn/echo-{i}", url)
                assert reply is not None, f"echo-{i} on {pods[f'echo-{i}']['node']} -> {url}"
                name, source = reply.split()
                assert name == f"echo-{j}"
                assert source.split(":")[0] == pods[f"echo-{i}"]["ip"]


def forwarded_datagrams(sb: Sandbox, node: int) -> int:
    """Ip ForwDatagrams of node `node` (/proc/net/snmp in its namespace): packets its IP stack forwarded."""
    out = subprocess.run(["ip", "netns", "exec", node_config(sb.name, node).names.node_netns, "cat",
                          "/proc/net/snmp"], capture_output=True, text=True, check=True).stdout
    header, values = (line.split() for line in out.splitlines() if line.startswith("Ip:"))
    return int(values[header.index("ForwDatagrams")])


def test_host_routing_forwards_pod_traffic_without_the_nodes_ip_stack(sb: Sandbox) -> None:
    """Test that with host routing (auto: BPF on this kernel, as `velvet status` says on every node) pods
    on different nodes talk TCP and UDP in both directions while no node's IP stack forwards a packet
    (Ip ForwDatagrams unchanged everywhere: the tc programs redirected requests and replies), and that
    the flows are still recorded, by the client's node and by the server's."""
    for k in range(3):
        assert on_node_json(sb, k, "status")["agent"]["host_routing"] == {"mode": "BPF", "requested": "auto"}
        assert "Host Routing:  BPF" in on_node(sb, k, "status").stdout.splitlines()
    pods = pods_by_name(sb)
    before = [forwarded_datagrams(sb, k) for k in range(3)]
    for i, j in ((0, 1), (1, 0), (1, 2), (2, 0)):
        for url in (f"tcp://{pods[f'echo-{j}']['ip']}:8080", f"udp://{pods[f'echo-{j}']['ip']}:8081"):
            reply = sb.query(f"mn/echo-{i}", url)
            assert reply is not None, f"echo-{i} -> {url}"
            assert reply.split()[0] == f"echo-{j}"
    assert [forwarded_datagrams(sb, k) for k in range(3)] == before
    flows = [json.loads(line) for line in sb.velvet("observe", "-o", "json", "--last", "2000", "--protocol",
                                                    "tcp").stdout.splitlines()]
    seen_by = {f["node_name"] for f in flows if f["IP"]["source"] == pods["echo-0"]["ip"]
               and f["IP"]["destination"] == pods["echo-1"]["ip"]}
    assert seen_by == {pods["echo-0"]["node"], pods["echo-1"]["node"]}


def check_far_service(sb: Sandbox, query: Callable[[str, str], str | None], how: str) -> None:
    """The far Service (its backend echo-2) answers TCP and UDP from the other nodes' pods, each asked
    through `query(pod, url)`."""
    far = sb.json("get", "services", "far", "-n", "mn")
    vip = (far["items"][0] if "items" in far else far)["spec"]["clusterIP"]
    for client in ("echo-0", "echo-1"):
        for url in (f"tcp://{vip}:80", f"udp://{vip}:53"):
            reply = query(client, url)
            assert reply is not None, f"{client} -> {url} {how}"
            assert reply.split()[0] == "echo-2"


def check_cluster_ip(sb: Sandbox) -> None:
    """The far Service answers pods through the socket LB (the connect is translated)."""
    check_far_service(sb, lambda pod, url: sb.query(f"mn/{pod}", url), "through the socket LB")


def query_per_packet(sb: Sandbox, pod: str, url: str) -> str | None:
    """Ask an echo server from mn/`pod`'s network namespace but from outside its cgroup: the socket LB
    (attached to the node's cgroup) does not see the connect, so a Service address meets the per-packet
    LB of lxc_from_pod."""
    node = NODES.index(pods_by_name(sb)[pod]["node"])
    netns = node_config(sb.name, node).names.pod("mn", pod).netns
    done = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "velvet.sandbox.echo",
                           "--query", url, "--timeout", "2"], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def check_cluster_ip_per_packet(sb: Sandbox) -> None:
    """The far Service answers without the socket LB: lxc_from_pod translates, the packets cross nodes,
    lxc_to_pod reverses the translation."""
    check_far_service(sb, lambda pod, url: query_per_packet(sb, pod, url), "without the socket LB")


def test_cluster_ip_reaches_a_backend_on_another_node(sb: Sandbox) -> None:
    """Test that a ClusterIP Service whose only backend runs on another node answers over TCP and UDP
    from pods on both other nodes."""
    check_cluster_ip(sb)


def test_cluster_ip_reaches_a_backend_on_another_node_without_the_socket_lb(sb: Sandbox) -> None:
    """Test that the tc path of a ClusterIP reaches a backend on another node over TCP and UDP."""
    check_cluster_ip_per_packet(sb)


def restart_agent(sb: Sandbox, node: int) -> None:
    """kill -9 node `node`'s agent and wait until its supervisor's new one answers."""
    paths = AgentPaths(sb.name, f"node{node}" if node else "")
    old = read_pid(paths.run_dir / "agent.pid")
    assert old is not None
    os.kill(old, signal.SIGKILL)
    pid_file = paths.run_dir / "agent.pid"
    eventually(f"node {node}'s agent restarting",
               lambda: read_pid(pid_file) not in (None, old) and ApiClient(paths.socket).healthy(),
               timeout=30)


def test_identities_are_the_same_on_every_node(sb: Sandbox, pol: dict[str, str]) -> None:
    """Test that `velvet identity list` on each of the three nodes shows the same label identities, one
    per label set, even on a node whose agent restarted and met the pods in another order (z was applied
    before y), and that each node's ipcache maps every pod of every node to that number and the other
    nodes' IPs to remote-node."""
    sb.apply(echo_pod("pol", "z", {"app": "z"}))
    sb.apply(echo_pod("pol", "y", {"app": "y"}))
    sb.wait_ready(["pol/z", "pol/y"])
    restart_agent(sb, 2)
    eventually("the same identities on every node",
               lambda: label_identities(sb, 0) == label_identities(sb, 1) == label_identities(sb, 2))
    number = {labels["k8s:app"]: n for n, labels in label_identities(sb, 2).items()
              if labels.get("k8s:io.kubernetes.pod.namespace") == "pol"}
    assert sorted(number) == ["a", "b", "web", "y", "z"]
    assert len(set(number.values())) == 5
    for k in range(3):
        dump = on_node_json(sb, k, "bpf", "ipcache", "list")["ipcache"]
        ipcache = {f"{e['key']['ip']}/{e['key']['prefixlen']}": e["value"]["identity"] for e in dump}
        assert {app: ipcache.get(f"{ip}/32") for app, ip in pol.items()} == \
            {app: number[app] for app in pol}, f"node {k}"
        for j in range(3):
            assert ipcache[f"192.168.77.{2 + j}/32"] == (1 if j == k else 6), f"node {k}: node {j}'s IP"


def trace(sb: Sandbox, node: int, src: str, dst: str, port: str) -> Any:
    """`velvet policy trace` on one node, as JSON."""
    return on_node_json(sb, node, "policy", "trace", "--from", f"pol/{src}", "--to", f"pol/{dst}",
                        "--port", port)


def test_policy_selects_remote_peers_by_identity_in_both_directions(sb: Sandbox, pol: dict[str, str]) -> None:
    """Test that with web (node 0) taking ingress only from app=a on its named TCP port, and a (node 1)
    sending only to app=web on that named port: a reaches web over TCP, b (node 2) does not, a's UDP to
    web is denied, a cannot reach b, b still reaches a; `policy trace` on each node says the same."""
    sb.apply(CROSS_NODE_POLICIES)
    eventually("node 1 compiling a's egress",
               lambda: trace(sb, 1, "a", "b", "8080/tcp")["verdict"] == "DENIED")
    web, a, b = (f"tcp://{pol[n]}:8080" for n in ("web", "a", "b"))
    reply = sb.query("pol/a", web)
    assert reply is not None
    assert reply.split()[0] == "web"
    assert sb.query("pol/b", web) is None
    assert sb.query("pol/a", f"udp://{pol['web']}:8081") is None
    assert sb.query("pol/a", b) is None
    assert sb.query("pol/b", a) is not None
    at_web = trace(sb, 0, "a", "web", "8080/tcp")
    assert at_web["ingress"]["allowed"]
    assert at_web["ingress"]["policies"] == ["pol/web-from-a"]
    assert trace(sb, 1, "a", "web", "8080/tcp")["egress"]["policies"] == ["pol/a-to-web"]
    assert trace(sb, 1, "a", "web", "8080/tcp")["egress"]["allowed"]
    assert not trace(sb, 0, "b", "web", "8080/tcp")["ingress"]["allowed"]
    assert not trace(sb, 0, "a", "web", "8081/udp")["ingress"]["allowed"]
    assert not trace(sb, 1, "a", "b", "8080/tcp")["egress"]["allowed"]
    assert trace(sb, 2, "b", "a", "8080/tcp")["verdict"] == "ALLOWED"
    elsewhere = trace(sb, 2, "a", "web", "8080/tcp")  # node 2 holds neither: each side asked where enforced
    assert (elsewhere["verdict"], elsewhere["egress"]["policies"], elsewhere["ingress"]["policies"]) == (
        "ALLOWED", ["pol/a-to-web"], ["pol/web-from-a"])
    assert elsewhere["ingress"]["reason"].endswith("on velvet-node")
    assert trace(sb, 1, "b", "web", "8080/tcp")["verdict"] == "DENIED"


def etcd_keys(sb: Sandbox, prefix: str) -> dict[str, KeyValue]:
    """The keys under `prefix` in the sandbox's etcd (asked from node 0's namespace), without the prefix."""
    with in_netns(node_config(sb.name, 0).names.node_netns):
        _, kvs = EtcdClient(LAN_CLIENT_URL).range_prefix(prefix)
    return {kv.key[len(prefix):]: kv for kv in kvs}


def published_on(sb: Sandbox, node: str) -> dict[str, KeyValue]:
    """The endpoint keys (by IP) a node published in etcd."""
    return {ip: kv for ip, kv in etcd_keys(sb, ENDPOINTS_PREFIX).items()
            if json.loads(kv.value)["node"] == node}


def ipcache_of(sb: Sandbox, node: int) -> dict[str, int]:
    """A node's `velvet bpf ipcache list`: prefix -> identity."""
    dump = on_node_json(sb, node, "bpf", "ipcache", "list")["ipcache"]
    return {f"{e['key']['ip']}/{e['key']['prefixlen']}": e["value"]["identity"] for e in dump}


def backends_of(sb: Sandbox, node: int, service: str) -> set[str]:
    """The backend IPs a node's `velvet service list` gives `service` (namespace/name), any frontend."""
    return {b["address"].split(":")[0] for row in on_node_json(sb, node, "service", "list")
            if row["service"] == service for b in row["backends"]}


@pytest.fixture(scope="module")
def every(sb: Sandbox) -> dict[str, str]:
    """Service mn/every with one backend on each node (every-0 .. every-2 on nodes 0 .. 2); IPs by name."""
    sb.apply(pinned_pods("mn", tuple((f"every-{k}", k) for k in range(3)), {"app": "every"}))
    sb.apply(EVERY_SERVICE)
    ips = sb.wait_ready([f"mn/every-{k}" for k in range(3)])
    return {key.split("/")[1]: ip for key, ip in ips.items()}


def test_endpoints_are_published_under_each_nodes_lease(sb: Sandbox, every: dict[str, str]) -> None:
    """Test that each node publishes its pods in etcd's endpoints prefix (IP -> identity, node, pod) and
    that every node's ipcache gives each remote pod the identity its node published."""
    eventually("every pod of every node published", lambda: {
        ip: json.loads(kv.value)["pod"] for ip, kv in etcd_keys(sb, ENDPOINTS_PREFIX).items()
        if ip in every.values()} == {ip: f"mn/{name}" for name, ip in every.items()})
    published = {ip: json.loads(kv.value) for ip, kv in etcd_keys(sb, ENDPOINTS_PREFIX).items()}
    for k in range(3):
        assert published[every[f"every-{k}"]]["node"] == NODES[k]
    for k in range(3):
        ipcache = ipcache_of(sb, k)
        for ip, record in published.items():
            assert ipcache.get(f"{ip}/32") == record["identity"], f"node {k}: {record['pod']}"
    eventually("mn/every with a backend on each node, on every node",
               lambda: all(backends_of(sb, k, "mn/every") == set(every.values()) for k in range(3)))


def test_a_restarted_agent_keeps_its_node_in_the_cluster(sb: Sandbox, every: dict[str, str]) -> None:
    """Test that after kill -9 of node 2's agent and its restart, node 2's registration and endpoint
    keys are the very keys they were (never deleted: the new agent renewed its predecessor's lease), and
    the other nodes still have its pods in their ipcache and as backends."""
    eventually("node 2's endpoints published", lambda: every["every-2"] in published_on(sb, NODES[2]))
    node_key = etcd_keys(sb, NODES_PREFIX)[NODES[2]]
    endpoints = published_on(sb, NODES[2])
    restart_agent(sb, 2)
    # a pod started after the restart: once the new agent published it, it published everything before
    sb.apply(pinned_pods("mn", (("late", 2),)))
    late = sb.wait_ready(["mn/late"])["mn/late"]
    eventually("node 2's new agent publishing", lambda: late in published_on(sb, NODES[2]))
    assert etcd_keys(sb, NODES_PREFIX)[NODES[2]].create_revision == node_key.create_revision
    after = published_on(sb, NODES[2])
    assert {ip: kv.create_revision for ip, kv in after.items() if ip != late} == \
        {ip: kv.create_revision for ip, kv in endpoints.items()}
    for k in (0, 1):
        assert f"{every['every-2']}/32" in ipcache_of(sb, k)
        assert every["every-2"] in backends_of(sb, k, "mn/every")


def test_removed_node_leaves_the_others_routes_ipcache_and_backends(sb: Sandbox,
                                                                    every: dict[str, str]) -> None:
    """Test that `sandbox remove-node` takes the node out of `get nodes`, and within 10 s out of the other
    nodes' routes, ipcaches (its pods' IPs and its own) and service backends, with none of its keys left
    in etcd's endpoints prefix; a Service with a backend on each node then answers from the remaining
    ones only, and the others still talk."""
    gone = {p["status"]["podIP"] for p in sb.pods() if p["spec"]["nodeName"] == NODES[2]
            and p["status"].get("podIP")}
    assert every["every-2"] in gone
    sb.velvet("sandbox", "remove-node", "velvet-node-2")
    deadline = time.monotonic() + 10

    def state() -> dict[str, Any]:
        return {"routes": {k: velvet_routes(sb, k) for k in (0, 1)},
                "ipcache": {k: sorted(gone & {p.split("/")[0] for p in ipcache_of(sb, k)}) for k in (0, 1)},
                "node IP": {k: "192.168.77.4/32" in ipcache_of(sb, k) for k in (0, 1)},
                "every": {k: sorted(backends_of(sb, k, "mn/every")) for k in (0, 1)},
                "far": {k: sorted(backends_of(sb, k, "mn/far")) for k in (0, 1)},
                "published": sorted(published_on(sb, NODES[2]))}

    want = {"routes": {0: {"10.244.1.0/24": "192.168.77.3"}, 1: {"10.244.0.0/24": "192.168.77.2"}},
            "ipcache": {0: [], 1: []}, "node IP": {0: False, 1: False},
            "every": {k: sorted([every["every-0"], every["every-1"]]) for k in (0, 1)},
            "far": {0: [], 1: []}, "published": []}
    while (seen := state()) != want:
        assert time.monotonic() < deadline, seen
        time.sleep(0.2)
    assert [n["metadata"]["name"] for n in sb.json("get", "nodes")["items"]] == list(NODES[:2])
    assert not (NETNS_RUN_DIR / node_config(sb.name, 2).names.node_netns).exists()
    vip = sb.json("get", "services", "every", "-n", "mn")
    vip = (vip["items"][0] if "items" in vip else vip)["spec"]["clusterIP"]
    for client in ("echo-0", "echo-1"):
        answers = [sb.query(f"mn/{client}", f"tcp://{vip}:80") for _ in range(8)]
        assert all(a is not None for a in answers), f"{client}: {answers}"
        assert {a.split()[0] for a in answers if a} <= {"every-0", "every-1"}, f"{client}: {answers}"
    pods = pods_by_name(sb)
    assert sb.query("mn/echo-0", f"tcp://{pods['echo-1']['ip']}:8080") is not None


def test_sandbox_down_leaves_nothing_of_any_node() -> None:
    """Test that `sandbox down` of a three-node sandbox with pods stops etcd (by its pid) and removes
    every namespace, cgroup, pin, state and runtime directory of every node."""
    with sandbox("mnd", "--nodes", "3") as box:
        box.apply(manifests())
        box.wait_ready([f"mn/echo-{i}" for i in range(3)])
        names = SandboxNames(box.name)
        etcd_pid = read_pid(names.pid_file("etcd"))
        assert etcd_pid is not None
        assert alive(etcd_pid)
    assert not alive(etcd_pid)
    assert find_leftovers(box.name).empty
    assert not any(p.name.startswith(f"velvet-{box.name}-") for p in NETNS_RUN_DIR.iterdir())
    for root in (BPFFS_ROOT, RUN_ROOT, STATE_ROOT):
        assert not (root / box.name).exists()
