"""Conversions between the control plane's table records and the datapath's ctypes map entries."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from velvet.datapath import structs as s
from velvet.datapath.tables import (
    PREFIX_IDENTITY,
    PREFIX_PROTO,
    BackendValue,
    Direction,
    EndpointEntry,
    NodeSettings,
    PolicyKey,
    PolicyValue,
    RemoteIdentity,
    RevNatValue,
    ServiceKey,
    ServiceValue,
    SourceRangeKey,
)
from velvet.errors import DatapathError


@dataclass(frozen=True)
class TableCodec:
    """How one table's records become a map's keys and values, and back."""

    map_name: str
    encode_key: Callable[[Any], Any]
    encode_value: Callable[[Any], Any]
    decode_key: Callable[[Any], Any]
    decode_value: Callable[[Any], Any]


def _svc_key(k: ServiceKey) -> s.Lb4Key:
    return s.Lb4Key(address=s.ipv4(k.address), dport=k.dport, backend_slot=k.backend_slot, proto=k.proto,
                    scope=k.scope)


def _svc_value(v: ServiceValue) -> s.Lb4Service:
    return s.Lb4Service(backend_id=v.backend_id, affinity_timeout=v.affinity_timeout, count=v.count,
                        rev_nat_index=v.rev_nat_index, flags=v.flags)


def _src_range_key(k: SourceRangeKey) -> s.Lb4SrcRangeKey:
    address, length = s.ipv4_cidr(k.cidr)
    return s.Lb4SrcRangeKey(prefixlen=32 + length, rev_nat_index=k.rev_nat_index, address=address)


def _maglev(table: tuple[int, ...]) -> s.Lb4MaglevLut:
    lut = s.Lb4MaglevLut()
    lut.backend_ids[:] = table
    return lut


def _ipcache_key(cidr: str) -> s.IpcacheKey:
    address, length = s.ipv4_cidr(cidr)
    return s.IpcacheKey(prefixlen=length, ip=address)


def _ipcache_value(value: int | RemoteIdentity) -> s.IpcacheInfo:
    if isinstance(value, RemoteIdentity):
        return s.IpcacheInfo(identity=value.identity, tunnel_endpoint=s.ipv4(value.tunnel_endpoint))
    return s.IpcacheInfo(identity=value)


def _decode_ipcache_value(v: s.IpcacheInfo) -> int | RemoteIdentity:
    if v.tunnel_endpoint:
        return RemoteIdentity(v.identity, s.ipv4_str(v.tunnel_endpoint))
    return int(v.identity)


def _policy_key(k: PolicyKey) -> s.PolicyKey:
    key = s.PolicyKey(prefixlen=k.prefix_len, ep_id=k.ep_id, direction=int(k.direction), identity=k.identity)
    if k.proto:
        if not 0 <= k.port_prefix_len <= 16:
            raise DatapathError(f"a port prefix is 0..16 bits, not {k.port_prefix_len}")
        key.proto = k.proto
        key.dport = k.port & (0xFFFF << (16 - k.port_prefix_len)) & 0xFFFF
    return key


def _policy_value_of(k: PolicyKey, v: PolicyValue) -> s.PolicyEntry:
    flags = s.PolicyFlag.L4 if k.proto else 0
    return s.PolicyEntry(flags=int(flags), policy_id=v.policy_id)


def _decode_policy_key(k: s.PolicyKey) -> PolicyKey:
    proto = k.proto if k.prefixlen > PREFIX_IDENTITY else 0
    prefix = max(k.prefixlen - PREFIX_PROTO, 0) if proto else 0
    return PolicyKey(k.ep_id, Direction(k.direction), k.identity, proto, k.dport if proto else 0, prefix)


def _value(scalar: Any) -> Any:
    """The Python value of a ctypes scalar key (maps hand keys back as ctypes instances)."""
    return scalar.value


CODECS: dict[str, TableCodec] = {
    "lb4_services": TableCodec(
        "lb4_services", _svc_key, _svc_value,
        lambda k: ServiceKey(s.ipv4_str(k.address), k.dport, k.backend_slot, k.proto, k.scope),
        lambda v: ServiceValue(v.backend_id, v.affinity_timeout, v.count, v.rev_nat_index, v.flags)),
    "lb4_backends": TableCodec(
        "lb4_backends", ctypes.c_uint32,
        lambda v: s.Lb4Backend(address=s.ipv4(v.address), port=v.port, proto=v.proto, state=v.state),
        _value,
        lambda v: BackendValue(s.ipv4_str(v.address), v.port, v.proto, v.state)),
    "lb4_revnat": TableCodec(
        "lb4_revnat", ctypes.c_uint16,
        lambda v: s.Lb4ReverseNat(address=s.ipv4(v.address), port=v.port),
        _value,
        lambda v: RevNatValue(s.ipv4_str(v.address), v.port)),
    "lb4_src_range": TableCodec(
        "lb4_src_range", _src_range_key, lambda _v: 1,
        lambda k: SourceRangeKey(k.rev_nat_index, f"{s.ipv4_str(k.address)}/{k.prefixlen - 32}"),
        lambda _v: None),
    "lb4_maglev": TableCodec(
        "lb4_maglev", ctypes.c_uint16, _maglev,
        _value,
        lambda v: tuple(v.backend_ids)),
    "lxc_endpoints": TableCodec(
        "lxc_endpoints", lambda ip: s.BE32(s.ipv4(ip)),
        lambda v: s.EndpointInfo(ifindex=v.ifindex, identity=v.identity, ep_id=v.ep_id, flags=v.flags,
                                 mac=(ctypes.c_uint8 * 6)(*s.mac_bytes(v.mac)),
                                 node_mac=(ctypes.c_uint8 * 6)(*s.mac_bytes(v.host_mac))),
        lambda k: s.ipv4_str(k.value),
        lambda v: EndpointEntry(v.ifindex, v.identity, v.ep_id, v.flags, s.mac_str(bytes(v.mac)),
                                s.mac_str(bytes(v.node_mac)))),
    "ipcache": TableCodec(
        "ipcache", _ipcache_key, _ipcache_value,
        lambda k: f"{s.ipv4_str(k.ip)}/{k.prefixlen}", _decode_ipcache_value),
    "ipcache_cidr": TableCodec(
        "ipcache_cidr", _ipcache_key, lambda ident: s.IpcacheInfo(identity=ident),
        lambda k: f"{s.ipv4_str(k.ip)}/{k.prefixlen}", lambda v: v.identity),
    "node_config": TableCodec(
        "node_config", ctypes.c_uint32,
        lambda v: s.NodeConfig(snat_addr=s.ipv4(v.snat_address), snat_port_min=v.snat_port_min,
                               snat_port_max=v.snat_port_max,
                               flags=s.NodeFlag.HOST_ROUTING if v.host_routing else 0),
        _value,
        lambda v: NodeSettings(s.ipv4_str(v.snat_addr), v.snat_port_min, v.snat_port_max,
                               bool(v.flags & s.NodeFlag.HOST_ROUTING))),
    "tunnel_config": TableCodec(
        "tunnel_config", ctypes.c_uint32, lambda ifindex: s.TunnelConfig(ifindex=ifindex),
        _value, lambda v: int(v.ifindex)),
    "policy": TableCodec(
        "policy", _policy_key, lambda v: v,  # values need their key: see encode_items
        _decode_policy_key,
        lambda v: PolicyValue(v.policy_id)),
}


def encode_items(table: str, upserts: dict[Any, Any]) -> tuple[list[Any], list[Any]]:
    """Keys and values of `upserts` encoded for the table's map."""
    codec = CODECS[table]
    keys = [codec.encode_key(k) for k in upserts]
    if table == "policy":
        values = [_policy_value_of(k, v) for k, v in upserts.items()]
    else:
        values = [codec.encode_value(v) for v in upserts.values()]
    return keys, values
