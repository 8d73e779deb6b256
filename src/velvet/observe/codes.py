"""The Hubble / Cilium names of `struct flow_event` codes, in one place.

The numbers themselves are the datapath's enums (`velvet.datapath.structs`, mirrors of types.h);
every other observe module reads codes and names only from here.
"""

from __future__ import annotations

from velvet.datapath.structs import DropReason, EventFlag, EventType, ObsPoint, TcpFlag, Verdict
from velvet.model.identity import ReservedIdentity

__all__ = ["DropReason", "EventFlag", "EventType", "ObsPoint", "TcpFlag", "Verdict"]


def verdict_name(verdict: int) -> str:
    """Hubble's name of a verdict number ("FORWARDED"), "VERDICT_UNKNOWN" for unknown numbers."""
    return Verdict(verdict).name if verdict in _VERDICTS else "VERDICT_UNKNOWN"


_VERDICTS = frozenset(int(v) for v in Verdict)


def match_type(flags: int) -> str:
    """Cilium's policy match type of a verdict from its `EventFlag.POLICY_*` bits."""
    if flags & EventFlag.POLICY_DEFAULT or not flags & (EventFlag.POLICY_L3 | EventFlag.POLICY_L4):
        return "none"
    if flags & EventFlag.POLICY_ANY_PEER:
        return "L4-Only" if flags & EventFlag.POLICY_L4 else "all"
    return "L3-L4" if flags & EventFlag.POLICY_L4 else "L3-Only"


IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17

PROTOCOL_NAMES: dict[int, str] = {IPPROTO_TCP: "TCP", IPPROTO_UDP: "UDP", IPPROTO_ICMP: "ICMPv4"}
"""Hubble's name of an IP protocol (`l4` key, metric label)."""

PROTOCOL_NUMBERS: dict[str, int] = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP, "icmp": IPPROTO_ICMP,
                                    "icmpv4": IPPROTO_ICMP}
"""The protocol names `--protocol` accepts."""

DROP_REASON_NAMES: dict[int, str] = {
    DropReason.INVALID_SOURCE: "INVALID_SOURCE_IP",
    DropReason.POLICY_DENIED: "POLICY_DENIED",
    DropReason.INVALID_PACKET: "INVALID_PACKET",
    DropReason.CT_MAP_FULL: "CT_MAP_INSERTION_FAILED",
    DropReason.WRITE_ERROR: "ERROR_WRITING_TO_PACKET",
    DropReason.NO_SERVICE_BACKEND: "NO_SERVICE",
    DropReason.NO_TUNNEL_ENDPOINT: "NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT",
    DropReason.NAT_NO_MAPPING: "NAT_NO_MAPPING",
    DropReason.FRAG_NOT_FOUND: "FRAG_NOT_FOUND",
    DropReason.LB_SOURCE_RANGE: "NOT_IN_SRC_RANGE",
    DropReason.NO_LOCAL_BACKEND: "NO_LOCAL_BACKEND",
    DropReason.NO_FIB: "FIB_LOOKUP_FAILED",
    DropReason.SNAT_NO_PORT: "SNAT_NO_PORT",
}
"""drop reason number -> Hubble's `drop_reason_desc` (the `flow.DropReason` enum name)."""


def drop_reason_names(reason: int) -> tuple[str, str]:
    """(Hubble enum name, Cilium's human text) of a drop reason, with a stable fallback for new numbers."""
    if reason not in DROP_REASON_NAMES:
        return "DROP_REASON_UNKNOWN", f"Unknown drop reason {reason}"
    return DROP_REASON_NAMES[reason], DropReason(reason).describe()


EVENT_TYPE_NAMES: dict[int, str] = {
    EventType.TRACE: "trace", EventType.DROP: "drop",
    EventType.POLICY_VERDICT: "policy-verdict", EventType.SOCK: "trace-sock",
}
"""`--type` / `monitor -t` name of each event type (Cilium monitor's names)."""

EVENT_TYPE_ALIASES: dict[str, int] = {**{v: k for k, v in EVENT_TYPE_NAMES.items()}, "sock": EventType.SOCK}
"""Every name accepted for an event type."""

METRIC_TYPE_NAMES: dict[int, str] = {
    EventType.TRACE: "Trace", EventType.DROP: "Drop",
    EventType.POLICY_VERDICT: "PolicyVerdict", EventType.SOCK: "Sock",
}
"""The `type` label of hubble_flows_processed_total."""

MONITOR_MESSAGE_TYPES: dict[int, int] = {
    EventType.TRACE: 4, EventType.DROP: 1, EventType.POLICY_VERDICT: 5, EventType.SOCK: 7,
}
"""Cilium monitor message type numbers, Hubble's `event_type.type`."""

OBS_POINTS: dict[int, tuple[str, str, int]] = {
    ObsPoint.FROM_ENDPOINT: ("FROM_ENDPOINT", "from-endpoint", 5),
    ObsPoint.TO_ENDPOINT: ("TO_ENDPOINT", "to-endpoint", 0),
    ObsPoint.FROM_NETWORK: ("FROM_NETWORK", "from-network", 10),
    ObsPoint.TO_NETWORK: ("TO_NETWORK", "to-network", 11),
    ObsPoint.SOCK_CONNECT: ("SOCK_CONNECT", "post-xlate-fwd", 0),
    ObsPoint.SOCK_SENDMSG: ("SOCK_SENDMSG", "post-xlate-fwd", 0),
}
"""obs point -> (Hubble `trace_observation_point`, Cilium's short name, monitor trace sub type)."""

UNKNOWN_OBS_POINT = ("UNKNOWN_POINT", "unknown", 0)

EGRESS_OBS_POINTS = frozenset({ObsPoint.FROM_ENDPOINT, ObsPoint.TO_NETWORK, ObsPoint.SOCK_CONNECT,
                               ObsPoint.SOCK_SENDMSG})
"""Observation points where a non-reply packet leaves its endpoint (EGRESS); the rest are INGRESS."""

POLICY_MATCH_TYPES: dict[str, int] = {"none": 0, "L3-Only": 1, "L3-L4": 2, "L4-Only": 3, "all": 4}
"""Hubble's `policy_match_type` numbers by Cilium's match name."""

RESERVED_IDENTITY_NAMES: dict[int, str] = {
    int(r): r.name.lower().replace("_", "-") for r in ReservedIdentity if r != ReservedIdentity.UNKNOWN
}
"""Reserved identity -> Cilium's name ("host", "world", "remote-node", ...)."""
