"""Service compiler: Services and their EndpointSlices -> this node's lb4_* map entries, as deltas.

Semantics are kube-proxy's: endpoints of every slice of a service are merged and matched to a service
port by name and protocol, taking each slice's own resolved port number; ready endpoints serve, and
only when none is ready do serving-and-terminating ones; traffic policies Local keep only this node's
endpoints (with the same terminating fallback, never a remote one). Work is per service: updating one
service costs O(its size), whatever the number of services.

Frontends of a service port: ClusterIP:port; for NodePort and LoadBalancer types every IPv4 node
address:nodePort plus the wildcard 0.0.0.0:nodePort (which the datapath may use only for a local
destination that missed an exact lookup, and whose rev-NAT address it must take from conntrack);
externalIP:port; LB ingress IP:port. ClusterIP frontends have one scope holding the internal
(internalTrafficPolicy) backends. The others hold the external (externalTrafficPolicy) backends in
scope 0 and, when the two sets differ, the internal ones in scope 1, with TWO_SCOPES on both.
LOCAL_ONLY_EXT / LOCAL_ONLY_INT mark a Local traffic policy of a service that has usable endpoints
somewhere: an empty node-local set then means remote endpoints only, and kube-proxy drops that
traffic; a service without any usable endpoint has neither flag and is rejected.
Maglev tables are built from scope 0; scope 1 selects at random (Maglev is for north-south traffic).

Backends (ip, port, proto) are shared by every service that uses them. lb4_backends also keeps the
serving terminating endpoints that no slot selects, so connections already tracked to a draining pod
finish; a backend is TERMINATING when every service using it sees it terminating. A frontend address
wanted by two services belongs to the first; the other gets it when it is released.

loadBalancerSourceRanges are kube-proxy's (pkg/proxy/serviceport.go, newBaseServiceInfo): the ranges
are filtered to the service's IP family (IPv4 here), and an empty result, like a zero CIDR among them,
means no restriction. So a Service whose ranges are all IPv6 accepts every IPv4 client on its
LoadBalancer IPs, exactly as kube-proxy's IPv4 proxier (no firewall chain) does.

Map capacity is all or nothing per service and never silent: a service whose entries do not fit
(rev-NAT ids, backend ids, or room in lb4_services / lb4_src_range / lb4_maglev while the delta is
applied, upserts before deletes) changes nothing, keeps whatever version was programmed before, and is
named in `problems()` with the reason until it is programmed (`retry`, or its next update) or deleted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Generic, NamedTuple, TypeVar

from velvet.control.maglev import lookup_table
from velvet.datapath.delta import LbDelta, MapPlan, lb_delta, merge_deltas, plan
from velvet.datapath.structs import BackendState, LbScope, SvcFlag
from velvet.datapath.tables import (
    BackendValue,
    LbMap,
    LbState,
    Proto,
    RevNatValue,
    ServiceKey,
    ServiceValue,
    SourceRangeKey,
    StaleBackend,
)
from velvet.errors import MapFull
from velvet.model.service import HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL, EndpointSlice, Service
from velvet.model.validate import is_ipv4

ALGORITHM_ANNOTATION = "velvet.io/lb-algorithm"
MAGLEV = "maglev"
RANDOM = "random"
NODEPORT_WILDCARD = "0.0.0.0"
MAX_BACKEND_ID = 2**32 - 1
MAX_REV_NAT_INDEX = 2**16 - 1
LB_CAPACITY: Mapping[LbMap, int] = MappingProxyType({
    LbMap.SERVICES: 65536 * 8,
    LbMap.BACKENDS: 65536,
    LbMap.REVNAT: 65536,
    LbMap.SRC_RANGE: 16384,
    LbMap.MAGLEV: 4096,
})
"""max_entries of each lb4 map, as datapath/bpf/lib/maps.h sets them (a unit test compares)."""
_ENTRY_MAPS = (LbMap.SERVICES, LbMap.SRC_RANGE, LbMap.MAGLEV)  # maps whose room is counted in entries
ZERO_CIDR = "0.0.0.0/0"

_PROTOCOLS = {p.name: p.value for p in Proto}
_CLUSTERIP = int(SvcFlag.CLUSTERIP)
_NODEPORT = int(SvcFlag.NODEPORT)
_EXTERNAL_IP = int(SvcFlag.EXTERNAL_IP)
_LOADBALANCER = int(SvcFlag.LOADBALANCER)
_AFFINITY = int(SvcFlag.AFFINITY)
_SOURCE_RANGE = int(SvcFlag.SOURCE_RANGE)
_MAGLEV = int(SvcFlag.MAGLEV)
_TWO_SCOPES = int(SvcFlag.TWO_SCOPES)
_LOCAL_ONLY_EXT = int(SvcFlag.LOCAL_ONLY_EXT)
_LOCAL_ONLY_INT = int(SvcFlag.LOCAL_ONLY_INT)
_EXTERNAL = _NODEPORT | _EXTERNAL_IP | _LOADBALANCER

Address = tuple[str, int, int]  # (IPv4 address, port, IP protocol number) of a backend or a frontend


def _ipv4(text: str) -> str | None:
    """`text` if it is an IPv4 address in dotted-decimal form (as the API server stores them), else None."""
    return text if is_ipv4(text) else None


def _ipv4_cidr(text: str) -> str | None:
    """`text` as a canonical IPv4 network ("10.0.0.0/8"; host bits cleared, padding ignored), else None."""
    try:
        return str(ipaddress.IPv4Network(text.strip(), strict=False))
    except ValueError:
        return None


def source_ranges(service: Service) -> tuple[str, ...]:
    """The IPv4 loadBalancerSourceRanges that restrict a service, canonical and sorted; () = any source.

    As kube-proxy: ranges of the other family are dropped, and a zero CIDR allows every source.
    """
    ranges = sorted({c for c in map(_ipv4_cidr, service.spec.load_balancer_source_ranges) if c})
    return () if ZERO_CIDR in ranges else tuple(ranges)


def is_ignored(service: Service) -> bool:
    """Whether kube-proxy gives `service` no datapath entries at all.

    ExternalName and headless services, services without an IPv4 ClusterIP (none allocated yet, or an
    IPv6 one, which lb4 does not serve), and services labelled for another proxy or as headless.
    """
    labels = service.metadata.labels
    return (
        service.spec.type == "ExternalName"
        or _ipv4(service.spec.cluster_ip or "") is None
        or SERVICE_PROXY_NAME_LABEL in labels
        or HEADLESS_LABEL in labels
    )


K = TypeVar("K", bound=Hashable)


class IdAllocator(Generic[K]):
    """Reference-counted ids 1..maximum for keys: stable while referenced, reused only after release.

    At most `capacity` ids (the room of the map they index; default `maximum`) are used at once.

    Ids come from a cursor that only moves forward (wrapping at `maximum`), so a released id returns
    only after every other free id has been handed out: conntrack entries naming it are long gone.
    """

    def __init__(self, map_name: str, maximum: int, capacity: int | None = None) -> None:
        self._map_name = map_name
        self._maximum = maximum
        self._capacity = maximum if capacity is None else min(capacity, maximum)
        self._ids: dict[K, int] = {}
        self._refs: dict[K, int] = {}
        self._used: set[int] = set()
        self._blocked: set[int] = set()
        self._cursor = 1

    @property
    def ids(self) -> Mapping[K, int]:
        """The id of every key that holds one."""
        return self._ids

    def refs(self, key: K) -> int:
        """How many references `key` has."""
        return self._refs.get(key, 0)

    def acquire(self, key: K) -> int:
        """Add a reference to `key` and return its id, allocating one for a new key."""
        ident = self._ids.get(key)
        if ident is None:
            ident = self._ids[key] = self._allocate()
        self._refs[key] = self._refs.get(key, 0) + 1
        return ident

    def release(self, key: K) -> bool:
        """Drop a reference to `key`; True when it was the last one and the id is free again."""
        refs = self._refs[key] - 1
        if refs:
            self._refs[key] = refs
            return False
        del self._refs[key]
        self._used.discard(self._ids.pop(key))
        return True

    def adopt(self, key: K, ident: int) -> None:
        """Hold `ident` for `key` without a reference (an id found in a pinned map after a restart).

        An id that cannot be kept for `key` (taken, or `key` already has one) is blocked instead.
        """
        if key in self._ids:
            self.block(ident)
        elif 1 <= ident <= self._maximum and ident not in self._used:
            self._ids[key] = ident
            self._used.add(ident)
            self._cursor = ident + 1 if ident < self._maximum else 1

    def block(self, ident: int) -> None:
        """Keep `ident` (whose old entry is still in a map) unused until `release_unreferenced`."""
        if 1 <= ident <= self._maximum and ident not in self._used:
            self._used.add(ident)
            self._blocked.add(ident)

    def release_unreferenced(self) -> None:
        """Free every adopted id no key has referenced since, and every blocked id."""
        for key in [k for k in self._ids if k not in self._refs]:
            self._used.discard(self._ids.pop(key))
        self._used -= self._blocked
        self._blocked.clear()

    def ensure_free(self, count: int) -> None:
        """Raise MapFull unless `count` more ids can be allocated."""
        if count > self.room:
            raise MapFull(self._map_name, self._capacity, len(self._used) + count)

    @property
    def room(self) -> int:
        """How many more ids can be allocated."""
        return self._capacity - len(self._used)

    def _allocate(self) -> int:
        """The first free id at or after the cursor."""
        self.ensure_free(1)
        ident = self._cursor
        while ident in self._used:
            ident = ident + 1 if ident < self._maximum else 1
        self._cursor = ident + 1 if ident < self._maximum else 1
        self._used.add(ident)
        return ident


class _Endpoint(NamedTuple):
    """One endpoint of one service port, with kube-proxy's reading of its conditions."""

    backend: Address
    ready: bool
    usable: bool  # ready, or serving and terminating
    terminating: bool
    local: bool


