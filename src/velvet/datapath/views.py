"""Typed views of the datapath's maps: one class per map, with domain methods, over `maps.Map`.

The agent and the datapath tests seed and read the maps only through these classes. Addresses
are dotted IPv4 strings and ports host integers at this surface; the conversion to the kernel's
network byte order happens in `structs` (big-endian ctypes fields). `open_views` opens every map
of a loaded object or of a pin directory; `MAP_VIEWS` names the view class of each map.

Needs the bpf() syscall (root) to open maps; nothing here needs a particular kernel beyond what
loading the objects needed.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

import numpy as np
import numpy.typing as npt

from velvet.datapath.bpfobject import BpfObject
from velvet.datapath.maps import Map
from velvet.datapath.ringbuf import RingBuffer
from velvet.datapath.structs import (
    BE32,
    CT_LIFETIME_CLOSE_S,
    CT_LIFETIME_NONTCP_S,
    CT_LIFETIME_SYN_S,
    CT_LIFETIME_TCP_S,
    FLOW_EVENT_DTYPE,
    LB_MAGLEV_LUT_SIZE,
    PROCESS_EVENT_DTYPE,
    BackendState,
    Ct4Entry,
    Ct4Key,
    CtDir,
    CtFlag,
    EndpointFlag,
    EndpointInfo,
    IpcacheInfo,
    IpcacheKey,
    Ipv4FragKey,
    Ipv4FragPorts,
    Lb4AffinityKey,
    Lb4AffinityVal,
    Lb4Backend,
    Lb4Key,
    Lb4MaglevLut,
    Lb4ReverseNat,
    Lb4Service,
    Lb4SockRevnatKey,
    Lb4SockRevnatVal,
    Lb4SrcRangeKey,
    LbScope,
    MetricDir,
    MetricReason,
    MetricsKey,
    MetricsValue,
    PolicyDir,
    PolicyEntry,
    PolicyFlag,
    PolicyKey,
    ReservedIdentity,
    SvcFlag,
    ipv4,
    ipv4_cidr,
    ipv4_str,
)
from velvet.errors import DatapathError

IPPROTO_TCP = 6
NSEC_PER_SEC = 1_000_000_000

K = TypeVar("K")
V = TypeVar("V")


class MapView(Generic[K, V]):
    """Base of the hash/LPM map views: the map re-typed with the view's key and value types."""

    name: ClassVar[str]
    key_type: ClassVar[Any]
    value_type: ClassVar[Any]

    def __init__(self, map_: Map[Any, Any]) -> None:
        self.map: Map[Any, Any] = map_.typed(self.key_type, self.value_type)

    @classmethod
    def from_pin(cls, pin_dir: Path) -> Self:
        """Open the map pinned at pin_dir/<name>."""
        with Map.from_pin(pin_dir / cls.name, cls.key_type, cls.value_type) as pinned:
            return cls(pinned)

    def count(self) -> int:
        """Number of entries."""
        return self.map.count()

    def clear(self) -> None:
        """Remove every entry."""
        self.map.clear()

    def close(self) -> None:
        """Release the map fd (the map lives on while pinned or used by a program)."""
        self.map.close()


# --- lb4_services -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frontend:
    """A service frontend (slot 0 of lb4_services) in one scope, with its backend ids in slot order."""

    address: str
    port: int
    proto: int
    scope: LbScope
    rev_nat_index: int
    flags: SvcFlag
    affinity_timeout: int
    backend_ids: tuple[int, ...]


