"""The records of every table the control plane fills: the datapath's map keys and values, one home.

Plain frozen data, no kernel: the controllers build them, `datapath/codecs.py` packs them into the
ctypes mirrors of `types.h`, and `datapath/delta.py` diffs and orders them. Addresses stay dotted
strings here. Dependencies point one way: the control plane imports this module, never the reverse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import NamedTuple

from velvet.datapath.structs import BackendState, LbScope

# --- load balancing (lb4_* maps) -----------------------------------------------------------------


class Proto(IntEnum):
    """IP protocol numbers of the protocols a Service port can have."""

    TCP = 6
    UDP = 17
    SCTP = 132


@dataclass(frozen=True, slots=True)
class ServiceKey:
    """lb4_services key: a frontend, its scope, and a slot (0 = the frontend entry, 1..n = backends)."""

    address: str
    dport: int
    backend_slot: int
    proto: int
    scope: int = LbScope.EXT


@dataclass(frozen=True, slots=True)
class ServiceValue:
    """lb4_services value: backend_id in slots 1..n; count, flags and affinity timeout in slot 0."""

    backend_id: int = 0
    affinity_timeout: int = 0
    count: int = 0
    rev_nat_index: int = 0
    flags: int = 0


@dataclass(frozen=True, slots=True)
class BackendValue:
    """lb4_backends value: where a backend id sends traffic."""

    address: str
    port: int
    proto: int
    state: int = BackendState.ACTIVE


@dataclass(frozen=True, slots=True)
class RevNatValue:
    """lb4_revnat value: the frontend address and port that replies are rewritten back to."""

    address: str
    port: int


@dataclass(frozen=True, slots=True)
class SourceRangeKey:
    """lb4_src_range key: a CIDR (canonical "a.b.c.d/len") allowed to reach one frontend."""

    rev_nat_index: int
    cidr: str


@dataclass(frozen=True, slots=True)
class StaleBackend:
    """A backend a frontend stopped using: conntrack entries from the frontend to it must be flushed."""

    frontend_address: str
    frontend_port: int
    proto: int
    backend_id: int
    backend_address: str
    backend_port: int


@dataclass(frozen=True)
class ConntrackSweep:
    """What one walk of the conntrack table for expired entries found."""

    alive: int
    deleted: int
    capacity: int


@dataclass(frozen=True)
class LbState:
    """The contents of the five load-balancer maps (src_range is a set: its values are None)."""

    services: Mapping[ServiceKey, ServiceValue] = field(default_factory=dict)
    backends: Mapping[int, BackendValue] = field(default_factory=dict)
    revnat: Mapping[int, RevNatValue] = field(default_factory=dict)
    src_range: Mapping[SourceRangeKey, None] = field(default_factory=dict)
    maglev: Mapping[int, tuple[int, ...]] = field(default_factory=dict)


class LbMap(StrEnum):
    """The pinned name of each load-balancer map."""

    SERVICES = "lb4_services"
    BACKENDS = "lb4_backends"
    REVNAT = "lb4_revnat"
    SRC_RANGE = "lb4_src_range"
    MAGLEV = "lb4_maglev"


# --- the node (node_config) ---------------------------------------------------------------------

SNAT_PORT_MIN = 61000
SNAT_PORT_MAX = 65535
"""NodePort SNAT source ports: above the kernel's default ephemeral range (32768-60999), so that the
node's own connections from its address never meet a port the datapath hands out."""


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """node_config value (key 0): the address external connections to other nodes' backends are SNATed
    to ("0.0.0.0": no SNAT), the source ports SNAT may use, and whether the tc programs forward
    themselves (host routing, bypassing the node's IP stack)."""

    snat_address: str
    snat_port_min: int = SNAT_PORT_MIN
    snat_port_max: int = SNAT_PORT_MAX
    host_routing: bool = False


# --- endpoints (lxc_endpoints) ------------------------------------------------------------------

EP_POLICY_INGRESS = 1
EP_POLICY_EGRESS = 2
EP_POLICY_AUDIT = 4


@dataclass(frozen=True)
class EndpointEntry:
    """lxc_endpoints value: how the datapath finds a local pod by its IP (and, when known, the MACs host
    routing delivers it with: the pod's interface's and its host veth's; "" unknown)."""

    ifindex: int
    identity: int
    ep_id: int
    flags: int
    mac: str = ""
    host_mac: str = ""


@dataclass(frozen=True, slots=True)
class RemoteIdentity:
    """An ipcache value for an address on another node: its identity and that node's underlay IP.

    Other ipcache values are plain identities (ints); tunnel mode encapsulates packets to a
    `RemoteIdentity` address towards `tunnel_endpoint`.
    """

    identity: int
    tunnel_endpoint: str


# --- policy (policy LPM map) --------------------------------------------------------------------

ANY_IDENTITY = 0
ANY_PROTO = 0
PREFIX_IDENTITY = 64
"""LPM prefix length of an entry with the identity fixed and any protocol and port."""
PREFIX_PROTO = 80
"""LPM prefix length of an entry with the protocol fixed and any port; + n fixes n port bits."""


class Direction(IntEnum):
    """Traffic direction as seen from the endpoint."""

    INGRESS = 0
    EGRESS = 1

    @property
    def policy_type(self) -> str:
        """The policyTypes value naming this direction."""
        return "Ingress" if self is Direction.INGRESS else "Egress"


class PolicyKey(NamedTuple):
    """A policy map key; proto 0 = any protocol (port ignored), port_prefix_len 0 = any port."""

    ep_id: int
    direction: Direction
    identity: int
    proto: int
    port: int
    port_prefix_len: int

    @property
    def prefix_len(self) -> int:
        """The LPM prefix length the datapath stores: 64 (any protocol) or 80 + port bits."""
        return PREFIX_IDENTITY if self.proto == ANY_PROTO else PREFIX_PROTO + self.port_prefix_len


class PolicyValue(NamedTuple):
    """A policy map value: the id of the set of policies that allow the key (every entry allows)."""

    policy_id: int
