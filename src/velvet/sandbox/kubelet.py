"""The sandbox node's kubelet: runs the pods the agent's store assigns to this node, reports their status.

It is the embedded default's stand-in for kubelet + CNI: for each pod it creates the network
namespace, veth, address and processes (`PodRuntime`), tells the agent the endpoint it wired
(the CNI ADD), reports phase, IP and readiness, and runs graceful deletion.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from velvet.api.client import ApiClient
from velvet.errors import VelvetError
from velvet.sandbox.pods import PodRuntime
from velvet.sandbox.spec import ContainerLite, PodRecord, PodSpecLite, PodStatusLite, PortLite, ProbeLite

log = logging.getLogger("velvet.kubelet")
SYNC_PERIOD_SECONDS = 0.3


def container_path() -> str:
    """PATH inside pods: this interpreter's directory first, so `python3 -m velvet…` works in containers."""
    here = os.path.dirname(sys.executable)
    return f"{here}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _probe(container: Mapping[str, Any]) -> ProbeLite | None:
    probe = container.get("readinessProbe")
    if not probe:
        return None
    port = probe.get("tcpSocket", {}).get("port")
    if isinstance(port, str):
        port = next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == port), None)
    command = probe.get("exec", {}).get("command")
    return ProbeLite(
        tcp_port=port if command is None else None,
        exec_command=tuple(command) if command is not None else None,
        initial_delay_seconds=probe.get("initialDelaySeconds", 0),
        period_seconds=probe.get("periodSeconds", 10),
        timeout_seconds=probe.get("timeoutSeconds", 1),
        failure_threshold=probe.get("failureThreshold", 3),
        success_threshold=probe.get("successThreshold", 1),
    )


def spec_of(pod: Mapping[str, Any]) -> PodSpecLite:
    """Map a pod (kubectl JSON form) to what the runtime runs; the first readinessProbe found applies."""
    meta, spec = pod["metadata"], pod["spec"]
    containers = []
    readiness = None
    for c in spec["containers"]:
        env = {"PATH": container_path(), **{e["name"]: e.get("value", "") for e in c.get("env", [])}}
        ports = tuple(PortLite(p["containerPort"], p.get("protocol", "TCP"), p.get("name", ""))
                      for p in c.get("ports", []))
        containers.append(ContainerLite(c["name"], tuple(c.get("command", ())), tuple(c.get("args", ())),
                                        env, ports))
        readiness = readiness or _probe(c)
    return PodSpecLite(
        namespace=meta["namespace"], name=meta["name"], uid=meta["uid"], containers=tuple(containers),
        readiness=readiness, termination_grace_seconds=spec.get("terminationGracePeriodSeconds", 30),
        labels=dict(meta.get("labels", {})),
    )


def _conditions(ready: bool, running: bool) -> list[dict[str, str]]:
    flag = "True" if ready and running else "False"
    return [
        {"type": "Initialized", "status": "True"},
        {"type": "Ready", "status": flag},
        {"type": "ContainersReady", "status": flag},
        {"type": "PodScheduled", "status": "True"},
    ]


def status_report(record: PodRecord, status: PodStatusLite, host_ip: str) -> dict[str, Any]:
    """The pod status the kubelet reports, in the API's shape."""
    return {
        "phase": status.phase,
        "podIP": record.ip,
        "hostIP": host_ip,
        "conditions": _conditions(status.ready, status.phase == "Running"),
        "startTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.started_at)),
    }


def endpoint_report(record: PodRecord) -> dict[str, Any]:
    """What the agent needs to wire the datapath to a pod (the CNI ADD result)."""
    return {
        "ip": record.ip, "ifname": record.host_veth, "ifindex": record.host_ifindex,
        "netns_inode": record.netns_inode, "cgroup_id": record.cgroup_id,
        **({"mac": record.pod_mac, "host_mac": record.host_mac} if record.pod_mac else {}),
    }


class Kubelet:
    """Level-triggered sync of desired pods (from the agent) with running pods (from the runtime)."""

    def __init__(self, api: ApiClient, runtime: PodRuntime, host_ip: str) -> None:
        self.api = api
        self.runtime = runtime
        self.host_ip = host_ip
        self._reported: dict[str, dict[str, Any]] = {}
        self._agent_started_at: float | None = None
        self._deleting: set[str] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="pod-delete")

    def run(self, stop: threading.Event) -> None:
        """Sync until `stop` is set; an absent agent (restarting) is waited for."""
        while not stop.is_set():
            try:
                self.sync_once()
            except VelvetError as exc:
                log.debug("sync skipped: %s", exc)
            except OSError as exc:
                log.warning("sync failed: %s", exc)
            stop.wait(SYNC_PERIOD_SECONDS)
        self._pool.shutdown(wait=False)

    def sync_once(self) -> None:
        """One pass: create missing pods, start graceful deletions, report changed statuses.

        A restarted agent gets every endpoint and status again, as a CNI would re-announce them.
        """
        started_at = self.api.get("/v1/health")["started_at"]
        if started_at != self._agent_started_at:
            self._agent_started_at = started_at
            self._reported.clear()
        desired = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p
                   for p in self.api.get("/v1/node/pods")}
        records = {r.key: r for r in self.runtime.list_records()}
        for key, pod in desired.items():
            record = records.get(key)
            if pod["metadata"].get("deletionTimestamp"):
                self._delete(key, record, pod["spec"].get("terminationGracePeriodSeconds", 30))
            elif record is not None and record.uid != pod["metadata"]["uid"]:
                # an earlier pod of this name that the store removed before it stopped (its grace period
                # ran out): stopped at once, as an orphan; the new one is created once it is gone
                self._delete(key, record, 0)
            elif record is None:
                if not self._being_deleted(key):
                    self._create(key, pod)
            else:
                self._report(record)
        for key, record in records.items():
            if key not in desired:
                self._delete(key, record, 0)

    def _create(self, key: str, pod: Mapping[str, Any]) -> None:
        try:
            record = self.runtime.create_pod(spec_of(pod))
        except VelvetError as exc:
            log.warning("pod %s: %s", key, exc)
            return
        self._report(record)

    def _report(self, record: PodRecord) -> None:
        with self._lock:
            if record.key in self._deleting:
                return
        report = status_report(record, self.runtime.pod_status(record), self.host_ip)
        if record.key not in self._reported:
            self.api.put(f"/v1/node/endpoints/{record.namespace}/{record.name}", endpoint_report(record))
        if self._reported.get(record.key) != report:
            self.api.put(f"/v1/node/pods/{record.namespace}/{record.name}", report)
            self._reported[record.key] = report

    def _being_deleted(self, key: str) -> bool:
        with self._lock:
            return key in self._deleting

    def _delete(self, key: str, record: PodRecord | None, grace: float) -> None:
        with self._lock:
            if key in self._deleting:
                return
            self._deleting.add(key)
        self._pool.submit(self._finish_delete, key, record, grace)

    def _finish_delete(self, key: str, record: PodRecord | None, grace: float) -> None:
        """Terminate (SIGTERM, grace, SIGKILL), unwire, then tell the store the pod is gone."""
        namespace, name = key.split("/", 1)
        try:
            if record is not None:
                self.runtime.delete_pod(record, grace)
            self.api.call("DELETE", f"/v1/node/pods/{namespace}/{name}")
        except (VelvetError, OSError) as exc:
            log.warning("deleting pod %s: %s", key, exc)
        finally:
            with self._lock:
                self._deleting.discard(key)
            self._reported.pop(key, None)