class ServiceMap(MapView[Lb4Key, Lb4Service]):
    """lb4_services: frontends (slot 0) and their backend slots (1..count)."""

    name = "lb4_services"
    key_type = Lb4Key
    value_type = Lb4Service

    @staticmethod
    def key(address: str, port: int, proto: int, slot: int = 0, scope: LbScope = LbScope.EXT) -> Lb4Key:
        """The key of one slot of a frontend."""
        return Lb4Key(address=ipv4(address), dport=port, backend_slot=slot, proto=proto, scope=scope)

    def set_service(self, address: str, port: int, proto: int, backend_ids: Sequence[int], *,
                    rev_nat_index: int, flags: SvcFlag, affinity_timeout: int = 0,
                    scope: LbScope = LbScope.EXT) -> None:
        """Write a frontend and its backends so a concurrent lookup never sees a missing slot.

        New slots are written first, then the frontend with its new count, then the slots beyond
        the new count are removed. An empty backend list makes the frontend reject its clients.
        """
        previous = self.map.lookup(self.key(address, port, proto, 0, scope))
        old_count = previous.count if previous is not None else 0
        slots = [self.key(address, port, proto, i, scope) for i in range(1, len(backend_ids) + 1)]
        values = [Lb4Service(backend_id=b, rev_nat_index=rev_nat_index) for b in backend_ids]
        self.map.update_batch(slots, values)
        self.map.update(self.key(address, port, proto, 0, scope),
                        Lb4Service(affinity_timeout=affinity_timeout, count=len(backend_ids),
                                   rev_nat_index=rev_nat_index, flags=int(flags)))
        stale = [self.key(address, port, proto, i, scope) for i in range(len(backend_ids) + 1, old_count + 1)]
        self.map.delete_batch(stale)

    def get(self, address: str, port: int, proto: int, scope: LbScope = LbScope.EXT) -> Frontend | None:
        """A frontend and its backend ids, or None."""
        return self._frontend(self.key(address, port, proto, 0, scope))

    def _frontend(self, key: Lb4Key) -> Frontend | None:
        """Decode the frontend at slot-0 key `key` with its slots."""
        value = self.map.lookup(key)
        if value is None:
            return None
        ids: list[int] = []
        for slot in range(1, value.count + 1):
            key.backend_slot = slot
            entry = self.map.lookup(key)
            ids.append(entry.backend_id if entry is not None else 0)
        key.backend_slot = 0
        return Frontend(ipv4_str(key.address), key.dport, key.proto, LbScope(key.scope), value.rev_nat_index,
                        SvcFlag(value.flags), value.affinity_timeout, tuple(ids))

    def delete_service(self, address: str, port: int, proto: int, scope: LbScope = LbScope.EXT) -> bool:
        """Remove a frontend (first, so lookups stop) and then its slots; False if absent."""
        key = self.key(address, port, proto, 0, scope)
        value = self.map.lookup(key)
        if value is None:
            return False
        self.map.delete(key)
        self.map.delete_batch([self.key(address, port, proto, i, scope) for i in range(1, value.count + 1)])
        return True

    def frontends(self) -> list[Frontend]:
        """Every frontend (all scopes) with its backends."""
        found = [self._frontend(k) for k in list(self.map.keys()) if k.backend_slot == 0]
        return [f for f in found if f is not None]

    def write(self, upserts: Sequence[tuple[Lb4Key, Lb4Service]], deletes: Sequence[Lb4Key]) -> None:
        """Apply a planned difference in two batches: upserts, then deletes."""
        self.map.update_batch([k for k, _ in upserts], [v for _, v in upserts])
        self.map.delete_batch(list(deletes))


# --- lb4_backends -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """A backend address (lb4_backends value)."""

    address: str
    port: int
    proto: int
    state: BackendState = BackendState.ACTIVE

    def value(self) -> Lb4Backend:
        """As the map stores it."""
        return Lb4Backend(address=ipv4(self.address), port=self.port, proto=self.proto, state=self.state)

    @classmethod
    def decode(cls, value: Lb4Backend) -> Backend:
        """From the map's value."""
        return cls(ipv4_str(value.address), value.port, value.proto, BackendState(value.state))


class BackendMap(MapView[ctypes.c_uint32, Lb4Backend]):
    """lb4_backends: backend id (never 0) -> address, port, protocol, state."""

    name = "lb4_backends"
    key_type = ctypes.c_uint32
    value_type = Lb4Backend

    def upsert(self, backend_id: int, address: str, port: int, proto: int,
               state: BackendState = BackendState.ACTIVE) -> None:
        """Create or replace a backend."""
        self.map.update(ctypes.c_uint32(backend_id), Backend(address, port, proto, state).value())

    def upsert_many(self, backends: Sequence[tuple[int, Backend]]) -> None:
        """Create or replace many backends in one batch."""
        self.map.update_batch([ctypes.c_uint32(i) for i, _ in backends], [b.value() for _, b in backends])

    def set_state(self, backend_id: int, state: BackendState) -> None:
        """Change a backend's state (e.g. TERMINATING: no new affinity to it)."""
        current = self.get(backend_id)
        if current is None:
            raise DatapathError(f"lb4_backends has no backend {backend_id}")
        self.upsert(backend_id, current.address, current.port, current.proto, state)

    def get(self, backend_id: int) -> Backend | None:
        """A backend, or None."""
        value = self.map.lookup(ctypes.c_uint32(backend_id))
        return Backend.decode(value) if value is not None else None

    def delete(self, backend_id: int) -> bool:
        """Remove a backend; False if absent."""
        return self.map.delete(ctypes.c_uint32(backend_id))

    def delete_many(self, backend_ids: Iterable[int]) -> int:
        """Remove many backends; returns how many existed."""
        return self.map.delete_batch([ctypes.c_uint32(i) for i in backend_ids])

    def items(self) -> dict[int, Backend]:
        """Every backend by id."""
        return {k.value: Backend.decode(v) for k, v in self.map.items()}