@dataclass(frozen=True, slots=True)
class _Frontend:
    """A frontend before ids are assigned: its flags and the backends of each scope, in slot order."""

    flags: int
    external: tuple[Address, ...]  # scope 0: the only scope unless TWO_SCOPES
    internal: tuple[Address, ...] | None  # scope 1, for TWO_SCOPES only
    usable: tuple[Address, ...]  # every backend a connection through the frontend may have reached, sorted


_OrderKey = tuple[str, int, bool]  # (port name, protocol, local endpoints only)
_Held = Mapping[LbMap, Mapping[Any, object]]  # a service's entries in each map whose room is counted
_NONE: Mapping[Any, Any] = {}  # what records hold for a map they have no entry in (read-only: a Mapping)
_NO_ADDRESSES: frozenset[Address] = frozenset()


def _none() -> Mapping[Any, Any]:
    """The shared empty mapping (a dataclass default cannot be one directly)."""
    return _NONE


@dataclass(slots=True)
class _Compiled:
    """What one service contributes to the maps, and what its next compilation starts from.

    Kept for every service, so kept small: what most services lack is the shared `_NONE` (or the
    empty frozenset), equal entry counts are one shared mapping (`_counts`), backend sets are tuples
    (a frontend's slot order is the tuple `orders` holds), and map entries that follow from the
    frontends and the ids they hold are not kept: lb4_services (`ServiceCompiler._services`) and
    lb4_revnat (`_revnat`).
    """

    service: Service | None = None
    slices: tuple[EndpointSlice, ...] = ()
    frontends: dict[Address, _Frontend] = field(default_factory=dict)  # owned, with their final flags
    terminating: frozenset[Address] = _NO_ADDRESSES  # backends of `frontends` seen terminating
    src_range: Mapping[SourceRangeKey, None] = field(default_factory=_none)
    maglev: Mapping[int, tuple[int, ...]] = field(default_factory=_none)
    orders: dict[_OrderKey, tuple[Address, ...]] = field(default_factory=dict)
    tables: Mapping[tuple[Address, ...], tuple[int, ...]] = field(default_factory=_none)
    waiting: frozenset[Address] = _NO_ADDRESSES  # wanted frontends another service owns
    counts: Mapping[LbMap, int] = field(default_factory=_none)  # entries of each counted map

    def backends(self) -> dict[Address, bool]:
        """Every backend its frontends may reach -> whether it is terminating, in frontend and slot order."""
        return {b: b in self.terminating for spec in self.frontends.values() for b in spec.usable}


