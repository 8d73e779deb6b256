"""A cluster of sandbox nodes against plain routing, in one run: cross-node traffic, convergence, identities.

    .venv/bin/python -m bench.cluster [--routing native,tunnel] [--host-routing auto] [--rounds 5]
                                      [--connects 1000] [--mib 256] [--services 1000] [--identities 500]
                                      [--trees TREE_A,TREE_B] [--prog-stats] [--floor]
    .venv/bin/python -m bench.cluster convergence [--rounds 3] [--services 1000]

Peers, each a client pod on one node and a server pod (probe.py serve) on another:

- *routed*: the same shape without Velvet or BPF: two node namespaces on a bridge, each with a pod
  namespace behind a veth (a /32 route to the pod, proxy ARP like a sandbox node), and
  `podCIDR via nodeIP` routes; namespaces `velvet-bench-<run>-rt-*`, removed by exact name;
- *velvet-native*, *velvet-tunnel*: `velvet sandbox up --store etcd --nodes 3 --routing MODE`, the client
  pod pinned to node 0, the server to node 1 (spec.nodeName). With several `--host-routing` modes
  (e.g. `bpf,legacy`) one such peer per routing and host routing mode, named `velvet-native-bpf` etc.

Measured per peer (the client on CPU 0, the server on CPU 1), in `--rounds` rounds with the peers
interleaved and their order rotated, each round's value reported and the median over rounds compared
(`ratios_to_routed`), and the median of each round's ratio (`round_ratios_to_routed`: steadier where the
machine's speed changes between rounds):
median connect() latency to the server pod's IP, 1-byte request/response rate, bulk TCP throughput.
On the 3-node native sandbox also: the convergence of `--services` services (apply on node 0 until
every node's pinned lb4_services map holds the last one) and the identity allocation rate against the
sandbox's etcd (sequential, then three nodes racing for the same label sets; every node must get the
same numbers). Prints one JSON document; ratios are to routed. `convergence` runs only the convergence
on one 3-node native sandbox, `--rounds` times (the services deleted, every map emptied, between rounds).
`--services 0` / `--identities 0` skip those rows. `--trees A,B`: one sandbox per Velvet source tree (its
agents run that tree's code and BPF objects, which must be built), interleaved like the other peers: an
A/B of a datapath change in one run. `--prog-stats`: BPF run-time statistics on for the run, each BPF
program's run time per connect in every row (a sandbox's: the programs using its nodes' pinned maps, not
other sandboxes' programs of the same name). `--floor`: one more sandbox per routing mode,
`velvet-MODE-floor`, whose programs all return at once (bench/floor.py: the hooks and the topology without
Velvet's work; its packets take the node's stack): what no change to the programs can go below.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import floor
from bench.peers import sh
from bench.velvet_peer import PROBE, TCP, vip
from velvet.cli.runner import SandboxCli, unique_name
from velvet.datapath.structs import Lb4Key, ipv4
from velvet.datapath.views import ServiceMap
from velvet.sandbox.naming import node_config

NS = "bench"
PORT = 8080
NODES = 3
CLIENT_CPU, SERVER_CPU = 0, 1
BENCH_PREFIX = "/velvet-bench/identities/"


# -- traffic -------------------------------------------------------------------------------------------


def enable_bpf_stats() -> int:
    """bpf(BPF_ENABLE_STATS, BPF_STATS_RUN_TIME) (x86-64 syscall 321, command 32): the kernel counts every
    program's run time for as long as the returned fd is open."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 4)()  # type 0: BPF_STATS_RUN_TIME
    fd = int(libc.syscall(321, 32, ctypes.byref(attr), ctypes.sizeof(attr)))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "bpf(BPF_ENABLE_STATS)")
    return fd


def prog_run_ns(maps: frozenset[int] | None = None) -> dict[str, int]:
    """Run time (ns) of the loaded BPF programs, summed per name (`bpftool prog show`); with `maps` only
    the programs using one of those maps (one sandbox's, not those of other sandboxes on the machine)."""
    totals: dict[str, int] = {}
    for prog in json.loads(sh("bpftool", "-j", "prog", "show")):
        if maps is not None and not maps.intersection(prog.get("map_ids", ())):
            continue
        name = str(prog.get("name", ""))
        totals[name] = totals.get(name, 0) + int(prog.get("run_time_ns", 0))
    return totals