# --- lb4_revnat -------------------------------------------------------------------------------------


class RevNatMap(MapView[ctypes.c_uint16, Lb4ReverseNat]):
    """lb4_revnat: rev_nat_index -> the frontend (its presence keeps replies of translated flows alive)."""

    name = "lb4_revnat"
    key_type = ctypes.c_uint16
    value_type = Lb4ReverseNat

    def upsert(self, rev_nat_index: int, address: str, port: int) -> None:
        """Create or replace the frontend of a rev_nat_index."""
        self.map.update(ctypes.c_uint16(rev_nat_index), Lb4ReverseNat(address=ipv4(address), port=port))

    def get(self, rev_nat_index: int) -> tuple[str, int] | None:
        """(address, port) of a rev_nat_index, or None."""
        value = self.map.lookup(ctypes.c_uint16(rev_nat_index))
        return (ipv4_str(value.address), value.port) if value is not None else None

    def delete(self, rev_nat_index: int) -> bool:
        """Remove a rev_nat_index; replies of its translated connections are dropped from then on."""
        return self.map.delete(ctypes.c_uint16(rev_nat_index))

    def items(self) -> dict[int, tuple[str, int]]:
        """Every rev_nat_index with its frontend."""
        return {k.value: (ipv4_str(v.address), v.port) for k, v in self.map.items()}


# --- lb4_affinity -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Affinity:
    """A remembered ClientIP affinity: client (netns cookie or IPv4 as integer) -> backend."""

    client: int
    rev_nat_index: int
    netns_cookie: bool
    backend_id: int
    last_used_ns: int


class AffinityMap(MapView[Lb4AffinityKey, Lb4AffinityVal]):
    """lb4_affinity (LRU): sessionAffinity=ClientIP choices of the socket LB and the tc paths."""

    name = "lb4_affinity"
    key_type = Lb4AffinityKey
    value_type = Lb4AffinityVal

    @staticmethod
    def key(client: int | str, rev_nat_index: int, netns_cookie: bool) -> Lb4AffinityKey:
        """The key; a str client is an IPv4 address (tc paths), an int a netns cookie or address."""
        value = ipv4(client) if isinstance(client, str) else client
        return Lb4AffinityKey(client=value, rev_nat_index=rev_nat_index, netns_cookie=int(netns_cookie))

    def get(self, client: int | str, rev_nat_index: int, *, netns_cookie: bool = False) -> Affinity | None:
        """The affinity of a client for a frontend, or None."""
        key = self.key(client, rev_nat_index, netns_cookie)
        value = self.map.lookup(key)
        return self._decode(key, value) if value is not None else None

    def upsert(self, client: int | str, rev_nat_index: int, backend_id: int, *, netns_cookie: bool = False,
               last_used_ns: int | None = None) -> None:
        """Set an affinity (last used now unless given, CLOCK_MONOTONIC ns)."""
        used = time.monotonic_ns() if last_used_ns is None else last_used_ns
        self.map.update(self.key(client, rev_nat_index, netns_cookie),
                        Lb4AffinityVal(last_used_ns=used, backend_id=backend_id))

    def entries(self) -> list[Affinity]:
        """Every remembered affinity."""
        return [self._decode(k, v) for k, v in self.map.items()]

    def delete_by_rev_nat(self, rev_nat_index: int) -> int:
        """Forget every affinity of a frontend (affinity switched off, service deleted)."""
        return self.map.delete_batch([k for k in self.map if k.rev_nat_index == rev_nat_index])

    def delete_by_backend(self, backend_id: int) -> int:
        """Forget every affinity to a backend."""
        return self.map.delete_batch([k for k, v in self.map.items() if v.backend_id == backend_id])

    @staticmethod
    def _decode(key: Lb4AffinityKey, value: Lb4AffinityVal) -> Affinity:
        """Key and value as an Affinity."""
        return Affinity(key.client, key.rev_nat_index, bool(key.netns_cookie), value.backend_id,
                        value.last_used_ns)


