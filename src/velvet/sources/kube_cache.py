"""The objects the informers listed and watched, as the controllers read them (`ObjectCache`).

Informers hand changes over from their own thread (`put`); the state worker takes them in with
`refresh()`, which decodes nothing twice and publishes a delta only for an object that changed: an
object listed again with the resourceVersion it had is not a change. Objects are decoded with the
model's decoders, as the API server returned them; one that does not decode is logged in one line
and skipped (the cache keeps what it had). Nodes become `NodeRecord`s (InternalIP, first IPv4
podCIDR) for native routing, as the etcd node registry gives them; they and the VelvetIdentities and
VelvetEndpoints are kept as the API returned them (`raw`).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable
from typing import Any

from velvet.errors import VelvetError
from velvet.model import KubeObject
from velvet.model.codec import from_dict, resolve_kind
from velvet.model.node import NodeRecord
from velvet.model.service import EndpointSlice
from velvet.sources.delta import Delta, DeltaFanout, Watch
from velvet.sources.kube_informer import Change

log = logging.getLogger("velvet.kube")
ALL_NAMESPACES = "all"
RAW_KINDS = ("Node", "VelvetIdentity", "VelvetEndpoint")  # kept as the API returned them


def decode_object(raw: dict[str, Any], where: str) -> KubeObject:
    """A built-in object as the API returns it, through the model's decoders (server fields kept)."""
    meta = raw.get("metadata")
    if isinstance(meta, dict) and "generateName" in meta:  # how the name was made; the name is set
        raw = {**raw, "metadata": {k: v for k, v in meta.items() if k != "generateName"}}
    return from_dict(raw, path=where, trusted=True)


def node_record(raw: dict[str, Any]) -> NodeRecord | None:
    """A Node as a routing target (name, InternalIP, first IPv4 pod CIDR); None while it lacks either."""
    meta, spec, status = raw.get("metadata") or {}, raw.get("spec") or {}, raw.get("status") or {}
    addresses = [a.get("address") for a in status.get("addresses") or []
                 if isinstance(a, dict) and a.get("type") == "InternalIP"]
    cidrs = list(spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []))
    ip = next((str(a) for a in addresses if _is_v4(a, ipaddress.IPv4Address)), None)
    cidr = next((str(c) for c in cidrs if _is_v4(c, ipaddress.IPv4Network)), None)
    if ip is None or cidr is None:
        return None
    return NodeRecord(str(meta.get("name") or ""), ip, cidr, str(meta.get("creationTimestamp") or ""))


def _is_v4(text: object, parse: Callable[[str], object]) -> bool:
    try:
        parse(str(text))
    except ValueError:
        return False
    return True