def pinned_map_ids(pin_dirs: list[str]) -> frozenset[int]:
    """Ids of the maps pinned directly in these directories (a sandbox's nodes)."""
    ids: set[int] = set()
    for pin_dir in pin_dirs:
        for entry in os.scandir(pin_dir):
            if entry.is_file():
                ids.add(int(json.loads(sh("bpftool", "-j", "map", "show", "pinned", entry.path))["id"]))
    return frozenset(ids)


def traffic(client: list[str], target: str, connects: int, mib: int, stats: bool = False,
            maps: frozenset[int] | None = None) -> dict[str, float]:
    """One round: median connect() latency (µs), request/response rate (1/s) and bulk throughput (Gbit/s)
    from `client` (an argv prefix); with `stats` (BPF run-time statistics on) also each program's run time
    per connect during the connects (`ns/connect:NAME`; the programs using one of `maps`, else every
    program of that name on the machine)."""
    def probe(*args: str) -> dict[str, Any]:
        return dict(json.loads(sh(*client, "taskset", "-c", str(CLIENT_CPU), sys.executable, PROBE, *args)))
    probe("connect", target, "--count", "200")  # warm-up: neighbours, conntrack, caches
    before = prog_run_ns(maps) if stats else {}
    row = {"connect_us": float(probe("connect", target, "--count", str(connects))["median"])}
    for name, ns in (prog_run_ns(maps) if stats else {}).items():
        if ns > before.get(name, 0):
            row[f"ns/connect:{name}"] = (ns - before.get(name, 0)) / connects
    row["rr_per_s"] = float(probe("rr", target, "--seconds", "1")["per_s"])
    row["bulk_gbit"] = float(probe("bulk", target, "--mib", str(mib))["per_s"])
    return row


class Routed:
    """Two nodes and two pods in plain namespaces: the same hops as the sandbox, no BPF, no Velvet."""

    def __init__(self, run: str) -> None:
        base = f"velvet-bench-{run}-rt"
        self.lan = f"{base}-lan"
        self.nodes, self.pods = (f"{base}-n0", f"{base}-n1"), (f"{base}-p0", f"{base}-p1")
        self.server: subprocess.Popen[bytes] | None = None

    def names(self) -> list[str]:
        """Every namespace this peer owns."""
        return [self.lan, *self.nodes, *self.pods]

    def create(self) -> None:
        """Bridge, uplinks, pod veths, routes; forwarding only inside the node namespaces."""
        for ns in self.names():
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.lan, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.lan, "link", "set", "br0", "up")
        for k, (node, pod) in enumerate(zip(self.nodes, self.pods, strict=True)):
            node_ip, pod_ip, gateway = f"192.168.78.{2 + k}", f"10.245.{k}.10", f"10.245.{k}.1"
            sh("ip", "-n", node, "link", "add", "uplink0", "type", "veth", "peer", "name", f"n{k}",
               "netns", self.lan)
            sh("ip", "-n", self.lan, "link", "set", f"n{k}", "master", "br0", "up")
            sh("ip", "-n", node, "addr", "add", f"{node_ip}/24", "dev", "uplink0")
            sh("ip", "-n", node, "link", "set", "uplink0", "up")
            sh("ip", "-n", node, "link", "add", "lxc0", "type", "veth", "peer", "name", "eth0", "netns", pod)
            sh("ip", "-n", node, "addr", "add", f"{gateway}/32", "dev", "lxc0")
            sh("ip", "-n", node, "link", "set", "lxc0", "up")
            sh("ip", "-n", node, "route", "add", f"{pod_ip}/32", "dev", "lxc0")
            sh("ip", "-n", pod, "addr", "add", f"{pod_ip}/32", "dev", "eth0")
            sh("ip", "-n", pod, "link", "set", "eth0", "up")
            sh("ip", "-n", pod, "route", "add", f"{gateway}/32", "dev", "eth0")
            sh("ip", "-n", pod, "route", "add", "default", "via", gateway)
            sh("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for k, node in enumerate(self.nodes):
            other = 1 - k
            sh("ip", "-n", node, "route", "add", f"10.245.{other}.0/24", "via", f"192.168.78.{2 + other}")
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.pods[1], "taskset", "-c", str(SERVER_CPU), sys.executable, PROBE,
             "serve", "--ports", str(PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def measure(self, connects: int, mib: int, stats: bool = False) -> dict[str, float]:
        """Traffic from pod 0 to pod 1's server."""
        return traffic(["ip", "netns", "exec", self.pods[0]], f"10.245.1.10:{PORT}", connects, mib, stats,
                       frozenset())

    def remove(self) -> None:
        """Stop the server, delete the namespaces by name (never raises)."""
        if self.server is not None:
            self.server.terminate()
            self.server.wait(timeout=10)
        for ns in self.names():
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def pods_yaml() -> str:
    """The namespace, the server pod on node 1 and the client pod on node 0."""
    server = f'["taskset", "-c", "{SERVER_CPU}", "python3", "{PROBE}", "serve", "--ports", "{PORT}"]'
    return (f"---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n"
            f"---\napiVersion: v1\nkind: Pod\n"
            f"metadata: {{name: srv, namespace: {NS}, labels: {{app: srv}}}}\n"
            f"spec:\n  nodeName: velvet-node-1\n  terminationGracePeriodSeconds: 1\n  containers:\n"
            f"  - name: main\n    command: {server}\n    readinessProbe:\n      tcpSocket: {{port: {PORT}}}\n"
            f"      periodSeconds: 1\n"
            f"---\napiVersion: v1\nkind: Pod\n"
            f"metadata: {{name: cli, namespace: {NS}, labels: {{app: cli}}}}\n"
            f"spec:\n  nodeName: velvet-node\n  terminationGracePeriodSeconds: 1\n  containers:\n"
            f"  - name: main\n    command: [sleep, infinity]\n")


def services_yaml(count: int) -> str:
    """`count` ClusterIP services selecting the server pod."""
    return "".join(f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i:05d}, namespace: {NS}}}\n"
                   f"spec:\n  clusterIP: {vip(i)}\n  selector: {{app: srv}}\n"
                   f"  ports:\n  - {{name: tcp, port: 80, targetPort: {PORT}, protocol: TCP}}\n"
                   for i in range(count))


