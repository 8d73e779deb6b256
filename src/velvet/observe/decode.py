"""Batches of `struct flow_event` (a numpy structured array over the ring) -> stored records -> `Flow`s.

`FlowDecoder.enrich` is the hot path and is vectorised: it turns a batch into `RECORD_DTYPE` records
(host byte order, wall-clock time) and captures the Kubernetes context as it is at ingest time as
small integer handles into interned tables (endpoints, services, policy sets). Names are looked up
once per distinct key, through direct-mapped caches that stay valid until the resolver changes.
`FlowDecoder.flows` builds `Flow` objects only for the records a reader asks for.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from velvet.datapath.structs import FLOW_EVENT_DTYPE
from velvet.observe.codes import EGRESS_OBS_POINTS, DropReason, EventFlag, Verdict
from velvet.observe.enrich import EndpointResolver, NamedRef
from velvet.observe.flow import Endpoint, Flow

Records = npt.NDArray[np.void]
"""An array of `RECORD_DTYPE`."""

RecordMatch = Callable[[Records], npt.NDArray[np.bool_]]
"""A vectorised filter: which records of an array match."""

REQUIRED_FIELDS = ("ts_ns", "saddr", "daddr", "type")
"""Fields a batch must have; every other field of `struct flow_event` reads as 0 when absent."""

def _record_dtype() -> np.dtype[np.void]:
    """`struct flow_event`'s layout in host order, then four handle columns (80 bytes)."""
    fields: Mapping[str, tuple[Any, ...]] = FLOW_EVENT_DTYPE.fields or {}
    renamed = {"ts_ns": "time_ns", "cookie": "cgroup_id"}
    handles = ["src_ep", "dst_ep", "service", "policies"]
    end = FLOW_EVENT_DTYPE.itemsize
    formats = [np.dtype("=i8") if name == "ts_ns" else fields[name][0].newbyteorder("=") for name in fields]
    spec: dict[str, Any] = {
        "names": [renamed.get(name, name) for name in fields] + handles,
        "formats": formats + [np.dtype("=u4")] * len(handles),
        "offsets": [fields[name][1] for name in fields] + [end + 4 * i for i in range(len(handles))],
        "itemsize": end + 4 * len(handles),
    }
    dtype: np.dtype[np.void] = np.dtype(spec)  # type: ignore[call-overload]
    return dtype


RECORD_DTYPE = _record_dtype()
"""A stored flow: the event's fields in host order, `time_ns` in Unix time, the socket caller's address
in `saddr`, and handles into the decoder's tables: `src_ep`/`dst_ep` (endpoints), `service` (the Service
of `rev_nat_index`), `policies` (the NetworkPolicies that allowed or denied it)."""

RAW_RECORD = np.dtype((np.void, RECORD_DTYPE.itemsize))
"""A record as opaque bytes: copy records through views of this (numpy copies structured arrays field by
field, 20x slower)."""


def take(records: Records, which: Any) -> Records:
    """`records[which]` (a mask, indices or a slice) as a copy, made over `RAW_RECORD` views."""
    picked: Records = records.view(RAW_RECORD)[which].copy().view(RECORD_DTYPE)
    return picked


def join(parts: Sequence[Records]) -> Records:
    """The records of `parts`, one after the other (a copy, made over `RAW_RECORD` views)."""
    joined: Records = np.concatenate([p.view(RAW_RECORD) for p in parts]).view(RECORD_DTYPE)
    return joined


HANDLE_COLUMNS = {"endpoints": ("src_ep", "dst_ep"), "services": ("service",), "policies": ("policies",)}
"""Record columns holding handles, by the decoder table they point into."""

_NETWORK_ORDER = ("saddr", "daddr", "orig_daddr", "sport", "dport", "orig_dport")
_HOST_ORDER = {"cgroup_id": ("cookie", "cgroup_id"), **{name: (name,) for name in (
    "src_identity", "dst_identity", "policy_id", "rev_nat_index", "ifindex", "bytes", "drop_reason", "type",
    "obs_point", "proto", "tcp_flags", "verdict", "flags")}}
