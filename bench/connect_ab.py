"""connect() to a ClusterIP from a pod, Velvet source trees against no rules, interleaved in one run.

    python -m bench.connect_ab [--trees TREE_A,TREE_B] [--counts 10,1000,10000] [--rounds 5]
                               [--connects 2000] [--prog-stats] [--freeze] [--pod [--floor]]

One single-node sandbox per Velvet source tree (its agent runs that tree's code and BPF objects, which
must be built; default: this tree) and the no-rules namespaces of bench/peers.py. At every N the
sandboxes hold N services (the target is the last); each round runs `probe.py connect` once per peer,
the order rotated every round. Per peer and N: the median over rounds of each round's median and p99,
the ratio of each to the no-rules peer of the same rounds (frozen to frozen; `median_x`, `p99_x`) and
the median of each round's ratio (`median_x_rounds`, `p99_x_rounds`: steadier where the machine's speed
changes between rounds), and the agent's CPU time per round (its periodic work while the connect loop
runs). `--prog-stats` adds each program's run time per connect (`bpf(BPF_ENABLE_STATS)`): a sandbox's
own programs (those using its pinned maps), for the no-rules peer every program loaded (the sandboxes'
tracepoint programs see its sockets too). `--freeze` adds a peer "<peer>/frozen" for every peer, the
no-rules one included: the same client and target, measured while every Velvet process of every sandbox
of the run (node daemon, agent, etcd: the pid files and their children outside the pods' cgroups) is
stopped with SIGSTOP, and continued after the round. `--pod`: each sandbox's client connects to the
server pod's own address instead of the last service (no translation: a tree whose programs translate
nothing can be measured too). `--floor` (with `--pod`): one more sandbox, `floor`, whose programs all
return at once (bench/floor.py: the hooks and the topology without Velvet's work). Prints one JSON
document. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import floor
from bench.cluster import enable_bpf_stats, pinned_map_ids, prog_run_ns
from bench.peers import PeerNet, run_probe
from bench.velvet_peer import VelvetPeer
from velvet.paths import AgentPaths

FROZEN = "/frozen"
SETTLE = 1.0  # seconds after a thaw for the agents to drain what gathered while stopped


@contextlib.contextmanager
def pythonpath(tree: str) -> Iterator[None]:
    """PYTHONPATH set to `tree`'s sources (none: unchanged) while the block runs."""
    saved = os.environ.get("PYTHONPATH")
    if tree:
        os.environ["PYTHONPATH"] = os.path.join(tree, "src")
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid`'s live threads so far, in nanoseconds from schedstat (/proc/<pid>/stat counts
    10 ms ticks: a round's few tens of ms could not tell trees apart)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def user_space(sandbox: str) -> list[int]:
    """Pids of sandbox `sandbox`'s Velvet processes: its pid files and their descendants outside pods."""
    roots = set()
    for pid_file in AgentPaths(sandbox).run_dir.glob("**/*.pid"):
        with contextlib.suppress(OSError, ValueError):
            roots.add(int(pid_file.read_text().split()[0]))
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    todo = [pid for pid in roots if Path(f"/proc/{pid}").exists()]
    while todo:
        pid = todo.pop()
        with contextlib.suppress(OSError):
            if "/pod-" in Path(f"/proc/{pid}/cgroup").read_text():
                continue
            found.append(pid)
            todo.extend(children.get(pid, []))
    return found


@contextlib.contextmanager
def frozen(sandboxes: list[str], enabled: bool) -> Iterator[None]:
    """Every Velvet process of `sandboxes` stopped while the block runs (when `enabled`)."""
    pids = [pid for name in sandboxes for pid in user_space(name)] if enabled else []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if pids:
            time.sleep(SETTLE)


def main() -> None:
    """Bring the peers up, measure every N, print the report."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trees", default="", help="Velvet source trees, comma-separated (default: here)")
    parser.add_argument("--counts", default="10,1000,10000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connects", type=int, default=2000)
    parser.add_argument("--prog-stats", action="store_true")
    parser.add_argument("--freeze", action="store_true",
                        help="also measure every peer with the run's Velvet processes stopped (SIGSTOP)")
    parser.add_argument("--pod", action="store_true", help="connect to the server pod, not to the service")
    parser.add_argument("--floor", action="store_true",
                        help="also a sandbox whose programs all return at once (needs --pod)")
    args = parser.parse_args()
    if args.floor and not args.pod:
        parser.error("--floor needs --pod: a sandbox whose programs return at once translates no service")
    trees = [t for t in args.trees.split(",") if t] or [""]
    names = [os.path.basename(t.rstrip("/")) or "velvet" for t in trees]
    floor_tree = floor.build(Path(tempfile.mkdtemp(prefix="velvet-floor-"))) if args.floor else None
    if floor_tree is not None:
        trees, names = [*trees, str(floor_tree)], [*names, "floor"]
    sandboxes = {name: VelvetPeer() for name in names}
    none = PeerNet(secrets.token_hex(2), "none")
    rows: list[dict[str, Any]] = []
    stats_fd = enable_bpf_stats() if args.prog_stats else None
    try:
        none.create()
        for tree, name in zip(trees, names, strict=True):
            with pythonpath(tree):
                sandboxes[name].up()
        for n in (int(c) for c in args.counts.split(",")):
            for peer in sandboxes.values():
                applied = peer.apply_services(n, 1, 900.0)
                print(f"N={n} {peer.name}: {applied}", file=sys.stderr)
            # each sandbox's own programs (those using its pinned maps): every node's tracepoint programs
            # run for every socket of the kernel, another sandbox's included
            own_maps = {name: pinned_map_ids([str(p.pin_dir)]) for name, p in sandboxes.items()}
            clients = {"none": (none.client, f"{none.target([])}")}
            clients |= {name: (p.client, p.pod_target() if args.pod else p.target())
                        for name, p in sandboxes.items()}
            if args.freeze:
                clients |= {name + FROZEN: value for name, value in clients.items()}
            peers = list(clients)
            for client, target in clients.values():  # warm-up
                run_probe(client("connect", target, "--count", "200"))
            for r in range(args.rounds):
                for name in peers[r % len(peers):] + peers[:r % len(peers)]:
                    client, target = clients[name]
                    owner = name.removesuffix(FROZEN)
                    agent = sandboxes[owner].agent_pid() if owner in sandboxes else None
                    cpu0 = cpu_seconds(agent) if agent else 0.0
                    maps = own_maps.get(owner)
                    ns0 = prog_run_ns(maps) if stats_fd is not None else {}
                    with frozen([p.name for p in sandboxes.values()], name.endswith(FROZEN)):
                        result = run_probe(client("connect", target, "--count", str(args.connects)))
                        cpu1 = cpu_seconds(agent) if agent else 0.0
                        ns1 = prog_run_ns(maps) if stats_fd is not None else {}
                    if result is None:
                        continue
                    row = {"peer": name, "n": n, "round": r, "median": result["median"], "p99": result["p99"],
                           "agent_cpu_ms": (cpu1 - cpu0) * 1000 if agent else None}
                    for prog, ns in ns1.items():
                        if ns > ns0.get(prog, 0):
                            row[f"ns/connect:{prog}"] = (ns - ns0.get(prog, 0)) / args.connects
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr)
    finally:
        if stats_fd is not None:
            os.close(stats_fd)
        for peer in sandboxes.values():
            peer.down()
        none.remove()
        if floor_tree is not None:
            shutil.rmtree(floor_tree, ignore_errors=True)
    machine = {"cpus": os.cpu_count(), "kernel": os.uname().release}
    print(json.dumps({"machine": machine, "connects": args.connects, "rounds": args.rounds,
                      "summary": summarize(rows)}, indent=2))


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per N and peer: medians over rounds of every measured field, and ratios to the no-rules peer."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for n in sorted({row["n"] for row in rows}):
        at_n = [row for row in rows if row["n"] == n]
        per_peer: dict[str, dict[str, float]] = {}
        for peer in dict.fromkeys(row["peer"] for row in at_n):
            mine = [row for row in at_n if row["peer"] == peer]
            fields = sorted({k for row in mine for k in row if k not in ("peer", "n", "round")})
            per_peer[peer] = {k: round(statistics.median(row[k] for row in mine if row.get(k) is not None), 2)
                              for k in fields if any(row.get(k) is not None for row in mine)}
        for peer, values in per_peer.items():
            base_name = "none" + FROZEN if peer.endswith(FROZEN) else "none"
            base = per_peer.get(base_name, {})
            for k in ("median", "p99"):
                if base.get(k):
                    values[f"{k}_x"] = round(values[k] / base[k], 3)
                # each round's ratio, then their median: steadier where the machine's speed changes
                bases = {row["round"]: row[k] for row in at_n if row["peer"] == base_name and row.get(k)}
                ratios = [row[k] / bases[row["round"]] for row in at_n
                          if row["peer"] == peer and row["round"] in bases]
                if ratios:
                    values[f"{k}_x_rounds"] = round(statistics.median(ratios), 3)
        out[str(n)] = per_peer
    return out


if __name__ == "__main__":
    main()
