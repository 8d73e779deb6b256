"""Tracing policies on the hooks a cgroup hook can refuse → guard.bpf.o's rules (pure, no kernel needed).

A selector of `syscalls/sys_enter_connect` becomes connect rules, of `sys_enter_sendto`/`sys_enter_sendmsg`
sendmsg rules (UDP datagrams that carry their destination), of `sys_enter_socket` sock_create rules, and of
Velvet's own `cgroup/sysctl` and `cgroup/dev` events sysctl and device rules: Override denies (EPERM),
Post audits. matchBinaries is the binary set the tracing compiler numbered (`guard_binaries` are passed to
it as `extra_binaries`); the pods are the tracing policies' (`selected_cgroups`). Several values of one
operator are alternatives: one rule each. A policy whose rules do not fit in the guard's slots is a named
problem and is left out whole.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from velvet.control.tracing import CompiledTracing, PodScope, TracingPolicy, policy_name, selected_cgroups
from velvet.datapath.structs import GUARD_RULES_MAX, GuardAction, GuardHook
from velvet.model.tracing import (
    ADDRESS_HOOKS,
    CONNECT_HOOK,
    DEV_HOOK,
    FAMILIES,
    GUARD_HOOKS,
    PROTOCOLS,
    SOCKET_HOOK,
    SOCKET_TYPES,
    SYSCTL_HOOK,
    BinarySelector,
    TracingSelector,
    parse_cidr,
    parse_number,
    parse_ports,
)
from velvet.runtime.guard_rules import AddressMatch, DenyRule, DeviceMatch, Match, SocketMatch, SysctlMatch

_EVERYWHERE = {2: "0.0.0.0/0", 10: "::/0"}


@dataclass
class GuardPlan:
    """The guard's rules for the node's policies, the policies' names by index, and what did not fit."""

    rules: list[DenyRule] = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def guard_binaries(policies: Sequence[TracingPolicy]) -> list[BinarySelector]:
    """The matchBinaries of the policies' cgroup-hook selectors (binary sets the tracing compiler keeps)."""
    return [binaries for _, _, selector in _guard_selectors(policies) for binaries in selector.match_binaries]


def compile_guard(policies: Sequence[TracingPolicy], pods: Sequence[PodScope],
                  tracing: CompiledTracing) -> GuardPlan:
    """The rules of every policy's cgroup-hook selectors, numbered by the tracing compiler's policy index."""
    index_of = {name: index for index, name in tracing.names.items()}
    plan = GuardPlan()
    for policy in sorted(policies, key=policy_name):
        selectors = [(hook, s) for p, hook, s in _guard_selectors([policy])]
        name = policy_name(policy)
        if not selectors:
            continue
        if name not in index_of:
            continue  # the tracing compiler named the problem
        targets = selected_cgroups(policy, pods)
        if targets == []:
            continue  # no pod of this node is selected: nothing to enforce here
        cgroups = frozenset(targets or ())
        try:
            rules = [rule for hook, selector in selectors
                     for rule in _rules(hook, selector, index_of[name], cgroups, tracing)]
        except KeyError:
            plan.problems.append(f"tracing policy {name} is not enforced: the node's binary sets are full")
            continue
        if len(plan.rules) + len(rules) > GUARD_RULES_MAX:
            free = GUARD_RULES_MAX - len(plan.rules)
            plan.problems.append(f"tracing policy {name} is not enforced: it needs {len(rules)} cgroup-hook "
                                 f"rules and {free} of {GUARD_RULES_MAX} are free")
            continue
        plan.rules.extend(rules)
        plan.names[index_of[name]] = name
    return plan


def _guard_selectors(policies: Sequence[TracingPolicy]) -> list[tuple[TracingPolicy, tuple[str, str],
                                                                      TracingSelector]]:
    """Each policy's selectors on cgroup-hook tracepoints (a tracepoint without selectors: one that matches
    every call, Post)."""
    return [(policy, (tp.subsystem, tp.event), selector)
            for policy in policies for tp in policy.spec.tracepoints
            if (tp.subsystem, tp.event) in GUARD_HOOKS
            for selector in tp.selectors or (TracingSelector(),)]