# --- lb4_src_range ----------------------------------------------------------------------------------


class SourceRangeMap(MapView[Lb4SrcRangeKey, ctypes.c_uint8]):
    """lb4_src_range (LPM): loadBalancerSourceRanges per frontend (rev_nat_index)."""

    name = "lb4_src_range"
    key_type = Lb4SrcRangeKey
    value_type = ctypes.c_uint8
    STATIC_PREFIX = 32  # rev_nat_index and pad always match

    def _key(self, rev_nat_index: int, cidr: str) -> Lb4SrcRangeKey:
        """The LPM key of one CIDR of a frontend."""
        address, length = ipv4_cidr(cidr)
        return Lb4SrcRangeKey(prefixlen=self.STATIC_PREFIX + length, rev_nat_index=rev_nat_index,
                              address=address)

    def add(self, rev_nat_index: int, cidr: str) -> None:
        """Allow a CIDR to reach the frontend."""
        self.map.update(self._key(rev_nat_index, cidr), ctypes.c_uint8(1))

    def remove(self, rev_nat_index: int, cidr: str) -> bool:
        """Remove a CIDR of a frontend; False if absent."""
        return self.map.delete(self._key(rev_nat_index, cidr))

    def ranges(self, rev_nat_index: int) -> list[str]:
        """The CIDRs of one frontend."""
        return sorted(c for i, c in self.items() if i == rev_nat_index)

    def items(self) -> list[tuple[int, str]]:
        """Every (rev_nat_index, CIDR)."""
        return [(k.rev_nat_index, f"{ipv4_str(k.address)}/{k.prefixlen - self.STATIC_PREFIX}")
                for k in self.map]

    def delete_by_rev_nat(self, rev_nat_index: int) -> int:
        """Remove every CIDR of a frontend."""
        return self.map.delete_batch([k for k in self.map if k.rev_nat_index == rev_nat_index])


# --- lb4_maglev -------------------------------------------------------------------------------------


class MaglevMap(MapView[ctypes.c_uint16, Lb4MaglevLut]):
    """lb4_maglev: rev_nat_index -> Maglev table (LB_MAGLEV_LUT_SIZE backend ids) of its external scope."""

    name = "lb4_maglev"
    key_type = ctypes.c_uint16
    value_type = Lb4MaglevLut

    def set_table(self, rev_nat_index: int, backend_ids: Sequence[int]) -> None:
        """Install a frontend's table (exactly LB_MAGLEV_LUT_SIZE backend ids)."""
        if len(backend_ids) != LB_MAGLEV_LUT_SIZE:
            raise DatapathError(f"a Maglev table has {LB_MAGLEV_LUT_SIZE} entries, not {len(backend_ids)}")
        lut = Lb4MaglevLut()
        lut.backend_ids[:] = list(backend_ids)
        self.map.update(ctypes.c_uint16(rev_nat_index), lut)

    def get(self, rev_nat_index: int) -> tuple[int, ...] | None:
        """A frontend's table, or None."""
        value = self.map.lookup(ctypes.c_uint16(rev_nat_index))
        return tuple(value.backend_ids) if value is not None else None

    def delete(self, rev_nat_index: int) -> bool:
        """Remove a frontend's table."""
        return self.map.delete(ctypes.c_uint16(rev_nat_index))


# --- lb4_sock_revnat --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SockRevNat:
    """A socket LB translation: socket cookie + backend -> the frontend it replaced."""

    cookie: int
    backend_address: str
    backend_port: int
    frontend_address: str
    frontend_port: int
    rev_nat_index: int


class SockRevNatMap(MapView[Lb4SockRevnatKey, Lb4SockRevnatVal]):
    """lb4_sock_revnat (LRU): what recvmsg4/getpeername4 translate back."""

    name = "lb4_sock_revnat"
    key_type = Lb4SockRevnatKey
    value_type = Lb4SockRevnatVal

    def get(self, cookie: int, address: str, port: int) -> SockRevNat | None:
        """The translation of a socket to a backend, or None."""
        key = Lb4SockRevnatKey(cookie=cookie, address=ipv4(address), port=port)
        value = self.map.lookup(key)
        return self._decode(key, value) if value is not None else None

    def entries(self) -> list[SockRevNat]:
        """Every translation."""
        return [self._decode(k, v) for k, v in self.map.items()]

    def delete_by_frontend(self, address: str, port: int) -> int:
        """Forget the translations to a frontend (service deleted)."""
        addr = ipv4(address)
        return self.map.delete_batch([k for k, v in self.map.items() if v.address == addr and v.port == port])

    @staticmethod
    def _decode(key: Lb4SockRevnatKey, value: Lb4SockRevnatVal) -> SockRevNat:
        """Key and value as a SockRevNat."""
        return SockRevNat(key.cookie, ipv4_str(key.address), key.port, ipv4_str(value.address), value.port,
                          value.rev_nat_index)


