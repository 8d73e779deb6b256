"""ctypes mirrors of `datapath/bpf/types.h`, the one contract between the datapath and Python.

Every struct of types.h has a `ctypes.Structure` here with the same field names (the C name is in
the class docstring and in `C_STRUCTS`); every enum has an IntEnum/IntFlag with the same values
(`C_ENUMS` names the C enum and its prefix: `DROP_POLICY_DENIED` is `DropReason.POLICY_DENIED`);
every shared `#define` is a module constant (`C_DEFINES`). tests/datapath/test_structs_btf.py checks
all three against types.h and the BTF of the built objects.

Network-byte-order fields (`__be32`, `__be16`) use ctypes' big-endian integer types, so Python
reads and writes them as ordinary host integers: `key.dport = 80`, `key.address = ipv4("10.96.0.10")`.
No kernel feature is needed to use this module.
"""

from __future__ import annotations

import ctypes
import ipaddress
from ctypes import Structure, c_char, c_int32, c_int64, c_uint8, c_uint16, c_uint32, c_uint64
from enum import IntEnum, IntFlag
from typing import Any

import numpy as np

BE16: Any = c_uint16.__ctype_be__  # __be16
BE32: Any = c_uint32.__ctype_be__  # __be32


# --- conversions (the one place addresses and ports are converted) ---------------------------------


def ipv4(text: str) -> int:
    """The integer value of a dotted IPv4 address ("10.96.0.10" -> 0x0a60000a), for __be32 fields."""
    return int(ipaddress.IPv4Address(text))


def ipv4_str(value: int) -> str:
    """The dotted form of an IPv4 address held as an integer (a __be32 field's value)."""
    return str(ipaddress.IPv4Address(value))


def mac_bytes(text: str) -> bytes:
    """A MAC address "aa:bb:cc:dd:ee:ff" as its 6 bytes ("" = unknown: zeros)."""
    return bytes.fromhex(text.replace(":", "")) if text else bytes(6)


def mac_str(raw: bytes) -> str:
    """6 MAC bytes as "aa:bb:cc:dd:ee:ff" ("" for zeros: unknown)."""
    return ":".join(f"{b:02x}" for b in raw) if any(raw) else ""


def ipv4_cidr(text: str) -> tuple[int, int]:
    """(network address as integer, prefix length) of "a.b.c.d/len" or a bare address (/32)."""
    net = ipaddress.IPv4Network(text, strict=False)
    return int(net.network_address), net.prefixlen


# --- #defines ---------------------------------------------------------------------------------------

LB_MAGLEV_LUT_SIZE = 1021
CT_LIFETIME_TCP_S = 21600
CT_LIFETIME_SYN_S = 60
CT_LIFETIME_NONTCP_S = 60
CT_LIFETIME_CLOSE_S = 10
CT_REPORT_INTERVAL_S = 5
PROC_CWD_DEPTH = 12
PROC_CWD_NAME = 32
GUARD_RULES_MAX = 64
GUARD_NAME_MAX = 64
RT_MAX_PIDS = 16  # values of one matchPIDs entry (types.h)
RT_MAX_ARG_NUMS = 4  # values of a numeric matchArgs Equal (types.h)
RT_NO_ARG = 0xFF  # rt_rule.report_str: no argument
RT_PATH_MAX = 256  # bytes of a binary path key, NUL included (types.h)
RT_MAX_RULES = 64  # selectors of every exec policy together (types.h)
RT_PID_DEPTH = 8  # ancestors looked at for matchPIDs followForks (types.h)