class Cluster:
    """A 3-node sandbox with the client on node 0 and the server on node 1."""

    def __init__(self, routing: str, host_routing: str = "auto", tree: str = "") -> None:
        self.routing = routing
        self.host_routing = host_routing
        self.tree = tree  # another Velvet source tree whose code and BPF objects the agents run (A/B)
        self.sb = SandboxCli(unique_name("bcl"))
        self.server_ip = ""
        self.maps: frozenset[int] = frozenset()  # its nodes' pinned maps: its programs use them

    def create(self) -> None:
        """Up (its agents running `tree`'s code and BPF objects when given), pods ready."""
        saved = os.environ.get("PYTHONPATH")
        if self.tree:
            os.environ["PYTHONPATH"] = os.path.join(self.tree, "src")
        try:
            self.sb.up("--store", "etcd", "--nodes", str(NODES), "--routing", self.routing,
                       "--host-routing", self.host_routing)
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved
        self.sb.apply(pods_yaml())
        self.server_ip = self.sb.wait_ready([f"{NS}/srv", f"{NS}/cli"], timeout=180)[f"{NS}/srv"]
        self.maps = pinned_map_ids([str(node_config(self.sb.name, k).names.pin_dir) for k in range(NODES)])

    def measure(self, connects: int, mib: int, stats: bool = False) -> dict[str, float]:
        """Traffic from the client pod (node 0) to the server pod (node 1)."""
        return traffic(self.sb.argv("sandbox", "exec", f"{NS}/cli", "--"), f"{self.server_ip}:{PORT}",
                       connects, mib, stats, self.maps)

    def convergence(self, count: int, budget: float = 120.0) -> dict[str, Any]:
        """Seconds from `velvet apply` of `count` services on node 0 until every node serves the last."""
        maps = [ServiceMap.from_pin(node_config(self.sb.name, k).names.pin_dir) for k in range(NODES)]
        key = Lb4Key(address=ipv4(vip(count - 1)), dport=80, proto=TCP)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(services_yaml(count))
        try:
            started = time.monotonic()
            applied = threading.Thread(target=self.sb.velvet, args=("apply", "-f", f.name),
                                       kwargs={"timeout": budget})
            applied.start()
            seen: dict[str, float] = {}
            while len(seen) < NODES and time.monotonic() - started < budget:
                for k, services in enumerate(maps):
                    if str(k) not in seen and services.map.lookup(key) is not None:
                        seen[str(k)] = time.monotonic() - started
                time.sleep(0.002)
            applied.join()
            answered = time.monotonic() - started
        finally:
            os.unlink(f.name)
            for services in maps:
                services.close()
        if len(seen) < NODES:
            return {"timeout": budget, "nodes_done": seen}
        return {"services": count, "all_nodes_s": max(seen.values()), "per_node_s": seen,
                "apply_answered_s": answered}

    def forget(self, count: int, budget: float = 120.0) -> None:
        """Delete the services of `convergence` and wait until no node serves the last one."""
        self.sb.delete(services_yaml(count))
        key = Lb4Key(address=ipv4(vip(count - 1)), dport=80, proto=TCP)
        maps = [ServiceMap.from_pin(node_config(self.sb.name, k).names.pin_dir) for k in range(NODES)]
        started = time.monotonic()
        try:
            while any(m.map.lookup(key) is not None for m in maps):
                if time.monotonic() - started > budget:
                    raise TimeoutError(f"services still programmed {budget:g} s after delete")
                time.sleep(0.05)
        finally:
            for services in maps:
                services.close()

    def identities(self, count: int) -> dict[str, Any]:
        """Identity allocations per second against the sandbox's etcd, from inside node 0's namespace."""
        netns = node_config(self.sb.name, 0).names.node_netns
        out = sh("ip", "netns", "exec", netns, sys.executable, "-m", "bench.cluster", "identities",
                 "--endpoint", "http://192.168.77.250:2379", "--count", str(count))
        return dict(json.loads(out))

    def remove(self) -> None:
        """Take the sandbox down (never raises)."""
        self.sb.down()