# --- ct4 --------------------------------------------------------------------------------------------


def ct_lifetime_ns(key: Ct4Key, entry: Ct4Entry) -> int:
    """How long an entry lives after its last packet (the datapath's ct_lifetime_ns)."""
    if entry.flags & CtFlag.CLOSING:
        seconds = CT_LIFETIME_CLOSE_S
    elif key.proto != IPPROTO_TCP:
        seconds = CT_LIFETIME_NONTCP_S
    elif entry.flags & CtFlag.SEEN_REPLY:
        seconds = CT_LIFETIME_TCP_S
    else:
        seconds = CT_LIFETIME_SYN_S
    return seconds * NSEC_PER_SEC


class ConntrackMap(MapView[Ct4Key, Ct4Entry]):
    """ct4 (LRU): connection tracking entries of all directions (see types.h for their meaning)."""

    name = "ct4"
    key_type = Ct4Key
    value_type = Ct4Entry

    @staticmethod
    def key(saddr: str, daddr: str, sport: int, dport: int, proto: int, direction: CtDir) -> Ct4Key:
        """The key of a tuple in one direction."""
        return Ct4Key(saddr=ipv4(saddr), daddr=ipv4(daddr), sport=sport, dport=dport, proto=proto,
                      dir=direction)

    def lookup(self, saddr: str, daddr: str, sport: int, dport: int, proto: int,
               direction: CtDir) -> Ct4Entry | None:
        """The entry of a tuple, or None (expired entries included: see gc)."""
        return self.map.lookup(self.key(saddr, daddr, sport, dport, proto, direction))

    def entries(self) -> list[tuple[Ct4Key, Ct4Entry]]:
        """Every entry (one batch walk)."""
        return self.map.lookup_batch()

    def delete_by_backend(self, address: str, port: int, proto: int,
                          frontend: tuple[str, int] | None = None) -> int:
        """Flush the connections translated to a backend (e.g. a replaced UDP server pod).

        Removes the CT_SERVICE entries sticking clients to it (their next packet selects again) and
        the translated entries towards it; `frontend` limits this to one frontend (0.0.0.0 as its
        address matches any, for the NodePort wildcard). Returns how many entries went.
        """
        addr = ipv4(address)
        f_addr, f_port = (ipv4(frontend[0]), frontend[1]) if frontend is not None else (0, 0)

        def frontend_ok(fa: int, fp: int) -> bool:
            return frontend is None or ((f_addr in (0, fa)) and f_port == fp)

        stale: list[Ct4Key] = []
        for k, v in self.entries():
            if k.proto != proto:
                continue
            if k.dir == CtDir.SERVICE:
                if v.nat_addr == addr and v.nat_port == port and frontend_ok(k.daddr, k.dport):
                    stale.append(k)
            elif (k.dir in (CtDir.EGRESS, CtDir.NODEPORT) and v.rev_nat_index and k.daddr == addr
                  and k.dport == port and frontend_ok(v.nat_addr, v.nat_port)):
                stale.append(k)
        return self.map.delete_batch(stale)

    def gc(self, now_ns: int | None = None) -> int:
        """Delete entries past their lifetime (CLOCK_MONOTONIC now unless given); returns how many."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        expired = [k for k, v in self.entries() if now - v.last_seen_ns > ct_lifetime_ns(k, v)]
        return self.map.delete_batch(expired)


class FragmentMap(MapView[Ipv4FragKey, Ipv4FragPorts]):
    """ipv4_frags (LRU): ports of fragmented datagrams, recorded from first fragments."""

    name = "ipv4_frags"
    key_type = Ipv4FragKey
    value_type = Ipv4FragPorts

    def entries(self) -> list[tuple[Ipv4FragKey, Ipv4FragPorts]]:
        """Every recorded datagram."""
        return list(self.map.items())


# --- ipcache ----------------------------------------------------------------------------------------


class IpcacheMap(MapView[IpcacheKey, IpcacheInfo]):
    """ipcache (LPM): prefix -> security identity; addresses nobody claims are WORLD."""

    name = "ipcache"
    key_type = IpcacheKey
    value_type = IpcacheInfo

    @staticmethod
    def _key(cidr: str) -> IpcacheKey:
        """The LPM key of a CIDR (a bare address is /32)."""
        address, length = ipv4_cidr(cidr)
        return IpcacheKey(prefixlen=length, ip=address)

    def upsert(self, cidr: str, identity: int, tunnel_endpoint: str = "0.0.0.0", flags: int = 0) -> None:
        """Map a prefix (pod /32, node IP, policy CIDR) to an identity."""
        self.map.update(self._key(cidr), IpcacheInfo(identity=identity, tunnel_endpoint=ipv4(tunnel_endpoint),
                                                     flags=flags))

    def delete(self, cidr: str) -> bool:
        """Remove a prefix; False if absent."""
        return self.map.delete(self._key(cidr))

    def lookup(self, ip: str) -> int:
        """The identity the datapath resolves for an address (longest prefix; WORLD on a miss)."""
        value = self.map.lookup(self._key(ip))
        return value.identity if value is not None else int(ReservedIdentity.WORLD)

    def items(self) -> dict[str, int]:
        """Every prefix ("a.b.c.d/len") with its identity."""
        return {f"{ipv4_str(k.ip)}/{k.prefixlen}": v.identity for k, v in self.map.items()}


class IpcacheCidrMap(IpcacheMap):
    """ipcache_cidr (LPM): policy CIDR prefix -> node-local CIDR identity, matched beside ipcache."""

    name = "ipcache_cidr"


# --- lxc_endpoints ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A local pod as the datapath knows it (lxc_endpoints value)."""

    ifindex: int
    identity: int
    ep_id: int
    flags: EndpointFlag