C_DEFINES: dict[str, int] = {
    "LB_MAGLEV_LUT_SIZE": LB_MAGLEV_LUT_SIZE,
    "CT_LIFETIME_TCP_S": CT_LIFETIME_TCP_S,
    "CT_LIFETIME_SYN_S": CT_LIFETIME_SYN_S,
    "CT_LIFETIME_NONTCP_S": CT_LIFETIME_NONTCP_S,
    "CT_LIFETIME_CLOSE_S": CT_LIFETIME_CLOSE_S,
    "CT_REPORT_INTERVAL_S": CT_REPORT_INTERVAL_S,
    "PROC_CWD_DEPTH": PROC_CWD_DEPTH,
    "PROC_CWD_NAME": PROC_CWD_NAME,
    "GUARD_RULES_MAX": GUARD_RULES_MAX,
    "GUARD_NAME_MAX": GUARD_NAME_MAX,
    "RT_MAX_RULES": RT_MAX_RULES,
    "RT_MAX_PIDS": RT_MAX_PIDS,
    "RT_PID_DEPTH": RT_PID_DEPTH,
    "RT_PATH_MAX": RT_PATH_MAX,
    "RT_MAX_ARG_NUMS": RT_MAX_ARG_NUMS,
}
"""Every shared #define of types.h, by its C name."""


# --- enums ------------------------------------------------------------------------------------------


class DropReason(IntEnum):
    """enum drop_reason (DROP_*): why a packet was dropped; Cilium's numbers, Velvet's own from 230."""

    INVALID_SOURCE = 132
    POLICY_DENIED = 133
    INVALID_PACKET = 134
    CT_MAP_FULL = 138
    WRITE_ERROR = 141
    NO_SERVICE_BACKEND = 158
    NO_TUNNEL_ENDPOINT = 160
    NAT_NO_MAPPING = 167
    FRAG_NOT_FOUND = 175
    LB_SOURCE_RANGE = 177
    NO_LOCAL_BACKEND = 230
    NO_FIB = 169
    SNAT_NO_PORT = 231

    def describe(self) -> str:
        """Hubble-like human text ("Policy denied")."""
        return _DROP_TEXT[self]


_DROP_TEXT: dict[DropReason, str] = {
    DropReason.INVALID_SOURCE: "Invalid source ip",
    DropReason.POLICY_DENIED: "Policy denied",
    DropReason.INVALID_PACKET: "Invalid packet",
    DropReason.CT_MAP_FULL: "CT: Map insertion failed",
    DropReason.WRITE_ERROR: "Error writing to packet",
    DropReason.NO_SERVICE_BACKEND: "Service backend not found",
    DropReason.NO_TUNNEL_ENDPOINT: "No tunnel/encapsulation endpoint",
    DropReason.NAT_NO_MAPPING: "No mapping for NAT masquerade",
    DropReason.FRAG_NOT_FOUND: "First fragment not found",
    DropReason.LB_SOURCE_RANGE: "Not in LB source range",
    DropReason.NO_LOCAL_BACKEND: "No node-local service backend",
    DropReason.NO_FIB: "FIB lookup failed",
    DropReason.SNAT_NO_PORT: "No free SNAT port",
}


class MetricReason(IntEnum):
    """enum metric_reason (METRIC_*): the non-drop reasons of the metrics map (drops are >= 130)."""

    FORWARDED = 0
    EVENTS_LOST = 1


class MetricDir(IntEnum):
    """enum metric_dir (METRIC_*): direction of a metrics entry."""

    INGRESS = 0
    EGRESS = 1


class EventType(IntEnum):
    """enum event_type (EVENT_*): flow_event.type."""

    TRACE = 1
    DROP = 2
    POLICY_VERDICT = 3
    SOCK = 4


class ObsPoint(IntEnum):
    """enum obs_point (OBS_*): where an event was observed."""

    FROM_ENDPOINT = 1
    TO_ENDPOINT = 2
    FROM_NETWORK = 3
    TO_NETWORK = 4
    SOCK_CONNECT = 5
    SOCK_SENDMSG = 6


class Verdict(IntEnum):
    """enum verdict (VERDICT_*): flow_event.verdict."""

    FORWARDED = 1
    DROPPED = 2
    AUDIT = 3
    TRANSLATED = 4


class EventFlag(IntFlag):
    """enum event_flags (EV_F_*): flow_event.flags."""

    REPLY = 1 << 0
    NEW_CT = 1 << 1
    POLICY_L3 = 1 << 2
    POLICY_L4 = 1 << 3
    POLICY_ANY_PEER = 1 << 4
    POLICY_DEFAULT = 1 << 5
    REV_NAT = 1 << 6
    RELATED = 1 << 7


