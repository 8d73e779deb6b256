"""The Python twin of the datapath policy lookup, for `velvet policy trace` and for tests.

Algorithm (must stay identical to `policy_decide` in `datapath/bpf/lib/policy.h`), for a new
connection of endpoint `ep` in `direction` with remote IP `r`:

1. direction not isolated for `ep` -> allowed;
2. label identity = longest match of `r` in `ipcache` (miss -> WORLD); CIDR identity = longest
   match of `r` in `ipcache_cidr` (0.0.0.0/0 -> WORLD is always there);
3. LPM lookups in `policy` in this order, stopping at the first hit: the label identity, the CIDR
   identity (skipped when equal to the label identity), the any-peer identity 0 — each returns the
   single longest-prefix entry for (ep, direction, identity, proto, dport), port-prefix entries
   before any-port entries before any-protocol entries (ICMP is looked up with port 0);
4. a hit -> allowed (every entry allows: NetworkPolicy has no deny), naming the policies of its
   policy_id; no hit -> dropped: "isolated, nothing allowed it".
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from velvet.control.policy import PROTOCOLS, CompiledEndpoint, CompiledPolicy
from velvet.control.portrange import PORT_BITS, mask_port
from velvet.datapath.tables import ANY_IDENTITY, ANY_PROTO, Direction, PolicyKey, PolicyValue
from velvet.model import Pod, ReservedIdentity

IPPROTO_ICMP = 1
_PROTOCOL_NUMBERS = {**PROTOCOLS, "ICMP": IPPROTO_ICMP}
_PROTOCOL_NAMES = {number: name for name, number in _PROTOCOL_NUMBERS.items()}


@dataclass(frozen=True)
class Verdict:
    """The policy verdict of one direction; `entry` is the policy map key that decided, if any."""

    allowed: bool
    policy_names: tuple[str, ...]
    reason: str
    entry: PolicyKey | None = None


@dataclass(frozen=True)
class TraceResult:
    """Egress verdict at the source and ingress verdict at the destination of one connection.

    A side is None when its IP is not a local endpoint (nothing enforces there on this node).
    """

    src_ip: str
    dst_ip: str
    proto: int
    port: int
    egress: Verdict | None
    ingress: Verdict | None

    @property
    def allowed(self) -> bool:
        """Neither side drops the connection."""
        return all(v.allowed for v in (self.egress, self.ingress) if v is not None)

    @property
    def policies(self) -> tuple[str, ...]:
        """The policies deciding the outcome: the dropping side's isolating ones, else the allowing ones."""
        verdicts = [v for v in (self.egress, self.ingress) if v is not None]
        deciding = [v for v in verdicts if not v.allowed] or verdicts
        return tuple(sorted({name for v in deciding for name in v.policy_names}))


def lookup(
    compiled: CompiledPolicy,
    ep_id: int,
    direction: Direction,
    label_identity: int,
    cidr_identity: int,
    proto: int | str,
    port: int,
) -> Verdict:
    """The datapath verdict for a new connection of endpoint `ep_id` with the given remote identities."""
    endpoint = compiled.endpoints[ep_id]
    proto = _protocol_number(proto)
    if proto == IPPROTO_ICMP:
        port = 0  # ICMP has no ports: rules match it by protocol
    if not endpoint.isolated(direction):
        return Verdict(True, (), f"{direction.policy_type.lower()} not isolated for {endpoint.pod}")
    identities = dict.fromkeys((label_identity, cidr_identity, ANY_IDENTITY))
    for identity in identities:
        hit = _longest_match(endpoint, direction, identity, proto, port)
        if hit is not None:
            key, value = hit
            names = compiled.policy_sets.get(value.policy_id, ())
            return Verdict(True, names, f"allowed by {describe_key(key)} ({', '.join(names)})", key)
    isolating = endpoint.ingress_policies if direction is Direction.INGRESS else endpoint.egress_policies
    return Verdict(False, isolating, f"isolated by {', '.join(isolating)}, nothing allowed it")