class EndpointMap(MapView[Any, EndpointInfo]):
    """lxc_endpoints: pod IPv4 -> host veth ifindex, identity, endpoint id, policy flags."""

    name = "lxc_endpoints"
    key_type = BE32
    value_type = EndpointInfo

    def upsert(self, ip: str, ifindex: int, identity: int, ep_id: int,
               flags: EndpointFlag | int = 0) -> None:
        """Create or replace a pod; flags isolate it for ingress/egress policy or set audit mode."""
        self.map.update(BE32(ipv4(ip)), EndpointInfo(ifindex=ifindex, identity=identity, ep_id=ep_id,
                                                     flags=int(flags)))

    def get(self, ip: str) -> Endpoint | None:
        """A pod, or None."""
        value = self.map.lookup(BE32(ipv4(ip)))
        return self._decode(value) if value is not None else None

    def delete(self, ip: str) -> bool:
        """Remove a pod; False if absent."""
        return self.map.delete(BE32(ipv4(ip)))

    def items(self) -> dict[str, Endpoint]:
        """Every pod by IPv4."""
        return {ipv4_str(k.value): self._decode(v) for k, v in self.map.items()}

    @staticmethod
    def _decode(value: EndpointInfo) -> Endpoint:
        """An Endpoint from the map's value."""
        return Endpoint(value.ifindex, value.identity, value.ep_id, EndpointFlag(value.flags))


# --- policy -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyRule:
    """One policy map entry: (endpoint, direction, peer identity, proto, port prefix) -> verdict."""

    ep_id: int
    direction: PolicyDir
    identity: int  # 0: any peer
    proto: int  # 0: any protocol (and any port)
    port: int
    prefix: int  # leading bits of port that must match: 16 exact, 0 any port
    allow: bool  # False: deny (deny beats allow)
    policy_id: int


