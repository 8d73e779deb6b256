"""What the connectivity checks act through: the sandbox's agent API, its pods and its external client.

Traffic is real (echo clients run inside pod network namespaces, or in the sandbox's external-client
namespace); outcomes are read back from the agent's flow log with Hubble-style filters.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from velvet.api.client import ApiClient
from velvet.api.objects import is_ready
from velvet.errors import VelvetError
from velvet.observe.filters import FilterArg, FlowQuery, build_spec
from velvet.sandbox import PodRuntime, SandboxConfig, run_in_netns, run_in_pod
from velvet.sandbox.kubelet import container_path

Flow = dict[str, Any]
READY_TIMEOUT = 60.0
GONE_TIMEOUT = 30.0
FLOW_TIMEOUT = 5.0
POLL_SECONDS = 0.2
PROBE_TIMEOUT = 1.5


class Env:
    """One sandbox, seen by the connectivity suite."""

    def __init__(self, sandbox: str, api: ApiClient) -> None:
        self.cfg = SandboxConfig(sandbox=sandbox)
        self.api = api
        self.runtime = PodRuntime(self.cfg)
        self.pod_ips: dict[str, str] = {}
        self.cluster_ips: dict[str, str] = {}
        self.node_ports: dict[str, int] = {}

    # -- objects ---------------------------------------------------------------------------------

    def apply(self, manifest: str) -> None:
        """Apply YAML text (all-or-nothing)."""
        self.api.post("/v1/apply", {"documents": [{"path": "<connectivity>", "text": manifest}]})

    def delete(self, manifest: str) -> None:
        """Delete what YAML text names, pods without a grace period (missing objects are fine)."""
        self.api.post("/v1/delete", {"documents": [{"path": "<connectivity>", "text": manifest}],
                                     "grace_seconds": 0})

    def pods(self, namespaces: Iterable[str]) -> list[dict[str, Any]]:
        """Pods of the namespaces (kubectl JSON)."""
        return [p for ns in namespaces for p in self.api.get("/v1/objects/pods", namespace=ns)["items"]]

    def wait_ready(self, keys: Iterable[str]) -> None:
        """Wait until the pods ("ns/name") are Ready; remember their IPs."""
        wanted = set(keys)
        namespaces = sorted({k.split("/")[0] for k in wanted})
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            ready = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p["status"].get("podIP", "")
                     for p in self.pods(namespaces) if is_ready(p)}
            if wanted <= set(ready):
                self.pod_ips.update({k: ready[k] for k in wanted})
                return
            if time.monotonic() > deadline:
                missing = sorted(wanted - set(ready))
                raise VelvetError(f"test pods not ready after {READY_TIMEOUT:.0f}s: {missing}")
            time.sleep(POLL_SECONDS)

    def wait_gone(self, namespaces: Iterable[str]) -> None:
        """Wait until the namespaces hold no pod any more."""
        namespaces = list(namespaces)
        deadline = time.monotonic() + GONE_TIMEOUT
        while left := self.pods(namespaces):
            if time.monotonic() > deadline:
                names = [p["metadata"]["name"] for p in left]
                raise VelvetError(f"test pods still there after {GONE_TIMEOUT:.0f}s: {names}")
            time.sleep(POLL_SECONDS)

    def read_services(self, namespace: str) -> None:
        """Remember ClusterIPs and TCP NodePorts of the namespace's services."""
        for svc in self.api.get("/v1/objects/services", namespace=namespace)["items"]:
            name, spec = svc["metadata"]["name"], svc["spec"]
            self.cluster_ips[name] = spec["clusterIP"]
            for port in spec.get("ports", []):
                if port.get("nodePort") and port.get("protocol", "TCP") == "TCP":
                    self.node_ports[name] = int(port["nodePort"])

    def endpoint(self, key: str) -> dict[str, Any]:
        """`velvet endpoint list`'s row of pod "ns/name"."""
        for row in self.api.get("/v1/query/endpoints"):
            if row["pod"] == key:
                return dict(row)
        raise VelvetError(f"no endpoint for pod {key}")

    def wait_enforcement(self, key: str, field: str, mode: str) -> None:
        """Wait until the agent enforces policy on `key` as `mode` ("enabled", "audit") for `field`."""
        deadline = time.monotonic() + READY_TIMEOUT
        while self.endpoint(key)[field] != mode:
            if time.monotonic() > deadline:
                raise VelvetError(f"{key}: {field} never became {mode!r}")
            time.sleep(POLL_SECONDS)

    # -- traffic ---------------------------------------------------------------------------------

    def _in_pod(self, pod: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """Run `argv` in pod "ns/name" (its netns, cgroup and PATH), capturing its output."""
        namespace, name = pod.split("/")
        record = self.runtime.find(namespace, name)
        if record is None:
            raise VelvetError(f"pod {pod} is not running in sandbox {self.cfg.sandbox}")
        env = {"PATH": container_path(), "HOSTNAME": name, "HOME": "/root"}
        done: subprocess.CompletedProcess[str] = run_in_pod(
            record, argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
        return done

    def probe(self, pod: str, url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
        """Ask the echo server at `url` from inside `pod`: the answer, or None when it failed."""
        argv = ["python3", "-m", "velvet.sandbox.echo", "--query", url, "--timeout", str(timeout)]
        done = self._in_pod(pod, argv, timeout + 10)
        return done.stdout.strip() if done.returncode == 0 else None

    def http_gets(self, pod: str, url: str, count: int) -> list[str]:
        """`count` HTTP GETs of `url` from one process in `pod`, each a new connection: the answers."""
        argv = ["python3", "-m", "velvet.connectivity.httpget", "--count", str(count),
                "--timeout", str(PROBE_TIMEOUT), url]
        return self._in_pod(pod, argv, count * PROBE_TIMEOUT + 10).stdout.splitlines()

    def probe_external(self, url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
        """Ask the echo server at `url` from the sandbox's external-client namespace."""
        done = run_in_netns(self.cfg.names.ext_netns,
                            [sys.executable, "-m", "velvet.sandbox.echo", "--query", url, "--timeout",
                             str(timeout)], capture_output=True, text=True, timeout=timeout + 10, check=False)
        return done.stdout.strip() if done.returncode == 0 else None

    # -- flows -----------------------------------------------------------------------------------

    def flows(self, since_ns: int, **filters: str) -> list[Flow]:
        """Flows since `since_ns` matching `velvet observe` filters: to_pod="ns/name" is --to-pod,
        not_from_namespace="ns" is --not --from-namespace."""
        args = [FilterArg(flag.removeprefix("not_").replace("_", "-"), value, flag.startswith("not_"))
                for flag, value in filters.items()]
        query = FlowQuery(spec=build_spec(args), since_ns=since_ns)
        return [f for f in self.api.get("/v1/query/flows", **query.to_params()) if "lost_events" not in f]

    def wait_flows(self, since_ns: int, match: Callable[[Flow], bool], enough: Callable[[list[Flow]], bool],
                   **filters: str) -> list[Flow]:
        """Flows since `since_ns` passing the filters and `match`, once `enough` of them (or time) is up."""
        deadline = time.monotonic() + FLOW_TIMEOUT
        while True:
            found = [f for f in self.flows(since_ns, **filters) if match(f)]
            if enough(found) or time.monotonic() > deadline:
                return found
            time.sleep(POLL_SECONDS)

    def wait_flow(self, since_ns: int, match: Callable[[Flow], bool], **filters: str) -> Flow | None:
        """The first flow since `since_ns` passing the filters and `match`, waiting for the agent."""
        found = self.wait_flows(since_ns, match, bool, **filters)
        return found[0] if found else None
