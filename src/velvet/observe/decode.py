"""Batches of `struct flow_event` (a numpy structured array over the ring) -> enriched `Flow`s.

The column work (byte order, clock conversion) is vectorised over the whole batch; Python objects
are built only for the records the caller asks for, and every lookup is memoised per batch because
a batch is dominated by few distinct endpoints.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt

from velvet.observe.codes import EGRESS_OBS_POINTS, DropReason, EventFlag, Verdict
from velvet.observe.enrich import EndpointResolver, NamedRef
from velvet.observe.flow import Endpoint, Flow

REQUIRED_FIELDS = ("ts_ns", "saddr", "daddr", "type")
"""Fields a batch must have; every other field of `struct flow_event` reads as 0 when absent."""

_NETWORK_ORDER = ("saddr", "daddr", "orig_daddr", "sport", "dport", "orig_dport")
_HOST_ORDER = ("src_identity", "dst_identity", "policy_id", "rev_nat_index", "ifindex", "bytes",
               "drop_reason", "type", "obs_point", "proto", "tcp_flags", "verdict", "flags", "cookie")
_COLUMNS = ("ts_ns", *_NETWORK_ORDER, *_HOST_ORDER)
_ALIASES = {"cookie": "cgroup_id"}
_REV_NAT = int(EventFlag.REV_NAT)
_REPLY = int(EventFlag.REPLY)
_DROPPED = int(Verdict.DROPPED)
_POLICY_DENIED = int(DropReason.POLICY_DENIED)


def monotonic_to_wall_offset_ns() -> int:
    """Nanoseconds to add to bpf_ktime_get_ns() (CLOCK_MONOTONIC) to get Unix time."""
    return time.time_ns() - time.monotonic_ns()


def ipv4_text(addr: int) -> str:
    """Dotted quad of a host-order IPv4 integer."""
    return f"{addr >> 24}.{(addr >> 16) & 255}.{(addr >> 8) & 255}.{addr & 255}"


def _network_order(column: npt.NDArray[Any]) -> npt.NDArray[np.uint64]:
    """Reinterpret a field holding network-order bytes as big-endian, whatever its declared order."""
    return column.view(column.dtype.newbyteorder(">")).astype(np.uint64)


def decode_columns(batch: npt.NDArray[Any], clock_offset_ns: int) -> dict[str, list[int]]:
    """Every field of a batch as host-order Python ints; `ts_ns` becomes Unix time in ns."""
    names = batch.dtype.names or ()
    missing = [f for f in REQUIRED_FIELDS if f not in names]
    if missing:
        raise ValueError(f"flow_event batch lacks fields {missing} (has {list(names)})")
    zeros = [0] * len(batch)
    cols: dict[str, list[int]] = {}
    cols["ts_ns"] = (batch["ts_ns"].astype(np.int64) + np.int64(clock_offset_ns)).tolist()
    for name in _NETWORK_ORDER:
        cols[name] = _network_order(batch[name]).tolist() if name in names else zeros
    for name in _HOST_ORDER:
        field = name if name in names else _ALIASES.get(name, "")
        cols[name] = batch[field].astype(np.uint64).tolist() if field in names else zeros
    return cols


class FlowDecoder:
    """Turns batches into Flows, asking an `EndpointResolver` for names."""

    def __init__(self, resolver: EndpointResolver, node_name: str = "",
                 clock_offset_ns: int | None = None) -> None:
        self.resolver = resolver
        self.node_name = node_name
        self.clock_offset_ns = monotonic_to_wall_offset_ns() if clock_offset_ns is None else clock_offset_ns

    def decode(self, batch: npt.NDArray[Any]) -> list[Flow]:
        """One Flow per record of `batch`, in ring order."""
        c = decode_columns(batch, self.clock_offset_ns)
        ips: dict[int, str] = {0: ""}
        endpoints: dict[tuple[int, int], Endpoint] = {}
        services: dict[int, NamedRef | None] = {0: None}
        policies: dict[int, tuple[NamedRef, ...]] = {0: ()}
        resolver, node = self.resolver, self.node_name

        def ip(addr: int) -> str:
            text = ips.get(addr)
            if text is None:
                text = ips[addr] = ipv4_text(addr)
            return text

        def endpoint(addr: int, identity: int) -> Endpoint:
            ep = endpoints.get((addr, identity))
            if ep is None:
                ep = endpoints[(addr, identity)] = self._endpoint(addr, identity)
            return ep

        def caller(cgroup_id: int) -> int:
            addr = callers.get(cgroup_id)
            if addr is None:
                addr = callers[cgroup_id] = resolver.by_cgroup(cgroup_id) or 0
            return addr

        callers: dict[int, int] = {}
        flows: list[Flow] = []
        append = flows.append
        for (ts, saddr, daddr, odaddr, sport, dport, odport, sid, did, pid, rni, ifx, nbytes, reason, typ,
             obs, proto, tcpf, verdict, flags, cookie) in zip(*(c[name] for name in _COLUMNS), strict=True):
            if not saddr and cookie:
                # A socket event: connect()/sendmsg() has no source address yet; the caller's pod has one.
                saddr = caller(cookie)
            if rni not in services:
                services[rni] = resolver.service(rni)
            if pid not in policies:
                policies[pid] = resolver.policies(pid)
            named = policies[pid]
            if verdict == _DROPPED and reason == _POLICY_DENIED and not pid:
                # Nothing allowed it: name the policies that isolate the endpoint enforcing the drop.
                named = self._isolating(saddr, daddr, obs, flags)
            service = services[rni]
            rev_nat = flags & _REV_NAT
            # Positional, in field order: a frozen dataclass's keyword __init__ costs 3x more per record.
            append(Flow(
                ts, typ, obs, verdict, reason, proto, tcpf, ip(saddr), ip(daddr), sport, dport,
                endpoint(saddr, sid), endpoint(daddr, did),
                service if rev_nat else None, None if rev_nat else service, named,
                ip(odaddr), odport, rni, pid, ifx, nbytes, flags, cookie, node,
            ))
        return flows

    def _isolating(self, saddr: int, daddr: int, obs: int, flags: int) -> tuple[NamedRef, ...]:
        """The policies isolating, for the connection's direction, the endpoint where a packet was dropped."""
        leaving = obs in EGRESS_OBS_POINTS
        info = self.resolver.by_ip(saddr if leaving else daddr)
        if info is None:
            return ()
        return info.egress_isolated_by if leaving != bool(flags & _REPLY) else info.ingress_isolated_by

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
