"""The local store's own Services and EndpointSlices back into the model, read without validation.

Only for texts the store sealed (`sources.seal`): `to_dict` output of objects it held, written by
this very code. Each reader builds the objects the strict decoder (`from_dict(..., trusted=True)`)
makes of such a text, field by field and with its defaults, checking nothing; equal strings go
through `share` (a dict's `setdefault`, called as share(s, s)) and become one object. A shape it
does not expect raises (KeyError, TypeError, AttributeError, ...): the caller then decodes that
document strictly. Other kinds have no reader here (`read_stored` returns None) and are always
decoded strictly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from velvet.model.meta import EMPTY, ObjectMeta
from velvet.model.service import (
    DEFAULT_AFFINITY_TIMEOUT,
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    ObjectReference,
    Service,
    ServicePort,
    ServiceSpec,
)

Share = Callable[[str, str], str]
Doc = dict[str, Any]
_STATES = (None, True, False)
# frozen and few: every endpoint with the same conditions holds the same one
_CONDITIONS = {(r, s, t): EndpointConditions(r, s, t) for r in _STATES for s in _STATES for t in _STATES}


def read_stored(doc: Doc, share: Share) -> Service | EndpointSlice | None:
    """The object a sealed text holds, or None when its kind has no reader here."""
    kind = doc["kind"]
    if kind == "Service":
        return _service(doc, share)
    if kind == "EndpointSlice":
        return _endpoint_slice(doc, share)
    return None


def _meta(raw: Doc, share: Share) -> ObjectMeta:
    """Metadata of a namespaced object with the server-set fields."""
    labels, annotations = raw.get("labels"), raw.get("annotations")
    rv = raw.get("resourceVersion")
    return ObjectMeta(
        name=share(raw["name"], raw["name"]),
        namespace=share(ns := raw.get("namespace") or "default", ns),
        uid=share(uid := raw.get("uid") or "", uid),
        labels=_strings(labels, share) if labels is not None else EMPTY,
        annotations=_strings(annotations, share) if annotations is not None else EMPTY,
        creation_timestamp=share(created := raw.get("creationTimestamp") or "", created),
        deletion_timestamp=raw.get("deletionTimestamp"),
        resource_version=int(rv) if rv is not None else 0,
    )


def _strings(raw: Doc, share: Share) -> Mapping[str, str]:
    return MappingProxyType({key: share(value, value) for key, value in raw.items()})


def _service(doc: Doc, share: Share) -> Service:
    s = doc["spec"]
    svc_type = share(kind := s.get("type") or "ClusterIP", kind)
    selector, config = s.get("selector"), s.get("sessionAffinityConfig")
    client = config.get("clientIP") if config is not None else None
    timeout = client.get("timeoutSeconds") if client is not None else None
    spec = ServiceSpec(
        type=svc_type,
        selector=_strings(selector, share) if selector is not None else None,
        ports=tuple(_service_port(p, share) for p in s.get("ports") or ()),
        cluster_ip=share(ip, ip) if (ip := s.get("clusterIP")) else None,
        external_ips=tuple(s.get("externalIPs") or ()),
        session_affinity=share(affinity := s.get("sessionAffinity") or "None", affinity),
        affinity_timeout_seconds=timeout if timeout is not None else DEFAULT_AFFINITY_TIMEOUT,
        external_traffic_policy=share(etp := s.get("externalTrafficPolicy") or "Cluster", etp),
        internal_traffic_policy=share(itp := s.get("internalTrafficPolicy") or "Cluster", itp),
        publish_not_ready_addresses=s.get("publishNotReadyAddresses") or False,
        load_balancer_source_ranges=tuple(s.get("loadBalancerSourceRanges") or ()),
        external_name=s.get("externalName") if svc_type == "ExternalName" else None,
        health_check_node_port=s.get("healthCheckNodePort") or None,
    )
    status = doc.get("status")
    lb = status.get("loadBalancer") if status is not None else None
    ingress = lb.get("ingress") if lb is not None else None
    ips = tuple(ip for item in ingress or () if (ip := item.get("ip")) is not None)
    return Service(metadata=_meta(doc["metadata"], share), spec=spec, load_balancer_ingress=ips)


def _service_port(raw: Doc, share: Share) -> ServicePort:
    port, target, name = raw["port"], raw.get("targetPort"), raw.get("name")
    return ServicePort(
        port=port,
        protocol=share(protocol := raw.get("protocol") or "TCP", protocol),
        name=share(name, name) if name else None,
        target_port=port if target is None or target == 0 or target == "" else target,
        node_port=raw.get("nodePort") or None,
    )


def _endpoint_slice(doc: Doc, share: Share) -> EndpointSlice:
    ports = tuple(EndpointPort(port=p.get("port"),
                               protocol=share(protocol := p.get("protocol") or "TCP", protocol),
                               name=share(name := p.get("name") or "", name)) for p in doc.get("ports") or ())
    return EndpointSlice(
        metadata=_meta(doc["metadata"], share),
        endpoints=tuple(_endpoint(e, share) for e in doc.get("endpoints") or ()),
        ports=ports,
        address_type=share(doc["addressType"], doc["addressType"]),
    )


def _endpoint(raw: Doc, share: Share) -> Endpoint:
    conditions, node, ref = raw.get("conditions"), raw.get("nodeName"), raw.get("targetRef")
    if conditions is None:
        state = _CONDITIONS[None, None, None]
    else:
        state = _CONDITIONS[conditions.get("ready"), conditions.get("serving"), conditions.get("terminating")]
    return Endpoint(
        addresses=tuple(share(a, a) for a in raw["addresses"]),
        conditions=state,
        node_name=share(node, node) if node else None,
        hostname=raw.get("hostname") or None,
        target_ref=None if ref is None else ObjectReference(
            kind=share(ref["kind"], ref["kind"]), name=share(ref["name"], ref["name"]),
            namespace=share(ns := ref.get("namespace") or "", ns),
            uid=share(uid := ref.get("uid") or "", uid)),
    )
