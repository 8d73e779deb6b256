"""Control-plane latency of one change at N services: through the CLI and through the agent's API.

    .venv/bin/python -m bench.control_plane [--counts 10,10000] [--reps 7] [--connections 0]

One sandbox (the default file store) with the bench's server pods (bench.velvet_peer). At each N, after
growing to N services of one endpoint, each operation is timed `--reps` times, from its start until the
kernel's lb4_services map shows it (polled every 2 ms):

- *add_one_cli*: `velvet apply -f one.yaml` as a user runs it (CLI start-up included);
- *add_one_api*, *remove_one_api*, *change_endpoints_api*: one POST to the agent's unix socket
  (`/v1/apply`, `/v1/delete`) from this process, as the CLI sends it, no process start.

`--connections K` first writes K tracked connections (to no service) into the agent's ct4 map, as
a busy node has: the conntrack flush of a removed backend walks them all.

Prints one JSON document: the median and every sample (seconds) of each operation at each N.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from bench.velvet_peer import TCP, VelvetPeer, service_yaml
from velvet.api.client import ApiClient
from velvet.datapath.structs import Ct4Entry, Ct4Key, CtDir
from velvet.datapath.views import ConntrackMap
from velvet.paths import AgentPaths

POLL_SECONDS = 0.002


def _until(check: Callable[[], bool], budget: float) -> None:
    deadline = time.monotonic() + budget
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not programmed within {budget:g} s")
        time.sleep(POLL_SECONDS)


class ControlPlane:
    """The operations of one run against one sandbox."""

    def __init__(self, peer: VelvetPeer, budget: float) -> None:
        self.peer = peer
        self.api = ApiClient(AgentPaths(peer.name).socket, timeout=budget)
        self.budget = budget

    def _post(self, path: str, text: str) -> None:
        self.api.post(path, {"documents": [{"path": "one.yaml", "text": text}]})

    def add_cli(self, index: int) -> float:
        """`velvet apply -f` of one service until its frontend has its backend."""
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(service_yaml(index, 1))
        try:
            started = time.monotonic()
            self.peer.sb.velvet("apply", "-f", f.name)
            _until(lambda: self.peer._frontend_count(index) == 1, self.budget)
            return time.monotonic() - started
        finally:
            os.unlink(f.name)

    def add_api(self, index: int) -> float:
        """One API apply of one service until its frontend has its backend."""
        started = time.monotonic()
        self._post("/v1/apply", service_yaml(index, 1))
        _until(lambda: self.peer._frontend_count(index) == 1, self.budget)
        return time.monotonic() - started

    def remove_api(self, index: int) -> float:
        """One API delete of one service until its frontend is gone."""
        started = time.monotonic()
        self._post("/v1/delete", service_yaml(index, 1))
        _until(lambda: self.peer._frontend_count(index) is None, self.budget)
        return time.monotonic() - started

    def change_api(self, index: int) -> float:
        """Re-select service `index` to the other server pod until its slot points at another backend."""
        before = self.peer._backends(index)
        started = time.monotonic()
        self._post("/v1/apply", service_yaml(index, 1, '{app: srv, idx: "1"}'))
        _until(lambda: self.peer._backends(index) not in (before, None), self.budget)
        elapsed = time.monotonic() - started
        self._post("/v1/apply", service_yaml(index, 1))  # back as it was
        _until(lambda: self.peer._backends(index) == before, self.budget)
        return elapsed


def track_connections(peer: VelvetPeer, count: int) -> int:
    """Write `count` outgoing TCP connections (10.250.x.y:1000 -> 10.251.x.y:80) into the agent's ct4."""
    ct = ConntrackMap.from_pin(AgentPaths(peer.name).pin_dir)
    try:
        now = time.monotonic_ns()  # bpf_ktime_get_ns's clock: the entries look fresh
        keys = [Ct4Key(saddr=0x0AFA0000 + i, daddr=0x0AFB0000 + i, sport=1000, dport=80, proto=TCP,
                       dir=CtDir.EGRESS) for i in range(count)]
        ct.map.update_batch(keys, [Ct4Entry(created_ns=now, last_seen_ns=now) for _ in keys])
        return ct.map.count()
    finally:
        ct.close()


def measure(counts: list[int], reps: int, budget: float, connections: int = 0) -> dict[str, Any]:
    """Every operation at every N, `reps` times each."""
    peer = VelvetPeer()
    report: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "kernel": os.uname().release},
                              "reps": reps, "n": {}}
    try:
        peer.up()
        ops = ControlPlane(peer, budget)
        for n in counts:
            grown = peer.apply_services(n, 1, budget)
            if "seconds" not in grown:
                raise TimeoutError(f"{n} services not programmed within {budget:g} s")
            extra, last = n, n - 1
            tracked = track_connections(peer, connections) if connections else 0
            samples: dict[str, list[float]] = {"add_one_cli": [], "add_one_api": [], "remove_one_api": [],
                                               "change_endpoints_api": []}
            for _ in range(reps):
                samples["add_one_cli"].append(ops.add_cli(extra))
                samples["remove_one_api"].append(ops.remove_api(extra))
                samples["add_one_api"].append(ops.add_api(extra))
                ops.remove_api(extra)
                samples["change_endpoints_api"].append(ops.change_api(last))
            report["n"][str(n)] = {
                "grow_seconds": grown["seconds"],
                "tracked_connections": tracked,
                "median": {op: statistics.median(values) for op, values in samples.items()},
                "samples": samples,
            }
    finally:
        peer.down()
    return report


def main() -> None:
    """Parse the arguments, measure, print JSON."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--counts", default="10,10000")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--budget", type=float, default=120.0)
    parser.add_argument("--connections", type=int, default=0)
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",") if c]
    print(json.dumps(measure(counts, args.reps, args.budget, args.connections), indent=2))


if __name__ == "__main__":
    main()
