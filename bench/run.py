"""`make bench` / `make bench-quick`: Velvet against no rules, iptables-legacy, iptables-nft and nft-vmap.

    .venv/bin/python -m bench.run [--quick] [--out bench/results]

Peers are measured interleaved (order rotated every repetition) at every N; raw results go to
<out>/results.jsonl, then report.py writes <out>/REPORT.md and PNG plots; bench.runtime (issue 15) then
writes <out>/runtime/RUNTIME.md. Needs root. Everything runs in namespaces named velvet-bench-<run>-* and
sandboxes bench<random> and rtb<random>, all removed at the end.
"""

from __future__ import annotations

import argparse
import json
import platform
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import kubeproxy, memory, micro, report, restart, runtime
from bench.peers import PEERS, PORT, SERVER_IPS, PeerNet, run_probe
from bench.velvet_peer import VelvetPeer


@dataclass(frozen=True)
class Plan:
    """What one run measures."""

    counts: tuple[int, ...]
    endpoints: tuple[int, ...]
    reps: int
    connects: int
    rr_seconds: float
    bulk_mib: int
    velvet_budget: float
    policy_rules: tuple[int, ...]
    m7_counts: tuple[int, ...]
    m6_entries: int  # at most lb4_backends' max_entries (65,536): 100,000 stopped every full run at M6
    peer_stop: int  # kernel peers stop above this N (iptables-restore takes minutes beyond)
    vmap_stop: int  # nft -f of the vmap ruleset took 51 s at 10k here: it stops earlier


RESTART_AT = 10000  # the agent is restarted at this N (issue 14: "kill -9 -> API answers at 10k")
RESTART_ROUNDS = 3
API_CHANGE_REPS = 5  # one change through the API takes milliseconds: the report takes the median of these
# issue 14's "< 150 MB at 10k services and 1,000 pods" (full run only: ~3 minutes); a sandbox node's pod
# CIDR is a /24 (245 pods), so 5 nodes of 200 pods on etcd, the services applied through node 0
MEMORY_PODS, MEMORY_NODES, MEMORY_CONNECTS = 1000, 5, 20000

FULL = Plan((10, 1000, 5000, 10000, 20000, 50000), (1, 4), 5, 2000, 2.0, 1024, 900.0,
            (0, 100, 1000, 10000), (10, 1000, 10000, 50000), 65_536, 50000, 20000)
QUICK = Plan((10, 1000, 10000), (1,), 5, 300, 0.5, 128, 45.0, (0, 100), (10, 10000), 20_000, 10000, 10000)


