"""Local store scale: the cost of one change when the store holds 10,000 services, in-process.

Seeds a state directory with SERVICES services `svc-<i>` in namespace `bench`, each selecting
PODS running pods labelled app=svc-<i> (and their EndpointSlices), written straight to the
snapshot file so seeding costs the same whatever the store's algorithms; then opens the store
and times, REPEAT times each (median and max, milliseconds): one pod status report (ready
toggled), one service update (its port changed), the apply of one new service, the delete of one
service. Also times parsing a `velvet apply -f` of SERVICES service documents (parse_all).
With --shared, every service selects the same PODS pods (app=echo, as bench/services_scale.py
does), so one pod's status change really does change every service's slice. With --namespaces
N,N,... it instead times one apply of N namespaces into a fresh store, and the delete of them all
(best of REPEAT, milliseconds, with microseconds per namespace), to show how the cost grows with N.

    .venv/bin/python -m bench.store_scale [--services 10000] [--pods 2] [--shared] [--repeat 5]
    .venv/bin/python -m bench.store_scale --namespaces 2000,4000,8000,16000 [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from velvet.agent_manifests import parse_all

from velvet.model import KubeObject, Pod, PodCondition, PodStatus, Service
from velvet.model.codec import from_dict, to_dict
from velvet.sources.endpointslices import desired_slices
from velvet.sources.local import LocalStore, ObjectRef
from velvet.sources.state_files import STATE_FILE

NS = "bench"
UID = "00000000-0000-4000-8000-{:012d}"
STAMP = "2024-05-01T12:00:00Z"


def _meta(name: str, namespace: str, version: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": UID.format(version), "resourceVersion": str(version),
                            "creationTimestamp": STAMP, "labels": labels or {}}
    if namespace:
        meta["namespace"] = namespace
    return meta


def app(i: int, shared: bool) -> str:
    """The app label service i selects."""
    return "echo" if shared else f"svc-{i}"


def service_doc(i: int, shared: bool, port: int = 80) -> dict[str, Any]:
    """Service svc-<i> selecting app(i), port `port` -> 8080."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"svc-{i}", "namespace": NS},
            "spec": {"selector": {"app": app(i, shared)}, "ports": [{"port": port, "targetPort": 8080}]}}


def pod_name(i: int, j: int, shared: bool) -> str:
    """Pod j of service i (of every service when shared)."""
    return f"echo-{j}" if shared else f"svc-{i}-{j}"