# -- identities (run inside a node's namespace) -----------------------------------------------------------


def identity_rate(endpoint: str, count: int) -> dict[str, Any]:
    """Allocate `count` label sets on one node, then the same fresh sets on three racing nodes."""
    from velvet.control.identity import LAST_LABEL_IDENTITY
    from velvet.model.identity import FIRST_ALLOCATED_IDENTITY
    from velvet.sources.etcd_client import EtcdClient, prefix_end
    from velvet.sources.etcd_identities import EtcdIdentities

    client = EtcdClient(endpoint)
    numbers = range(FIRST_ALLOCATED_IDENTITY, LAST_LABEL_IDENTITY + 1)
    lease = client.grant(60)

    made: list[EtcdIdentities] = []

    def node(name: str) -> EtcdIdentities:
        ids = EtcdIdentities(EtcdClient(endpoint), name, numbers, prefix=BENCH_PREFIX)
        ids.use_lease(lease)
        ids.start()  # following the prefix, as an agent does
        made.append(ids)
        return ids

    try:
        one = node("bench-a")
        started = time.perf_counter()
        for i in range(count):
            one.allocate({"k8s:app": f"solo{i}"})
        sequential = count / (time.perf_counter() - started)
        racers = [node(f"bench-r{k}") for k in range(3)]
        got: list[list[int]] = [[] for _ in racers]

        def race(k: int) -> None:
            got[k] = [racers[k].allocate({"k8s:app": f"race{i}"}) for i in range(count)]

        threads = [threading.Thread(target=race, args=(k,)) for k in range(len(racers))]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        raced = count / (time.perf_counter() - started)
        return {"sequential_per_s": sequential, "three_nodes_racing_per_s": raced,
                "same_numbers_everywhere": got[0] == got[1] == got[2], "count": count}
    finally:
        for ids in made:
            ids.close()
        client.call("kv/deleterange",
                    {"key": _b64(BENCH_PREFIX), "range_end": _b64(prefix_end(BENCH_PREFIX))})
        client.revoke(lease)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- main ----------------------------------------------------------------------------------------------


def ratio(value: float, base: float) -> float:
    """value / base, rounded for the report."""
    return round(value / base, 3) if base else float("nan")


def convergence_only(services: int, rounds: int) -> dict[str, Any]:
    """The convergence rows alone on one native sandbox, `rounds` times, and their median."""
    cluster = Cluster("native")
    runs: list[dict[str, Any]] = []
    try:
        cluster.create()
        for r in range(rounds):
            if r:
                cluster.forget(services)
            runs.append(cluster.convergence(services))
    finally:
        cluster.remove()
    done = [run["all_nodes_s"] for run in runs if "all_nodes_s" in run]
    return {"machine": {"cpus": os.cpu_count(), "kernel": os.uname().release}, "services": services,
            "all_nodes_s_median": statistics.median(done) if done else None, "rounds": runs}


