"""Typed views of the datapath's maps: each map opened with its key and value types from `structs`.

The control plane's tables are written and read through `tablemaps.TableMaps` (records of
`tables.py`, packed by `codecs.py`), never through domain methods here. What is here are the few
operations the agent performs on what the programs keep for themselves: flushing the conntrack and
affinity entries of a backend a frontend dropped, sweeping expired conntrack entries, summing the
per-CPU counters, and reading the event rings. `open_views` opens the maps of a loaded object or of a
pin directory that have a view class here (`MAP_VIEWS`, by map name).

Needs the bpf() syscall (root) to open maps; nothing here needs a particular kernel beyond what
loading the objects needed.
"""

from __future__ import annotations

import ctypes
import socket
from collections.abc import Callable, Collection, Iterable
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
    PROCESS_EVENT_DTYPE,
    Ct4Entry,
    Ct4Key,
    CtDir,
    CtFlag,
    EndpointInfo,
    IpcacheInfo,
    IpcacheKey,
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
    MetricDir,
    MetricsKey,
    MetricsValue,
    NodeConfig,
    PolicyEntry,
    PolicyKey,
    Snat4Entry,
    Snat4Key,
    TunnelConfig,
    ipv4,
    numpy_dtype,
)
from velvet.datapath.tables import ConntrackSweep, StaleBackend
from velvet.errors import DatapathError

K = TypeVar("K")
V = TypeVar("V")


CT_KEY_DTYPE = numpy_dtype(Ct4Key)
CT_ENTRY_DTYPE = numpy_dtype(Ct4Entry)
AFFINITY_VAL_DTYPE = numpy_dtype(Lb4AffinityVal)
NSEC_PER_SEC = 1_000_000_000
# The conntrack sweep leaves an entry this much longer than the programs' coarse clock (one tick
# behind time.monotonic_ns()) would: it never removes what a program still finds alive.
CT_SWEEP_GRACE_NS = NSEC_PER_SEC


Chooser = Callable[[bytes, bytes], npt.NDArray[np.bool_]]  # a chunk's keys and values -> entries to delete


class MapView(Generic[K, V]):
    """Base of the hash/LPM map views: the map re-typed with the view's key and value types."""

    name: ClassVar[str]
    key_type: ClassVar[Any]
    value_type: ClassVar[Any]

    def __init__(self, map_: Map[Any, Any]) -> None:
        self.map: Map[Any, Any] = map_.typed(self.key_type, self.value_type)

    def delete_chosen(self, choose: Chooser) -> tuple[int, int]:
        """Delete the entries `choose` picks in each chunk of the map's raw keys and values, after one
        walk that holds a chunk at a time (a conntrack table's copy was tens of MB); (walked, deleted)."""
        size = ctypes.sizeof(self.key_type)
        walked, doomed = 0, []
        for keys, values in self.map.lookup_batch_chunks():
            chosen = choose(keys, values)
            walked += len(chosen)
            doomed += [keys[i * size:(i + 1) * size] for i in np.flatnonzero(chosen).tolist()]
        return walked, self.map.delete_raw_batch(doomed)

    @classmethod
    def from_pin(cls, pin_dir: Path) -> Self:
        """Open the map pinned at pin_dir/<name>."""
        with Map.from_pin(pin_dir / cls.name, cls.key_type, cls.value_type) as pinned:
            return cls(pinned)

    def close(self) -> None:
        """Release the map fd (the map lives on while pinned or used by a program)."""
        self.map.close()


# --- the control plane's tables (written through tablemaps.TableMaps) ------------------------------


class ServiceMap(MapView[Lb4Key, Lb4Service]):
    """lb4_services: frontends (slot 0) and their backend slots (1..count)."""

    name = "lb4_services"
    key_type = Lb4Key
    value_type = Lb4Service


class BackendMap(MapView[ctypes.c_uint32, Lb4Backend]):
    """lb4_backends: backend id (never 0) -> address, port, protocol, state."""

    name = "lb4_backends"
    key_type = ctypes.c_uint32
    value_type = Lb4Backend


class RevNatMap(MapView[ctypes.c_uint16, Lb4ReverseNat]):
    """lb4_revnat: rev_nat_index -> the frontend (its presence keeps replies of translated flows alive)."""

    name = "lb4_revnat"
    key_type = ctypes.c_uint16
    value_type = Lb4ReverseNat


class SourceRangeMap(MapView[Lb4SrcRangeKey, ctypes.c_uint8]):
    """lb4_src_range (LPM): loadBalancerSourceRanges per frontend (rev_nat_index)."""

    name = "lb4_src_range"
    key_type = Lb4SrcRangeKey
    value_type = ctypes.c_uint8


