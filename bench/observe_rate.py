"""How many flow events per second the agent takes in without loss, in a real sandbox.

Usage: .venv/bin/python -m bench.observe_rate [--datagrams N] [--senders 1,2,4] [--keep]

A sender pod sends UDP datagrams to a receiver pod, each from a fresh socket (a new source port, so
a new conntrack entry and new flow events every time; datagrams of one established flow would be
aggregated in the kernel). For each step, the datapath's events (read by the agent: `seen`, plus
what the ring refused: `lost`) are compared before and after; the rate is events over the time the
senders ran. Prints one row per step. EV/DGRAM falls below 2 (one event leaving the sender, one
arriving at the receiver) as the kernel reuses ephemeral source ports: a datagram whose 5-tuple is
still in conntrack is an established flow and, by design, makes no event. LOST is the datapath's
own count of events the ring buffer refused.
"""

from __future__ import annotations

import argparse
import json
import secrets
import string
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from velvet.cli.runner import velvet_argv
from velvet.connectivity.manifests import echo_pod, namespace

SENDER = """
import socket, sys, time
addr, n = (sys.argv[1], 8081), int(sys.argv[2])
start = time.perf_counter()
for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x", addr)
    s.close()
print(time.perf_counter() - start)
"""

PODS = namespace("bench") + "".join(echo_pod("bench", name, grace=1) for name in ("sender", "receiver"))


def velvet(sandbox: str, *args: str) -> str:
    """Run the velvet CLI for `sandbox`; its stdout."""
    done = subprocess.run(velvet_argv(sandbox, *args),
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"velvet {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def flow_counters(sandbox: str) -> dict[str, Any]:
    """The agent's flow counters (seen, lost, overwritten, ...)."""
    counters: dict[str, Any] = json.loads(velvet(sandbox, "status", "-o", "json"))["flows"]
    return counters


def settle(sandbox: str) -> dict[str, Any]:
    """Counters once `seen` has stopped moving for a second (the agent has drained the ring)."""
    last = flow_counters(sandbox)
    while True:
        time.sleep(1.0)
        now = flow_counters(sandbox)
        if now["seen"] == last["seen"] and now["lost"] == last["lost"]:
            return now
        last = now


def receiver_ip(sandbox: str) -> str:
    """The receiver pod's IP, once both pods are ready."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pods = json.loads(velvet(sandbox, "get", "pods", "-n", "bench", "-o", "json"))["items"]
        ready = {p["metadata"]["name"]: p["status"].get("podIP") for p in pods
                 if any(c["type"] == "Ready" and c["status"] == "True"
                        for c in p["status"].get("conditions", []))}
        if {"sender", "receiver"} <= set(ready):
            return str(ready["receiver"])
        time.sleep(0.5)
    raise SystemExit("pods not ready after 60s")


def step(sandbox: str, ip: str, senders: int, datagrams: int) -> dict[str, float]:
    """One measurement: `senders` processes in the sender pod, `datagrams` each."""
    before = settle(sandbox)

    def send(_: int) -> float:
        out = velvet(sandbox, "sandbox", "exec", "bench/sender", "--", "python3", "-c", SENDER, ip,
                     str(datagrams))
        return float(out.strip())

    with ThreadPoolExecutor(senders) as pool:
        durations = list(pool.map(send, range(senders)))
    after = settle(sandbox)
    seen, lost = after["seen"] - before["seen"], after["lost"] - before["lost"]
    elapsed = max(durations)
    return {"senders": senders, "datagrams": senders * datagrams, "seconds": elapsed, "events": seen + lost,
            "seen": seen, "lost": lost, "rate": (seen + lost) / elapsed,
            "per_datagram": (seen + lost) / (senders * datagrams)}


def main() -> int:
    """Bring a sandbox up, measure each step, print the table, tear the sandbox down."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datagrams", type=int, default=20000, help="datagrams per sender per step")
    parser.add_argument("--senders", default="1,2,4", help="sender processes per step, comma separated")
    args = parser.parse_args()
    sandbox = "orate" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(6))
    rows = []
    try:
        velvet(sandbox, "sandbox", "up")
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write(PODS)
            f.flush()
            velvet(sandbox, "apply", "-f", f.name)
        ip = receiver_ip(sandbox)
        for senders in (int(s) for s in args.senders.split(",")):
            rows.append(step(sandbox, ip, senders, args.datagrams))
    finally:
        subprocess.run(velvet_argv(sandbox, "sandbox", "down"),
                       capture_output=True, check=False)
    print(f"{'SENDERS':>7} {'DATAGRAMS':>9} {'SECONDS':>7} {'EVENTS':>8} {'EV/DGRAM':>8} {'EVENTS/S':>9} "
          f"{'SEEN':>8} {'LOST':>6}")
    for r in rows:
        print(f"{r['senders']:>7} {r['datagrams']:>9} {r['seconds']:>7.2f} {r['events']:>8} "
              f"{r['per_datagram']:>8.2f} {r['rate']:>9.0f} {r['seen']:>8} {r['lost']:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