def main() -> None:
    """Run every peer, then the control-plane rows; print one JSON document."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("command", nargs="?", default="run", choices=["run", "identities", "convergence"])
    parser.add_argument("--routing", default="native,tunnel")
    parser.add_argument("--host-routing", default="auto", help="auto, bpf, legacy, or several: bpf,legacy")
    parser.add_argument("--trees", default="",
                        help="Velvet source trees to compare (A/B), comma-separated, each with its BPF "
                             "objects built; each tree's sandbox agents run its code; default this tree")
    parser.add_argument("--prog-stats", action="store_true",
                        help="BPF run-time statistics on: each program's ns per connect in every row")
    parser.add_argument("--floor", action="store_true",
                        help="also a sandbox per routing mode whose programs all return at once")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connects", type=int, default=1000)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--identities", type=int, default=500)
    parser.add_argument("--endpoint", default="")
    parser.add_argument("--count", type=int, default=500)
    args = parser.parse_args()
    if args.command == "identities":
        print(json.dumps(identity_rate(args.endpoint, args.count)))
        return
    if args.command == "convergence":
        print(json.dumps(convergence_only(args.services, args.rounds), indent=2))
        return
    machine = {"cpus": os.cpu_count(), "kernel": os.uname().release}
    routed = Routed(unique_name("cl"))
    host_modes = [mode for mode in args.host_routing.split(",") if mode]
    trees = [d for d in args.trees.split(",") if d] or [""]
    clusters = {f"velvet-{mode}" + (f"-{hr}" if len(host_modes) > 1 else "")
                + (f"-{os.path.basename(d.rstrip('/'))}" if len(trees) > 1 else ""): Cluster(mode, hr, d)
                for mode in args.routing.split(",") if mode for hr in host_modes for d in trees}
    floor_tree = floor.build(Path(tempfile.mkdtemp(prefix="velvet-floor-"))) if args.floor else None
    floors = {f"velvet-{mode}-floor": Cluster(mode, "auto", str(floor_tree))
              for mode in args.routing.split(",") if mode and floor_tree is not None}
    peers: dict[str, Routed | Cluster] = {"routed": routed, **clusters, **floors}
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in peers}
    report: dict[str, Any] = {"machine": machine, "rounds": args.rounds}
    stats_fd = enable_bpf_stats() if args.prog_stats else None
    try:
        for peer in peers.values():
            peer.create()
        for r in range(args.rounds):  # interleaved, the order rotated every round
            names = list(peers)[r % len(peers):] + list(peers)[:r % len(peers)]
            for name in names:
                rounds[name].append(peers[name].measure(args.connects, args.mib, stats_fd is not None))
        native = next((c for c in clusters.values() if c.routing == "native"), None)
        if native is not None and args.services:
            report["convergence"] = native.convergence(args.services)
        if native is not None and args.identities:
            report["identities"] = native.identities(args.identities)
    finally:
        for peer in peers.values():
            peer.remove()
        if stats_fd is not None:
            os.close(stats_fd)
        if floor_tree is not None:
            shutil.rmtree(floor_tree, ignore_errors=True)
    report["traffic"] = {name: {metric: statistics.median(row.get(metric, 0.0) for row in rows)
                                for metric in sorted({m for row in rows for m in row})}
                         for name, rows in rounds.items()}
    report["traffic_rounds"] = rounds
    base = report["traffic"]["routed"]
    report["ratios_to_routed"] = {name: {metric: ratio(value, base.get(metric, 0.0))
                                         for metric, value in row.items() if not metric.startswith("ns/")}
                                  for name, row in report["traffic"].items()}
    report["round_ratios_to_routed"] = round_ratios(rounds, "routed")
    print(json.dumps(report, indent=2))


def round_ratios(rounds: dict[str, list[dict[str, float]]], base: str) -> dict[str, dict[str, float]]:
    """Per peer and metric, the median over rounds of its ratio to `base` in the same round: the steadier
    reading on a machine whose speed changes between rounds (each round measures every peer back to back)."""
    out: dict[str, dict[str, float]] = {}
    for name, rows in rounds.items():
        pairs = list(zip(rows, rounds[base], strict=False))
        metrics = sorted({m for row, _ in pairs for m in row if not m.startswith("ns/")})
        ratios = {m: [row[m] / b[m] for row, b in pairs if b.get(m) and m in row] for m in metrics}
        out[name] = {m: round(statistics.median(r), 3) for m, r in ratios.items() if r}
    return out


if __name__ == "__main__":
    main()
