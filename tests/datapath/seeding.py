"""Seeding the maps of a loaded object exactly as the agent writes them.

Tables are built from the records of `velvet.datapath.tables` and written through `TableMaps`, the
codecs `KernelDatapath` writes with. A load-balancer change is edited as records, diffed against
what the maps hold (`lb_delta`) and written by `write_lb` in `LbDelta.batches()` order, as the
agent's reconciliation writes it; `compile_service` takes the records from the real
`ServiceCompiler` instead. Nothing here writes the maps the programs fill themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from velvet.control.services import ServiceCompiler
from velvet.datapath.delta import lb_delta, write_lb
from velvet.datapath.structs import BackendState, LbScope, SvcFlag
from velvet.datapath.tablemaps import TableMaps
from velvet.datapath.tables import (
    ANY_PROTO,
    BackendValue,
    Direction,
    EndpointEntry,
    LbMap,
    LbState,
    PolicyKey,
    PolicyValue,
    RevNatValue,
    ServiceKey,
    ServiceValue,
    SourceRangeKey,
)
from velvet.model.meta import ObjectMeta
from velvet.model.service import (
    SERVICE_NAME_LABEL,
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    Service,
    ServicePort,
    ServiceSpec,
)

Pod = tuple[str, int, int, int, int]
"""A local pod: (IPv4, host veth ifindex, identity, endpoint id, EP_POLICY_* flags)."""


def add_pods(tables: TableMaps, pods: Iterable[Pod]) -> None:
    """Local pods in lxc_endpoints and their identities (a /32 each) in ipcache."""
    rows = list(pods)
    tables.write("lxc_endpoints", {ip: EndpointEntry(ifindex, identity, ep_id, flags)
                                   for ip, ifindex, identity, ep_id, flags in rows}, ())
    tables.write("ipcache", {f"{ip}/32": identity for ip, _, identity, _, _ in rows}, ())


def set_identity(tables: TableMaps, cidr: str, identity: int) -> None:
    """An ipcache prefix ("a.b.c.d/len") -> identity, as the policy compiler gives node addresses."""
    tables.write("ipcache", {cidr: identity}, ())


def rule(ep_id: int, direction: Direction, identity: int, proto: int = ANY_PROTO, port: int = 0,
         prefix_len: int = 16) -> PolicyKey:
    """A policy map key: proto 0 is any protocol and port; prefix_len fixes the leading port bits."""
    if proto == ANY_PROTO:
        return PolicyKey(ep_id, direction, identity, ANY_PROTO, 0, 0)
    return PolicyKey(ep_id, direction, identity, proto, port, prefix_len)


def allow(tables: TableMaps, key: PolicyKey, policy_id: int = 0) -> None:
    """Write one policy entry (every entry allows) naming the policy set policy_id."""
    tables.write("policy", {key: PolicyValue(policy_id)}, ())


def revoke(tables: TableMaps, key: PolicyKey) -> None:
    """Remove one policy entry."""
    tables.write("policy", {}, [key])


@dataclass
class LbEdit:
    """The load-balancer tables as editable records; `lb_change` writes the difference on exit."""

    services: dict[ServiceKey, ServiceValue]
    backends: dict[int, BackendValue]
    revnat: dict[int, RevNatValue]
    src_range: dict[SourceRangeKey, None]
    maglev: dict[int, tuple[int, ...]]

    def frontend(self, address: str, port: int, proto: int, backend_ids: Sequence[int], *, rev: int,
                 flags: int, affinity_timeout: int = 0, scope: int = LbScope.EXT) -> None:
        """Set a frontend (slot 0) and its backend slots 1..n, replacing the slots it had."""
        for key in [k for k in self.services if (k.address, k.dport, k.proto, k.scope) ==
                    (address, port, proto, scope)]:
            del self.services[key]
        self.services[ServiceKey(address, port, 0, proto, scope)] = ServiceValue(
            affinity_timeout=affinity_timeout, count=len(backend_ids), rev_nat_index=rev, flags=int(flags))
        for slot, backend_id in enumerate(backend_ids, start=1):
            self.services[ServiceKey(address, port, slot, proto, scope)] = ServiceValue(
                backend_id=backend_id, rev_nat_index=rev)

    def service(self, address: str, port: int, proto: int, backends: Sequence[tuple[int, str, int]], *,
                rev: int, flags: int = SvcFlag.CLUSTERIP, affinity_timeout: int = 0,
                scope: int = LbScope.EXT) -> None:
        """A frontend with its backends (id, address, port) and its reverse NAT entry."""
        for backend_id, backend_address, backend_port in backends:
            self.backends[backend_id] = BackendValue(backend_address, backend_port, proto)
        self.frontend(address, port, proto, [b[0] for b in backends], rev=rev, flags=flags,
                      affinity_timeout=affinity_timeout, scope=scope)
        self.revnat[rev] = RevNatValue(address, port)

    def backend(self, backend_id: int, address: str, port: int, proto: int,
                state: int = BackendState.ACTIVE) -> None:
        """Create or replace a backend."""
        self.backends[backend_id] = BackendValue(address, port, proto, state)

    def state(self) -> LbState:
        """The edited contents."""
        return LbState(self.services, self.backends, self.revnat, self.src_range, self.maglev)


def read_lb(tables: TableMaps) -> LbState:
    """What the five load-balancer maps hold, as records (what the agent adopts after a restart)."""
    return LbState(*(tables.read(m.value) for m in LbMap))


@contextmanager
def lb_change(tables: TableMaps) -> Iterator[LbEdit]:
    """Edit the load-balancer records; on exit their difference is written as the agent writes it."""
    current = read_lb(tables)
    edit = LbEdit(dict(current.services), dict(current.backends), dict(current.revnat),
                  dict(current.src_range), dict(current.maglev))
    yield edit
    write_lb(tables, lb_delta(current, edit.state()))


# --- Services through the real compiler --------------------------------------------------------------


def k8s_service(name: str, ports: Sequence[ServicePort], *, cluster_ip: str, **spec: Any) -> Service:
    """A Service in namespace default."""
    spec_ = ServiceSpec(ports=tuple(ports), cluster_ip=cluster_ip, **spec)
    return Service(ObjectMeta(name, "default"), spec_)


def endpoint_slice(service: str, ips: Sequence[str], ports: Sequence[EndpointPort], *, node: str,
                   terminating: Sequence[str] = ()) -> EndpointSlice:
    """The EndpointSlice of a service: ready endpoints at `ips`, serving terminating ones at `terminating`."""
    ready = [Endpoint((ip,), EndpointConditions(True, True, False), node_name=node) for ip in ips]
    draining = [Endpoint((ip,), EndpointConditions(False, True, True), node_name=node) for ip in terminating]
    meta = ObjectMeta(f"{service}-abcde", "default", labels=MappingProxyType({SERVICE_NAME_LABEL: service}))
    return EndpointSlice(meta, (*ready, *draining), tuple(ports))


def compile_service(tables: TableMaps, compiler: ServiceCompiler, service: Service,
                    slices: Sequence[EndpointSlice]) -> None:
    """Compile a Service and its slices and write the delta (stale backends flushed) as the agent does."""
    write_lb(tables, compiler.update(service, slices, service.metadata.key))
