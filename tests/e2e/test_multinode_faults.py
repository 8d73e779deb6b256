"""Test that a three-node sandbox loses nothing to faults: an agent killed, etcd stopped, a node added.

One sandbox (`sandbox up --nodes 3`, native routing) for the story, torn down whatever happens and
checked to leave nothing behind, also of the node added last. Pods a0, a1, a2 run on nodes 0, 1, 2;
Service `back` has its one backend a1 on node 1; NetworkPolicy `guard` lets only app=a1 into pods
labelled role=guarded (a2, and later g3 on the added node). etcd is stopped with SIGSTOP by its exact
pid (its supervisor, `sandbox etcd-daemon`, would restart a killed one at once), as a hung etcd that
answers nothing; a node's agent is killed with SIGKILL by the exact pid in its pid file.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import yaml
from harness import Sandbox, echo_pod, namespace, sandbox
from test_foundation import STREAM_CLIENT, next_line, stdout_lines
from test_multinode import eventually, label_identities, on_node_json, velvet_routes

from velvet.api.client import ApiClient
from velvet.datapath import libbpf
from velvet.datapath.maps import untyped
from velvet.errors import CommandFailed
from velvet.paths import AgentPaths
from velvet.sandbox import routing
from velvet.sandbox.cleanup import find_leftovers, read_pid
from velvet.sandbox.etcd import LAN_CLIENT_URL
from velvet.sandbox.naming import SandboxNames, node_config
from velvet.sources.etcd_nodes import LEASE_TTL_SECONDS

pytestmark = pytest.mark.privileged

NODES = ("velvet-node", "velvet-node-1", "velvet-node-2")
OUTAGE_SECONDS = 30
GUARD = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: guard, namespace: ft}
spec:
  podSelector: {matchLabels: {role: guarded}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: a1}}}]
"""
SERVICE = """apiVersion: v1
kind: Service
metadata: {name: %s, namespace: ft}
spec:
  selector: {app: %s}
  ports: [{port: 80, targetPort: 8080}]
"""


def pinned(name: str, node: str, labels: dict[str, str]) -> str:
    """An echo pod on `node` (spec.nodeName)."""
    pod = yaml.safe_load(echo_pod("ft", name, labels))
    pod["spec"]["nodeName"] = node
    return yaml.safe_dump(pod)


def manifests() -> str:
    """Namespace ft, a0 / a1 / a2 on nodes 0 / 1 / 2 (a2 guarded), Service back -> a1, policy guard."""
    docs = [namespace("ft"), pinned("a0", NODES[0], {"app": "a0"}), pinned("a1", NODES[1], {"app": "a1"}),
            pinned("a2", NODES[2], {"app": "a2", "role": "guarded"}), SERVICE % ("back", "a1"), GUARD]
    return "\n---\n".join(doc.strip().removeprefix("---").strip() for doc in docs)