def _rules(hook: tuple[str, str], selector: TracingSelector, policy: int, cgroups: frozenset[int],
           tracing: CompiledTracing) -> list[DenyRule]:
    """The rules of one selector: one per alternative of its matchArgs values."""
    deny = any(a.action == "Override" for a in selector.match_actions)
    binsets = 0
    for binaries in selector.match_binaries:
        binsets |= 1 << tracing.binary_set(binaries).index
    guard_hook = (GuardHook.CONNECT if hook == CONNECT_HOOK else GuardHook.SENDMSG if hook in ADDRESS_HOOKS
                  else GuardHook.SOCK_CREATE if hook == SOCKET_HOOK else GuardHook.SYSCTL
                  if hook == SYSCTL_HOOK else GuardHook.DEV)
    action = GuardAction.DENY if deny else GuardAction.AUDIT
    return [DenyRule(policy, guard_hook, match, binsets, cgroups, action)
            for match in _matches(hook, selector)]


def _values(selector: TracingSelector, operator: str, index: int | None = None) -> list[str]:
    """The values of the selector's matchArgs entry with `operator` (and field `index`); [] if none."""
    return [v for a in selector.match_args if a.operator == operator and index in (None, a.index)
            for v in a.values]


def _matches(hook: tuple[str, str], selector: TracingSelector) -> list[Match]:
    """What the guard compares for one selector, as the alternatives its values give."""
    if hook in ADDRESS_HOOKS:
        return _address_matches(selector)
    if hook == SOCKET_HOOK:
        numbers = [[parse_number(v, names, what) for v in _values(selector, "Equal", index)] or [0]
                   for index, names, what in ((5, FAMILIES, "family"), (6, SOCKET_TYPES, "type"),
                                              (7, PROTOCOLS, "protocol"))]
        return [SocketMatch(f, t, p) for f, t, p in itertools.product(*numbers)]
    if hook == SYSCTL_HOOK:
        writes = set(_values(selector, "Equal", 1)) or {"0", "1"}
        return [SysctlMatch(prefix, reads="0" in writes, writes="1" in writes)
                for prefix in _values(selector, "Prefix", 0) or [""]]
    assert hook == DEV_HOOK
    majors: list[int | None] = [int(v) for v in _values(selector, "Equal", 1)] or [None]
    minors: list[int | None] = [int(v) for v in _values(selector, "Equal", 2)] or [None]
    kinds, accesses = _values(selector, "Equal", 0) or [""], _values(selector, "Equal", 3) or ["rwm"]
    return [DeviceMatch(kind, major, minor, access)
            for kind, major, minor, access in itertools.product(kinds, majors, minors, accesses)]


def _address_matches(selector: TracingSelector) -> list[Match]:
    """DAddr prefixes (of the Family given), each DPort range, each Protocol: one rule per range and
    protocol; a Family without DAddr is every address of that family."""
    families = {parse_number(v, FAMILIES, "family") for v in _values(selector, "Family")}
    cidrs = [parse_cidr(v) for v in _values(selector, "DAddr")]
    if families and cidrs:
        cidrs = [c for c in cidrs if (10 if ":" in c else 2) in families]
        if not cidrs:
            return []  # no prefix of the families asked for: the selector never matches
    elif families and len(families) == 1:
        cidrs = [_EVERYWHERE[next(iter(families))]]
    ports = [parse_ports(v) for v in _values(selector, "DPort")] or [(0, 65535)]
    protocols = [parse_number(v, PROTOCOLS, "protocol") for v in _values(selector, "Protocol")] or [0]
    return [AddressMatch(tuple(cidrs), port, protocol)
            for port, protocol in itertools.product(ports, protocols)]
