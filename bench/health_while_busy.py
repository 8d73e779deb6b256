"""Health while busy: how long `/v1/health` takes while the agent applies and compiles a big change.

Brings up its own sandbox (unique name, always torn down), measures the health call's latency while
idle, then applies N services and a NetworkPolicy with B ipBlocks in one `velvet apply` and keeps
calling `/v1/health` every 10 ms until every service is served; prints the latency percentiles of
both phases, and how long the apply and the compile took. The agent runs its state work on a worker
thread (agent/handlers.py), so the health answer should not wait for either.

    .venv/bin/python -m bench.health_while_busy [--services 10000] [--blocks 5000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

from velvet.cli.runner import SandboxCli, unique_name

NS = "bench"
POLL_SECONDS = 0.01


def manifest(services: int, blocks: int) -> str:
    """A namespace, `services` ClusterIP services and one policy with `blocks` ipBlock peers."""
    text = f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n"
    text += "".join(f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: {NS}}}\n"
                    f"spec:\n  selector: {{app: none}}\n  ports: [{{port: 80, targetPort: 8080}}]\n"
                    for i in range(services))
    peers = "".join(f"    - ipBlock: {{cidr: 10.{i // 256 % 256}.{i % 256}.0/24}}\n" for i in range(blocks))
    text += (f"---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
             f"metadata: {{name: blocks, namespace: {NS}}}\nspec:\n  podSelector: {{}}\n"
             f"  policyTypes: [Egress]\n  egress:\n  - to:\n{peers}")
    return text


def sample_health(sb: SandboxCli, stop: threading.Event, out: list[float]) -> None:
    """Call /v1/health until `stop`, appending each call's latency in milliseconds."""
    while not stop.is_set():
        started = time.perf_counter()
        sb.api.get("/v1/health")
        out.append((time.perf_counter() - started) * 1e3)
        time.sleep(POLL_SECONDS)


def percentiles(samples: list[float]) -> dict[str, float]:
    """Median, p99 and max of latencies in ms."""
    ordered = sorted(samples)
    return {"n": len(ordered), "p50_ms": statistics.median(ordered),
            "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], "max_ms": ordered[-1]}


def main() -> None:
    """Run the measurement and print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--blocks", type=int, default=5000)
    args = parser.parse_args()
    sb = SandboxCli(unique_name("bhealth"))
    try:
        sb.up()
        idle: list[float] = []
        stop = threading.Event()
        sampler = threading.Thread(target=sample_health, args=(sb, stop, idle))
        sampler.start()
        time.sleep(3)
        stop.set()
        sampler.join()
        busy: list[float] = []
        stop = threading.Event()
        sampler = threading.Thread(target=sample_health, args=(sb, stop, busy))
        sampler.start()
        started = time.perf_counter()
        sb.apply(manifest(args.services, args.blocks))
        applied = time.perf_counter() - started
        while len(sb.api.get("/v1/query/services")) < args.services:
            time.sleep(0.2)
        served = time.perf_counter() - started
        stop.set()
        sampler.join()
        print(json.dumps({"services": args.services, "blocks": args.blocks, "apply_s": round(applied, 2),
                          "served_s": round(served, 2), "idle": percentiles(idle),
                          "busy": percentiles(busy)}))
    finally:
        sb.down()


if __name__ == "__main__":
    main()
