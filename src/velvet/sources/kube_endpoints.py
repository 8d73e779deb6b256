"""The cluster's endpoints as VelvetEndpoint objects: each agent publishes its pods, every node reads all.

A `VelvetEndpoint` (velvet.io/v1alpha1, namespaced, named as its pod) carries `spec: {podIP, identity,
nodeName}`, as a CiliumEndpoint does. `publish` takes this node's complete set after each policy pass
and returns at once; a thread (`velvet-endpoint-publish`) writes only the difference (create, update
guarded by the resourceVersion it read, delete), with backoff while the API server does not answer,
so the state worker never waits for it. Only this node's objects are touched. `view()` is every
node's endpoint by IP, from the source's informer.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from typing import Any

from velvet.errors import VelvetError
from velvet.model.cluster_endpoint import ClusterEndpoint
from velvet.sources.kube_client import VELVET_ENDPOINTS, Conflict, KubeCalls, KubeError, Missing
from velvet.sources.publisher import publish_when_asked


def endpoint_object(endpoint: ClusterEndpoint) -> dict[str, Any]:
    """The VelvetEndpoint of `endpoint` (its pod "namespace/name" names it)."""
    namespace, _, name = endpoint.pod.rpartition("/")
    return {"apiVersion": VELVET_ENDPOINTS.api_version, "kind": VELVET_ENDPOINTS.kind,
            "metadata": {"name": name, "namespace": namespace or "default"},
            "spec": {"podIP": endpoint.ip, "identity": endpoint.identity, "nodeName": endpoint.node}}


def parse_endpoint(raw: Mapping[str, Any]) -> ClusterEndpoint | None:
    """The ClusterEndpoint a VelvetEndpoint describes; None when it is not a usable one."""
    meta, spec = raw.get("metadata") or {}, raw.get("spec") or {}
    try:
        return ClusterEndpoint(str(spec["podIP"]), int(spec["identity"]), str(spec["nodeName"]),
                               f"{meta.get('namespace', 'default')}/{meta.get('name', '')}")
    except (KeyError, TypeError, ValueError, VelvetError):
        return None


class KubeEndpoints:
    """This node's endpoints published as VelvetEndpoints, and the view of every node's."""

    def __init__(self, calls: KubeCalls, node: str, objects: Callable[[], Mapping[str, Any]],
                 listed: Callable[[float], bool]) -> None:
        """`objects()` is every VelvetEndpoint (raw, by "namespace/name") as the informer has it."""
        self.calls = calls
        self.node = node
        self._objects = objects
        self._listed = listed
        self.on_change: Callable[[], None] = lambda: None
        self._lock = threading.Lock()
        self._desired: dict[str, ClusterEndpoint] | None = None  # by pod; None before the first publish
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.writes = 0
        self.retry = False  # a write lost a race with the informer's view: sync again shortly

    def start(self) -> None:
        """Start the publisher thread."""
        self._thread = threading.Thread(target=self._publisher, name="velvet-endpoint-publish", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop publishing (the objects stay: the node still runs its pods)."""
        self._stop.set()
        self._dirty.set()
        if self._thread is not None:
            self._thread.join(5)
        self.calls.close()

    def publish(self, endpoints: Mapping[str, ClusterEndpoint]) -> None:
        """This node's complete set of endpoints, by IP; written by the publisher thread."""
        with self._lock:
            self._desired = {ep.pod: ep for ep in endpoints.values() if ep.pod}
        self._dirty.set()

    def wait_listed(self, timeout: float) -> bool:
        """Whether the cluster's endpoints were listed within `timeout` seconds."""
        return self._listed(timeout)

    def view(self) -> dict[str, ClusterEndpoint]:
        """Every node's endpoints, by IP."""
        found = {}
        for raw in self._objects().values():
            endpoint = parse_endpoint(raw)
            if endpoint is not None:
                found[endpoint.ip] = endpoint
        return found

    def sync_once(self) -> int:
        """Write the difference between this node's published objects and the desired set; the writes."""
        with self._lock:
            desired = None if self._desired is None else dict(self._desired)
        self.retry = False
        if desired is None:
            return 0
        mine = {key: raw for key, raw in self._objects().items()
                if (raw.get("spec") or {}).get("nodeName") == self.node}
        writes = 0
        for pod, endpoint in sorted(desired.items()):
            want = endpoint_object(endpoint)
            have = mine.get(pod) or self._objects().get(pod)
            if have is None:
                try:
                    self.calls.create(VELVET_ENDPOINTS, want)
                except Conflict:  # created meanwhile (the informer had not seen it yet): next round
                    self.retry = True
                    continue
            elif have.get("spec") != want["spec"]:
                want["metadata"]["resourceVersion"] = (have.get("metadata") or {}).get("resourceVersion")
                try:
                    self.calls.replace(VELVET_ENDPOINTS, want)
                except (Conflict, Missing):  # changed or gone since the informer saw it: next round
                    self.retry = True
                    continue
            else:
                continue
            writes += 1
        for pod in sorted(set(mine) - set(desired)):
            namespace, _, name = pod.rpartition("/")
            with contextlib.suppress(Missing):
                self.calls.delete(VELVET_ENDPOINTS, namespace, name)
            writes += 1
        self.writes += writes
        return writes

    def _publisher(self) -> None:
        """Write what was asked whenever asked; after a failure try again (0.5 s doubling to 5 s)."""
        publish_when_asked(self._sync, self._dirty, self._stop, (KubeError,),
                           "publishing this node's endpoints")

    def _sync(self) -> bool:
        """One sync; whether to sync again shortly (a write lost a race; the informer catches up)."""
        self.sync_once()
        return self.retry