class PolicyMap(MapView[PolicyKey, PolicyEntry]):
    """policy (LPM): per-endpoint rules; port ranges are several (port, prefix) entries."""

    name = "policy"
    key_type = PolicyKey
    value_type = PolicyEntry
    STATIC_PREFIX = 64  # ep_id, direction, pad0, identity
    PROTO_PREFIX = 16  # proto, pad1

    @classmethod
    def key(cls, ep_id: int, direction: PolicyDir, identity: int, proto: int = 0, port: int = 0,
            prefix: int = 16) -> PolicyKey:
        """The LPM key of a rule; proto 0 means any protocol and port (prefix is then ignored)."""
        if not 0 <= prefix <= 16:
            raise DatapathError(f"a port prefix is 0..16 bits, not {prefix}")
        if proto == 0:
            return PolicyKey(prefixlen=cls.STATIC_PREFIX, ep_id=ep_id, direction=direction, identity=identity)
        mask = (0xFFFF << (16 - prefix)) & 0xFFFF
        return PolicyKey(prefixlen=cls.STATIC_PREFIX + cls.PROTO_PREFIX + prefix, ep_id=ep_id,
                         direction=direction, identity=identity, proto=proto, dport=port & mask)

    def put(self, ep_id: int, direction: PolicyDir, identity: int, proto: int = 0, port: int = 0,
            prefix: int = 16, allow: bool = True, policy_id: int = 0) -> None:
        """Insert or replace a rule (an allow or a deny) of an endpoint."""
        flags = PolicyFlag.ALLOW if allow else PolicyFlag.DENY
        if proto:
            flags |= PolicyFlag.L4
        self.map.update(self.key(ep_id, direction, identity, proto, port, prefix),
                        PolicyEntry(flags=int(flags), policy_id=policy_id))

    def remove(self, ep_id: int, direction: PolicyDir, identity: int, proto: int = 0, port: int = 0,
               prefix: int = 16) -> bool:
        """Remove a rule; False if absent."""
        return self.map.delete(self.key(ep_id, direction, identity, proto, port, prefix))

    def entries(self, ep_id: int | None = None) -> list[PolicyRule]:
        """Every rule (of one endpoint when ep_id is given)."""
        rules = [self._decode(k, v) for k, v in self.map.items()]
        return [r for r in rules if ep_id is None or r.ep_id == ep_id]

    def delete_endpoint(self, ep_id: int) -> int:
        """Remove every rule of an endpoint."""
        return self.map.delete_batch([k for k in self.map if k.ep_id == ep_id])

    def write(self, upserts: Sequence[tuple[PolicyKey, PolicyEntry]], deletes: Sequence[PolicyKey]) -> None:
        """Apply a planned difference: upserts, then deletes."""
        self.map.update_batch([k for k, _ in upserts], [v for _, v in upserts])
        self.map.delete_batch(list(deletes))

    @classmethod
    def _decode(cls, key: PolicyKey, value: PolicyEntry) -> PolicyRule:
        """A PolicyRule from key and value."""
        bits = key.prefixlen - cls.STATIC_PREFIX
        prefix = max(bits - cls.PROTO_PREFIX, 0)
        return PolicyRule(key.ep_id, PolicyDir(key.direction), key.identity, key.proto if bits else 0,
                          key.dport, prefix, bool(value.flags & PolicyFlag.ALLOW), value.policy_id)


# --- metrics ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counter:
    """Packets and bytes."""

    packets: int
    bytes: int


class MetricsMap(MapView[MetricsKey, MetricsValue]):
    """metrics (per-CPU): packets/bytes by reason (MetricReason or DropReason) and direction."""

    name = "metrics"
    key_type = MetricsKey
    value_type = MetricsValue

    def totals(self) -> dict[tuple[int, MetricDir], Counter]:
        """(reason, direction) -> counters summed over CPUs."""
        found: dict[tuple[int, MetricDir], Counter] = {}
        for key, per_cpu in self.map.items():
            values: list[MetricsValue] = per_cpu
            found[(key.reason, MetricDir(key.direction))] = Counter(sum(v.packets for v in values),
                                                                    sum(v.bytes for v in values))
        return found

    def get(self, reason: int, direction: MetricDir) -> Counter:
        """One counter (zero if never hit)."""
        return self.totals().get((reason, direction), Counter(0, 0))

    def forwarded(self, direction: MetricDir) -> Counter:
        """Packets passed on in a direction."""
        return self.get(MetricReason.FORWARDED, direction)


# --- ring buffers -----------------------------------------------------------------------------------


class RingView:
    """Base of the ring buffer readers: records of one fixed-size struct as a numpy array."""

    name: ClassVar[str]
    dtype: ClassVar[np.dtype[np.void]]

    def __init__(self, map_: Map[Any, Any]) -> None:
        self.ring = RingBuffer(map_.fd, map_.info.max_entries)

    @classmethod
    def from_pin(cls, pin_dir: Path) -> Self:
        """Open the ring pinned at pin_dir/<name>."""
        with Map.from_pin(pin_dir / cls.name, ctypes.c_ubyte * 0, ctypes.c_ubyte * 0) as pinned:
            return cls(pinned)

    def read(self, max_records: int = 65536) -> npt.NDArray[np.void]:
        """Take the committed records (up to max_records)."""
        return self.ring.read_array(self.dtype, max_records)

    def wait(self, timeout: float) -> bool:
        """Block up to timeout seconds for records; True if some are pending."""
        return self.ring.wait(timeout)

    def close(self) -> None:
        """Unmap the ring."""
        self.ring.close()


