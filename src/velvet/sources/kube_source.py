"""The Kubernetes API as the agent's source: informers on their own thread, a cache the agent reads.

`velvet agent --source kubernetes` follows Namespaces, this node's Pods (field selector
spec.nodeName), Services, EndpointSlices (discovery.k8s.io/v1), NetworkPolicies and Nodes. The
informers run on one event loop in the `velvet-kube-watch` thread; their changes are queued into the
`KubeCache`, which wakes the agent (`on_change`); the state worker takes them in (`refresh`) and the
controllers read the cache. Objects are written by kubectl and Kubernetes' own controllers, never
here: `apply` and `delete` answer with one line saying so, and pod status is the kubelet's.
While the API server does not answer the cache keeps its last view, so the datapath keeps its state,
and `storage_status` says the source is disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from lightkube.config.kubeconfig import SingleConfig

from velvet.errors import BadRequest
from velvet.model import KubeObject, Pod
from velvet.model.codec import resolve_kind
from velvet.model.meta import ObjectMeta
from velvet.model.node import NodeRecord
from velvet.model.pod import PodCondition, PodSpec, PodStatus
from velvet.model.service import EndpointSlice
from velvet.sources.delta import Watch
from velvet.sources.kube_cache import ALL_NAMESPACES, KubeCache, node_record
from velvet.sources.kube_client import (
    ENDPOINTSLICES,
    NAMESPACES,
    NETWORKPOLICIES,
    NODES,
    PODS,
    SERVICES,
    VELVET_ENDPOINTS,
    VELVET_IDENTITIES,
    VELVET_TRACING_POLICIES,
    VELVET_TRACING_POLICIES_NAMESPACED,
    KubeApi,
    KubeCalls,
    KubeError,
    Missing,
    server_of,
)
from velvet.sources.kube_endpoints import parse_endpoint
from velvet.sources.kube_identities import parse_identity
from velvet.sources.kube_informer import BACKOFF_FIRST_SECONDS, BACKOFF_MAX_SECONDS, Informer

log = logging.getLogger("velvet.kube")
K8S = "k8s:"  # the identity labels' source prefix (control.labels)
POD_NAMESPACE_KEY = "io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
READ_ONLY = ("objects come from the Kubernetes API with --source kubernetes: "
             "use kubectl to {what} them")


class KubeSource:
    """Informers for what the agent follows, their cache, and the agent's calls on its source."""

    def __init__(self, config: SingleConfig, node_name: str, *, crds: bool = False) -> None:
        """Follow the built-in resources, and with `crds` the VelvetIdentities, VelvetEndpoints and the
        tracing policies (VelvetTracingPolicy, VelvetTracingPolicyNamespaced)."""
        self.config = config
        self.crds = crds
        self.node_name = node_name
        self.server = server_of(config)
        self.cache = KubeCache(self.server)
        self.informers: list[Informer] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # -- running the informers --------------------------------------------------------------------

    @property
    def on_change(self) -> Callable[[], None] | None:
        """Called (from the informers' thread) when changes are queued."""
        return self.cache.on_change

    @on_change.setter
    def on_change(self, wake: Callable[[], None] | None) -> None:
        self.cache.on_change = wake

    def start(self) -> None:
        """Start the informers' thread (list, then watch, every resource)."""
        self._thread = threading.Thread(target=self._run, name="velvet-kube-watch", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self._main = loop.create_task(self._follow())
        try:
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(self._main)
        finally:
            loop.close()

    async def _follow(self) -> None:
        api = KubeApi(self.config)
        put = self.cache.put
        self.informers = [Informer(api, res, put) for res in (NAMESPACES, SERVICES, ENDPOINTSLICES,
                                                                NETWORKPOLICIES, NODES)]
        self.informers.insert(1, Informer(api, PODS, put, field_selector=f"spec.nodeName={self.node_name}"))
        if self.crds:
            crds = (VELVET_IDENTITIES, VELVET_ENDPOINTS, VELVET_TRACING_POLICIES,
                    VELVET_TRACING_POLICIES_NAMESPACED)
            self.informers += [Informer(api, res, put) for res in crds]
        tasks = [asyncio.create_task(i.run(), name=f"informer-{i.resource.plural}") for i in self.informers]
        self._ready.set()
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await api.close()

    def wait_listed(self, timeout: float, kinds: tuple[str, ...] = ()) -> bool:
        """Wait until every informer (of `kinds`, if given) has listed once; whether they did within
        `timeout` seconds."""
        deadline = time.monotonic() + timeout
        for informer in self.informers:
            if kinds and informer.resource.kind not in kinds:
                continue
            if self._loop is None:
                return False
            done = asyncio.run_coroutine_threadsafe(informer.listed.wait(), self._loop)
            try:
                done.result(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                done.cancel()
                return False
        return True

    def close(self) -> None:
        """Stop the informers and end every watch of the cache."""
        if self._loop is not None and self._main is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed already
                self._loop.call_soon_threadsafe(self._main.cancel)
            self._thread.join(5)
        self.cache.close()

    # -- what the agent reads ---------------------------------------------------------------------

    @property
    def version(self) -> int:
        """The highest resourceVersion taken in."""
        return self.cache.version

    def refresh(self) -> None:
        """Take in what the informers queued (the agent's wake-up)."""
        self.cache.refresh()

    def objects(self, kind: str) -> list[KubeObject]:
        """Every object of `kind` (see `ObjectCache`); Pods are this node's and, in CRD mode, every other
        node's endpoint as a pod with its identity's labels (policy selects peers on other nodes by them)."""
        found = self.cache.objects(kind)
        if self.crds and resolve_kind(kind).kind == "Pod":
            found += self.remote_pods()
        return found

    def remote_pods(self) -> list[KubeObject]:
        """Other nodes' VelvetEndpoints whose identity is known, as running pods with its labels."""
        identities = {}
        for raw in self.cache.raw("VelvetIdentity").values():
            parsed = parse_identity(raw)
            if parsed is not None:
                identities[parsed[0]] = parsed[1]
        pods: list[KubeObject] = []
        for key, raw in sorted(self.cache.raw("VelvetEndpoint").items()):
            endpoint = parse_endpoint(raw)
            labels = identities.get(endpoint.identity) if endpoint is not None else None
            if endpoint is None or labels is None or endpoint.node == self.node_name:
                continue
            namespace, _, name = key.rpartition("/")
            meta = raw.get("metadata") or {}
            pods.append(Pod(
                ObjectMeta(name=name, namespace=namespace, uid=str(meta.get("uid") or ""),
                           labels=MappingProxyType(pod_labels(labels)),
                           resource_version=int(meta.get("resourceVersion") or 0)),
                PodSpec(containers=(), node_name=endpoint.node),
                PodStatus(phase="Running", pod_ip=endpoint.ip, conditions=(PodCondition("Ready", "True"),))))
        return pods

    def find(self, kind: str, namespace: str, name: str) -> KubeObject | None:
        """One object, or None (see `ObjectCache`)."""
        return self.cache.find(kind, namespace, name)

    def slices_of(self, namespace: str, service: str) -> list[EndpointSlice]:
        """The EndpointSlices of one service (see `ObjectCache`)."""
        return self.cache.slices_of(namespace, service)

    def watch(self) -> Watch:
        """Every change taken in from now on."""
        return self.cache.watch()

    def get(self, kind: str, namespace: str | None = None, name: str | None = None) -> list[KubeObject]:
        """Objects of `kind` in `namespace` ("all" = every one), as `velvet get` lists them."""
        info = resolve_kind(kind)
        ns = (namespace or "default") if info.namespaced else ""
        return [o for o in self.objects(info.kind)
                if ns in (ALL_NAMESPACES, o.metadata.namespace) and name in (None, o.metadata.name)]

    def storage_status(self) -> dict[str, Any]:
        """`velvet status`'s source line: the API server, and whether every informer is connected."""
        errors = [i.error for i in self.informers if not i.connected and i.error]
        listing = [i.resource.plural for i in self.informers if not i.listed.is_set()]
        return {"kind": "kubernetes", "endpoint": self.server,
                "connected": bool(self.informers) and not errors and not listing,
                "error": errors[0] if errors else (
                    f"not listed yet: {', '.join(listing)}" if listing else ""),
                "version": self.cache.version, "skipped": self.cache.skipped}

    def nodes(self) -> list[NodeRecord]:
        """Every Node that can be routed to (InternalIP and pod CIDR)."""
        return self.cache.nodes()

    def registered(self) -> frozenset[str] | None:
        """Every Node's name; None before the first list."""
        nodes = next((i for i in self.informers if i.resource is NODES), None)
        return self.cache.node_names() if nodes is not None and nodes.listed.is_set() else None

    # -- what the API owns, not the agent ---------------------------------------------------------

    def follow_nodes(self) -> None:
        """Nothing: EndpointSlices come from the API (its endpointslice controller)."""

    def expire_terminating(self) -> list[Pod]:
        """Nothing: the kubelet and the API server finish deleted pods."""
        return []

    def update_pod_status(self, namespace: str, name: str, status: object) -> bool:
        """Nothing: the kubelet writes pod status to the API."""
        return False

    def finalize_pod_deletion(self, namespace: str, name: str) -> bool:
        """Nothing: the kubelet removes finished pods from the API."""
        return False

    def apply(self, objects: Sequence[KubeObject], *, source: str = "<apply>") -> list[Any]:
        """Refused in one line: kubectl writes to the API server."""
        raise BadRequest(READ_ONLY.format(what="apply"))

    def delete(self, targets: Sequence[Any], grace_seconds: int | None = None, *,
               ignore_not_found: bool = False) -> list[Any]:
        """Refused in one line: kubectl writes to the API server."""
        raise BadRequest(READ_ONLY.format(what="delete"))


def pod_labels(identity_labels: Mapping[str, str]) -> dict[str, str]:
    """The pod labels an identity's labels carry: `k8s:<key>` without the namespace's own labels."""
    return {key[len(K8S):]: value for key, value in identity_labels.items()
            if key.startswith(K8S) and key != K8S + POD_NAMESPACE_KEY
            and not key.startswith(K8S + NAMESPACE_LABELS_PREFIX)}


def node_pod_cidr(config: SingleConfig, node_name: str, *, attempts: int | None = None,
                  sleep: Callable[[float], None] = time.sleep) -> str:
    """This node's pod CIDR from its Node (spec.podCIDRs, first IPv4), waiting while it has none yet or
    the API server does not answer (0.5 s doubling to 5 s, one log line per new reason).

    `attempts` bounds the tries (None: until it has one); `KubeError` when they ran out.
    """
    calls = KubeCalls(config)
    backoff, last, tried = BACKOFF_FIRST_SECONDS, "", 0
    try:
        while True:
            tried += 1
            try:
                record = node_record(calls.get(NODES, "", node_name))
                reason = "" if record is not None else "it has no InternalIP or IPv4 spec.podCIDRs yet"
            except Missing:
                record, reason = None, "no such Node yet"
            except KubeError as err:
                record, reason = None, str(err)
            if record is not None:
                return record.pod_cidr
            if reason != last:
                log.warning("waiting for Node %s's pod CIDR: %s", node_name, reason)
                last = reason
            if attempts is not None and tried >= attempts:
                raise KubeError(f"Node {node_name}: no pod CIDR ({reason})")
            sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
    finally:
        with contextlib.suppress(Exception):
            calls.close()