@pytest.fixture(scope="module", params=["native", "tunnel"])
def sb(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """The three-node sandbox in each routing mode with a0, a1, a2 ready; after the module, nothing of
    it may be left."""
    with sandbox("ft", "--nodes", "3", "--routing", request.param) as box:
        box.apply(manifests())
        box.wait_ready(["ft/a0", "ft/a1", "ft/a2"])
        yield box
    assert find_leftovers(box.name).empty, find_leftovers(box.name)


def ips(sb: Sandbox) -> dict[str, str]:
    """Pod IPs of namespace ft by name."""
    return {p["metadata"]["name"]: p["status"].get("podIP", "") for p in sb.pods("ft")}


def cluster_ip(sb: Sandbox, name: str) -> str:
    """A Service's ClusterIP."""
    svc = sb.json("get", "services", name, "-n", "ft")
    return str((svc["items"][0] if "items" in svc else svc)["spec"]["clusterIP"])


def answers(sb: Sandbox, client: str, vip: str, backend: str) -> bool:
    """Whether `client` gets an answer from `backend` through the Service at `vip`, port 80."""
    return (sb.query(client, f"tcp://{vip}:80") or "").startswith(f"{backend} ")


def agent_pid(sb: Sandbox, node: int) -> int:
    """The pid in node `node`'s agent pid file."""
    pid = read_pid(AgentPaths(sb.name, f"node{node}" if node else "").run_dir / "agent.pid")
    assert pid is not None
    return pid


def datapath(sb: Sandbox, node: int) -> dict[str, Any]:
    """Node `node`'s ipcache, load-balancing and policy maps as `velvet bpf ... list` shows them."""
    return {table: on_node_json(sb, node, "bpf", table, "list") for table in ("ipcache", "lb", "policy")}


def identities(sb: Sandbox, node: int) -> list[Any]:
    """`velvet identity list` of node `node`."""
    listed: list[Any] = on_node_json(sb, node, "identity", "list")
    return listed


def node_names(sb: Sandbox, node: int) -> list[str]:
    """`velvet get nodes` as node `node` sees the cluster."""
    return [n["metadata"]["name"] for n in on_node_json(sb, node, "get", "nodes")["items"]]


def etcd_keys(sb: Sandbox, prefix: str) -> list[str]:
    """Every key under `prefix` in the sandbox's etcd, read from node 0's namespace (it reaches etcd)."""
    code = ("import sys\nfrom velvet.sources.etcd_client import EtcdClient\n"
            "print('\\n'.join(kv.key for kv in EtcdClient(sys.argv[1]).range_prefix(sys.argv[2])[1]))")
    argv = ["ip", "netns", "exec", SandboxNames(sb.name).node_netns, sys.executable, "-c", code,
            LAN_CLIENT_URL, prefix]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.split()


class RouteWatch:
    """`ip monitor route` in every node given: what happened to Velvet's routes (proto 198) meanwhile."""

    def __init__(self, sb: Sandbox, nodes: range | tuple[int, ...]) -> None:
        self.procs = {k: subprocess.Popen(["ip", "-n", node_config(sb.name, k).names.node_netns, "monitor",
                                           "route"], stdout=subprocess.PIPE, text=True) for k in nodes}
        self.seen: dict[int, list[str]] = {}

    def changes(self) -> dict[int, list[str]]:
        """Stop watching; each node's changes of Velvet's routes (none is the wanted answer)."""
        self.stop()
        return self.seen

    def stop(self) -> None:
        """End the monitors still running (the test's own processes, by their Popen)."""
        for k, proc in self.procs.items():
            if k not in self.seen:
                proc.terminate()
                out, _ = proc.communicate(timeout=10)
                self.seen[k] = [line for line in out.splitlines() if "proto 198" in line]


class IpcacheWatch:
    """Nodes' pinned ipcache maps read over and over on a thread: the moments an address was missing."""

    def __init__(self, sb: Sandbox, nodes: tuple[int, ...], address: str) -> None:
        pins = {k: AgentPaths(sb.name, f"node{k}" if k else "").pin_dir / "ipcache" for k in nodes}
        self.maps = {k: untyped(libbpf.check(libbpf.bpf_obj_get(str(pin).encode()), str(pin)), "ipcache")
                     for k, pin in pins.items()}
        self.key = (32).to_bytes(4, sys.byteorder) + socket.inet_aton(address)  # struct ipcache_key
        self.missing: dict[int, int] = dict.fromkeys(nodes, 0)
        self.reads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            for k, m in self.maps.items():
                if self.key not in {bytes(key) for key in m}:
                    self.missing[k] += 1
            self.reads += 1
            time.sleep(0.005)

    def stop(self) -> dict[int, int]:
        """Stop watching; how many reads of each node missed the address (none is the wanted answer)."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(timeout=10)
            for m in self.maps.values():
                m.close()
        return self.missing


class Stream:
    """A long-lived TCP connection from a pod, driven one round trip at a time."""

    def __init__(self, sb: Sandbox, pod: str, host: str, port: int) -> None:
        self.what = f"{pod} -> {host}:{port}"
        self.proc = subprocess.Popen(sb.argv("sandbox", "exec", pod, "--", "python3", "-c", STREAM_CLIENT,
                                             host, str(port)),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.lines = stdout_lines(self.proc)
        self.trips = 0
        assert next_line(self.lines, f"{self.what}: connected") == "connected"

    def round_trip(self, when: str) -> None:
        """One line there and back on the same connection."""
        assert self.proc.stdin is not None
        self.trips += 1
        self.proc.stdin.write("\n")
        assert next_line(self.lines, f"{self.what}: round trip {when}") == f"ok {self.trips}"

    def close(self) -> None:
        """End the connection: the client exits 0 when every round trip succeeded."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            assert self.proc.wait(timeout=30) == 0, self.proc.stderr.read() if self.proc.stderr else ""
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def test_killed_agent_loses_no_connection_and_leaves_the_other_nodes_alone(sb: Sandbox) -> None:
    """Test that kill -9 of node 1's agent keeps a TCP connection from a1 (node 1) to a2 (node 2) and
    one from a0 (node 0) through Service back to a1 (node 1) exchanging data right after the kill and
    after the restart, while nodes 0 and 2 keep their agents, ipcache, lb and policy maps, identities
    and routes exactly as they were, also once the killed agent's lease has run out, and never lose
    a1 from their ipcache, not even while the new agent starts."""
    pod = ips(sb)
    streams = [Stream(sb, "ft/a1", pod["a2"], 8080), Stream(sb, "ft/a0", cluster_ip(sb, "back"), 80)]
    watch = RouteWatch(sb, range(3))
    a1_kept = IpcacheWatch(sb, (0, 2), pod["a1"])
    try:
        others = (0, 2)
        before = {k: (agent_pid(sb, k), datapath(sb, k), identities(sb, k), velvet_routes(sb, k))
                  for k in others}
        routes_1 = velvet_routes(sb, 1)
        old = agent_pid(sb, 1)
        os.kill(old, signal.SIGKILL)
        for stream in streams:
            stream.round_trip("right after the kill")
        node1 = AgentPaths(sb.name, "node1")
        eventually("node 1's agent restarting",
                   lambda: read_pid(node1.run_dir / "agent.pid") not in (None, old)
                   and ApiClient(node1.socket).healthy(), timeout=30)
        time.sleep(LEASE_TTL_SECONDS + 1)  # the killed agent's lease has expired by now
        for stream in streams:
            stream.round_trip("after the restart")
        reads, missing = a1_kept.reads, a1_kept.stop()
        assert reads > 0
        assert missing == {0: 0, 2: 0}, f"reads of nodes 0, 2 without a1 among {reads}"
        after = {k: (agent_pid(sb, k), datapath(sb, k), identities(sb, k), velvet_routes(sb, k))
                 for k in others}
        for k in others:
            assert after[k] == before[k], f"node {k} changed"
        assert velvet_routes(sb, 1) == routes_1
        assert watch.changes() == {0: [], 1: [], 2: []}  # not even for a moment
        assert all(node_names(sb, k) == list(NODES) for k in range(3))
    finally:
        watch.stop()
        a1_kept.stop()
        for stream in streams:
            stream.close()


def test_etcd_outage_keeps_every_datapath_and_the_cluster_converges_after(sb: Sandbox) -> None:
    """Test that with etcd stopped for 30 s (longer than the nodes' 5 s leases): a connection from a1
    (node 1) to a2 (node 2) keeps exchanging data, new connections across nodes and to Service back
    work, policy guard still keeps a0 out of a2, `apply` fails with one line naming etcd and changes
    nothing, `status` says the store is disconnected; once etcd answers again, without restarting any
    agent, every node is registered again with the same routes and identities (each node referring to
    the identities it did before), and a Service applied then is programmed and answers on every node."""
    pod = ips(sb)
    back = cluster_ip(sb, "back")
    agents = {k: agent_pid(sb, k) for k in range(3)}
    routes = {k: velvet_routes(sb, k) for k in range(3)}
    ids = {k: identities(sb, k) for k in range(3)}
    refs = etcd_keys(sb, "/velvet/identities/")
    etcd = read_pid(SandboxNames(sb.name).pid_file("etcd"))
    assert etcd is not None
    stream = Stream(sb, "ft/a1", pod["a2"], 8080)
    watch = RouteWatch(sb, range(3))
    try:
        os.kill(etcd, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            with pytest.raises(CommandFailed) as failed:
                sb.apply(SERVICE % ("during", "a0"))
            assert failed.value.code == 1
            assert len(failed.value.stderr.strip().splitlines()) == 1, failed.value.stderr
            assert f"etcd at {LAN_CLIENT_URL} does not answer" in failed.value.stderr
            store = sb.json("status")["store"]
            assert (store["kind"], store["connected"]) == ("etcd", False)
            assert "DISCONNECTED" in sb.velvet("status").stdout
            while time.monotonic() - stopped < OUTAGE_SECONDS:
                stream.round_trip("with etcd stopped")
                assert sb.query("ft/a0", f"tcp://{pod['a2']}:8080") is None, "guard let a0 into a2"
                assert (sb.query("ft/a2", f"tcp://{pod['a1']}:8080") or "").startswith("a1 ")
                assert (sb.query("ft/a2", f"tcp://{back}:80") or "").startswith("a1 ")
                time.sleep(1)
        finally:
            os.kill(etcd, signal.SIGCONT)
        stream.round_trip("once etcd is back")
        sb.apply(SERVICE % ("later", "a0"))
        later = cluster_ip(sb, "later")
        assert "during" not in json.dumps(sb.json("get", "services", "-n", "ft"))
        for k in range(3):
            eventually(f"Service later answering on node {k}", partial(answers, sb, f"ft/a{k}", later, "a0"))
        eventually("every node registered again, on every node",
                   lambda: all(node_names(sb, k) == list(NODES) for k in range(3)))
        eventually("the identities referred to as before",
                   lambda: etcd_keys(sb, "/velvet/identities/") == refs)
        assert {k: velvet_routes(sb, k) for k in range(3)} == routes
        assert watch.changes() == {0: [], 1: [], 2: []}  # not even while the nodes registered again
        assert {k: identities(sb, k) for k in range(3)} == ids
        assert {k: agent_pid(sb, k) for k in range(3)} == agents
        stream.round_trip("after the cluster converged")
    finally:
        watch.stop()
        stream.close()


def test_added_node_joins_and_receives_everything(sb: Sandbox) -> None:
    """Test that `sandbox add-node` makes velvet-node-3, which within 10 s every node lists and routes
    to (a second add-node of that name is refused in one line); a pod there reaches pods on the old
    nodes and Service back (its backend on node 1) and is reached from them; policy guard, applied long
    before, holds for a guarded pod there (a1 in, a0 not); the new node's identities are the others'."""
    done = sb.velvet("sandbox", "add-node")
    assert "velvet-node-3" in done.stdout
    joined = time.monotonic()
    everyone = [*NODES, "velvet-node-3"]
    eventually("every node listing velvet-node-3",
               lambda: all(node_names(sb, k) == everyone for k in range(4)),
               timeout=max(0.0, 10 - (time.monotonic() - joined)))
    tunnel = routing.recorded(sb.name) == "tunnel"

    def via(k: int) -> str:  # the next hop of Velvet's route to node k: its IP, or the VXLAN device
        return "velvet_vxlan" if tunnel else f"192.168.77.{2 + k}"
    eventually("the old nodes routing to velvet-node-3",
               lambda: all(velvet_routes(sb, k).get("10.244.3.0/24") == via(3) for k in range(3)),
               timeout=max(0.0, 10 - (time.monotonic() - joined)))
    assert velvet_routes(sb, 3) == {f"10.244.{k}.0/24": via(k) for k in range(3)}
    ext = subprocess.run(["ip", "-n", SandboxNames(sb.name).ext_netns, "route", "show", "10.244.3.0/24"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert ext[:3] == ["10.244.3.0/24", "via", "192.168.77.5"]  # the external client routes to it too
    with pytest.raises(CommandFailed) as taken:
        sb.velvet("sandbox", "add-node", "--name", "velvet-node-3")
    assert taken.value.stderr.strip().splitlines() == [
        f"Error: add-node: sandbox {sb.name} already has node velvet-node-3"]
    sb.apply("\n---\n".join((pinned("n3", "velvet-node-3", {"app": "n3"}),
                             pinned("g3", "velvet-node-3", {"app": "g3", "role": "guarded"}))))
    ready = sb.wait_ready(["ft/n3", "ft/g3"])
    n3, g3 = ready["ft/n3"], ready["ft/g3"]
    assert n3.startswith("10.244.3.")
    pod = ips(sb)
    for name in ("a0", "a1", "a2"):
        assert (sb.query(f"ft/{name}", f"tcp://{n3}:8080") or "").startswith("n3 "), f"{name} -> n3"
    for name in ("a0", "a1"):
        assert (sb.query("ft/n3", f"tcp://{pod[name]}:8080") or "").startswith(f"{name} "), f"n3 -> {name}"
    assert sb.query("ft/n3", f"tcp://{pod['a2']}:8080") is None  # a2 is guarded: only a1 gets in
    assert (sb.query("ft/n3", f"tcp://{cluster_ip(sb, 'back')}:80") or "").startswith("a1 ")
    assert (sb.query("ft/a1", f"tcp://{g3}:8080") or "").startswith("g3 ")
    assert sb.query("ft/a0", f"tcp://{g3}:8080") is None  # guard holds on the new node
    eventually("the same identities on the new node",
               lambda: label_identities(sb, 3) == label_identities(sb, 0) == label_identities(sb, 1))
