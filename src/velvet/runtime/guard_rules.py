"""Runtime enforcement rules for guard.bpf.o's cgroup hooks, and what they become in its maps (pure).

A `DenyRule` says: for the processes of these cgroups (none: every process under the node's cgroup)
whose binary is in one of these binary sets (proc_binsets bits; 0: any binary), refuse (EPERM) or
audit the operations of one hook that its match describes; events name `policy`. `compile_rules`
places the rules in the 64 slots of guard_rules, keeping the slots of rules already placed, and gives
the full contents of every rule map as raw bytes, which the kernel side diffs against the maps.
No kernel feature is needed here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from velvet.datapath.structs import (
    GUARD_NAME_MAX,
    GUARD_RULES_MAX,
    GuardAction,
    GuardCidr4Key,
    GuardCidr6Key,
    GuardHook,
    GuardRule,
    GuardScopeKey,
    GuardSysctlAccess,
)
from velvet.errors import InvalidRule

IPPROTO_TCP, IPPROTO_UDP = 6, 17
DEV_BLOCK, DEV_CHAR = 1, 2  # BPF_DEVCG_DEV_*
ACC_MKNOD, ACC_READ, ACC_WRITE = 1, 2, 4  # BPF_DEVCG_ACC_*
_DEV_ACCESS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}
_DEV_TYPES = {"": 0, "b": DEV_BLOCK, "c": DEV_CHAR}
MAPS = ("guard_rules", "guard_scope", "guard_cidr4", "guard_cidr6")
Contents = dict[bytes, bytes]


@dataclass(frozen=True)
class AddressMatch:
    """connect()/sendmsg() destinations: prefixes of either family (none: every address), a port range
    (inclusive) and a protocol (IPPROTO_TCP/UDP; 0: any)."""

    cidrs: tuple[str, ...] = ()
    ports: tuple[int, int] = (0, 65535)
    protocol: int = 0


@dataclass(frozen=True)
class SocketMatch:
    """socket() of AF_INET/AF_INET6 sockets by family, type (SOCK_*) and protocol; 0 matches any."""

    family: int = 0
    type: int = 0
    protocol: int = 0


@dataclass(frozen=True)
class SysctlMatch:
    """Accesses to the sysctls whose name begins with `prefix` ("net.ipv4." or "net/ipv4/"; "": all)."""

    prefix: str = ""
    reads: bool = False
    writes: bool = True


@dataclass(frozen=True)
class DeviceMatch:
    """Device accesses: type "c" or "b" ("": either), major and minor (None: any), access of "rwm"."""

    type: str = ""
    major: int | None = None
    minor: int | None = None
    access: str = "rwm"


Match = AddressMatch | SocketMatch | SysctlMatch | DeviceMatch
_MATCH_OF_HOOK: dict[GuardHook, type[Match]] = {
    GuardHook.CONNECT: AddressMatch, GuardHook.SENDMSG: AddressMatch, GuardHook.SOCK_CREATE: SocketMatch,
    GuardHook.SYSCTL: SysctlMatch, GuardHook.DEV: DeviceMatch,
}


@dataclass(frozen=True)
class DenyRule:
    """One rule of one hook: who (cgroups, binary sets), what (match), and what happens (action)."""

    policy: int
    hook: GuardHook
    match: Match
    binsets: int = 0
    cgroups: frozenset[int] = field(default_factory=frozenset)
    action: GuardAction = GuardAction.DENY

    def describe(self) -> str:
        """One line naming the rule, for errors."""
        return f"rule of policy {self.policy} ({self.hook.name.lower()})"


@dataclass
class Compiled:
    """The slot of every rule and the full contents of the rule maps (raw key bytes -> value bytes)."""

    slots: dict[DenyRule, int]
    maps: dict[str, Contents]


def compile_rules(rules: Iterable[DenyRule], previous: Mapping[DenyRule, int] | None = None) -> Compiled:
    """Place `rules` in slots (a rule kept keeps its slot; never-used slots before freed ones) and build
    every map's contents. Raises InvalidRule, naming the first bad rule, before anything is built."""
    unique = list(dict.fromkeys(rules))
    for rule in unique:
        _check(rule)
    slots = _assign_slots(unique, previous or {})
    contents: dict[str, Contents] = {name: {} for name in MAPS}
    for slot in range(GUARD_RULES_MAX):
        contents["guard_rules"][_u32(slot)] = bytes(GuardRule())
    scope: dict[tuple[int, int], int] = {}
    for rule, slot in slots.items():
        contents["guard_rules"][_u32(slot)] = bytes(_rule_value(rule))
        for cgroup in rule.cgroups or (0,):
            scope[(cgroup, rule.hook)] = scope.get((cgroup, rule.hook), 0) | 1 << slot
    for (cgroup, hook), bits in scope.items():
        contents["guard_scope"][bytes(GuardScopeKey(cgroup_id=cgroup, hook=hook))] = _u64(bits)
    for version, name in ((4, "guard_cidr4"), (6, "guard_cidr6")):
        for net, bits in _prefix_slots(slots, version).items():
            contents[name][bytes(_cidr_key(net))] = _u64(bits)
    return Compiled(slots, contents)