_FLOW_COLUMNS = ("time_ns", "type", "obs_point", "verdict", "drop_reason", "proto", "tcp_flags", "saddr",
                 "daddr", "sport", "dport", "src_ep", "dst_ep", "service", "policies", "orig_daddr",
                 "orig_dport", "rev_nat_index", "policy_id", "ifindex", "bytes", "flags", "cgroup_id")
# Plain ints: numpy compares a column with an enum member far slower than with an int.
_REV_NAT = int(EventFlag.REV_NAT)
_REPLY = int(EventFlag.REPLY)
_DROPPED = int(Verdict.DROPPED)
_POLICY_DENIED = int(DropReason.POLICY_DENIED)
EGRESS_TABLE = np.zeros(256, np.bool_)
EGRESS_TABLE[sorted(EGRESS_OBS_POINTS)] = True
"""Whether an observation point (uint8) is on the way out of its endpoint: a table (np.isin sorts)."""
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_COMPACT_AT = 1 << 14
_SAME_LAYOUT = sys.byteorder == "little"
"""Whether a ring batch's bytes are a record's first bytes (host-order fields are little-endian)."""

T = TypeVar("T", bound=Hashable)


def monotonic_to_wall_offset_ns() -> int:
    """Nanoseconds to add to bpf_ktime_get_ns() (CLOCK_MONOTONIC) to get Unix time."""
    return time.time_ns() - time.monotonic_ns()


def ipv4_text(addr: int) -> str:
    """Dotted quad of a host-order IPv4 integer."""
    return f"{addr >> 24}.{(addr >> 16) & 255}.{(addr >> 8) & 255}.{addr & 255}"