class Recorder:
    """Appends result rows to results.jsonl with the run's context."""

    def __init__(self, path: Path, context: dict[str, Any]) -> None:
        self.path = path
        self.context = context
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"metric": "context", **context}) + "\n")

    def add(self, **row: Any) -> None:
        """One raw result."""
        with self.path.open("a") as out:
            out.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def traffic(rec: Recorder, plan: Plan, n: int, e: int, clients: dict[str, Callable[..., list[str]]],
            targets: dict[str, tuple[str, str]], extra: dict[str, Any], *, bulk: bool = True) -> None:
    """M1-M3 interleaved over the peers (warm-up first), then M4 per peer."""
    names = list(clients)
    for name in names:  # warm-up
        run_probe(clients[name]("suite", *targets[name], "--count", "50", "--seconds", "0.1"))
    for rep in range(plan.reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            result = run_probe(clients[name]("suite", *targets[name], "--count", str(plan.connects),
                                             "--seconds", str(plan.rr_seconds)))
            if result is not None:
                for metric, value in result.items():
                    rec.add(metric=metric, peer=name, n=n, e=e, rep=rep, **extra, **value)
    for rep in range(max(1, plan.reps // 2) if bulk else 0):
        for name in names:
            result = run_probe(clients[name]("bulk", targets[name][0], "--mib", str(plan.bulk_mib)))
            if result is not None:
                rec.add(metric="M4", peer=name, n=n, e=e, rep=rep, **extra, **result)


def sweep(rec: Recorder, plan: Plan, run_id: str, velvet: VelvetPeer) -> None:
    """M1-M5 over N and endpoints for every peer."""
    nets = {p: PeerNet(run_id, p) for p in PEERS}
    try:
        for net in nets.values():
            net.create()
        velvet_on = True
        for e in plan.endpoints:
            for n in plan.counts:
                svcs = kubeproxy.services(n, [(ip, PORT) for ip in SERVER_IPS[:e]])
                active = {p: net for p, net in nets.items()
                          if p == "none" or n <= (plan.vmap_stop if p == "vmap" else plan.peer_stop)}
                for p, net in active.items():
                    seconds = net.load(svcs)
                    if seconds is not None:
                        rec.add(metric="M5", peer=p, n=n, e=e, op="full_load", seconds=seconds)
                if velvet_on:
                    try:
                        applied = velvet.apply_services(n, e, plan.velvet_budget)
                        rec.add(metric="M5", peer="velvet", n=n, e=e, op="apply", **applied,
                                agent_hwm_kib=velvet.agent_hwm_kib(),
                                agent_rss_kib=velvet.agent_hwm_kib("VmRSS"))
                        velvet_on = "seconds" in applied
                    except Exception as exc:  # the report says why Velvet stopped
                        rec.add(metric="error", peer="velvet", n=n, e=e, what=str(exc)[-500:])
                        velvet_on = False
                clients: dict[str, Callable[..., list[str]]] = {p: net.client for p, net in active.items()}
                targets = {p: (net.target(svcs), f"{SERVER_IPS[0]}:{PORT}") for p, net in active.items()}
                if velvet_on:
                    clients["velvet"] = velvet.client
                    targets["velvet"] = (velvet.target(), velvet.pod_target())
                traffic(rec, plan, n, e, clients, targets, {})
                more = kubeproxy.services(n + 1, [(ip, PORT) for ip in SERVER_IPS[:e]])
                for p, net in active.items():
                    seconds = net.add_one(more)
                    if seconds is not None:
                        rec.add(metric="M5", peer=p, n=n, e=e, op="add_one", seconds=seconds)
                try:
                    if velvet_on and (n, e) == (plan.counts[0], plan.endpoints[0]):
                        policies(rec, plan, velvet)
                        observability(rec, plan, velvet)
                    if velvet_on:
                        for api in (False, *[True] * API_CHANGE_REPS):
                            for op, seconds in velvet.add_remove_change(plan.velvet_budget, api=api).items():
                                rec.add(metric="M5", peer="velvet", n=n, e=e, op=op, seconds=seconds)
                    if velvet_on and n == RESTART_AT and e == plan.endpoints[0]:
                        restarts(rec, plan, velvet)
                except Exception as exc:  # the report says why Velvet stopped
                    rec.add(metric="error", peer="velvet", n=n, e=e, what=str(exc)[-500:])
                    velvet_on = False
    finally:
        for net in nets.values():
            net.remove()


def restarts(rec: Recorder, plan: Plan, velvet: VelvetPeer) -> None:
    """The agent killed (SIGKILL) while a connection runs through the last service: until the API
    answers, maps as they were, the connection unharmed (bench.restart)."""
    for _ in range(RESTART_ROUNDS):
        time.sleep(restart.SUPERVISOR_STABLE_SECONDS)  # a steady node, as in bench.restart
        row = restart.round_once(velvet, velvet.free_index(), plan.velvet_budget)
        rec.add(metric="restart", peer="velvet", n=velvet.count, e=velvet.endpoints,
                agent_rss_kib=velvet.agent_hwm_kib("VmRSS"), **row)


def policies(rec: Recorder, plan: Plan, velvet: VelvetPeer) -> None:
    """M8: Velvet's M1/M3 with K policy rules isolating the server pods."""
    clients = {"velvet": velvet.client}
    for rules in plan.policy_rules:
        applied = velvet.apply_policy(rules, plan.velvet_budget)
        rec.add(metric="M8-apply", peer="velvet", rules=rules, **applied)
        if applied["seconds"] is None:
            break
        targets = {"velvet": (velvet.target(), velvet.pod_target())}
        traffic(rec, plan, velvet.count, velvet.endpoints, clients, targets, {"rules": rules}, bulk=False)
    velvet.apply_policy(0, plan.velvet_budget)


def observability(rec: Recorder, plan: Plan, velvet: VelvetPeer) -> None:
    """M9: flow events/s reaching the agent and `velvet observe`, loss, and M3 with the reader paused."""
    observe = subprocess.Popen(velvet.cli("observe", "--follow", "-o", "json"), stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(1.0)
        before = velvet.flow_stats()
        started = time.monotonic()
        load = run_probe(velvet.client("connect", velvet.target(), "--count", str(plan.connects * 10)))
        elapsed = time.monotonic() - started
        time.sleep(1.0)
        after = velvet.flow_stats()
    finally:
        observe.terminate()
        out, _ = observe.communicate(timeout=10)
    lines = sum(1 for line in out.splitlines() if line.strip())
    seen = int(after.get("seen", 0)) - int(before.get("seen", 0))
    lost = int(after.get("lost", 0)) - int(before.get("lost", 0))
    rec.add(metric="M9", peer="velvet", connections=plan.connects * 10,
            conn_per_s=load["per_s"] if load else None, flows_seen=seen, flows_lost=lost,
            flows_per_s=seen / elapsed, observe_lines=lines, before=before, after=after)
    for rep in range(plan.reps):
        for paused in (False, True):
            velvet.pause_agent(paused)
            try:
                result = run_probe(velvet.client("rr", velvet.target(), "--seconds", str(plan.rr_seconds)))
            finally:
                velvet.pause_agent(False)
            if result is not None:
                rec.add(metric="M9-rr", peer="velvet", reader="paused" if paused else "running", rep=rep,
                        **result)


def machine() -> dict[str, Any]:
    """Machine and kernel the run happened on."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {"kernel": platform.release(), "cpu": cpu, "cpus": len(Path("/proc/cpuinfo").read_text().split(
        "processor\t:")) - 1, "mem_gib": round(int(mem) / 2**20, 1), "python": platform.python_version(),
        "iptables": subprocess.run(["iptables", "--version"], capture_output=True, text=True).stdout.strip(),
        "nft": subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout.strip()}


def main() -> int:
    """Run the suite, then write the report."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 10, 1000, 10000; 1 endpoint; < 5 minutes")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    run_id = secrets.token_hex(2)
    started = time.time()
    rec = Recorder(args.out / "results.jsonl", {**machine(), "mode": "quick" if args.quick else "full",
                                                "plan": plan.__dict__, "started": time.strftime("%F %T")})
    for row in micro.map_rates(plan.m6_entries) + micro.prog_ns(list(plan.m7_counts), 20000):
        rec.add(**row)
    velvet = VelvetPeer()
    try:
        velvet.up()
        sweep(rec, plan, run_id, velvet)
    finally:
        velvet.down()
    if not args.quick:
        rec.add(metric="memory-pods", **memory.sandbox(RESTART_AT, plan.velvet_budget, 5.0, MEMORY_CONNECTS,
                                                       MEMORY_PODS, MEMORY_NODES))
    rec.add(metric="duration", seconds=time.time() - started)
    report.write(args.out)
    # issue 15, after the report is safe: process events and tracing policies against nothing attached,
    # in a sandbox of its own; its RUNTIME.md in <out>/runtime
    accounted = runtime.run(2 if args.quick else 3, 2, (1000, 200000, 20000), 20000, args.out / "runtime")
    return 0 if accounted else 1


if __name__ == "__main__":
    sys.exit(main())