def _check(rule: DenyRule) -> None:
    """Raise InvalidRule when a rule cannot be programmed as given."""
    where = rule.describe()
    expected = _MATCH_OF_HOOK[rule.hook]
    if not isinstance(rule.match, expected):
        raise InvalidRule(where, f"a {rule.hook.name.lower()} rule takes {expected.__name__}, "
                                 f"not {type(rule.match).__name__}")
    if not 0 <= rule.policy < 2**32:
        raise InvalidRule(where, f"policy index {rule.policy} is not a u32")
    if not 0 <= rule.binsets < 2**64:
        raise InvalidRule(where, f"binary set mask {rule.binsets:#x} is not a u64")
    match = rule.match
    if isinstance(match, AddressMatch):
        low, high = match.ports
        if not 0 <= low <= high <= 65535:
            raise InvalidRule(where, f"port range {low}-{high} is not within 0-65535 in order")
        for cidr in match.cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise InvalidRule(where, f"destination {cidr!r}: {exc}") from None
    elif isinstance(match, SysctlMatch):
        if len(_sysctl_name(match.prefix)) >= GUARD_NAME_MAX:
            raise InvalidRule(where, f"sysctl prefix {match.prefix!r} is longer than "
                                     f"{GUARD_NAME_MAX - 1} bytes")
        if not (match.reads or match.writes):
            raise InvalidRule(where, "a sysctl rule must match reads, writes or both")
    elif isinstance(match, DeviceMatch):
        if match.type not in _DEV_TYPES:
            raise InvalidRule(where, f"device type {match.type!r} is not 'c', 'b' or ''")
        if not match.access or set(match.access) - set(_DEV_ACCESS):
            raise InvalidRule(where, f"device access {match.access!r} is not made of r, w and m")
        for what, number in (("major", match.major), ("minor", match.minor)):
            if number is not None and not 0 <= number < 2**31:
                raise InvalidRule(where, f"device {what} {number} is out of range")


def _assign_slots(rules: list[DenyRule], previous: Mapping[DenyRule, int]) -> dict[DenyRule, int]:
    """Keep the previous slot of every rule still there; new rules take never-used slots first."""
    if len(rules) > GUARD_RULES_MAX:
        raise InvalidRule(rules[GUARD_RULES_MAX].describe(),
                          f"{len(rules)} rules wanted, guard.bpf.o holds {GUARD_RULES_MAX}")
    slots = {rule: previous[rule] for rule in rules if rule in previous}
    taken = set(slots.values())
    freed = sorted(set(previous.values()) - taken)
    fresh = [s for s in range(GUARD_RULES_MAX) if s not in taken and s not in freed]
    free = iter(fresh + freed)
    for rule in rules:
        if rule not in slots:
            slots[rule] = next(free)
    return slots


def _sysctl_name(prefix: str) -> str:
    """A sysctl name as the kernel's bpf_sysctl_get_name gives it ("net/ipv4/ip_forward")."""
    return prefix.replace(".", "/")


def _rule_value(rule: DenyRule) -> GuardRule:
    """The guard_rules value of a rule."""
    value = GuardRule(binsets=rule.binsets, policy=rule.policy, hook=rule.hook, action=rule.action,
                      major=-1, minor=-1)
    match = rule.match
    if isinstance(match, AddressMatch):
        value.protocol = match.protocol
        value.port_lo, value.port_hi = match.ports
    elif isinstance(match, SocketMatch):
        value.family, value.sock_type, value.protocol = match.family, match.type, match.protocol
    elif isinstance(match, SysctlMatch):
        name = _sysctl_name(match.prefix).encode()
        value.name_prefix, value.name_len = name, len(name)
        value.access = (GuardSysctlAccess.READ if match.reads else 0) | (
            GuardSysctlAccess.WRITE if match.writes else 0)
    else:
        value.dev_type = _DEV_TYPES[match.type]
        value.major = -1 if match.major is None else match.major
        value.minor = -1 if match.minor is None else match.minor
        value.access = sum(_DEV_ACCESS[c] for c in set(match.access))
    return value


def _prefix_slots(slots: Mapping[DenyRule, int], version: int) -> dict[ipaddress.IPv4Network |
                                                                      ipaddress.IPv6Network, int]:
    """Every destination prefix of one family -> the slots of the address rules whose prefixes contain
    it (so the longest match of an address carries every rule that covers it); no prefix means all."""
    everything = ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0")
    per_rule: dict[int, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {}
    for rule, slot in slots.items():
        if isinstance(rule.match, AddressMatch):
            nets = [ipaddress.ip_network(c, strict=False) for c in rule.match.cidrs] or [everything]
            per_rule[slot] = [n for n in nets if n.version == version]
    found: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, int] = {}
    for net in {n for nets in per_rule.values() for n in nets}:
        bits = 0
        for slot, nets in per_rule.items():
            if any(_within(net, other) for other in nets):
                bits |= 1 << slot
        found[net] = bits
    return found


def _within(net: ipaddress.IPv4Network | ipaddress.IPv6Network,
            other: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Whether prefix `net` lies inside prefix `other` (both of one family)."""
    low, high = int(other.network_address), int(other.broadcast_address)
    return low <= int(net.network_address) and int(net.broadcast_address) <= high


def _cidr_key(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> GuardCidr4Key | GuardCidr6Key:
    """The LPM key of a prefix."""
    if net.version == 4:
        return GuardCidr4Key(prefixlen=net.prefixlen, addr=int(net.network_address))
    key = GuardCidr6Key(prefixlen=net.prefixlen)
    key.addr[:] = list(net.network_address.packed)
    return key


def _u32(value: int) -> bytes:
    """A __u32 as the kernel stores it (x86-64: little-endian)."""
    return value.to_bytes(4, "little")


def _u64(value: int) -> bytes:
    """A __u64 as the kernel stores it."""
    return value.to_bytes(8, "little")
