"""Where `velvet apply` of N services spends its time, stage by stage, in one process (no kernel, no root).

    .venv/bin/python -m bench.control_stages [--services 1000] [--at 10000] [--reps 3]

The agent's steps between the API request and the datapath write, each timed alone (best of `--reps`)
on an agent with the in-memory datapath: parse + validate the YAML (`parse_all`), the store's apply
(slices, allocation, stamping) on a backend that numbers versions itself as etcd does, encoding and
decoding the etcd values (what another node's agent decodes from its watch), and the reconcile pass
(compile + writes, counted). Then one service added to and removed from `--at` services (apply + pass).
Full garbage collections are off, as in the agent (daemon.keep_the_loop_responsive). Prints one JSON
document (milliseconds).
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.cluster import services_yaml
from velvet.agent.config import AgentConfig
from velvet.agent.manifests import parse_all
from velvet.agent.node import Agent, Dirty
from velvet.datapath.fake import FakeDatapath
from velvet.sources.etcd_client import KeyValue
from velvet.sources.etcd_store import decode, encode
from velvet.sources.local import LocalStore

NAMESPACE = "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n"


def best(reps: int, step: Callable[[], Any]) -> float:
    """The fastest of `reps` runs of `step`, in milliseconds."""
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return round(min(times) * 1000, 1)


def agent(state: Path) -> tuple[Agent, FakeDatapath]:
    """A started agent on the in-memory datapath."""
    dp = FakeDatapath()
    node = Agent(AgentConfig(sandbox="bench", node_ips=("192.168.77.2",), state_dir=state), dp)
    node.start()
    return node, dp


def stages(count: int, reps: int, tmp: Path) -> dict[str, Any]:
    """Each stage of applying `count` services."""
    docs = [{"path": "services.yaml", "text": NAMESPACE + services_yaml(count)}]
    objects, _ = parse_all(docs)
    out: dict[str, Any] = {"parse_all": best(reps, lambda: parse_all(docs))}

    def store_apply() -> LocalStore:
        store = LocalStore.open(Path(tempfile.mkdtemp(dir=tmp)))
        store._backend.own_versions = True  # stamp every object, as on etcd
        store._backend.record = lambda since, version, upserts, deletes: since + 1  # type: ignore[method-assign]
        store.apply(objects)
        return store

    out["store_apply"] = best(reps, store_apply)
    stored = [o for o in store_apply().snapshot() if type(o).__name__ in ("Service", "EndpointSlice")]
    values = [KeyValue(f"/velvet/registry/{i}", encode(o), i + 1, i + 1) for i, o in enumerate(stored)]
    out["etcd_encode"] = best(reps, lambda: [encode(o) for o in stored])
    out["etcd_decode"] = best(reps, lambda: [decode(kv) for kv in values])
    node, dp = agent(Path(tempfile.mkdtemp(dir=tmp)))
    node.apply(docs)
    keys = {s.metadata.key for s in node.store.objects("Service")}
    writes = dp.writes
    started = time.perf_counter()
    node.reconcile(Dirty(keys))
    out["reconcile"] = round((time.perf_counter() - started) * 1000, 1)
    out["reconcile_table_writes"] = dp.writes - writes
    node.store.close()
    return out


def one_change(count: int, reps: int, tmp: Path) -> dict[str, float]:
    """Add then remove one service at `count` services: apply + pass, each."""
    node, _ = agent(Path(tempfile.mkdtemp(dir=tmp)))
    node.apply([{"path": "services.yaml", "text": NAMESPACE + services_yaml(count)}])
    node.reconcile(Dirty({s.metadata.key for s in node.store.objects("Service")}))
    one = [{"path": "one.yaml", "text": "---" + services_yaml(count + 1).split("---")[-1]}]
    key = f"bench/s{count:05d}"
    adds, removes = [], []
    for _ in range(reps):
        started = time.perf_counter()
        node.apply(one)
        node.reconcile(Dirty({key}))
        adds.append(time.perf_counter() - started)
        started = time.perf_counter()
        node.delete(one, None)
        node.reconcile(Dirty({key}))
        removes.append(time.perf_counter() - started)
    node.store.close()
    return {"add_one": round(min(adds) * 1000, 2), "remove_one": round(min(removes) * 1000, 2)}


def main() -> None:
    """Parse the arguments, measure, print JSON."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--at", type=int, default=10000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 2**31 - 1)
    with tempfile.TemporaryDirectory() as tmp:
        report = {"services": args.services, "stages_ms": stages(args.services, args.reps, Path(tmp)),
                  "at": args.at, "one_change_ms": one_change(args.at, args.reps, Path(tmp))}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
