"""The EndpointSlice controller: the slices Kubernetes would derive from a Service and its pods.

Mirrors upstream pkg/controller/endpointslice: pods of the service's namespace matching its selector,
with an IP and not Succeeded/Failed (terminating pods included); one endpoint port per service port,
a named targetPort resolved on each pod (pods resolving to different numbers land in different
slices); at most 100 endpoints per slice; a placeholder slice without endpoints when nothing matches.
Upstream puts every port of a port set in each of its slices and never splits ports: when a Service
had more ports than EndpointSlice validation allowed (100 before Kubernetes 1.21), the API server
rejected the controller's slices (kubernetes#99382); the fix raised the limit to 20,000
(kubernetes#99795). A Service's own port list has no limit, so a port set larger than the limit our
validation enforces (`MAX_SLICE_PORTS`) is split into consecutive runs of that many ports, each with
the same endpoints: every slice the store writes is one its own reload accepts, and consumers that
merge a service's slices by port name (kube-proxy, our service compiler) see the same backends.
An endpoint on a node that is not registered in the cluster any more (its agent left, or its lease
expired) is neither ready nor serving, as the node lifecycle controller marks the pods of a node
that stopped reporting not ready: every node stops sending it new connections, and it is ready
again once its node registers again. Slice names are `<service>-<5 chars>` derived from the slice's
position (port sets in order, then port runs, then endpoint chunks), so recomputation is stable and
the placeholder is updated in place, as upstream reuses it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType

from velvet.model import (
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    ObjectMeta,
    ObjectReference,
    Pod,
    Service,
)
from velvet.model.decode_net import MAX_SLICE_PORTS
from velvet.model.service import HEADLESS_LABEL, SERVICE_NAME_LABEL

MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
CONTROLLER_NAME = "endpointslice-controller.k8s.io"
MAX_ENDPOINTS_PER_SLICE = 100
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery's rand.String alphabet

PortSet = tuple[EndpointPort, ...]


def is_managed(eps: EndpointSlice) -> bool:
    """The slice belongs to the controller (not to a user or another controller)."""
    return eps.metadata.labels.get(MANAGED_BY_LABEL) == CONTROLLER_NAME


def wants_slices(svc: Service) -> bool:
    """Only services with a non-empty selector, other than ExternalName, get controller slices."""
    return bool(svc.spec.selector) and svc.spec.type != "ExternalName"


def desired_slices(svc: Service, pods: Iterable[Pod],
                   registered: Collection[str] | None = None) -> list[EndpointSlice]:
    """The controller's slices for `svc` (metadata without uid, resourceVersion or timestamps).

    `registered` names the cluster's nodes (None: no cluster view, every node counts as present).
    """
    if not wants_slices(svc):
        return []
    groups: dict[PortSet, list[tuple[str, Endpoint]]] = {}
    for pod in pods:
        if _selected(svc, pod):
            present = registered is None or pod.spec.node_name in registered
            groups.setdefault(_endpoint_ports(svc, pod), []).append(
                (pod.metadata.name, _endpoint(svc, pod, present)))
    if not groups:
        return [_slice(svc, 0, (), ())]
    slices: list[EndpointSlice] = []
    for ports, members in sorted(groups.items(), key=lambda kv: _port_key(kv[0])):
        endpoints = [endpoint for _, endpoint in sorted(members, key=lambda m: m[0])]
        for run in _port_runs(ports):
            for chunk in range(0, len(endpoints), MAX_ENDPOINTS_PER_SLICE):
                chunk_endpoints = tuple(endpoints[chunk:chunk + MAX_ENDPOINTS_PER_SLICE])
                slices.append(_slice(svc, len(slices), chunk_endpoints, run))
    return slices


def _port_runs(ports: PortSet) -> list[PortSet]:
    """The port set as one run, or as runs of MAX_SLICE_PORTS when a slice may not hold it whole."""
    return [ports[i:i + MAX_SLICE_PORTS] for i in range(0, len(ports), MAX_SLICE_PORTS)] or [ports]


def same_slice(a: EndpointSlice, b: EndpointSlice) -> bool:
    """Equal apart from server-set metadata (uid, resourceVersion, timestamps)."""
    return replace(a, metadata=_content_meta(a.metadata)) == replace(b, metadata=_content_meta(b.metadata))


def _content_meta(meta: ObjectMeta) -> ObjectMeta:
    return ObjectMeta(name=meta.name, namespace=meta.namespace, labels=dict(meta.labels),
                      annotations=dict(meta.annotations))


def _selected(svc: Service, pod: Pod) -> bool:
    selector: Mapping[str, str] = svc.spec.selector or {}
    return (
        pod.metadata.namespace == svc.metadata.namespace
        and all(pod.metadata.labels.get(k) == v for k, v in selector.items())
        and bool(pod.status.pod_ip)
        and pod.status.phase not in ("Succeeded", "Failed")
    )


def _endpoint_ports(svc: Service, pod: Pod) -> PortSet:
    ports: list[EndpointPort] = []
    for sp in svc.spec.ports:
        target = sp.port if sp.target_port is None else sp.target_port
        number = pod.named_port(target, sp.protocol) if isinstance(target, str) else target
        if number is not None:
            ports.append(EndpointPort(port=number, protocol=sp.protocol, name=sp.name or ""))
    return tuple(ports)


def _endpoint(svc: Service, pod: Pod, node_present: bool) -> Endpoint:
    pod_ready = pod.status.ready and node_present
    publish = svc.spec.publish_not_ready_addresses
    assert pod.status.pod_ip is not None
    return Endpoint(
        addresses=(pod.status.pod_ip,),
        conditions=EndpointConditions(
            ready=publish or (pod_ready and not pod.terminating),
            serving=publish or pod_ready,
            terminating=pod.terminating,
        ),
        node_name=pod.spec.node_name or None,
        target_ref=ObjectReference(kind="Pod", name=pod.metadata.name, namespace=pod.metadata.namespace,
                                   uid=pod.metadata.uid),
    )


def _slice(svc: Service, index: int, endpoints: tuple[Endpoint, ...], ports: PortSet) -> EndpointSlice:
    labels = {**svc.metadata.labels, SERVICE_NAME_LABEL: svc.metadata.name, MANAGED_BY_LABEL: CONTROLLER_NAME}
    if svc.headless:
        labels[HEADLESS_LABEL] = ""
    meta = ObjectMeta(name=slice_name(svc.metadata.name, svc.metadata.namespace, index),
                      namespace=svc.metadata.namespace, labels=MappingProxyType(labels))
    return EndpointSlice(metadata=meta, endpoints=endpoints, ports=ports)


def slice_name(service: str, namespace: str, index: int) -> str:
    """`<service>-<5 chars>` like generateName; a hash of the slice's position keeps names stable."""
    digest = hashlib.sha256(f"{namespace}/{service}/{index}".encode()).digest()
    suffix = "".join(_NAME_ALPHABET[b % len(_NAME_ALPHABET)] for b in digest[:5])
    return f"{service[:57]}-{suffix}"


def _port_key(ports: PortSet) -> str:
    return ",".join(f"{p.name}:{p.port}/{p.protocol}" for p in ports)