class EventsRing(RingView):
    """events: struct flow_event records (FLOW_EVENT_DTYPE)."""

    name = "events"
    dtype = FLOW_EVENT_DTYPE


class ProcEventsRing(RingView):
    """proc_events: struct process_event records (PROCESS_EVENT_DTYPE), from proc.bpf.o."""

    name = "proc_events"
    dtype = PROCESS_EVENT_DTYPE


# --- registry ---------------------------------------------------------------------------------------

View = MapView[Any, Any] | RingView

MAP_VIEWS: dict[str, type[MapView[Any, Any]] | type[RingView]] = {
    cls.name: cls
    for cls in (ServiceMap, BackendMap, RevNatMap, AffinityMap, SourceRangeMap, MaglevMap, SockRevNatMap,
                ConntrackMap, FragmentMap, IpcacheMap, IpcacheCidrMap, EndpointMap, PolicyMap, MetricsMap,
                EventsRing, ProcEventsRing)
}
"""Map name -> its view class."""

ViewT = TypeVar("ViewT", bound=MapView[Any, Any] | RingView)


class Views:
    """The views of one object's (or one pin directory's) maps, by attribute."""

    def __init__(self, views: dict[str, View]) -> None:
        self.by_name = views

    def get(self, cls: type[ViewT]) -> ViewT:
        """The view of cls's map; raises if the source has no such map."""
        view = self.by_name.get(cls.name)
        if not isinstance(view, cls):
            raise DatapathError(f"no map {cls.name} here (have: {', '.join(sorted(self.by_name))})")
        return view

    @property
    def ipcache_cidr(self) -> IpcacheCidrMap:
        """ipcache_cidr."""
        return self.get(IpcacheCidrMap)

    @property
    def services(self) -> ServiceMap:
        """lb4_services."""
        return self.get(ServiceMap)

    @property
    def backends(self) -> BackendMap:
        """lb4_backends."""
        return self.get(BackendMap)

    @property
    def revnat(self) -> RevNatMap:
        """lb4_revnat."""
        return self.get(RevNatMap)

    @property
    def affinity(self) -> AffinityMap:
        """lb4_affinity."""
        return self.get(AffinityMap)

    @property
    def src_range(self) -> SourceRangeMap:
        """lb4_src_range."""
        return self.get(SourceRangeMap)

    @property
    def maglev(self) -> MaglevMap:
        """lb4_maglev."""
        return self.get(MaglevMap)

    @property
    def sock_revnat(self) -> SockRevNatMap:
        """lb4_sock_revnat."""
        return self.get(SockRevNatMap)

    @property
    def conntrack(self) -> ConntrackMap:
        """ct4."""
        return self.get(ConntrackMap)

    @property
    def fragments(self) -> FragmentMap:
        """ipv4_frags."""
        return self.get(FragmentMap)

    @property
    def ipcache(self) -> IpcacheMap:
        """ipcache."""
        return self.get(IpcacheMap)

    @property
    def endpoints(self) -> EndpointMap:
        """lxc_endpoints."""
        return self.get(EndpointMap)

    @property
    def policy(self) -> PolicyMap:
        """policy."""
        return self.get(PolicyMap)

    @property
    def metrics(self) -> MetricsMap:
        """metrics."""
        return self.get(MetricsMap)

    @property
    def events(self) -> EventsRing:
        """events."""
        return self.get(EventsRing)

    @property
    def proc_events(self) -> ProcEventsRing:
        """proc_events."""
        return self.get(ProcEventsRing)

    def close(self) -> None:
        """Release every view's fd and mapping."""
        for view in self.by_name.values():
            view.close()

    def __enter__(self) -> Views:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_views(source: BpfObject | Path) -> Views:
    """Views of every known map of a loaded object, or of the maps pinned in a directory."""
    views: dict[str, View] = {}
    if isinstance(source, BpfObject):
        for name, untyped in source.maps().items():
            cls = MAP_VIEWS.get(name)
            if cls is not None:
                with untyped:
                    views[name] = cls(untyped)
        return Views(views)
    for name, cls in MAP_VIEWS.items():
        if (source / name).exists():
            views[name] = cls.from_pin(source)
    return Views(views)