class MaglevMap(MapView[ctypes.c_uint16, Lb4MaglevLut]):
    """lb4_maglev: rev_nat_index -> Maglev table (LB_MAGLEV_LUT_SIZE backend ids) of its external scope."""

    name = "lb4_maglev"
    key_type = ctypes.c_uint16
    value_type = Lb4MaglevLut


class IpcacheMap(MapView[IpcacheKey, IpcacheInfo]):
    """ipcache (LPM): prefix -> security identity; addresses nobody claims are WORLD."""

    name = "ipcache"
    key_type = IpcacheKey
    value_type = IpcacheInfo


class IpcacheCidrMap(IpcacheMap):
    """ipcache_cidr (LPM): policy CIDR prefix -> node-local CIDR identity, matched beside ipcache."""

    name = "ipcache_cidr"


class EndpointMap(MapView[Any, EndpointInfo]):
    """lxc_endpoints: pod IPv4 -> host veth ifindex, identity, endpoint id, policy flags."""

    name = "lxc_endpoints"
    key_type = BE32
    value_type = EndpointInfo


class PolicyMap(MapView[PolicyKey, PolicyEntry]):
    """policy (LPM): per-endpoint entries; port ranges are several (port, prefix) entries."""

    name = "policy"
    key_type = PolicyKey
    value_type = PolicyEntry


class NodeConfigMap(MapView[ctypes.c_uint32, NodeConfig]):
    """node_config (array, key 0): the node's SNAT address and ports for the uplink programs."""

    name = "node_config"
    key_type = ctypes.c_uint32
    value_type = NodeConfig


class TunnelConfigMap(MapView[ctypes.c_uint32, TunnelConfig]):
    """tunnel_config (array of one): the VXLAN device of tunnel mode, ifindex 0 in native routing."""

    name = "tunnel_config"
    key_type = ctypes.c_uint32
    value_type = TunnelConfig


# --- what the programs keep for themselves ----------------------------------------------------------


class AffinityMap(MapView[Lb4AffinityKey, Lb4AffinityVal]):
    """lb4_affinity (LRU): sessionAffinity=ClientIP choices of the socket LB and the tc paths."""

    name = "lb4_affinity"
    key_type = Lb4AffinityKey
    value_type = Lb4AffinityVal

    def delete_by_backends(self, backend_ids: Collection[int]) -> int:
        """Forget every affinity to any of these backends, in one walk; returns how many entries went."""
        wanted = list(backend_ids)
        return self.delete_chosen(
            lambda _, values: np.isin(np.frombuffer(values, AFFINITY_VAL_DTYPE)["backend_id"], wanted))[1]


class SockRevNatMap(MapView[Lb4SockRevnatKey, Lb4SockRevnatVal]):
    """lb4_sock_revnat (LRU): what recvmsg4 translates back for the datagrams sendmsg4 translated."""

    name = "lb4_sock_revnat"
    key_type = Lb4SockRevnatKey
    value_type = Lb4SockRevnatVal