class TcpFlag(IntFlag):
    """enum tcp_flag_bits (TCP_F_*): TCP flags as on the wire."""

    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20


class SvcFlag(IntFlag):
    """enum svc_flags (SVC_*): lb4_service.flags of a frontend (slot 0)."""

    CLUSTERIP = 1 << 0
    NODEPORT = 1 << 1
    EXTERNAL_IP = 1 << 2
    LOADBALANCER = 1 << 3
    AFFINITY = 1 << 4
    SOURCE_RANGE = 1 << 5
    MAGLEV = 1 << 6
    TWO_SCOPES = 1 << 7
    LOCAL_ONLY_EXT = 1 << 8
    LOCAL_ONLY_INT = 1 << 9


class LbScope(IntEnum):
    """enum lb_scope (LB_SCOPE_*): lb4_key.scope."""

    EXT = 0
    INT = 1


class BackendState(IntEnum):
    """enum backend_state (BE_*): lb4_backend.state."""

    ACTIVE = 0
    TERMINATING = 1
    QUARANTINED = 2


class CtDir(IntEnum):
    """enum ct_dir (CT_*): ct4_key.dir."""

    EGRESS = 0
    INGRESS = 1
    SERVICE = 2
    NODEPORT = 3


class CtFlag(IntFlag):
    """enum ct_flags (CT_F_*): ct4_entry.flags."""

    CLOSING = 1 << 0
    SEEN_REPLY = 1 << 1
    NODEPORT = 1 << 2
    AUDIT = 1 << 3
    NO_UPLINK_NAT = 1 << 4


class EndpointFlag(IntFlag):
    """enum ep_flags (EP_*): endpoint_info.flags."""

    POLICY_INGRESS = 1 << 0
    POLICY_EGRESS = 1 << 1
    POLICY_AUDIT = 1 << 2


class PolicyDir(IntEnum):
    """enum policy_dir (POLICY_*): policy_key.direction."""

    INGRESS = 0
    EGRESS = 1


class PolicyFlag(IntFlag):
    """enum policy_flags (POLICY_*): policy_entry.flags."""

    L4 = 1 << 2


class ReservedIdentity(IntEnum):
    """enum reserved_identity (IDENTITY_*): fixed identities; allocated ones start at FIRST_ALLOCATED."""

    ANY = 0
    HOST = 1
    WORLD = 2
    UNMANAGED = 3
    HEALTH = 4
    INIT = 5
    REMOTE_NODE = 6
    FIRST_ALLOCATED = 256


class ProcEventType(IntEnum):
    """enum proc_event_type (PROC_*): process_event.type."""

    EXEC = 1
    EXIT = 2
    FORK = 4
    TRACEPOINT = 8


class ProcEventFlag(IntFlag):
    """enum proc_event_flags (PROC_F_*): process_event.flags."""

    ARGS_TRUNC = 1
    ARGS_ERROR = 2
    CWD_TRUNC = 4


class GuardHook(IntEnum):
    """enum guard_hook (GUARD_HOOK_*): the cgroup hook a guard rule (and its events) belong to."""

    CONNECT = 1
    SENDMSG = 2
    SOCK_CREATE = 3
    SYSCTL = 4
    DEV = 5


class GuardAction(IntEnum):
    """enum guard_action (GUARD_*): what a matching guard rule does."""

    DENY = 1
    AUDIT = 2


class GuardSysctlAccess(IntFlag):
    """enum guard_sysctl_access (GUARD_SYSCTL_*): guard_rule.access of sysctl rules."""

    READ = 1
    WRITE = 2


class RtAction(IntEnum):
    """enum rt_action (RT_ACTION_*): what an exec policy did (process_event.action; larger wins)."""

    NONE = 0
    NOPOST = 1
    POST = 2
    SIGNAL = 3
    SIGKILL = 4


class RtMatchOp(IntEnum):
    """enum rt_match_op (RT_MATCH_*): rt_rule.bin_op and pid_op."""

    ANY = 0
    IN = 1
    NOT_IN = 2
    PREFIX = 3
    POSTFIX = 4
    EQ = 5
    GT = 6
    LT = 7


