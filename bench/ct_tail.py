"""Time of each new connection in lxc_from_pod, for the objects of several builds, interleaved in one process.

    python -m bench.ct_tail [--objects DIR_A,DIR_B] [--connections 200000] [--batch 1000]

Loads each directory's lxc.bpf.o unpinned (fresh maps; nothing of a running agent is touched), with
two pods on the node, and runs `lxc_from_pod` with BPF_PROG_TEST_RUN once per SYN of a new connection
pod A -> pod B (another source or destination port every run: a new conntrack entry each time, as for a
pod's connect()), `--batch` runs of one build then of the next, on CPU 0.
Per build and per phase of the conntrack map's fill: percentiles of the single runs' times, the share of
runs over 10 us, and the median distance in runs between two of them. Prints one JSON document; needs
root. Made to show the common LRU's refills (bpf_lru_pop_free takes 128 free entries at once,
evicting if it must) against per-CPU LRU lists.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

from bench.micro import LO_IFINDEX, POD_A, POD_B, syn_frame
from velvet.datapath import build
from velvet.datapath.bpfobject import BpfObject
from velvet.datapath.tablemaps import TableMaps
from velvet.datapath.tables import EndpointEntry
from velvet.datapath.testrun import skb_ctx, test_run
from velvet.datapath.views import open_views

SLOW_NS = 10_000


def summarize(runs: list[int], first: int) -> dict[str, Any]:
    """Percentiles of `runs` (ns), the share over SLOW_NS and the median gap between slow runs."""
    ordered = sorted(runs)
    slow = [first + i for i, ns in enumerate(runs) if ns > SLOW_NS]
    gaps = [b - a for a, b in zip(slow, slow[1:], strict=False)]
    return {"runs": len(runs), **{f"p{q}": ordered[min(len(runs) - 1, len(runs) * q // 1000)] / 1000
                                  for q in (500, 900, 990, 999)},
            "max": ordered[-1] / 1000, "slow_share": len(slow) / len(runs),
            "slow_gap": statistics.median(gaps) if gaps else None}


def main() -> None:
    """Load every build's lxc object, run the new connections interleaved, print the report."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--objects", default="", help="directories of built objects (default: this tree's)")
    parser.add_argument("--connections", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--phases", type=int, default=4, help="report the runs in this many equal parts")
    args = parser.parse_args()
    dirs = [Path(d) for d in args.objects.split(",") if d] or [build.object_path("lxc").parent]
    os.sched_setaffinity(0, {0})
    objs, views = [], []
    try:
        for d in dirs:
            obj = BpfObject.open(d / "lxc.bpf.o")
            objs.append(obj.load())
            views.append(open_views(obj))
            tables = TableMaps(views[-1])
            for ip, ident, ep in ((POD_A, 1000, 10), (POD_B, 2000, 20)):
                tables.write("lxc_endpoints", {ip: EndpointEntry(LO_IFINDEX, ident, ep, 0)}, ())
                tables.write("ipcache", {f"{ip}/32": ident}, ())
        ctx = skb_ctx()
        frames = [syn_frame(POD_A, POD_B, 1024 + i % 60000, 8080 + i // 60000)
                  for i in range(args.connections)]
        times: list[list[int]] = [[] for _ in dirs]
        for start in range(0, args.connections, args.batch):
            for k, obj in enumerate(objs):
                prog = obj.program("lxc_from_pod")
                batch = frames[start:start + args.batch]
                times[k].extend(test_run(prog, frame, ctx=ctx).duration_ns for frame in batch)
    finally:
        for v in views:
            v.close()
        for obj in objs:
            obj.close()
    step = args.connections // args.phases
    report = {str(d): [summarize(t[i:i + step], i) for i in range(0, len(t), step)]
              for d, t in zip(dirs, times, strict=True)}
    print(json.dumps({"cpus": os.cpu_count(), "connections": args.connections, "report": report}, indent=1))


if __name__ == "__main__":
    main()