class ConntrackMap(MapView[Ct4Key, Ct4Entry]):
    """ct4 (hash, no LRU): connection tracking entries of all directions (see types.h for their meaning)."""

    name = "ct4"
    key_type = Ct4Key
    value_type = Ct4Entry

    def delete_expired(self, now_ns: int) -> ConntrackSweep:
        """Remove the entries whose lifetime ran out (as `ct_lookup` judges it), in one walk of the map.

        `now_ns` is CLOCK_MONOTONIC (time.monotonic_ns()), the programs' clock. An entry a packet renews
        between the walk's read and its delete goes with the others: that connection's next packet
        creates it again, as after an LRU eviction.
        """
        def expired(raw_keys: bytes, raw_values: bytes) -> npt.NDArray[np.bool_]:
            k, v = np.frombuffer(raw_keys, CT_KEY_DTYPE), np.frombuffer(raw_values, CT_ENTRY_DTYPE)
            flags = v["flags"]
            lifetime_s = np.where(flags & CtFlag.CLOSING, CT_LIFETIME_CLOSE_S,
                                  np.where(k["proto"] != socket.IPPROTO_TCP, CT_LIFETIME_NONTCP_S,
                                           np.where(flags & CtFlag.SEEN_REPLY, CT_LIFETIME_TCP_S,
                                                    CT_LIFETIME_SYN_S)))
            age = np.int64(now_ns) - v["last_seen_ns"].astype(np.int64)  # signed: a CPU may stamp later
            return age > lifetime_s.astype(np.int64) * NSEC_PER_SEC + CT_SWEEP_GRACE_NS

        walked, deleted = self.delete_chosen(expired)
        return ConntrackSweep(walked - deleted, deleted, self.map.info.max_entries)

    def delete_by_backends(self, stale: Iterable[StaleBackend]) -> int:
        """Flush the connections translated to backends their frontends dropped, in one walk of the map.

        Removes the CT_SERVICE entries sticking clients to a dropped backend (their next packet selects
        again) and the translated entries towards it, for that frontend only (0.0.0.0 as its address
        matches any, for the NodePort wildcard). Returns how many entries went.
        """
        stale = list(stale)
        if not stale:
            return 0
        def flushed(raw_keys: bytes, raw_values: bytes) -> npt.NDArray[np.bool_]:
            k, v = np.frombuffer(raw_keys, CT_KEY_DTYPE), np.frombuffer(raw_values, CT_ENTRY_DTYPE)
            service = k["dir"] == CtDir.SERVICE
            translated = np.isin(k["dir"], (CtDir.EGRESS, CtDir.NODEPORT)) & (v["rev_nat_index"] != 0)
            # CT_SERVICE entries name the backend in nat_*, translated ones name the frontend there
            b_addr = np.where(service, v["nat_addr"], k["daddr"])
            b_port = np.where(service, v["nat_port"], k["dport"])
            f_addr = np.where(service, k["daddr"], v["nat_addr"])
            f_port = np.where(service, k["dport"], v["nat_port"])
            doomed: npt.NDArray[np.bool_] = np.zeros(len(k), dtype=bool)
            for s in stale:
                front = ipv4(s.frontend_address)
                doomed |= ((k["proto"] == s.proto) & (b_addr == ipv4(s.backend_address))
                           & (b_port == s.backend_port) & (f_port == s.frontend_port)
                           & ((f_addr == front) | (front == 0)))
            doomed &= service | translated
            return doomed

        return self.delete_chosen(flushed)[1]


class SnatMap(MapView[Snat4Key, Snat4Entry]):
    """snat4 (LRU): NodePort SNAT towards other nodes' backends, two entries per connection."""

    name = "snat4"
    key_type = Snat4Key
    value_type = Snat4Entry


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

    def close(self) -> None:
        """Unmap the ring."""
        self.ring.close()


class EventsRing(RingView):
    """events: struct flow_event records (FLOW_EVENT_DTYPE)."""

    name = "events"
    dtype = FLOW_EVENT_DTYPE


class ProcEventsRing(RingView):
    """proc_events: struct process_event records (PROCESS_EVENT_DTYPE) of proc.bpf.o (`velvet.runtime`)."""

    name = "proc_events"
    dtype = PROCESS_EVENT_DTYPE


# --- registry ---------------------------------------------------------------------------------------

View = MapView[Any, Any] | RingView

MAP_VIEWS: dict[str, type[MapView[Any, Any]] | type[RingView]] = {
    cls.name: cls
    for cls in (ServiceMap, BackendMap, RevNatMap, AffinityMap, SourceRangeMap, MaglevMap, SockRevNatMap,
                ConntrackMap, IpcacheMap, IpcacheCidrMap, EndpointMap, PolicyMap, MetricsMap,
                TunnelConfigMap, EventsRing, ProcEventsRing, SnatMap, NodeConfigMap)
}
"""Map name -> its view class."""

ViewT = TypeVar("ViewT", bound=MapView[Any, Any] | RingView)


class Views:
    """The views of one object's (or one pin directory's) maps, by name."""

    def __init__(self, views: dict[str, View]) -> None:
        self.by_name = views

    def get(self, cls: type[ViewT]) -> ViewT:
        """The view of cls's map; raises if the source has no such map."""
        view = self.by_name.get(cls.name)
        if not isinstance(view, cls):
            raise DatapathError(f"no map {cls.name} here (have: {', '.join(sorted(self.by_name))})")
        return view

    def close(self) -> None:
        """Release every view's fd and mapping."""
        for view in self.by_name.values():
            view.close()

    def __enter__(self) -> Views:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_views(source: BpfObject | Path, skip: Collection[str] = ()) -> Views:
    """Views of the maps in `MAP_VIEWS` that a loaded object has, or that are pinned in a directory.

    `skip` names pinned maps another reader opens itself (a ring mapped twice is resident twice).
    """
    views: dict[str, View] = {}
    if isinstance(source, BpfObject):
        for name, untyped in source.maps().items():
            cls = MAP_VIEWS.get(name)
            if cls is not None:
                with untyped:
                    views[name] = cls(untyped)
        return Views(views)
    for name, cls in MAP_VIEWS.items():
        if name not in skip and (source / name).exists():
            views[name] = cls.from_pin(source)
    return Views(views)