class RtHook(IntEnum):
    """enum rt_hook (RT_HOOK_*): the tracepoint of a rule (rt_rule.hook, process_event.hook)."""

    EXEC = 0
    OPENAT = 1
    SETUID = 2
    PTRACE = 3
    MOUNT = 4
    EXECVE = 5
    OPEN = 6


class SnatDir(IntEnum):
    """enum snat_dir (SNAT_*): snat4_key.dir."""

    OUT = 0
    IN = 1


class NodeFlag(IntFlag):
    """enum node_flags (NODE_F_*): node_config.flags."""

    HOST_ROUTING = 1


C_ENUMS: dict[str, tuple[type[IntEnum] | type[IntFlag], str]] = {
    "drop_reason": (DropReason, "DROP_"),
    "metric_reason": (MetricReason, "METRIC_"),
    "metric_dir": (MetricDir, "METRIC_"),
    "event_type": (EventType, "EVENT_"),
    "obs_point": (ObsPoint, "OBS_"),
    "verdict": (Verdict, "VERDICT_"),
    "event_flags": (EventFlag, "EV_F_"),
    "tcp_flag_bits": (TcpFlag, "TCP_F_"),
    "svc_flags": (SvcFlag, "SVC_"),
    "lb_scope": (LbScope, "LB_SCOPE_"),
    "backend_state": (BackendState, "BE_"),
    "ct_dir": (CtDir, "CT_"),
    "ct_flags": (CtFlag, "CT_F_"),
    "ep_flags": (EndpointFlag, "EP_"),
    "policy_dir": (PolicyDir, "POLICY_"),
    "policy_flags": (PolicyFlag, "POLICY_"),
    "reserved_identity": (ReservedIdentity, "IDENTITY_"),
    "proc_event_type": (ProcEventType, "PROC_"),
    "proc_event_flags": (ProcEventFlag, "PROC_F_"),
    "rt_action": (RtAction, "RT_ACTION_"),
    "rt_match_op": (RtMatchOp, "RT_MATCH_"),
    "rt_hook": (RtHook, "RT_HOOK_"),
    "snat_dir": (SnatDir, "SNAT_"),
    "guard_hook": (GuardHook, "GUARD_HOOK_"),
    "guard_action": (GuardAction, "GUARD_"),
    "guard_sysctl_access": (GuardSysctlAccess, "GUARD_SYSCTL_"),
    "node_flags": (NodeFlag, "NODE_F_"),
}
"""C enum name -> (Python enum, prefix of the C constant names)."""


# --- service load balancing -------------------------------------------------------------------------


class Lb4Key(Structure):
    """struct lb4_key: lb4_services key (slot 0 = frontend, 1..count = backends)."""

    _fields_ = [
        ("address", BE32),
        ("dport", BE16),
        ("backend_slot", c_uint16),
        ("proto", c_uint8),
        ("scope", c_uint8),
        ("pad", c_uint8 * 2),
    ]


class Lb4Service(Structure):
    """struct lb4_service: lb4_services value."""

    _fields_ = [
        ("backend_id", c_uint32),
        ("affinity_timeout", c_uint32),
        ("count", c_uint16),
        ("rev_nat_index", c_uint16),
        ("flags", c_uint16),
        ("pad", c_uint16),
    ]


class Lb4Backend(Structure):
    """struct lb4_backend: lb4_backends value (key: __u32 backend id)."""

    _fields_ = [("address", BE32), ("port", BE16), ("proto", c_uint8), ("state", c_uint8)]


class Lb4ReverseNat(Structure):
    """struct lb4_reverse_nat: lb4_revnat value (key: __u16 rev_nat_index)."""

    _fields_ = [("address", BE32), ("port", BE16), ("pad", c_uint16)]


class Lb4AffinityKey(Structure):
    """struct lb4_affinity_key: lb4_affinity key."""

    _fields_ = [
        ("client", c_uint64),
        ("rev_nat_index", c_uint16),
        ("netns_cookie", c_uint8),
        ("pad", c_uint8 * 5),
    ]