@dataclass(frozen=True, slots=True)
class _Pending:
    """A service change that did not fit: what to compile again, and what it needs (for `retry`)."""

    service: Service
    slices: tuple[EndpointSlice, ...]
    frontends: frozenset[Address]
    backends: frozenset[Address]
    entries: Mapping[LbMap, int]


def stable_order(previous: Sequence[Address], wanted: Iterable[Address]) -> list[Address]:
    """The slot order of `wanted` that rewrites the fewest slots of `previous`.

    Survivors keep their slot; newcomers (sorted) fill the slots of departed backends, then go at the
    end; slots still empty are filled from the tail.
    """
    keep = set(wanted)
    slots: list[Address | None] = [b if b in keep else None for b in previous]
    fresh = iter(sorted(keep.difference(previous)))
    for i, backend in enumerate(slots):
        if backend is None:
            slots[i] = next(fresh, None)
    slots.extend(fresh)
    for hole in [i for i, b in enumerate(slots) if b is None]:
        while slots and slots[-1] is None:
            slots.pop()
        if hole >= len(slots):
            break
        slots[hole] = slots.pop()
    return [b for b in slots if b is not None]


def _select(endpoints: Iterable[_Endpoint]) -> list[Address]:
    """kube-proxy's choice: the ready endpoints, or if none is ready the serving terminating ones."""
    candidates = list(endpoints)
    ready = [e.backend for e in candidates if e.ready]
    return ready or [e.backend for e in candidates if e.usable]


