"""In-process cost of the process monitor's socket records: user-space microseconds per connection.

    python -m bench.monitor_sockets [--batches 20] [--connections 1000]

Each batch holds `--connections` connections of one process to a listener of another (4 records each:
the client's and the accepted socket's ESTABLISHED, then both CLOSE), new ports every batch; past 65
batches the connection table is full (65,536) and evicts. No privileges; compare trees in one run
(`PYTHONPATH=<tree>/src`).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import numpy.typing as npt

from velvet.datapath.structs import SOCK_EVENT_DTYPE
from velvet.observe.enrich import DictResolver
from velvet.runtime.monitor import ProcessMonitor
from velvet.runtime.process import Process

CLIENT, SERVER, PORT = 0x0A000001, 0x0A000002, 8080


def batch(first: int, connections: int) -> npt.NDArray[np.void]:
    """`connections` connections from ports first.. opened and closed, in the kernel's record order."""
    records = np.zeros(4 * connections, SOCK_EVENT_DTYPE)
    ports = np.arange(first, first + connections) % 60000 + 1024
    records["protocol"], records["netns_ino"] = 6, 1
    steps = [(2, 1, 40, CLIENT, SERVER, ports, PORT), (3, 1, 0, SERVER, CLIENT, PORT, ports),
             (4, 7, 40, CLIENT, SERVER, ports, PORT), (9, 7, 0, SERVER, CLIENT, PORT, ports)]
    for i, (old, new, pid, saddr, daddr, sport, dport) in enumerate(steps):
        step = records[i::4]
        step["old_state"], step["new_state"], step["pid"] = old, new, pid
        step["saddr"], step["daddr"], step["sport"], step["dport"] = saddr, daddr, sport, dport
    return records


def main() -> None:
    """Print microseconds per connection."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--connections", type=int, default=1000)
    args = parser.parse_args()
    monitor = ProcessMonitor(None, DictResolver(), "node", cgroup=None)
    for pid, binary in ((40, "/bin/client"), (41, "/bin/server")):
        monitor.tree.put(Process(f"e{pid}", pid, 1, 0, binary, [], "/", 0, [], "", 0, None))
    monitor.listeners[(1, PORT)] = monitor.tree.get(41)  # type: ignore[assignment]
    batches = [batch(i * args.connections, args.connections) for i in range(args.batches)]
    start = time.perf_counter()
    for records in batches:
        monitor.ingest_sockets(records)
    seconds = time.perf_counter() - start
    per = seconds / (args.batches * args.connections) * 1e6
    print(f"{args.batches} batches of {args.connections} connections: {per:.2f} us per connection "
          f"(table {len(monitor.connections)})")


if __name__ == "__main__":
    main()
