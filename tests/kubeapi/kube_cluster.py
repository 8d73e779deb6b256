"""The conformance runner's `Cluster` on a sandbox node whose agent reads the stand-in API server.

Objects go to the API server instead of `velvet apply`; this module plays the parts of a cluster that
are not the agent: the scheduler (pods bound to the node), the kubelet's status writes (from the
sandbox runtime, which runs the pods the agent lists for it), the ClusterIP allocator and the
endpointslice controller (Velvet's own derivation, `sources.endpointslices.desired_slices`).
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from kube_apiserver import Failure, KubeApiServer
from netpol_cluster import Cluster

from velvet.cli.runner import SandboxCli
from velvet.errors import VelvetError
from velvet.model import Pod, Service
from velvet.model.codec import from_dict, to_dict
from velvet.sandbox.kubelet import status_report
from velvet.sandbox.naming import SandboxConfig
from velvet.sandbox.pods import PodRuntime
from velvet.sources.endpointslices import desired_slices

log = logging.getLogger("kube-cluster")
CONTROLLER_PERIOD_SECONDS = 0.2


class KubeCluster(Cluster):
    """A one-node sandbox on the Kubernetes source, driven for the runner."""

    def __init__(self, sandbox: SandboxCli, cfg: SandboxConfig, api: KubeApiServer) -> None:
        super().__init__(sandbox, 1)
        self.cfg = cfg
        self.api = api
        self.runtime = PodRuntime(cfg)
        self._cluster_ips: Iterator[ipaddress.IPv4Address] = ipaddress.IPv4Network("10.96.100.0/22").hosts()
        self._stop = threading.Event()
        self._controller = threading.Thread(target=self._control, name="kube-cluster", daemon=True)
        self._controller.start()

    def apply(self, manifests: Sequence[Mapping[str, Any]], what: str) -> None:
        """Create or update each object as kubectl apply would; pods go to the node, Services get an IP."""
        for manifest in manifests:
            obj = copy.deepcopy(dict(manifest))
            meta = obj["metadata"]
            existing = self.api.get(obj["kind"], meta.get("namespace", "default"), meta["name"])
            if obj["kind"] == "Pod":
                obj["spec"]["nodeName"] = self.cfg.node_name
                if existing is not None and "status" in existing:
                    obj["status"] = existing["status"]
            if obj["kind"] == "Service":
                ip = existing["spec"]["clusterIP"] if existing else str(next(self._cluster_ips))
                obj["spec"].update(clusterIP=ip, clusterIPs=[ip])
            self.api.put(obj)

    def delete(self, manifests: Sequence[Mapping[str, Any]], what: str, grace: int | None = None) -> None:
        """Delete each object named (one already gone is fine); a pod gracefully, as the API server does:
        it is marked terminating and goes once the kubelet stopped it."""
        for manifest in manifests:
            meta = manifest["metadata"]
            if manifest["kind"] == "Pod":
                pod = self.api.get("Pod", str(meta.get("namespace", "default")), str(meta["name"]))
                if pod is not None and "deletionTimestamp" not in pod["metadata"]:
                    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                    pod["metadata"].update(deletionTimestamp=now,
                                           deletionGracePeriodSeconds=30 if grace is None else grace)
                    self.api.put(pod)
                continue
            with contextlib.suppress(Failure):
                self.api.remove(str(manifest["kind"]), str(meta.get("namespace", "default")),
                                str(meta["name"]))

    def objects(self, kind: str) -> list[dict[str, Any]]:
        """Every object of a kind, as the API server has it."""
        return self.api.items(kind)

    def close(self) -> None:
        """Stop the controllers, then the sessions."""
        self._stop.set()
        self._controller.join(10)
        super().close()

    # -- the cluster's other parts -----------------------------------------------------------------

    def _control(self) -> None:
        while not self._stop.wait(CONTROLLER_PERIOD_SECONDS):
            try:
                self._pod_status()
                self._slices()
            except (VelvetError, OSError, KeyError) as err:
                log.warning("controllers: %s", err)

    def _pod_status(self) -> None:
        """Write each running pod's status as the kubelet does (IP, phase, readiness)."""
        for pod in self.objects("pods"):
            meta = pod["metadata"]
            record = self.runtime.find(meta["namespace"], meta["name"])
            if meta.get("deletionTimestamp"):
                if record is None or record.uid != meta["uid"]:  # stopped: the kubelet's final delete
                    with contextlib.suppress(Failure):
                        self.api.remove("Pod", meta["namespace"], meta["name"])
                continue
            if record is None or record.uid != meta["uid"]:
                continue
            status = status_report(record, self.runtime.pod_status(record), self.cfg.node_uplink_ip)
            if {k: v for k, v in (pod.get("status") or {}).items() if k != "startTime"} != {
                    k: v for k, v in status.items() if k != "startTime"}:
                pod["status"] = status
                self.api.put(pod)

    def _slices(self) -> None:
        """Keep every Service's EndpointSlices as the endpointslice controller would."""
        pods = [p for p in (from_dict(o, trusted=True) for o in self.objects("pods")) if isinstance(p, Pod)]
        have = {(o["metadata"]["namespace"], o["metadata"]["name"]): o
                for o in self.objects("endpointslices")}
        want = {}
        for raw in self.objects("services"):
            svc = from_dict(raw, trusted=True)
            assert isinstance(svc, Service)
            selectable = [p for p in pods if p.metadata.namespace == svc.metadata.namespace]
            for eps in desired_slices(svc, selectable):
                doc = to_dict(eps)
                want[(eps.metadata.namespace, eps.metadata.name)] = doc
        for key, doc in want.items():
            old = have.get(key)
            if old is None or any(old.get(f) != doc.get(f) for f in ("endpoints", "ports", "addressType")):
                self.api.put(doc)
        for namespace, name in set(have) - set(want):
            self.api.remove("EndpointSlice", namespace, name)