class Lb4AffinityVal(Structure):
    """struct lb4_affinity_val: lb4_affinity value."""

    _fields_ = [("last_used_ns", c_uint64), ("backend_id", c_uint32), ("pad", c_uint32)]


class Lb4SrcRangeKey(Structure):
    """struct lb4_src_range_key: lb4_src_range LPM key (value: __u8)."""

    _fields_ = [("prefixlen", c_uint32), ("rev_nat_index", c_uint16), ("pad", c_uint16), ("address", BE32)]


class Lb4MaglevLut(Structure):
    """struct lb4_maglev_lut: lb4_maglev value (key: __u16 rev_nat_index)."""

    _fields_ = [("backend_ids", c_uint32 * LB_MAGLEV_LUT_SIZE)]


class Lb4SockRevnatKey(Structure):
    """struct lb4_sock_revnat_key: lb4_sock_revnat key."""

    _fields_ = [("cookie", c_uint64), ("address", BE32), ("port", BE16), ("pad", c_uint16)]


class Lb4SockRevnatVal(Structure):
    """struct lb4_sock_revnat_val: lb4_sock_revnat value."""

    _fields_ = [("address", BE32), ("port", BE16), ("rev_nat_index", c_uint16)]


class Lb4SockRevnatSk(Structure):
    """struct lb4_sock_revnat_sk: lb4_sock_revnat_sk value (socket-local storage, no user-space view)."""

    _fields_ = [("backend_address", BE32), ("address", BE32), ("backend_port", BE16), ("port", BE16),
                ("rev_nat_index", c_uint16), ("pad", c_uint16)]


# --- conntrack --------------------------------------------------------------------------------------


class Ct4Key(Structure):
    """struct ct4_key: ct4 key."""

    _fields_ = [
        ("saddr", BE32),
        ("daddr", BE32),
        ("sport", BE16),
        ("dport", BE16),
        ("proto", c_uint8),
        ("dir", c_uint8),
        ("pad", c_uint16),
    ]


class Ct4Entry(Structure):
    """struct ct4_entry: ct4 value."""

    _fields_ = [
        ("created_ns", c_uint64),
        ("last_seen_ns", c_uint64),
        ("last_report_ns", c_uint64),
        ("packets", c_uint64),
        ("bytes", c_uint64),
        ("rx_packets", c_uint64),
        ("rx_bytes", c_uint64),
        ("nat_addr", BE32),
        ("nat_port", BE16),
        ("rev_nat_index", c_uint16),
        ("src_identity", c_uint32),
        ("dst_identity", c_uint32),
        ("policy_id", c_uint32),
        ("backend_id", c_uint32),
        ("tx_flags_seen", c_uint8),
        ("rx_flags_seen", c_uint8),
        ("flags", c_uint8),
        ("pad", c_uint8),
    ]


class Ipv4FragKey(Structure):
    """struct ipv4_frag_key: ipv4_frags key."""

    _fields_ = [("saddr", BE32), ("daddr", BE32), ("id", BE16), ("proto", c_uint8), ("pad", c_uint8)]


class Ipv4FragPorts(Structure):
    """struct ipv4_frag_ports: ipv4_frags value."""

    _fields_ = [("sport", BE16), ("dport", BE16)]


# --- NodePort SNAT ---------------------------------------------------------------------------------


class Snat4Key(Structure):
    """struct snat4_key: snat4 key (a tuple as the packet travels; dir is SnatDir)."""

    _fields_ = [
        ("saddr", BE32),
        ("daddr", BE32),
        ("sport", BE16),
        ("dport", BE16),
        ("proto", c_uint8),
        ("dir", c_uint8),
        ("pad", c_uint16),
    ]


class Snat4Entry(Structure):
    """struct snat4_entry: snat4 value (SNAT_OUT: node address and port; SNAT_IN: the client)."""

    _fields_ = [("created_ns", c_uint64), ("addr", BE32), ("port", BE16), ("pad", c_uint16)]


class NodeConfig(Structure):
    """struct node_config: node_config value (key: __u32 0)."""

    _fields_ = [("snat_addr", BE32), ("snat_port_min", c_uint16), ("snat_port_max", c_uint16),
                ("flags", c_uint32)]


