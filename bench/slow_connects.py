"""What runs on the client's CPU during the slowest connect()s, against the median ones (perf; root).

    python -m bench.slow_connects [--trees A,B] [--count 10000] [--rounds 4] [--connects 3000]
                                  [--symbols bpf_lru_pop_free,kfree_rcu_work] [--freq 20000] [--top 12]

The peers of bench.connect_ab (one sandbox per source tree, N services, and no rules). Every round runs
`probe.py connect --times` once per peer under `perf record -a -g -k CLOCK_MONOTONIC` (cpu-clock at
--freq Hz) and places each sample of the client's CPU inside the connect it fell in. Per peer: the
slowest 2 % of connects and the median ones (40th to 60th percentile), the time they cover, the samples
per ms whose stack holds each of --symbols, how many slow connects hold one, and the most frequent
stacks (innermost 6 frames) of the slow connects. Prints one JSON document. Needs root and perf.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench.connect_ab import pythonpath
from bench.peers import CLIENT_CPU, PeerNet
from bench.velvet_peer import VelvetPeer

HEADER = re.compile(r"\s*\[(\d+)\]\s+(\d+\.\d+):")


def spans(times: list[list[int]], low: float, high: float) -> list[tuple[int, int]]:
    """(start, end) of the connects whose duration lies between the `low` and `high` quantiles, sorted."""
    ordered = sorted(d for _, d in times)
    lo, hi = ordered[int(len(ordered) * low)], ordered[min(len(ordered) - 1, int(len(ordered) * high))]
    return sorted((t, t + d) for t, d in times if lo <= d <= hi)


def inside(windows: list[tuple[int, int]], t: int) -> int | None:
    """Index of the window holding time `t`, if any."""
    i = bisect.bisect_right(windows, (t, 1 << 62)) - 1
    return i if i >= 0 and windows[i][0] <= t <= windows[i][1] else None


def place(data: str, slow: list[tuple[int, int]], mid: list[tuple[int, int]], symbols: list[str],
          acc: dict[str, Any]) -> None:
    """Add the client CPU's samples of perf file `data` that fall in a slow or a median connect to `acc`."""
    text = subprocess.run(["perf", "script", "-i", data, "-F", "cpu,time,ip,sym", "--ns"],
                          capture_output=True, text=True, check=True).stdout
    hit: set[tuple[str, int]] = set()
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        m = HEADER.match(lines[0]) if lines else None
        if m is None or int(m.group(1)) != CLIENT_CPU:
            continue
        t = int(m.group(2).replace(".", ""))
        frames = [line.split(None, 1)[-1].split("+")[0] for line in lines[1:]]
        for kind, windows in (("slow", slow), ("median", mid)):
            if (i := inside(windows, t)) is None:
                continue
            acc[kind]["samples"] += 1
            for sym in symbols:
                if any(sym in f for f in frames):
                    acc[kind][sym] += 1
                    if kind == "slow" and (sym, i) not in hit:
                        hit.add((sym, i))
                        acc["slow_with"][sym] += 1
            if kind == "slow":
                acc["stacks"][" <- ".join(frames[:6])] += 1


def traced(argv: list[str], freq: int, data: str) -> list[list[int]]:
    """Run the client `argv` under perf record into `data`; every connect's (start, duration) in ns."""
    perf = subprocess.Popen(["perf", "record", "-q", "-a", "-g", "-k", "CLOCK_MONOTONIC", "-F", str(freq),
                             "-e", "cpu-clock", "-o", data],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # perf is recording
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
    finally:
        perf.send_signal(2)
        perf.wait()
    times: list[list[int]] = json.loads(done.stdout.strip().splitlines()[-1])["times"]
    return times


def new_peer() -> dict[str, Any]:
    """An empty account of one peer's samples."""
    return {"slow": collections.Counter(), "median": collections.Counter(), "slow_ms": 0.0, "median_ms": 0.0,
            "slow_connects": 0, "slow_with": collections.Counter(), "stacks": collections.Counter()}


def main() -> None:
    """Bring the peers up, run the traced rounds, print the report."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trees", default="", help="Velvet source trees, comma-separated (default: here)")
    parser.add_argument("--count", type=int, default=10000, help="services in each sandbox")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--connects", type=int, default=3000)
    parser.add_argument("--symbols", default="bpf_lru_pop_free,kfree_rcu_work,rcu_do_batch")
    parser.add_argument("--freq", type=int, default=20000)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    trees = [t for t in args.trees.split(",") if t] or [""]
    symbols = [s for s in args.symbols.split(",") if s]
    sandboxes = {os.path.basename(t.rstrip("/")) or "velvet": VelvetPeer() for t in trees}
    none = PeerNet(secrets.token_hex(2), "none")
    acc: dict[str, dict[str, Any]] = {}
    try:
        none.create()
        for tree, peer in zip(trees, sandboxes.values(), strict=True):
            with pythonpath(tree):
                peer.up()
        for peer in sandboxes.values():
            peer.apply_services(args.count, 1, 900.0)
        clients = {"none": none.client("connect", none.target([]), "--count", str(args.connects), "--times")}
        clients |= {name: p.client("connect", p.target(), "--count", str(args.connects), "--times")
                    for name, p in sandboxes.items()}
        names = list(clients)
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    data = os.path.join(tmp, f"{name}-{r}.data")
                    times = traced(clients[name], args.freq, data)
                    slow, mid = spans(times, 0.98, 1.0), spans(times, 0.4, 0.6)
                    a = acc.setdefault(name, new_peer())
                    a["slow_ms"] += sum(e - s for s, e in slow) / 1e6
                    a["median_ms"] += sum(e - s for s, e in mid) / 1e6
                    a["slow_connects"] += len(slow)
                    place(data, slow, mid, symbols, a)
                    print(f"{name} round {r}", file=sys.stderr)
    finally:
        for peer in sandboxes.values():
            peer.down()
        none.remove()
    report = {name: {"slow_ms": round(a["slow_ms"], 2), "median_ms": round(a["median_ms"], 2),
                     "slow_connects": a["slow_connects"],
                     "per_ms": {s: {"slow": round(a["slow"][s] / max(a["slow_ms"], 1e-9), 3),
                                    "median": round(a["median"][s] / max(a["median_ms"], 1e-9), 3),
                                    "slow_connects_with": a["slow_with"][s]} for s in symbols},
                     "slow_stacks": a["stacks"].most_common(args.top)} for name, a in acc.items()}
    print(json.dumps({"cpus": os.cpu_count(), "services": args.count, "connects": args.connects,
                      "rounds": args.rounds, "freq": args.freq, "report": report}, indent=1))


if __name__ == "__main__":
    main()
