"""The sandbox side of the NetworkPolicy conformance runner: objects through the agent's API, and
probes from inside the pods through long-lived `velvet.sandbox.probe --serve` sessions.

One probe session per source pod answers every round of probes (all destinations, all ports of a
step) concurrently, so a 9x9 matrix costs one round trip per pod and at most one probe timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import netpol_model

from velvet.api.objects import is_ready
from velvet.cli.runner import SandboxCli as Sandbox
from velvet.cli.runner import unique_name
from velvet.errors import VelvetError
from velvet.sandbox import PodRuntime, exec_in_pod
from velvet.sandbox.naming import node_config, node_index

__all__ = ["Cluster", "ClusterError", "ProbeSession", "Sandbox", "round_robin", "unique_name"]

PROBE_TIMEOUT = 1.0
ROUND_TIMEOUT = 60.0


class ClusterError(RuntimeError):
    """The sandbox did not do what the runner needs (pods not ready, a probe session died...)."""


class ProbeSession:
    """`python -m velvet.sandbox.probe --serve` running in one pod.

    Started with `exec_in_pod`, the function behind `velvet sandbox exec` (pod netns and cgroup, so
    socket LB applies as for the pod's own processes), called in-process: nine sessions then cost
    nine Python start-ups instead of eighteen. The exec waits in a thread; when the probe program
    ends, the thread closes the write end of its output, so a reader sees end-of-file.
    """

    def __init__(self, sandbox: str, pod: str, node: int = 0) -> None:
        """Start the session in `pod`, running on node `node` (its stderr goes to a temporary file,
        shown if it dies)."""
        self.pod = pod
        namespace, _, name = pod.partition("/")
        record = PodRuntime(node_config(sandbox, node)).find(namespace, name)
        if record is None:
            raise ClusterError(f"pod {pod} is not running on node {node} of sandbox {sandbox}")
        self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 - lives as long as the session
        argv = [sys.executable, "-m", "velvet.sandbox.probe", "--serve", "--timeout", str(PROBE_TIMEOUT)]
        child_in, self._in = os.pipe()
        self._out, child_out = os.pipe()

        self._failure = ""

        def run() -> None:
            try:
                exec_in_pod(record, argv, stdin=child_in, stdout=child_out, stderr=self._stderr)
            except VelvetError as exc:
                self._failure = str(exc)
            finally:
                os.close(child_in)
                os.close(child_out)

        self._thread = threading.Thread(target=run, name=f"probe {pod}", daemon=True)
        self._thread.start()
        self._writer = os.fdopen(self._in, "w", buffering=1)
        self._reader = os.fdopen(self._out, "r")

    def ask(self, targets: Sequence[str]) -> list[dict[str, Any]]:
        """Probe `targets` from this pod; one result per target, in order."""
        try:
            self._writer.write(json.dumps(list(targets)) + "\n")
            self._writer.flush()
            line = self._reader.readline()
        except OSError as exc:
            raise ClusterError(f"probe session in {self.pod} failed: {exc}; {self._errors()}") from exc
        if not line:
            raise ClusterError(f"probe session in {self.pod} ended: {self._errors()}")
        results: list[dict[str, Any]] = json.loads(line)
        if not isinstance(results, list) or len(results) != len(targets):
            raise ClusterError(f"probe session in {self.pod} answered {line.strip()!r}")
        return results

    def _errors(self) -> str:
        """What the session said on stderr (or why it could not start)."""
        self._stderr.seek(0)
        return self._failure or self._stderr.read().strip() or "no error output"

    def close(self) -> None:
        """End the session: end of input makes the probe program exit (the sandbox's teardown would
        kill it with the pod otherwise)."""
        with contextlib.suppress(OSError):
            self._writer.close()
        self._thread.join(timeout=5)
        self._reader.close()
        self._stderr.close()


def pod_state(pod: Mapping[str, Any] | None) -> str:
    """What a pod that is late looks like: absent, or its node, phase, readiness and deletion."""
    if pod is None:
        return "(absent)"
    status = pod.get("status", {})
    ready = next((c["status"] for c in status.get("conditions", []) if c["type"] == "Ready"), "unreported")
    deleting = " deleting" if pod["metadata"].get("deletionTimestamp") else ""
    return (f"(node {pod['spec'].get('nodeName', '?')}, phase {status.get('phase', 'unreported')}, "
            f"Ready {ready}, podIP {status.get('podIP', '-')}{deleting})")


def round_robin(pods: Sequence[str], nodes: Sequence[str]) -> dict[str, str]:
    """The node (spec.nodeName) of each pod: round-robin over the nodes in the pods' order; "" (the only
    node, no nodeName) when there is one."""
    if len(nodes) == 1:
        return dict.fromkeys(pods, "")
    return {pod: nodes[i % len(nodes)] for i, pod in enumerate(pods)}


class Cluster:
    """A sandbox driven for the runner: apply/delete manifests, pod facts, probe rounds."""

    def __init__(self, sandbox: Sandbox, nodes: int = 1) -> None:
        """Drive `sandbox` (already up, with `nodes` nodes)."""
        self.sandbox = sandbox
        self.nodes = [node_config(sandbox.name, k).node_name for k in range(nodes)]
        self.sessions: dict[str, ProbeSession] = {}
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="probe")

    def placement(self, pods: Sequence[str]) -> dict[str, str]:
        """The node (spec.nodeName) of each pod on this sandbox."""
        return round_robin(pods, self.nodes)

    def apply(self, manifests: Sequence[Mapping[str, Any]], what: str) -> None:
        """Create or update objects (all-or-nothing)."""
        text = netpol_model.dump(manifests)
        self.sandbox.api.post("/v1/apply", {"documents": [{"path": what, "text": text}]})

    def delete(self, manifests: Sequence[Mapping[str, Any]], what: str, grace: int | None = None) -> None:
        """Delete the objects the manifests name."""
        text = netpol_model.dump(manifests)
        self.sandbox.api.post("/v1/delete", {"documents": [{"path": what, "text": text}],
                                             "grace_seconds": grace})

    def objects(self, kind: str) -> list[dict[str, Any]]:
        """Every object of a kind, in all namespaces (kubectl JSON)."""
        items: list[dict[str, Any]] = self.sandbox.api.get(f"/v1/objects/{kind}", namespace="all")["items"]
        return items

    def wait_pods(self, keys: Sequence[str], *, present: bool, timeout: float = 60) -> dict[str, str]:
        """Wait until the pods are all Ready (present) or all gone; returns the ready pods' IPs."""
        deadline = time.monotonic() + timeout
        while True:
            pods = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in self.objects("pods")}
            if present and all(k in pods and is_ready(pods[k]) for k in keys):
                return {k: pods[k]["status"]["podIP"] for k in keys}
            if not present and not any(k in pods for k in keys):
                return {}
            if time.monotonic() > deadline:
                state = "ready" if present else "gone"
                late = ([k for k in keys if k not in pods or not is_ready(pods[k])] if present
                        else [k for k in keys if k in pods])
                raise ClusterError(f"pods not {state} after {timeout:.0f}s: "
                                   + "; ".join(f"{k} {pod_state(pods.get(k))}" for k in sorted(late)))
            time.sleep(0.2)

    def cluster_ips(self, keys: Sequence[str]) -> dict[str, str]:
        """The ClusterIP of every pod's Service s-<ns>-<pod>."""
        found = {f"{s['metadata']['namespace']}/{s['metadata']['name']}": s["spec"].get("clusterIP", "")
                 for s in self.objects("services")}
        ips = {}
        for key in keys:
            ns, _, _ = key.partition("/")
            ip = found.get(f"{ns}/{netpol_model.service_name(key)}", "")
            if not ip or ip == "None":
                raise ClusterError(f"service {ns}/{netpol_model.service_name(key)} has no ClusterIP")
            ips[key] = ip
        return ips

    def open_sessions(self, pods: Sequence[str]) -> None:
        """Start one probe session per pod, on the pod's node."""
        self.close_sessions()
        self.sessions = {pod: ProbeSession(self.sandbox.name, pod, node_index(node) or 0)
                         for pod, node in self.placement(pods).items()}

    def close_sessions(self) -> None:
        """End every probe session."""
        sessions, self.sessions = self.sessions, {}
        for session in sessions.values():
            session.close()

    def probe_round(self, targets: Mapping[str, Sequence[str]]) -> dict[str, list[dict[str, Any]]]:
        """Probe from every source pod at once: {source: [result per target]}."""
        futures = {src: self._pool.submit(self.sessions[src].ask, list(urls))
                   for src, urls in targets.items()}
        try:
            return {src: future.result(timeout=ROUND_TIMEOUT) for src, future in futures.items()}
        except TimeoutError as exc:
            raise ClusterError(f"a probe round got no answer in {ROUND_TIMEOUT:.0f}s") from exc

    def close(self) -> None:
        """End the sessions and the worker threads."""
        self.close_sessions()
        self._pool.shutdown(wait=False, cancel_futures=True)