# --- identity, endpoints, policy --------------------------------------------------------------------


class IpcacheKey(Structure):
    """struct ipcache_key: ipcache LPM key (prefixlen = CIDR length)."""

    _fields_ = [("prefixlen", c_uint32), ("ip", BE32)]


class IpcacheInfo(Structure):
    """struct ipcache_info: ipcache value."""

    _fields_ = [("identity", c_uint32), ("tunnel_endpoint", BE32), ("flags", c_uint32)]


class TunnelConfig(Structure):
    """struct tunnel_config: tunnel_config value (key 0): the VXLAN device, 0 in native routing."""

    _fields_ = [("ifindex", c_uint32), ("pad", c_uint32)]


class EndpointInfo(Structure):
    """struct endpoint_info: lxc_endpoints value (key: __be32 pod IPv4)."""

    _fields_ = [
        ("ifindex", c_uint32),
        ("identity", c_uint32),
        ("ep_id", c_uint16),
        ("flags", c_uint8),
        ("pad", c_uint8),
        ("mac", c_uint8 * 6),
        ("node_mac", c_uint8 * 6),
    ]


class PolicyKey(Structure):
    """struct policy_key: policy LPM key (64 = any proto/port, 80 = proto, 80 + N = N port bits)."""

    _fields_ = [
        ("prefixlen", c_uint32),
        ("ep_id", c_uint16),
        ("direction", c_uint8),
        ("pad0", c_uint8),
        ("identity", c_uint32),
        ("proto", c_uint8),
        ("pad1", c_uint8),
        ("dport", BE16),
    ]


class PolicyEntry(Structure):
    """struct policy_entry: policy value."""

    _fields_ = [("flags", c_uint32), ("policy_id", c_uint32)]


# --- observability ----------------------------------------------------------------------------------


class MetricsKey(Structure):
    """struct metrics_key: metrics key (reason: MetricReason or DropReason)."""

    _fields_ = [("reason", c_uint16), ("direction", c_uint8), ("pad", c_uint8 * 5)]


class MetricsValue(Structure):
    """struct metrics_value: metrics value (one per CPU)."""

    _fields_ = [("packets", c_uint64), ("bytes", c_uint64)]


class FlowEvent(Structure):
    """struct flow_event: a record of the events ring buffer (64 bytes)."""

    _fields_ = [
        ("ts_ns", c_uint64),
        ("cookie", c_uint64),
        ("saddr", BE32),
        ("daddr", BE32),
        ("orig_daddr", BE32),
        ("sport", BE16),
        ("dport", BE16),
        ("orig_dport", BE16),
        ("rev_nat_index", c_uint16),
        ("src_identity", c_uint32),
        ("dst_identity", c_uint32),
        ("policy_id", c_uint32),
        ("ifindex", c_uint32),
        ("bytes", c_uint32),
        ("drop_reason", c_uint16),
        ("type", c_uint8),
        ("obs_point", c_uint8),
        ("proto", c_uint8),
        ("tcp_flags", c_uint8),
        ("verdict", c_uint8),
        ("flags", c_uint8),
    ]


class ProcessEvent(Structure):
    """struct process_event: a record of the proc_events ring buffer."""

    _fields_ = [
        ("ts_ns", c_uint64),
        ("cgroup_id", c_uint64),
        ("netns_ino", c_uint32),
        ("pid", c_uint32),
        ("tid", c_uint32),
        ("ppid", c_uint32),
        ("uid", c_uint32),
        ("exit_code", c_int32),
        ("type", c_uint8),
        ("flags", c_uint8),
        ("action", c_uint8),
        ("hook", c_uint8),
        ("args_len", c_uint32),
        ("cwd_depth", c_uint8),
        ("pad", c_uint8),
        ("policy", c_uint16),
        ("comm", c_char * 16),
        ("filename", c_char * 256),
        ("args", c_char * 512),
        ("cwd", c_char * PROC_CWD_NAME * PROC_CWD_DEPTH),
    ]