class ServiceCompiler:
    """Compiles services one at a time into lb4_* entries and answers with the delta to apply.

    After a restart with pinned maps: `restore(pinned)` first (ids survive), then `update` every
    service without applying the deltas, then apply `resync(pinned)`, the exact difference. `resync`
    repairs drift at any other time too.

    A change that does not fit in the maps is not programmed: `problems()` names it until `retry()`
    (call it after applying a delta that freed room, and after `resync`) or its next update programs
    it, or it is deleted. Apply deltas in the order they are returned.
    """

    def __init__(
        self,
        node_name: str,
        node_ips: Iterable[str],
        *,
        default_external_algorithm: str = MAGLEV,
        nodeport_wildcard: bool = True,
        capacity: Mapping[LbMap, int] = LB_CAPACITY,
    ) -> None:
        if default_external_algorithm not in (MAGLEV, RANDOM):
            raise ValueError(f"unknown load-balancing algorithm {default_external_algorithm!r}")
        self._node_name = node_name
        self._nodeport_wildcard = nodeport_wildcard
        self._nodeport_addresses = self._listen_addresses(node_ips)
        self._default_external = default_external_algorithm
        self._compiled: dict[str, _Compiled] = {}
        self._capacity = dict(capacity)
        self._backend_ids: IdAllocator[Address] = IdAllocator(
            LbMap.BACKENDS.value, MAX_BACKEND_ID, capacity[LbMap.BACKENDS])
        self._revnat_ids: IdAllocator[Address] = IdAllocator(
            LbMap.REVNAT.value, min(MAX_REV_NAT_INDEX, capacity[LbMap.REVNAT]))
        self._entries = dict.fromkeys(_ENTRY_MAPS, 0)  # held once every returned delta is applied
        self._peak = dict(self._entries)  # held while the delta of the current call is applied
        self._pending: dict[str, _Pending] = {}
        self._problems: dict[str, str] = {}
        self._backend_states: dict[Address, BackendState] = {}
        self._terminating_votes: dict[Address, int] = {}
        self._owners: dict[Address, str] = {}
        self._waiters: dict[Address, set[str]] = {}

    def update(self, service: Service | None, slices: Sequence[EndpointSlice], key: str) -> LbDelta:
        """Recompile the service `key` ("namespace/name") from its object (None: deleted) and its slices.

        `slices` are all the EndpointSlices labelled kubernetes.io/service-name=<name> in its namespace.
        The delta's stale backends name every (frontend, backend) pair a connection may still be tracked
        for although the frontend no longer reaches that backend (all protocols; kube-proxy flushes UDP).
        A service that does not fit in the maps is left as it was, named in `unprogrammed` and in
        `problems()`.
        """
        if service is not None and service.metadata.key != key:
            raise ValueError(f"service {service.metadata.key} given for key {key}")
        self._peak = dict(self._entries)
        return self._change(key, service, tuple(slices))

    def delete(self, key: str) -> LbDelta:
        """Remove every entry of the service `key`."""
        return self.update(None, (), key)

    def set_node_ips(self, node_ips: Iterable[str]) -> LbDelta:
        """Change the node addresses NodePorts listen on; recompiles only services with a NodePort."""
        self._nodeport_addresses = self._listen_addresses(node_ips)
        self._peak = dict(self._entries)
        deltas = []
        for key, compiled in sorted(self._compiled.items()):
            latest = self._pending.get(key) or compiled  # a change not programmed yet is the one to keep
            if latest.service is not None and any(p.node_port for p in latest.service.spec.ports):
                deltas.append(self._change(key, latest.service, latest.slices))
        return merge_deltas(deltas)

    def problems(self) -> Mapping[str, str]:
        """Services whose last change is not programmed for lack of room: key -> one-line reason."""
        return MappingProxyType(dict(sorted(self._problems.items())))

    def retry(self) -> dict[str, LbDelta]:
        """Compile again the services of `problems()` that now fit; the delta of each, in key order.

        Apply each delta before the next one: the room each needs counts on the ones before.
        """
        deltas: dict[str, LbDelta] = {}
        for key in sorted(self._pending):
            pending = self._pending.get(key)
            if pending is None or not self._may_fit(key, pending):
                continue
            self._peak = dict(self._entries)
            delta = self._change(key, pending.service, pending.slices)
            if key not in self._pending:
                deltas[key] = delta
        return deltas

    def desired(self) -> LbState:
        """The full desired contents of the five maps."""
        services: dict[ServiceKey, ServiceValue] = {}
        revnat: dict[int, RevNatValue] = {}
        src_range: dict[SourceRangeKey, None] = {}
        maglev: dict[int, tuple[int, ...]] = {}
        for compiled in self._compiled.values():
            services.update(self._services(compiled))
            revnat.update(self._revnat(compiled))
            src_range.update(compiled.src_range)
            maglev.update(compiled.maglev)
        backends = {self._backend_ids.ids[b]: BackendValue(*b, s) for b, s in self._backend_states.items()}
        return LbState(services, backends, revnat, src_range, maglev)

    def restore(self, existing: LbState) -> None:
        """Adopt the backend ids and rev-NAT indexes of pinned maps; call before the first update."""
        if self._compiled:
            raise ValueError("restore() must come before the first update()")
        for ident, backend in sorted(existing.backends.items()):
            self._backend_ids.adopt((backend.address, backend.port, backend.proto), ident)
        fronts = [(k, v.rev_nat_index) for k, v in existing.services.items() if not k.backend_slot]
        for k, index in sorted(fronts, key=lambda kv: (kv[1], kv[0].scope)):
            self._revnat_ids.adopt((k.address, k.dport, k.proto), index)
        for index in existing.revnat:
            self._revnat_ids.block(index)

    def resync(self, current: LbState) -> LbDelta:
        """The delta from `current` map contents to the desired ones; frees ids nothing uses any more.

        Its stale backends are those that slots in `current` point to and that their frontend no longer
        reaches.
        """
        self._backend_ids.release_unreferenced()
        self._revnat_ids.release_unreferenced()
        reached = {(f, b) for c in self._compiled.values() for f, s in c.frontends.items() for b in s.usable}
        stale: dict[StaleBackend, None] = {}
        for k, v in current.services.items():
            backend = current.backends.get(v.backend_id) if k.backend_slot else None
            if backend is None:
                continue
            frontend = (k.address, k.dport, k.proto)
            if (frontend, (backend.address, backend.port, backend.proto)) not in reached:
                stale[StaleBackend(*frontend, v.backend_id, backend.address, backend.port)] = None
        return lb_delta(current, self.desired(), stale)

    def settings(self) -> tuple[object, ...]:
        """What compiling depends on besides the objects (a saved compiler with others is not reused)."""
        return (self._node_name, self._nodeport_addresses, self._default_external, self._nodeport_wildcard,
                sorted((m.value, n) for m, n in self._capacity.items()))

    def compiled_from(self, key: str, service: Service, slices: Iterable[EndpointSlice]) -> bool:
        """Whether the service `key` is programmed from exactly these objects (the same instances)."""
        compiled = self._compiled.get(key)
        return (compiled is not None and key not in self._pending and compiled.service is service
                and {id(s) for s in compiled.slices} == {id(s) for s in slices})

    def rev_nat_indexes(self) -> Iterator[tuple[str, int]]:
        """(service key, rev-NAT index) of every frontend programmed."""
        for key, compiled in self._compiled.items():
            for index in self._revnat(compiled):
                yield key, index

    def _listen_addresses(self, node_ips: Iterable[str]) -> tuple[str, ...]:
        """The IPv4 addresses NodePorts listen on: the node's (IPv6 ones are lb6's) and the wildcard."""
        addresses = {a for a in map(_ipv4, node_ips) if a is not None}
        if self._nodeport_wildcard:
            addresses.add(NODEPORT_WILDCARD)
        return tuple(sorted(addresses))

    def _change(self, key: str, service: Service | None, slices: tuple[EndpointSlice, ...]) -> LbDelta:
        """Recompile one service and hand the frontends it gave up to the services waiting for them."""
        delta, released = self._update(key, service, slices)
        return merge_deltas([delta, *self._hand_over(released)])

    def _not_programmed(self, key: str, previous: _Compiled, current: _Compiled, error: MapFull) -> LbDelta:
        """Record a change that did not fit (for `problems` and `retry`); a delta that changes nothing."""
        assert current.service is not None
        what = "change not programmed, the previous version stays" if previous.service else "not programmed"
        reason = f"{what}: {error}"
        self._problems[key] = reason
        self._pending[key] = _Pending(current.service, current.slices, frozenset(current.frontends),
                                      frozenset(current.backends()), dict(current.counts))
        return LbDelta(unprogrammed=((key, reason),))

    def _may_fit(self, key: str, pending: _Pending) -> bool:
        """Whether a pending change can fit now (necessary, not sufficient: the compile decides)."""
        if sum(f not in self._revnat_ids.ids for f in pending.frontends) > self._revnat_ids.room:
            return False
        if sum(b not in self._backend_ids.ids for b in pending.backends) > self._backend_ids.room:
            return False
        compiled = self._compiled.get(key) or _Compiled()
        held = _held(compiled, self._services(compiled))
        return all(self._entries[m] - len(held[m]) + pending.entries[m] <= self._capacity[m] for m in held)

    def _update(self, key: str, service: Service | None, slices: tuple[EndpointSlice, ...]
                ) -> tuple[LbDelta, list[Address]]:
        """Recompile one service; also returns the frontends it gave up, which others may be waiting for."""
        previous = self._compiled.get(key) or _Compiled()
        was = self._services(previous)  # while its ids are held
        before, held = _held(previous, was), previous.backends()
        current = _Compiled(service, slices)
        if service is not None and not is_ignored(service):
            try:
                now, backends = self._compile(key, previous, current, before, held)
            except MapFull as error:
                return self._not_programmed(key, previous, current, error), []
            self._compiled[key] = current
        else:
            now, backends = {}, {}
            self._compiled.pop(key, None)
        self._pending.pop(key, None)
        self._problems.pop(key, None)
        for name, entries in _held(current, now).items():
            self._entries[name] += len(entries) - len(before[name])
        for frontend in previous.waiting - current.waiting:
            waiters = self._waiters[frontend]
            waiters.discard(key)
            if not waiters:
                del self._waiters[frontend]
        for frontend in current.waiting:
            self._waiters.setdefault(frontend, set()).add(key)
        stale = tuple(
            StaleBackend(*frontend, self._backend_ids.ids[b], b[0], b[1])
            for frontend, spec in previous.frontends.items()
            for b in sorted(set(spec.usable).difference(_usable(current.frontends.get(frontend))))
        )
        revnat = plan(self._revnat(previous), self._revnat(current))  # while released frontends have ids
        released = sorted(previous.frontends.keys() - current.frontends.keys())
        for frontend in released:
            self._revnat_ids.release(frontend)
            del self._owners[frontend]
        delta = LbDelta(
            plan(was, now),
            self._release_backends(held, backends),
            revnat,
            plan(previous.src_range, current.src_range),
            plan(previous.maglev, current.maglev),
            stale,
        )
        return delta, released

    def _services(self, compiled: _Compiled) -> dict[ServiceKey, ServiceValue]:
        """A compiled service's lb4_services entries: per frontend and scope, its own and one per backend."""
        entries: dict[ServiceKey, ServiceValue] = {}
        if compiled.service is None:
            return entries
        timeout = compiled.service.spec.affinity_timeout_seconds
        revnat_ids, backend_ids = self._revnat_ids.ids, self._backend_ids.ids
        for frontend, spec in compiled.frontends.items():
            address, port, proto = frontend
            index = revnat_ids[frontend]
            affinity = timeout if spec.flags & _AFFINITY else 0
            for scope, backends in ((LbScope.EXT, spec.external), (LbScope.INT, spec.internal)):
                if backends is None:
                    continue
                entries[ServiceKey(address, port, 0, proto, scope)] = ServiceValue(
                    0, affinity, len(backends), index, spec.flags)
                for slot, backend in enumerate(backends, 1):
                    entries[ServiceKey(address, port, slot, proto, scope)] = ServiceValue(
                        backend_ids[backend], 0, 0, index)
        return entries

    def _revnat(self, compiled: _Compiled) -> dict[int, RevNatValue]:
        """The lb4_revnat entries of a compiled service: each frontend it owns, under the frontend's id."""
        ids = self._revnat_ids.ids
        return {ids[f]: RevNatValue(f[0], f[1]) for f in compiled.frontends}

    def _hand_over(self, released: list[Address]) -> list[LbDelta]:
        """Recompile the services that wait for frontends their owner just gave up."""
        deltas = []
        pending = list(released)
        while pending:
            for key in sorted(self._waiters.get(pending.pop(0), ())):
                compiled = self._compiled[key]
                delta, freed = self._update(key, compiled.service, compiled.slices)
                deltas.append(delta)
                pending.extend(freed)
        return deltas

    def _algorithm(self, service: Service, external: bool) -> str:
        """MAGLEV or RANDOM for a frontend: the service's annotation, else the default of its kind."""
        chosen = service.metadata.annotations.get(ALGORITHM_ANNOTATION)
        if chosen in (MAGLEV, RANDOM):
            return chosen
        return self._default_external if external else RANDOM

    def _endpoints(self, service: Service, slices: Iterable[EndpointSlice]
                   ) -> dict[tuple[str, int], list[_Endpoint]]:
        """The endpoints of each (port name, protocol) of the service, merged over its IPv4 slices.

        Slices are read in name order; a duplicate (address, port) keeps its first occurrence unless a
        later one is on this node, as kube-proxy does.
        """
        meta = service.metadata
        wanted = {(p.name or "", _PROTOCOLS.get(p.protocol)) for p in service.spec.ports}
        merged: dict[tuple[str, int], dict[Address, _Endpoint]] = {}
        for eps in sorted(slices, key=lambda s: s.metadata.name):
            if (eps.address_type != "IPv4" or eps.metadata.namespace != meta.namespace
                    or eps.service_name != meta.name):
                continue
            for port in eps.ports:
                proto = _PROTOCOLS.get(port.protocol)
                name = port.name or ""
                if proto is None or port.port is None or (name, proto) not in wanted:
                    continue
                found = merged.setdefault((name, proto), {})
                for endpoint in eps.endpoints:
                    address = _ipv4(endpoint.addresses[0]) if endpoint.addresses else None
                    if address is None:
                        continue
                    backend = (address, port.port, proto)
                    local = endpoint.node_name == self._node_name
                    if backend in found and not local:
                        continue
                    cond = endpoint.conditions
                    ready = cond.ready is not False
                    terminating = cond.terminating is True
                    usable = ready or (cond.serving is not False and terminating)
                    found[backend] = _Endpoint(backend, ready, usable, terminating, local)
        return {port: list(found.values()) for port, found in merged.items()}

    def _frontend_addresses(self, service: Service, port: int, node_port: int | None
                            ) -> list[tuple[str, int, int]]:
        """The (address, port, protocol) of each frontend of a service port, and its kind; ClusterIP first."""
        spec = service.spec
        found = [(spec.cluster_ip or "", port, _CLUSTERIP)]
        if spec.type in ("NodePort", "LoadBalancer") and node_port:
            found += [(a, node_port, _NODEPORT) for a in self._nodeport_addresses]
        found += [(a, port, _EXTERNAL_IP) for a in spec.external_ips]
        if spec.type == "LoadBalancer":
            found += [(a, port, _LOADBALANCER) for a in service.load_balancer_ingress]
        return [(a, number, kind) for text, number, kind in found if (a := _ipv4(text)) is not None]

    def _frontends(self, key: str, service: Service, endpoints: dict[tuple[str, int], list[_Endpoint]],
                   previous: _Compiled, current: _Compiled) -> dict[Address, _Frontend]:
        """Every frontend of the service, with its backends per scope in slot order.

        A frontend that two ports of the service both produce goes to the first; one that another
        service owns is left out and waited for.
        """
        spec = service.spec
        itp_local = spec.internal_traffic_policy == "Local"
        etp_local = spec.external_traffic_policy == "Local"
        common = _AFFINITY if spec.session_affinity == "ClientIP" else 0
        internal_algo = _MAGLEV if self._algorithm(service, external=False) == MAGLEV else 0
        external_algo = _MAGLEV if self._algorithm(service, external=True) == MAGLEV else 0
        frontends: dict[Address, _Frontend] = {}
        waiting: set[Address] = set()
        for port in spec.ports:
            proto = _PROTOCOLS.get(port.protocol)
            if proto is None:
                continue
            eps = endpoints.get((port.name or "", proto), [])
            orders: dict[bool, tuple[Address, ...]] = {}
            for local in {itp_local, etp_local}:
                order_key = (port.name or "", proto, local)
                chosen = _select(e for e in eps if e.local or not local)
                orders[local] = tuple(stable_order(previous.orders.get(order_key, ()), chosen))
                current.orders[order_key] = orders[local]
            internal, external = orders[itp_local], orders[etp_local]
            two_scopes = _TWO_SCOPES if set(internal) != set(external) else 0
            usable = tuple(sorted({e.backend for e in eps if e.usable}))
            local_int = _LOCAL_ONLY_INT if itp_local and usable else 0
            kinds: dict[Address, int] = {}
            for address, number, kind in self._frontend_addresses(service, port.port, port.node_port):
                frontend = (address, number, proto)
                if frontend in frontends:
                    continue
                if self._owners.get(frontend, key) != key:
                    waiting.add(frontend)
                    continue
                kinds[frontend] = kinds.get(frontend, 0) | kind
            for frontend, kind in kinds.items():
                if kind & _EXTERNAL:
                    flags = common | kind | external_algo | two_scopes
                    flags |= (_LOCAL_ONLY_EXT if etp_local and usable else 0) | local_int
                    frontends[frontend] = _Frontend(flags, external, internal if two_scopes else None, usable)
                else:
                    flags = common | kind | internal_algo | local_int
                    frontends[frontend] = _Frontend(flags, internal, None, usable)
        current.waiting = frozenset(waiting) if waiting else _NO_ADDRESSES
        return frontends

    def _compile(self, key: str, previous: _Compiled, current: _Compiled, before: _Held,
                 held: Mapping[Address, bool]) -> tuple[dict[ServiceKey, ServiceValue], dict[Address, bool]]:
        """Fill `current` from its service, acquiring ids for new backends and frontends; its lb4_services
        entries and its backends (-> terminating).

        `before` and `held` are what `previous` holds. Raises MapFull, having changed nothing, when the
        ids or the map room it needs are not free.
        """
        service = current.service
        assert service is not None
        endpoints = self._endpoints(service, current.slices)
        frontends = self._frontends(key, service, endpoints, previous, current)
        current.frontends.update(frontends)
        terminating = {e.backend for eps in endpoints.values() for e in eps if e.terminating}
        usable = (b for spec in frontends.values() for b in spec.usable)
        current.terminating = frozenset(terminating.intersection(usable)) or _NO_ADDRESSES
        backends = current.backends()
        ranges = source_ranges(service)
        current.counts = _counts(*_entry_counts(frontends, ranges))
        self._revnat_ids.ensure_free(sum(f not in self._revnat_ids.ids for f in frontends))
        self._backend_ids.ensure_free(sum(b not in self._backend_ids.ids for b in backends))
        self._owners.update(dict.fromkeys(frontends, key))
        self._acquire_backends(held, backends)
        self._fill(ranges, previous, current)
        services = self._services(current)
        try:
            self._take_room(before, _held(current, services))
        except MapFull:
            self._undo(previous, current, held, backends)
            raise
        return services, backends

    def _fill(self, ranges: Sequence[str], previous: _Compiled, current: _Compiled) -> None:
        """Acquire rev-NAT ids for new frontends; their final flags, source ranges and Maglev tables."""
        src_range: dict[SourceRangeKey, None] = {}
        maglev: dict[int, tuple[int, ...]] = {}
        tables: dict[tuple[Address, ...], tuple[int, ...]] = {}
        for frontend, spec in current.frontends.items():
            if frontend in previous.frontends:
                index = self._revnat_ids.ids[frontend]
            else:
                index = self._revnat_ids.acquire(frontend)
            if spec.flags & _LOADBALANCER and ranges:
                spec = current.frontends[frontend] = _Frontend(
                    spec.flags | _SOURCE_RANGE, spec.external, spec.internal, spec.usable)
                src_range.update(dict.fromkeys(SourceRangeKey(index, c) for c in ranges))
            if spec.flags & _MAGLEV and spec.external:
                maglev[index] = self._maglev_table(spec.external, previous, tables)
        current.src_range, current.maglev = src_range or _NONE, maglev or _NONE
        current.tables = tables or _NONE

    def _take_room(self, before: _Held, now: _Held) -> None:
        """Count the entries `now` adds to `before` while its delta is applied (upserts before deletes).

        Raises MapFull, counting nothing, when a map would overflow.
        """
        added = {m: sum(k not in before[m] for k in entries) for m, entries in now.items()}
        for name, count in added.items():
            if self._peak[name] + count > self._capacity[name]:
                raise MapFull(name.value, self._capacity[name], self._peak[name] + count)
        for name, count in added.items():
            self._peak[name] += count

    def _undo(self, previous: _Compiled, current: _Compiled, held: Mapping[Address, bool],
              backends: Mapping[Address, bool]) -> None:
        """Give back the ids and references a compile of `current` (its `backends`) that did not fit took."""
        for frontend in current.frontends.keys() - previous.frontends.keys():
            self._revnat_ids.release(frontend)
            del self._owners[frontend]
        votes = self._terminating_votes
        for backend, terminating in backends.items():
            before = held.get(backend)
            votes[backend] -= terminating - bool(before)
            if before is None and self._backend_ids.release(backend):
                del votes[backend]

    def _maglev_table(self, backends: Sequence[Address], previous: _Compiled,
                      tables: dict[tuple[Address, ...], tuple[int, ...]]) -> tuple[int, ...]:
        """The Maglev table of a backend set, as backend ids; computed once, kept while the set lasts."""
        members = tuple(sorted(backends))
        table = tables.get(members) or previous.tables.get(members)
        if table is None:
            owners = lookup_table([f"{a}:{p}/{proto}" for a, p, proto in members])
            ids = [self._backend_ids.ids[b] for b in members]
            table = tuple(ids[i] for i in owners)
        tables[members] = table
        return table

    def _acquire_backends(self, held: Mapping[Address, bool], backends: Mapping[Address, bool]) -> None:
        """Reference the backends new to the service (`held` before, `backends` now) and count its
        terminating votes."""
        votes = self._terminating_votes
        for backend, terminating in backends.items():
            before = held.get(backend)
            if before is None:
                self._backend_ids.acquire(backend)
            votes[backend] = votes.get(backend, 0) + terminating - bool(before)

    def _release_backends(self, held: Mapping[Address, bool], now: Mapping[Address, bool]
                          ) -> MapPlan[int, BackendValue]:
        """Dereference the backends the service dropped (`held` before, `now` after); the lb4_backends
        changes of the update.

        A backend is TERMINATING when every service that uses it sees it terminating.
        """
        deletes: list[int] = []
        touched = [b for b, t in now.items() if held.get(b) != t]
        for backend, terminating in held.items():
            if backend in now:
                continue
            self._terminating_votes[backend] -= terminating
            ident = self._backend_ids.ids[backend]
            if self._backend_ids.release(backend):
                del self._backend_states[backend], self._terminating_votes[backend]
                deletes.append(ident)
            else:
                touched.append(backend)
        upserts: dict[int, BackendValue] = {}
        for backend in touched:
            all_terminating = self._terminating_votes[backend] == self._backend_ids.refs(backend)
            state = BackendState.TERMINATING if all_terminating else BackendState.ACTIVE
            if self._backend_states.get(backend) != state:
                self._backend_states[backend] = state
                upserts[self._backend_ids.ids[backend]] = BackendValue(*backend, state)
        return MapPlan(upserts, deletes)