def pod_doc(i: int, j: int, shared: bool, version: int) -> dict[str, Any]:
    """Running, ready pod j of service i as stored (resourceVersion `version`)."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": _meta(pod_name(i, j, shared), NS, version, {"app": app(i, shared)}),
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 8080}]}],
                     "nodeName": "velvet-node"},
            "status": {"phase": "Running", "podIP": f"10.{64 + j}.{i // 250}.{i % 250 + 1}",
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def seed(state_dir: Path, services: int, pods: int, shared: bool) -> int:
    """Write the snapshot file; the number of objects in it."""
    version = 0
    objects: list[dict[str, Any]] = []

    def add(doc: dict[str, Any]) -> KubeObject:
        nonlocal version
        version += 1
        obj = from_dict(doc, trusted=True)
        objects.append(to_dict(obj))
        return obj

    for name in ("default", "kube-system", NS):
        add({"apiVersion": "v1", "kind": "Namespace", "status": {"phase": "Active"},
             "metadata": _meta(name, "", version + 1, {"kubernetes.io/metadata.name": name})})
    members: list[Pod] = []
    for i in range(services):
        if not shared or i == 0:
            docs = [pod_doc(i, j, shared, version + 1 + j) for j in range(pods)]
            members = [p for p in map(add, docs) if isinstance(p, Pod)]
        doc = service_doc(i, shared)
        doc["metadata"] = _meta(f"svc-{i}", NS, version + 1)
        doc["spec"]["clusterIP"] = f"10.96.{1 + i // 250}.{i % 250 + 1}"
        svc = add(doc)
        assert isinstance(svc, Service)
        for eps in desired_slices(svc, members):
            version += 1
            meta = {**_meta(eps.metadata.name, NS, version), "labels": dict(eps.metadata.labels)}
            objects.append({**to_dict(eps), "metadata": meta})
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / STATE_FILE).write_text(json.dumps({"version": version, "objects": objects}))
    return len(objects)


def timed(repeat: int, action: Callable[[int], object]) -> dict[str, float]:
    """Median and max milliseconds of `action(round)` over `repeat` rounds."""
    samples = []
    for round_ in range(repeat):
        start = time.perf_counter()
        action(round_)
        samples.append((time.perf_counter() - start) * 1000)
    return {"median_ms": round(statistics.median(samples), 2), "max_ms": round(max(samples), 2)}


def namespaces_scale(sizes: list[int], repeat: int) -> dict[str, Any]:
    """Best-of-`repeat` milliseconds to apply N namespaces in one apply, and to delete them, per N."""
    rows: dict[str, Any] = {}
    for n in sizes:
        docs = [from_dict({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns-{i}"}})
                for i in range(n)]
        apply_ms, delete_ms = [], []
        for _ in range(repeat):
            with tempfile.TemporaryDirectory() as tmp:
                store = LocalStore.open(Path(tmp) / "state")
                start = time.perf_counter()
                store.apply(docs)
                apply_ms.append((time.perf_counter() - start) * 1000)
                start = time.perf_counter()
                store.delete([ObjectRef("ns", f"ns-{i}") for i in range(n)])
                delete_ms.append((time.perf_counter() - start) * 1000)
        best = min(apply_ms)
        rows[str(n)] = {"apply_ms": round(best, 1), "apply_us_per_ns": round(best * 1000 / n, 1),
                        "delete_ms": round(min(delete_ms), 1)}
    return {"namespaces": rows, "repeat": repeat}


def main() -> int:
    """Run the measurement and print one JSON document."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--pods", type=int, default=2, help="pods per service")
    parser.add_argument("--shared", action="store_true", help="every service selects the same pods")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--namespaces", help="comma-separated sizes: time applying that many namespaces")
    args = parser.parse_args()
    if args.namespaces:
        sizes = [int(n) for n in args.namespaces.split(",")]
        print(json.dumps(namespaces_scale(sizes, args.repeat), indent=2))
        return 0
    n, repeat, shared = args.services, args.repeat, args.shared
    result: dict[str, Any] = {"services": n, "pods": args.pods, "shared": shared, "repeat": repeat}
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        result["objects"] = seed(state, n, args.pods, shared)
        start = time.perf_counter()
        store = LocalStore.open(state)
        result["open_ms"] = round((time.perf_counter() - start) * 1000, 2)
        target = 0 if shared else n // 2

        def pod_status(round_: int) -> None:
            ready = "False" if round_ % 2 == 0 else "True"
            status = PodStatus(phase="Running", pod_ip=f"10.64.{target // 250}.{target % 250 + 1}",
                               conditions=(PodCondition("Ready", ready),))
            assert store.update_pod_status(NS, pod_name(target, 0, shared), status)

        def service_update(round_: int) -> None:
            store.apply([from_dict(service_doc(target, shared, 81 + round_ % 2))])

        def apply_new(round_: int) -> None:
            store.apply([from_dict(service_doc(n + round_, shared))])

        def delete_one(round_: int) -> None:
            store.delete([ObjectRef("svc", f"svc-{n + round_}", NS)])

        result["pod_status_update"] = timed(repeat, pod_status)
        result["service_update"] = timed(repeat, service_update)
        result["apply_new_service"] = timed(repeat, apply_new)
        result["delete_service"] = timed(repeat, delete_one)
        store.close()
        text = "".join("---\n" + json.dumps(service_doc(i, shared)) + "\n" for i in range(n))
        result["parse_apply_documents"] = timed(
            min(repeat, 3), lambda _: parse_all([{"path": "services.yaml", "text": text}]))
        start = time.perf_counter()
        LocalStore.open(state).close()
        result["reopen_ms"] = round((time.perf_counter() - start) * 1000, 2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