def _network_order(column: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Reinterpret a field holding network-order bytes as big-endian, whatever its declared order."""
    return column.view(column.dtype.newbyteorder(">"))


class Interner(Generic[T]):
    """Values by small integer handle; equal values share one handle, handle 0 is `empty`."""

    def __init__(self, empty: T) -> None:
        self.values: list[T] = [empty]
        self._index: dict[T, int] = {empty: 0}
        self.epoch = 0
        """Bumped when `compact` renumbers the handles."""

    def intern(self, value: T) -> int:
        """The handle of `value`, new if it was not interned yet."""
        handle = self._index.get(value)
        if handle is None:
            handle = self._index[value] = len(self.values)
            self.values.append(value)
        return handle

    def compact(self, live: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
        """Keep only the handles in `live` (and 0); returns the old -> new handle map."""
        keep = np.union1d(live, [0]).astype(np.uint32)
        remap = np.zeros(len(self.values), np.uint32)
        remap[keep] = np.arange(len(keep), dtype=np.uint32)
        self.values = [self.values[h] for h in keep.tolist()]
        self._index = {v: i for i, v in enumerate(self.values)}
        self.epoch += 1
        return remap


class KeyCache:
    """A direct-mapped cache of uint64 key -> handle over numpy columns.

    A lookup costs a few vector operations; keys it misses are resolved once per distinct key.
    """

    def __init__(self, resolve: Callable[[int], int], bits: int = 14) -> None:
        self._resolve = resolve
        self._shift = np.uint64(64 - bits)
        self._keys = np.zeros(1 << bits, np.uint64)
        self._handles = np.zeros(1 << bits, np.uint32)
        self._valid = np.zeros(1 << bits, np.bool_)

    def clear(self) -> None:
        """Forget every cached key (the resolver's answers changed)."""
        self._valid[:] = False

    def _slots(self, keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.intp]:
        return ((keys * _GOLDEN) >> self._shift).astype(np.intp)

    def lookup(self, keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint32]:
        """The handle of every key."""
        slots = self._slots(keys)
        handles = self._handles[slots]
        miss = ~self._valid[slots] | (self._keys[slots] != keys)
        if miss.any():
            distinct, inverse = np.unique(keys[miss], return_inverse=True)
            resolved = np.array([self._resolve(k) for k in distinct.tolist()], np.uint32)
            handles[miss] = resolved[inverse]
            slots = self._slots(distinct)
            self._keys[slots], self._handles[slots], self._valid[slots] = distinct, resolved, True
        return handles


class FlowDecoder:
    """Turns batches into records with Kubernetes context, and records into Flows."""

    def __init__(self, resolver: EndpointResolver, node_name: str = "",
                 clock_offset_ns: int | None = None) -> None:
        self.resolver = resolver
        self.node_name = node_name
        self.clock_offset_ns = monotonic_to_wall_offset_ns() if clock_offset_ns is None else clock_offset_ns
        self.endpoints: Interner[Endpoint] = Interner(Endpoint(0))
        self.services: Interner[NamedRef | None] = Interner(None)
        self.policies: Interner[tuple[NamedRef, ...]] = Interner(())
        self._tables: dict[str, Interner[Any]] = {
            "endpoints": self.endpoints, "services": self.services, "policies": self.policies}
        self._compact_at = _COMPACT_AT
        self._generation = resolver.generation
        self._callers = KeyCache(lambda cgroup: self.resolver.by_cgroup(cgroup) or 0)
        self._endpoint_keys = KeyCache(
            lambda key: self.endpoints.intern(self._endpoint(key >> 32, key & 0xFFFFFFFF)))
        self._service_keys = KeyCache(lambda rni: self.services.intern(self.resolver.service(rni)))
        self._policy_keys = KeyCache(lambda pid: self.policies.intern(self.resolver.policies(pid)))
        self._isolating_keys = KeyCache(
            lambda key: self.policies.intern(self._isolating(key >> 1, bool(key & 1))))
        self._caches = (self._callers, self._endpoint_keys, self._service_keys, self._policy_keys,
                        self._isolating_keys)

    # -- ingest (vectorised) ---------------------------------------------------------------------

    def enrich(self, batch: npt.NDArray[Any]) -> Records:
        """The records of a batch, in ring order, with names as the resolver knows them now."""
        names = batch.dtype.names or ()
        missing = [f for f in REQUIRED_FIELDS if f not in names]
        if missing:
            raise ValueError(f"flow_event batch lacks fields {missing} (has {list(names)})")
        if self.resolver.generation != self._generation:
            self._generation = self.resolver.generation
            self._forget()
        out = self._columns(batch)
        out["time_ns"] += np.int64(self.clock_offset_ns)
        saddr, daddr, flags = out["saddr"], out["daddr"], out["flags"]
        sockets = (saddr == 0) & (out["cgroup_id"] != 0)
        if sockets.any():
            # connect()/sendmsg() has no source address yet; the caller's pod has one.
            saddr[sockets] = self._callers.lookup(out["cgroup_id"][sockets])
        out["src_ep"] = self._endpoint_keys.lookup((saddr.astype(np.uint64) << 32) | out["src_identity"])
        out["dst_ep"] = self._endpoint_keys.lookup((daddr.astype(np.uint64) << 32) | out["dst_identity"])
        # Id 0 is "none": no service, no policy, whatever the resolver would say.
        policy_id = out["policy_id"]
        for ids, column, cache in ((out["rev_nat_index"], "service", self._service_keys),
                                   (policy_id, "policies", self._policy_keys)):
            given = ids != 0
            if given.any():
                out[column][given] = cache.lookup(ids[given].astype(np.uint64))
        unnamed = (out["verdict"] == _DROPPED) & (out["drop_reason"] == _POLICY_DENIED) & (policy_id == 0)
        if unnamed.any():
            # Nothing allowed it: name the policies that isolate the endpoint enforcing the drop.
            leaving = EGRESS_TABLE[out["obs_point"][unnamed]]
            addr = np.where(leaving, saddr[unnamed], daddr[unnamed]).astype(np.uint64)
            egress = leaving != ((flags[unnamed] & _REPLY) != 0)
            out["policies"][unnamed] = self._isolating_keys.lookup((addr << 1) | egress)
        return out

    @staticmethod
    def _columns(batch: npt.NDArray[Any]) -> Records:
        """The batch's fields in a new array of records (handles 0, time still monotonic)."""
        n = len(batch)
        if batch.dtype == FLOW_EVENT_DTYPE and _SAME_LAYOUT:
            # The ring's own layout: one copy of the bytes, then swap the network-order fields in place.
            out = np.zeros(n, RECORD_DTYPE)
            raw = np.ascontiguousarray(batch).view(np.uint8).reshape(n, FLOW_EVENT_DTYPE.itemsize)
            out.view(np.uint8).reshape(n, RECORD_DTYPE.itemsize)[:, :FLOW_EVENT_DTYPE.itemsize] = raw
            for name in _NETWORK_ORDER:
                out[name].byteswap(inplace=True)
            return out
        names = batch.dtype.names or ()
        out = np.zeros(n, RECORD_DTYPE)
        out["time_ns"] = batch["ts_ns"]
        for name in _NETWORK_ORDER:
            if name in names:
                out[name] = _network_order(batch[name])
        for name, sources in _HOST_ORDER.items():
            for source in sources:
                if source in names:
                    out[name] = batch[source]
                    break
        return out

    def _forget(self) -> None:
        for cache in self._caches:
            cache.clear()

    def _isolating(self, addr: int, egress: bool) -> tuple[NamedRef, ...]:
        """The policies isolating the endpoint at `addr` for the connection's direction."""
        info = self.resolver.by_ip(addr)
        if info is None:
            return ()
        return info.egress_isolated_by if egress else info.ingress_isolated_by

    def _endpoint(self, addr: int, identity: int) -> Endpoint:
        """Endpoint from the IP's endpoint first (it names the pod), then from the identity."""
        by_ip = self.resolver.by_ip(addr)
        by_id = self.resolver.by_identity(identity) if identity else None
        labels = (by_ip.labels if by_ip else ()) or (by_id.labels if by_id else ())
        return Endpoint(
            identity=identity or (by_ip.identity if by_ip else 0),
            namespace=(by_ip.namespace if by_ip else "") or (by_id.namespace if by_id else ""),
            pod_name=by_ip.pod_name if by_ip else "",
            labels=labels,
            endpoint_id=by_ip.endpoint_id if by_ip else 0,
        )

    # -- table upkeep ----------------------------------------------------------------------------

    @property
    def oversized(self) -> bool:
        """Whether a table grew enough that `compact` should run."""
        return max(len(t.values) for t in self._tables.values()) > self._compact_at

    def compact(self, live: Iterable[Records]) -> None:
        """Drop table entries no record of `live` points to; renumbers those records' handles in place.

        `live` must hold every record that will still be read (the ring and the followers' queues).
        """
        roots: dict[int, Records] = {}
        for records in live:
            root: npt.NDArray[Any] = records
            while isinstance(root.base, np.ndarray):  # renumber each buffer once, whatever views share it
                root = root.base
            roots[id(root)] = root.view(RECORD_DTYPE)
        for name, table in self._tables.items():
            columns = HANDLE_COLUMNS[name]
            used = [r[c] for r in roots.values() for c in columns]
            remap = table.compact(np.unique(np.concatenate(used)) if used else np.zeros(0, np.uint32))
            for records in roots.values():
                for column in columns:
                    records[column] = remap[records[column]]
        self._compact_at = max(_COMPACT_AT, 2 * max(len(t.values) for t in self._tables.values()))
        self._forget()

    # -- reading ---------------------------------------------------------------------------------

    def flows(self, records: Records) -> list[Flow]:
        """One Flow per record, in order."""
        ips: dict[int, str] = {0: ""}
        endpoints, services, policies = self.endpoints.values, self.services.values, self.policies.values
        node = self.node_name

        def ip(addr: int) -> str:
            text = ips.get(addr)
            if text is None:
                text = ips[addr] = ipv4_text(addr)
            return text

        flows: list[Flow] = []
        append = flows.append
        for (ts, typ, obs, verdict, reason, proto, tcpf, saddr, daddr, sport, dport, sep, dep, svc, pol,
             odaddr, odport, rni, pid, ifx, nbytes, flags, cookie) in zip(
                *(records[name].tolist() for name in _FLOW_COLUMNS), strict=True):
            service = services[svc]
            rev_nat = flags & _REV_NAT
            # Positional, in field order: a frozen dataclass's keyword __init__ costs 3x more per record.
            append(Flow(
                ts, typ, obs, verdict, reason, proto, tcpf, ip(saddr), ip(daddr), sport, dport,
                endpoints[sep], endpoints[dep],
                service if rev_nat else None, None if rev_nat else service, policies[pol],
                ip(odaddr), odport, rni, pid, ifx, nbytes, flags, cookie, node,
            ))
        return flows

    def decode(self, batch: npt.NDArray[Any]) -> list[Flow]:
        """One Flow per record of `batch`, in ring order (`enrich` then `flows`)."""
        return self.flows(self.enrich(batch))