class KubeCache:
    """Objects by kind and key, nodes by name; changes queued from any thread, taken in by `refresh`."""

    def __init__(self, server: str = "") -> None:
        self.server = server
        self._objects: dict[str, dict[str, KubeObject]] = {}
        self._raw: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in RAW_KINDS}
        self._slices: dict[tuple[str, str], set[str]] = {}  # (namespace, service) -> its slices' keys
        self._pending: list[Change] = []
        self._lock = threading.Lock()
        self._fanout = DeltaFanout()
        self.version = 0
        self.on_change: Callable[[], None] | None = None
        self.skipped = 0  # objects that did not decode

    # -- the informers' side ----------------------------------------------------------------------

    def put(self, changes: list[Change]) -> None:
        """Queue the informers' changes (any thread) and wake the agent."""
        with self._lock:
            self._pending.extend(changes)
        if self.on_change is not None:
            self.on_change()

    # -- the state worker's side ------------------------------------------------------------------

    def refresh(self) -> list[Delta]:
        """Take in the queued changes; publish (and return) the deltas of objects that changed."""
        with self._lock:
            pending, self._pending = self._pending, []
        deltas = [d for change in pending if (d := self._take(change)) is not None]
        self._fanout.publish(deltas)
        return deltas

    def _take(self, change: Change) -> Delta | None:
        if change.kind in self._raw:
            with self._lock:  # read by other threads (the endpoint publisher)
                if change.obj is None:
                    self._raw[change.kind].pop(change.key, None)
                else:
                    self._raw[change.kind][change.key] = change.obj
            return None
        known = self._objects.setdefault(change.kind, {})
        if change.obj is None:
            gone = known.pop(change.key, None)
            if gone is None:
                return None
            self._index_slice(change.key, gone, None)
            return Delta(change.kind, "delete", gone)
        try:
            obj = decode_object(change.obj, f"{self.server} {change.kind} {change.key}")
        except VelvetError as err:
            self.skipped += 1
            log.warning("skipped %s %s from the Kubernetes API: %s", change.kind, change.key, err)
            return None
        before = known.get(change.key)
        if before == obj:
            return None
        known[change.key] = obj
        self._index_slice(change.key, before, obj)
        self.version = max(self.version, obj.metadata.resource_version)
        return Delta(change.kind, "upsert", obj)

    def _index_slice(self, key: str, before: KubeObject | None, after: KubeObject | None) -> None:
        """Follow which service an EndpointSlice (`before` -> `after`, None when absent) belongs to."""
        for obj, add in ((before, False), (after, True)):
            if isinstance(obj, EndpointSlice) and obj.service_name is not None:
                owner = (obj.metadata.namespace, obj.service_name)
                if add:
                    self._slices.setdefault(owner, set()).add(key)
                elif (keys := self._slices.get(owner)) is not None:
                    keys.discard(key)
                    if not keys:
                        del self._slices[owner]

    # -- ObjectCache ------------------------------------------------------------------------------

    def objects(self, kind: str) -> list[KubeObject]:
        """Every object of `kind`, ordered by namespace and name."""
        known = self._objects.get(resolve_kind(kind).kind, {})
        return [known[k] for k in sorted(known)]

    def find(self, kind: str, namespace: str, name: str) -> KubeObject | None:
        """One object, or None."""
        info = resolve_kind(kind)
        return self._objects.get(info.kind, {}).get(f"{namespace}/{name}" if info.namespaced else name)

    def slices_of(self, namespace: str, service: str) -> list[EndpointSlice]:
        """The EndpointSlices of one service, by name (see `ObjectCache`)."""
        known = self._objects.get("EndpointSlice", {})
        return [eps for key in sorted(self._slices.get((namespace, service), ()))
                if isinstance(eps := known.get(key), EndpointSlice)]

    def watch(self) -> Watch:
        """Every change taken in from now on."""
        return self._fanout.subscribe()

    def close(self) -> None:
        """End every watch."""
        self._fanout.close()

    def get(self, kind: str, namespace: str | None = None, name: str | None = None) -> list[KubeObject]:
        """Objects of `kind` (any kubectl name) in `namespace` (None = "default", "all" = every one)."""
        info = resolve_kind(kind)
        ns = (namespace or "default") if info.namespaced else ""
        return [o for o in self.objects(info.kind)
                if ns in (ALL_NAMESPACES, o.metadata.namespace) and name in (None, o.metadata.name)]

    # -- nodes ------------------------------------------------------------------------------------

    def raw(self, kind: str) -> dict[str, dict[str, Any]]:
        """The objects of a kind kept as the API returned them (Node, VelvetIdentity, VelvetEndpoint), by
        key; a copy, safe to read from any thread."""
        with self._lock:
            return dict(self._raw[kind])

    def nodes(self) -> list[NodeRecord]:
        """Every Node that has an InternalIP and an IPv4 pod CIDR, by name."""
        records = []
        nodes = self.raw("Node")
        for name in sorted(nodes):
            try:
                record = node_record(nodes[name])
            except VelvetError as err:
                log.warning("skipped node %s from the Kubernetes API: %s", name, err)
                continue
            if record is not None:
                records.append(record)
        return records

    def node_names(self) -> frozenset[str]:
        """Every Node's name."""
        return frozenset(self.raw("Node"))
