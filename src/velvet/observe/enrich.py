"""Kubernetes context for datapath events: who an IP or identity is, which service, which policy."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Protocol, TypeVar

from velvet.observe.codes import RESERVED_IDENTITY_NAMES


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    """What the agent knows of an endpoint: namespace, pod, labels ("k8s:app=web"), endpoint id, identity."""

    namespace: str = ""
    pod_name: str = ""
    labels: tuple[str, ...] = ()
    endpoint_id: int = 0
    identity: int = 0
    ingress_isolated_by: tuple[NamedRef, ...] = ()
    """The NetworkPolicies that isolate the endpoint for ingress (they name its policy drops)."""
    egress_isolated_by: tuple[NamedRef, ...] = ()
    """The NetworkPolicies that isolate the endpoint for egress."""


@dataclass(frozen=True, slots=True)
class NamedRef:
    """A namespaced Kubernetes object by name (a Service or a NetworkPolicy)."""

    namespace: str
    name: str

    @classmethod
    def parse(cls, key: str) -> NamedRef:
        """From "namespace/name" (a bare name is in "default"); a namespace is one string, not one per ref."""
        namespace, _, name = key.rpartition("/")
        return cls(sys.intern(namespace or "default"), name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class EndpointResolver(Protocol):
    """Answers the lookups that turn a `flow_event` into a flow with Kubernetes names."""

    @property
    def generation(self) -> int:
        """A number that changes whenever any answer may have changed (decoders cache until it does)."""
        ...

    def by_ip(self, ip: int) -> EndpointInfo | None:
        """The local or known endpoint with this IPv4 address (host-order int), if any."""
        ...

    def by_identity(self, identity: int) -> EndpointInfo | None:
        """Namespace and labels of a security identity (no pod: many pods share one identity)."""
        ...

    def by_cgroup(self, cgroup_id: int) -> int | None:
        """The IPv4 address (host-order int) of the pod whose cgroup has this id, if any.

        Socket events carry the caller's cgroup id but no source address (connect() has not bound one).
        """
        ...

    def service(self, rev_nat_index: int) -> NamedRef | None:
        """The Service a reverse-NAT id belongs to."""
        ...

    def policies(self, policy_id: int) -> tuple[NamedRef, ...]:
        """The NetworkPolicies a datapath policy id stands for (empty when unknown)."""
        ...


_V = TypeVar("_V")
_RESERVED = {ident: EndpointInfo(labels=(f"reserved:{name}",))
             for ident, name in RESERVED_IDENTITY_NAMES.items()}


def _ip_key(ip: str | int) -> int:
    return int(IPv4Address(ip))


class DictResolver:
    """An `EndpointResolver` over plain dicts that the agent fills as endpoints and policies change."""

    def __init__(self) -> None:
        self._by_ip: dict[int, EndpointInfo] = {}
        self._by_identity: dict[int, EndpointInfo] = dict(_RESERVED)
        self._services: dict[int, NamedRef] = {}
        self._cgroups: dict[int, int] = {}
        self._policies: dict[int, tuple[NamedRef, ...]] = {}
        self._generation = 0

    @property
    def generation(self) -> int:
        """See `EndpointResolver.generation`: counts the set/remove calls that changed an answer."""
        return self._generation

    def _put(self, table: dict[int, _V], key: int, value: _V) -> None:
        if table.get(key) != value:
            table[key] = value
            self._generation += 1

    def _drop(self, table: dict[int, _V], key: int) -> None:
        if table.pop(key, None) is not None:
            self._generation += 1

    def sync_pods(self, endpoints: Mapping[str, EndpointInfo], cgroups: Mapping[int, str],
                  identities: Mapping[int, EndpointInfo], policies: Mapping[int, Iterable[str]]) -> None:
        """Make everything pod-derived exactly this: deleted pods, released identities and policy ids
        stop resolving at once (flows already stored keep the names they were recorded with).

        Each table is swapped whole, in one assignment, before the generation moves on: the flow
        pipeline enriches on the event loop while the state worker calls this, and a table emptied
        and refilled in place would leave the flows enriched in between without their pods' names."""
        tables = ({_ip_key(ip): info for ip, info in endpoints.items()},
                  {cgroup: _ip_key(ip) for cgroup, ip in cgroups.items()},
                  {**_RESERVED, **identities},
                  {i: tuple(map(NamedRef.parse, names)) for i, names in policies.items()})
        if tables != (self._by_ip, self._cgroups, self._by_identity, self._policies):
            self._by_ip, self._cgroups, self._by_identity, self._policies = tables
            self._generation += 1

    def set_endpoint(self, ip: str | int, info: EndpointInfo) -> None:
        """Record (or replace) the endpoint that owns `ip`."""
        self._put(self._by_ip, _ip_key(ip), info)

    def set_cgroup(self, cgroup_id: int, ip: str | int) -> None:
        """Record that processes in cgroup `cgroup_id` are the pod with address `ip`."""
        self._put(self._cgroups, cgroup_id, _ip_key(ip))

    def set_identity(self, identity: int, namespace: str, labels: Mapping[str, str] | Iterable[str]) -> None:
        """Record an identity's labels: a mapping ("k8s:app" -> "web") or "k8s:app=web" strings."""
        items = (f"{k}={v}" for k, v in labels.items()) if isinstance(labels, Mapping) else labels
        self._put(self._by_identity, identity, EndpointInfo(namespace=namespace, labels=tuple(sorted(items))))

    def set_service(self, rev_nat_index: int, service: NamedRef) -> None:
        """Record the Service behind a reverse-NAT id."""
        self._put(self._services, rev_nat_index, service)

    def remove_service(self, rev_nat_index: int) -> None:
        """Forget a reverse-NAT id."""
        self._drop(self._services, rev_nat_index)

    def set_policies(self, policy_id: int, policies: Iterable[NamedRef | str]) -> None:
        """Record the policies ("ns/name" or `NamedRef`) a datapath policy id stands for."""
        refs = (p if isinstance(p, NamedRef) else NamedRef.parse(p) for p in policies)
        self._put(self._policies, policy_id, tuple(refs))

    def by_ip(self, ip: int) -> EndpointInfo | None:
        """See `EndpointResolver.by_ip`."""
        return self._by_ip.get(ip)

    def by_identity(self, identity: int) -> EndpointInfo | None:
        """See `EndpointResolver.by_identity`."""
        return self._by_identity.get(identity)

    def by_cgroup(self, cgroup_id: int) -> int | None:
        """See `EndpointResolver.by_cgroup`."""
        return self._cgroups.get(cgroup_id)

    def service(self, rev_nat_index: int) -> NamedRef | None:
        """See `EndpointResolver.service`."""
        return self._services.get(rev_nat_index)

    def policies(self, policy_id: int) -> tuple[NamedRef, ...]:
        """See `EndpointResolver.policies`."""
        return self._policies.get(policy_id, ())
