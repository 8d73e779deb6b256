"""Service scale: connect latency to the last of 10 and of N services, and the time to apply N.

Brings up its own sandbox (unique name, always torn down), starts two echo backends and a client
pod, applies 10 services selecting the backends, measures; then applies the rest up to N (default
10,000) in one `velvet apply -f` and measures the time until the last one is served by the
datapath (polled through `velvet service list -o json`), then the connect latency again. Connect
latency is timed inside the client pod, in one process: CONNECTS TCP connects (connect + close),
to the first and to the last service, median and p99.

    .venv/bin/python -m bench.services_scale [--services 10000] [--connects 2000]
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from velvet.cli.runner import velvet_argv
from velvet.connectivity.manifests import echo_pod, namespace

NS = "bench"
TIMER = r"""
import json, socket, sys, time
target, count = (sys.argv[1], int(sys.argv[2])), int(sys.argv[3])
samples = []
for _ in range(count):
    start = time.perf_counter_ns()
    s = socket.create_connection(target, timeout=2)
    samples.append(time.perf_counter_ns() - start)
    s.close()
print(json.dumps(samples))
"""


def velvet(sandbox: str, *args: str, check: bool = True) -> str:
    """Run the CLI against the sandbox; its stdout."""
    done = subprocess.run(velvet_argv(sandbox, *args),
                          capture_output=True, text=True, check=False, timeout=1800)
    if done.returncode:
        message = f"velvet {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
        if check:
            raise SystemExit(message)
        print(message, file=sys.stderr)
    return done.stdout


def manifests(first: int, last: int) -> str:
    """Services bench-<first>..bench-<last-1>, each port 80 -> 8080 of app=echo."""
    return "".join(f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: {NS}}}\n"
                   f"spec:\n  selector: {{app: echo}}\n  ports: [{{port: 80, targetPort: 8080}}]\n"
                   for i in range(first, last))


def pods() -> str:
    """The namespace, two echo backends and the client."""
    apps = {"echo-0": "echo", "echo-1": "echo", "client": "client"}
    return namespace(NS) + "".join(echo_pod(NS, name, {"app": app}) for name, app in apps.items())


def apply(sandbox: str, text: str) -> float:
    """`velvet apply -f` of YAML text; seconds it took."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    try:
        start = time.monotonic()
        velvet(sandbox, "apply", "-f", f.name)
        return time.monotonic() - start
    finally:
        Path(f.name).unlink()


def served(sandbox: str, name: str) -> str | None:
    """The ClusterIP frontend of service `name` once the datapath has its 2 backends, else None."""
    for row in json.loads(velvet(sandbox, "service", "list", "-o", "json")):
        if row["service"] == f"{NS}/{name}" and len(row["backends"]) == 2:
            return str(row["frontend"]).split(":")[0]
    return None


def wait_served(sandbox: str, name: str, timeout: float = 1800) -> str:
    """Poll until `name` is served; its ClusterIP."""
    deadline = time.monotonic() + timeout
    while (vip := served(sandbox, name)) is None:
        if time.monotonic() > deadline:
            raise SystemExit(f"{name} not served after {timeout}s")
        time.sleep(0.2)
    return vip


def connect_ns(sandbox: str, vip: str, count: int) -> dict[str, float]:
    """Median and p99 connect time (microseconds) to vip:80 from the client pod, one process."""
    out = velvet(sandbox, "sandbox", "exec", f"{NS}/client", "--", "python3", "-c", TIMER, vip, "80",
                 str(count))
    samples: list[int] = json.loads(out)
    cuts = statistics.quantiles(samples, n=100)
    return {"median_us": statistics.median(samples) / 1000, "p99_us": cuts[98] / 1000}


def measure(sandbox: str, count: int, first_vip: str, last_vip: str) -> dict[str, Any]:
    """Connect latency to the first and the last service."""
    return {"first": connect_ns(sandbox, first_vip, count), "last": connect_ns(sandbox, last_vip, count)}


def main() -> int:
    """Run the measurement and print one JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--connects", type=int, default=2000)
    args = parser.parse_args()
    sandbox = "bench" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(6))
    result: dict[str, Any] = {"services": args.services, "connects": args.connects}
    try:
        velvet(sandbox, "sandbox", "up")
        apply(sandbox, pods())
        first_vip = ""
        start = time.monotonic()
        apply(sandbox, manifests(0, 10))
        first_vip = wait_served(sandbox, "s0")
        result["at_10"] = measure(sandbox, args.connects, first_vip, wait_served(sandbox, "s9"))
        result["apply_10_s"] = time.monotonic() - start
        start = time.monotonic()
        result["apply_cli_s"] = apply(sandbox, manifests(10, args.services))
        last_vip = wait_served(sandbox, f"s{args.services - 1}")
        result["apply_until_served_s"] = time.monotonic() - start
        result[f"at_{args.services}"] = measure(sandbox, args.connects, first_vip, last_vip)
        status = json.loads(velvet(sandbox, "status", "-o", "json"))
        result["agent_reconcile_s"] = status["agent"]["reconcile"]
    finally:
        velvet(sandbox, "sandbox", "down", check=False)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