def _held(compiled: _Compiled, services: Mapping[ServiceKey, ServiceValue]) -> _Held:
    """The entries a compiled service holds in each map whose room is counted in entries."""
    return {LbMap.SERVICES: services, LbMap.SRC_RANGE: compiled.src_range, LbMap.MAGLEV: compiled.maglev}


def _usable(spec: _Frontend | None) -> tuple[Address, ...]:
    """The backends a frontend may have reached; none for a frontend not compiled."""
    return spec.usable if spec is not None else ()


def _entry_counts(frontends: Mapping[Address, _Frontend], ranges: Sequence[str]) -> tuple[int, int, int]:
    """How many entries of lb4_services, lb4_src_range and lb4_maglev the frontends fill (as `_fill`)."""
    specs = frontends.values()
    return (sum(1 + len(f.external) + (1 + len(f.internal) if f.internal is not None else 0) for f in specs),
            len(ranges) * sum(1 for f in specs if f.flags & _LOADBALANCER),
            sum(1 for f in specs if f.flags & _MAGLEV and f.external))


@lru_cache(maxsize=4096)
def _counts(services: int, src_range: int, maglev: int) -> Mapping[LbMap, int]:
    """Entry counts as a mapping of the counted maps, one shared object per distinct triple."""
    return {LbMap.SERVICES: services, LbMap.SRC_RANGE: src_range, LbMap.MAGLEV: maglev}
