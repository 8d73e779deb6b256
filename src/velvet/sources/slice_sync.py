"""The EndpointSlice controller inside a store transaction: recompute only the services it may change.

A pod changed, added or removed affects the services of its namespace whose selector matches its
labels before or after; a changed or removed service affects itself; a namespace change affects its
services; a changed controller-managed slice affects the service it names. Endpoints on nodes not in
the transaction's view of the cluster (`Txn.registered`) are derived not ready. Only those services'
slices are recomputed and compared; user-managed slices are never touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from velvet.model import EndpointSlice, KubeObject, Pod, Service
from velvet.model.service import SERVICE_NAME_LABEL
from velvet.sources.endpointslices import desired_slices, is_managed, same_slice, wants_slices
from velvet.sources.index import LabelKey
from velvet.sources.txn import Txn


class _Changed:
    """The pods and slices a transaction changed, by label, so lookups need not scan its changes."""

    def __init__(self, txn: Txn) -> None:
        self.pods: dict[LabelKey, set[str]] = {}
        self.slices: dict[tuple[str, str], set[str]] = {}
        for (_, ns, name), obj in txn.changes.items():
            if isinstance(obj, Pod):
                for pair in obj.metadata.labels.items():
                    self.pods.setdefault((ns, *pair), set()).add(name)
            elif isinstance(obj, EndpointSlice):
                self.slices.setdefault((ns, obj.metadata.labels.get(SERVICE_NAME_LABEL, "")), set()).add(name)


def sync_slices(txn: Txn, also: Mapping[str, set[str]] | None = None) -> None:
    """Bring the controller's EndpointSlices of every service the transaction may affect up to date.

    `also` names more services (by namespace) to recompute, e.g. after their saved slices were lost.
    """
    changed = _Changed(txn)
    affected = affected_services(txn)
    for ns, names in (also or {}).items():
        affected.setdefault(ns, set()).update(names)
    for ns, services in sorted(affected.items()):
        wanted: set[str] = set()
        held: set[str] = set()
        for name in sorted(services, key=lambda n: (txn.position(("Service", ns, n)), n)):
            svc = txn.get(("Service", ns, name))
            pods = _pods_for(txn, changed, svc) if isinstance(svc, Service) else []
            for want in desired_slices(svc, pods, txn.registered) if isinstance(svc, Service) else []:
                wanted.add(want.metadata.name)
                have = txn.get(("EndpointSlice", ns, want.metadata.name))
                if not isinstance(have, EndpointSlice) or not is_managed(have):
                    txn.create(want)
                elif not same_slice(have, want):
                    txn.put(replace(want, metadata=replace(want.metadata, uid=have.metadata.uid,
                                                           creation_timestamp=have.metadata.creation_timestamp)))
            held.update(_managed_slices(txn, changed, ns, name))
        for name in sorted(held - wanted):
            txn.remove(("EndpointSlice", ns, name))


def affected_services(txn: Txn) -> dict[str, set[str]]:
    """Names of the services, by namespace, whose slices the transaction's changes may alter."""
    affected: dict[str, set[str]] = {}
    for key, new in list(txn.changes.items()):
        kind, ns, name = key
        old = txn.base.objects.get(key)
        if kind == "Pod":
            for pod in (old, new):
                if pod is not None:
                    selecting = txn.base.services_selecting(ns, pod.metadata.labels)
                    affected.setdefault(ns, set()).update(selecting)
        elif kind == "Service":
            affected.setdefault(ns, set()).add(name)
        elif kind == "Namespace":
            affected.setdefault(name, set()).update(s.metadata.name for s in txn.of_kind("Service", name))
        elif kind == "EndpointSlice":
            for eps in (old, new):
                if isinstance(eps, EndpointSlice) and is_managed(eps):
                    affected.setdefault(ns, set()).add(eps.metadata.labels.get(SERVICE_NAME_LABEL, ""))
    return affected


def _pods_for(txn: Txn, changed: _Changed, svc: Service) -> list[Pod]:
    """Pods of the service's namespace that may match its selector (desired_slices checks each)."""
    if not wants_slices(svc) or not svc.spec.selector:
        return []
    ns = svc.metadata.namespace
    pair = min(svc.spec.selector.items(), key=lambda kv: len(txn.base.pods_labelled(ns, *kv)))
    names = txn.base.pods_labelled(ns, *pair) | changed.pods.get((ns, *pair), set())
    return [pod for name in names if isinstance(pod := txn.get(("Pod", ns, name)), Pod)]


def _managed_slices(txn: Txn, changed: _Changed, ns: str, service: str) -> set[str]:
    """Names of the controller's slices labelled with `service`, as the transaction sees them."""
    names = txn.base.slices_of(ns, service) | changed.slices.get((ns, service), set())
    return {name for name in names if _is_managed_slice_of(txn.get(("EndpointSlice", ns, name)), service)}


def _is_managed_slice_of(obj: KubeObject | None, service: str) -> bool:
    return (isinstance(obj, EndpointSlice) and is_managed(obj)
            and obj.metadata.labels.get(SERVICE_NAME_LABEL, "") == service)