def trace(
    compiled: CompiledPolicy, src: Pod | str, dst: Pod | str, port: int, proto: int | str = "TCP"
) -> TraceResult:
    """Egress verdict at `src` and ingress verdict at `dst` (pods or IPs) for a connection to `port`."""
    src_ip, dst_ip = _address(src), _address(dst)
    number = _protocol_number(proto)
    verdicts: dict[Direction, Verdict | None] = {}
    for direction, local, remote in ((Direction.EGRESS, src_ip, dst_ip), (Direction.INGRESS, dst_ip, src_ip)):
        endpoint = compiled.endpoints_by_ip.get(local)
        verdicts[direction] = None if endpoint is None else lookup(
            compiled, endpoint.ep_id, direction, label_identity(compiled, remote),
            cidr_identity(compiled, remote), number, port,
        )
    return TraceResult(src_ip, dst_ip, number, port, verdicts[Direction.EGRESS], verdicts[Direction.INGRESS])


def label_identity(compiled: CompiledPolicy, ip: str) -> int:
    """The identity `ipcache` gives an IP (longest prefix match; a miss is WORLD)."""
    return _lpm(compiled.ipcache_index, ip, int(ReservedIdentity.WORLD))


def cidr_identity(compiled: CompiledPolicy, ip: str) -> int:
    """The identity `ipcache_cidr` gives an IP (longest prefix match; 0.0.0.0/0 is WORLD)."""
    return _lpm(compiled.cidr_index, ip, int(ReservedIdentity.WORLD))


def describe_key(key: PolicyKey) -> str:
    """A policy map key for humans, e.g. "identity 256 TCP/80" or "any peer TCP/1024-2047"."""
    peer = "any peer" if key.identity == ANY_IDENTITY else f"identity {key.identity}"
    if key.proto == ANY_PROTO:
        return f"{peer} any protocol"
    proto = _PROTOCOL_NAMES.get(key.proto, str(key.proto))
    if key.port_prefix_len == 0:
        return f"{peer} {proto}/any"
    last = key.port + (1 << (PORT_BITS - key.port_prefix_len)) - 1
    ports = str(key.port) if last == key.port else f"{key.port}-{last}"
    return f"{peer} {proto}/{ports}"


def _longest_match(
    endpoint: CompiledEndpoint, direction: Direction, identity: int, proto: int, port: int
) -> tuple[PolicyKey, PolicyValue] | None:
    """The single entry an LPM lookup of (ep, direction, identity, proto, port) returns."""
    keys = endpoint.entry_index.get((direction, identity))
    if keys is None:
        return None
    for length in range(PORT_BITS, -1, -1):
        key = keys.get((proto, mask_port(port, length), length))
        if key is not None:
            return key, endpoint.entries[key]
    key = keys.get((ANY_PROTO, 0, 0))
    return None if key is None else (key, endpoint.entries[key])


def _lpm(index: Mapping[int, Mapping[int, int]], ip: str, default: int) -> int:
    """Longest prefix match of `ip` in an index from `CompiledPolicy` (lengths longest first)."""
    address = _address_int(ip)
    for length, networks in index.items():
        found = networks.get(address & ((0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF))
        if found is not None:
            return found
    return default


@functools.lru_cache(maxsize=4096)
def _address_int(ip: str) -> int:
    """An IPv4 address as an integer."""
    return int(ipaddress.IPv4Address(ip))


def _address(peer: Pod | str) -> str:
    """The IP of a pod, or the IP itself."""
    if isinstance(peer, str):
        return peer
    if peer.status.pod_ip is None:
        raise ValueError(f"pod {peer.metadata.key} has no IP")
    return peer.status.pod_ip


def _protocol_number(proto: int | str) -> int:
    """IANA protocol number of "TCP" / "UDP" / "SCTP" / "ICMP" (or a number, unchanged)."""
    return proto if isinstance(proto, int) else _PROTOCOL_NUMBERS[proto.upper()]