class SockEvent(Structure):
    """struct sock_event: a record of the proc_sock_events ring buffer."""

    _fields_ = [
        ("ts_ns", c_uint64),
        ("netns_ino", c_uint32),
        ("pid", c_uint32),
        ("saddr", BE32),
        ("daddr", BE32),
        ("sport", BE16),
        ("dport", BE16),
        ("old_state", c_uint8),
        ("new_state", c_uint8),
        ("protocol", c_uint8),
        ("pad", c_uint8),
    ]


class RtRule(Structure):
    """struct rt_rule: one selector of an exec tracing policy (rt_rules value)."""

    _fields_ = [
        ("policy_rules", c_uint64),
        ("policy", c_uint32),
        ("action", c_uint8),
        ("signal", c_uint8),
        ("bin_op", c_uint8),
        ("binset", c_uint8),
        ("pid_op", c_uint8),
        ("pid_follow", c_uint8),
        ("npids", c_uint8),
        ("hook", c_uint8),
        ("arg_op", c_uint8),
        ("argset", c_uint8),
        ("arg_pos", c_uint8),
        ("arg_nnums", c_uint8),
        ("pids", c_uint32 * RT_MAX_PIDS),
        ("arg_nums", c_int64 * RT_MAX_ARG_NUMS),
        ("report_str", c_uint8 * 2),
        ("pad", c_uint8 * 6),
    ]


class RtConfig(Structure):
    """struct rt_config: the rules that apply to every process of the node."""

    _fields_ = [("global_rules", c_uint64), ("rule_span", c_uint32), ("pad", c_uint32),
                ("bin_in_rules", c_uint64)]


class RtPath(Structure):
    """struct rt_path: an exact binary path key (rt_bin_paths), zero-padded."""

    _fields_ = [("path", c_char * RT_PATH_MAX)]


class RtPathLpm(Structure):
    """struct rt_path_lpm: a binary path prefix key of the rt_bin_prefixes LPM trie (prefixlen in bits)."""

    _fields_ = [("prefixlen", c_uint32), ("path", c_char * RT_PATH_MAX)]


class ProcConfig(Structure):
    """struct proc_config: the one proc_config entry (the monitored cgroup subtree)."""

    _fields_ = [("cgroup_id", c_uint64), ("level", c_uint32), ("pad", c_uint32)]


class GuardRule(Structure):
    """struct guard_rule: a guard_rules slot (a zero field matches anything unless types.h says otherwise)."""

    _fields_ = [
        ("binsets", c_uint64),
        ("policy", c_uint32),
        ("hook", c_uint8),
        ("action", c_uint8),
        ("access", c_uint8),
        ("dev_type", c_uint8),
        ("protocol", c_uint16),
        ("family", c_uint16),
        ("sock_type", c_uint16),
        ("port_lo", c_uint16),
        ("port_hi", c_uint16),
        ("name_len", c_uint16),
        ("major", c_int32),
        ("minor", c_int32),
        ("name_prefix", c_char * GUARD_NAME_MAX),
        ("pad", c_uint32),
    ]


class GuardScopeKey(Structure):
    """struct guard_scope_key: (cgroup id, hook) of guard_scope; cgroup id 0 is every cgroup."""

    _fields_ = [("cgroup_id", c_uint64), ("hook", c_uint32), ("pad", c_uint32)]


class GuardCidr4Key(Structure):
    """struct guard_cidr4_key: an LPM key of guard_cidr4."""

    _fields_ = [("prefixlen", c_uint32), ("addr", BE32)]


class GuardCidr6Key(Structure):
    """struct guard_cidr6_key: an LPM key of guard_cidr6."""

    _fields_ = [("prefixlen", c_uint32), ("addr", c_uint8 * 16)]


class GuardEvent(Structure):
    """struct guard_event: a record of the guard_events ring buffer."""

    _fields_ = [
        ("ts_ns", c_uint64),
        ("cgroup_id", c_uint64),
        ("pid", c_uint32),
        ("tid", c_uint32),
        ("uid", c_uint32),
        ("policy", c_uint32),
        ("hook", c_uint8),
        ("action", c_uint8),
        ("slot", c_uint8),
        ("access", c_uint8),
        ("family", c_uint16),
        ("sock_type", c_uint16),
        ("protocol", c_uint16),
        ("port", c_uint16),
        ("major", c_uint32),
        ("minor", c_uint32),
        ("addr", c_uint8 * 16),
        ("comm", c_char * 16),
        ("name", c_char * GUARD_NAME_MAX),
        ("pad", c_uint32),
    ]


C_STRUCTS: dict[str, type[Structure]] = {
    "lb4_key": Lb4Key,
    "lb4_service": Lb4Service,
    "lb4_backend": Lb4Backend,
    "lb4_reverse_nat": Lb4ReverseNat,
    "lb4_affinity_key": Lb4AffinityKey,
    "lb4_affinity_val": Lb4AffinityVal,
    "lb4_src_range_key": Lb4SrcRangeKey,
    "lb4_maglev_lut": Lb4MaglevLut,
    "lb4_sock_revnat_key": Lb4SockRevnatKey,
    "lb4_sock_revnat_val": Lb4SockRevnatVal,
    "lb4_sock_revnat_sk": Lb4SockRevnatSk,
    "ct4_key": Ct4Key,
    "ct4_entry": Ct4Entry,
    "ipv4_frag_key": Ipv4FragKey,
    "ipv4_frag_ports": Ipv4FragPorts,
    "ipcache_key": IpcacheKey,
    "ipcache_info": IpcacheInfo,
    "tunnel_config": TunnelConfig,
    "endpoint_info": EndpointInfo,
    "policy_key": PolicyKey,
    "policy_entry": PolicyEntry,
    "metrics_key": MetricsKey,
    "metrics_value": MetricsValue,
    "flow_event": FlowEvent,
    "process_event": ProcessEvent,
    "proc_config": ProcConfig,
    "rt_rule": RtRule,
    "rt_config": RtConfig,
    "rt_path": RtPath,
    "rt_path_lpm": RtPathLpm,
    "sock_event": SockEvent,
    "snat4_key": Snat4Key,
    "snat4_entry": Snat4Entry,
    "node_config": NodeConfig,
    "guard_rule": GuardRule,
    "guard_scope_key": GuardScopeKey,
    "guard_cidr4_key": GuardCidr4Key,
    "guard_cidr6_key": GuardCidr6Key,
    "guard_event": GuardEvent,
}
"""Every struct of types.h by its C name."""


# --- numpy dtypes for the ring buffer readers -------------------------------------------------------


def _numpy_format(ctype: Any) -> Any:
    """The numpy format of a ctypes field type (big-endian for __be16/__be32)."""
    if issubclass(ctype, ctypes.Array):
        if ctype._type_ is c_char:
            return f"S{ctype._length_}"
        return (_numpy_format(ctype._type_), (ctype._length_,))
    size = ctypes.sizeof(ctype)
    kind = "i" if ctype in (c_int32,) else "u"
    order = ">" if ctype in (BE16, BE32) else "<"
    return f"{order}{kind}{size}"


def numpy_dtype(struct: type[Structure]) -> np.dtype[np.void]:
    """A numpy structured dtype with exactly the layout (names, offsets, size) of a ctypes struct."""
    fields: list[tuple[str, Any]] = struct._fields_  # type: ignore[assignment]
    return np.dtype({
        "names": [name for name, _ in fields],
        "formats": [_numpy_format(ctype) for _, ctype in fields],
        "offsets": [getattr(struct, name).offset for name, _ in fields],
        "itemsize": ctypes.sizeof(struct),
    })


FLOW_EVENT_DTYPE: np.dtype[np.void] = numpy_dtype(FlowEvent)
"""struct flow_event as a numpy dtype (address/port fields are big-endian: values are host integers)."""

PROCESS_EVENT_DTYPE: np.dtype[np.void] = numpy_dtype(ProcessEvent)
"""struct process_event as a numpy dtype."""

SOCK_EVENT_DTYPE: np.dtype[np.void] = numpy_dtype(SockEvent)
"""struct sock_event as a numpy dtype."""

GUARD_EVENT_DTYPE: np.dtype[np.void] = numpy_dtype(GuardEvent)
"""struct guard_event as a numpy dtype."""
