"""Tests of the runtime enforcement rules' compiler (slots, scopes, prefixes) and of the denial events'
JSON, without a kernel: records are built with the ring's numpy dtype."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from velvet.datapath.structs import (
    GUARD_EVENT_DTYPE,
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
from velvet.observe.enrich import DictResolver, EndpointInfo
from velvet.runtime.guard_events import GuardEvents
from velvet.runtime.guard_rules import (
    AddressMatch,
    DenyRule,
    DeviceMatch,
    SocketMatch,
    SysctlMatch,
    compile_rules,
)
from velvet.runtime.monitor import ProcessMonitor


def connect(policy: int, *cidrs: str, ports: tuple[int, int] = (80, 80)) -> DenyRule:
    """A connect rule for TCP to the prefixes and ports."""
    return DenyRule(policy, GuardHook.CONNECT, AddressMatch(cidrs, ports, 6))


def prefixes4(maps: dict[str, dict[bytes, bytes]]) -> dict[str, int]:
    """guard_cidr4 as "a.b.c.d/len" -> slot bits."""
    out = {}
    for raw, value in maps["guard_cidr4"].items():
        key = GuardCidr4Key.from_buffer_copy(raw)
        address = socket.inet_ntoa(key.addr.to_bytes(4, "big"))
        out[f"{address}/{key.prefixlen}"] = int.from_bytes(value, "little")
    return out


def test_nested_prefixes_carry_every_rule_that_covers_them() -> None:
    """Test that a longer prefix's entry has the bits of the rules of the shorter prefixes containing it
    (the LPM lookup finds only the longest), and that a rule without prefixes covers every address of
    both families."""
    wide, narrow, anywhere = connect(1, "10.0.0.0/8"), connect(2, "10.1.0.0/16"), connect(3)
    compiled = compile_rules([wide, narrow, anywhere])
    slot = compiled.slots
    assert prefixes4(compiled.maps) == {
        "10.0.0.0/8": 1 << slot[wide] | 1 << slot[anywhere],
        "10.1.0.0/16": 1 << slot[wide] | 1 << slot[narrow] | 1 << slot[anywhere],
        "0.0.0.0/0": 1 << slot[anywhere],
    }
    assert list(compiled.maps["guard_cidr6"]) == [bytes(GuardCidr6Key(prefixlen=0))]


def test_slots_are_kept_and_new_rules_take_never_used_slots_first() -> None:
    """Test that a rule keeps its slot across compilations and a new rule does not reuse a slot freed in
    the same change (its old scopes may still point at it until they are rewritten)."""
    a, b, c = connect(1, "10.0.0.0/8"), connect(2, "10.2.0.0/16"), connect(3, "10.3.0.0/16")
    first = compile_rules([a, b])
    second = compile_rules([b, c], first.slots)
    assert second.slots[b] == first.slots[b]
    assert second.slots[c] not in first.slots.values()


def test_rule_values_and_scopes() -> None:
    """Test that each hook's match lands in the rule's fields and that scopes are per cgroup and hook
    (cgroup id 0 for every cgroup)."""
    rules = [
        DenyRule(4, GuardHook.SYSCTL, SysctlMatch("net.ipv4.", reads=True), binsets=0b101,
                 cgroups=frozenset({77, 78})),
        DenyRule(5, GuardHook.DEV, DeviceMatch("c", 1, None, "rw"), action=GuardAction.AUDIT),
        DenyRule(6, GuardHook.SOCK_CREATE, SocketMatch(socket.AF_INET, socket.SOCK_RAW)),
    ]
    compiled = compile_rules(rules)
    sysctl, dev, sock = (GuardRule.from_buffer_copy(compiled.maps["guard_rules"][
        compiled.slots[r].to_bytes(4, "little")]) for r in rules)
    assert (sysctl.name_prefix, sysctl.name_len, sysctl.binsets) == (b"net/ipv4/", 9, 0b101)
    assert sysctl.access == GuardSysctlAccess.READ | GuardSysctlAccess.WRITE
    assert (dev.dev_type, dev.major, dev.minor, dev.access) == (2, 1, -1, 2 | 4)
    assert dev.action == GuardAction.AUDIT
    assert (sock.family, sock.sock_type, sock.protocol) == (socket.AF_INET, socket.SOCK_RAW, 0)
    scopes = {(k.cgroup_id, k.hook): int.from_bytes(v, "little") for k, v in
              ((GuardScopeKey.from_buffer_copy(raw), v) for raw, v in compiled.maps["guard_scope"].items())}
    assert scopes == {(77, GuardHook.SYSCTL): 1 << compiled.slots[rules[0]],
                      (78, GuardHook.SYSCTL): 1 << compiled.slots[rules[0]],
                      (0, GuardHook.DEV): 1 << compiled.slots[rules[1]],
                      (0, GuardHook.SOCK_CREATE): 1 << compiled.slots[rules[2]]}
    assert len(compiled.maps["guard_rules"]) == GUARD_RULES_MAX  # every slot, empty ones zeroed


@pytest.mark.parametrize(("rule", "message"), [
    (DenyRule(1, GuardHook.CONNECT, SocketMatch()),
     "policy 1 (connect): a connect rule takes AddressMatch, not SocketMatch"),
    (DenyRule(2, GuardHook.CONNECT, AddressMatch(("10.0.0.0/33",))), "policy 2 (connect): destination"),
    (DenyRule(3, GuardHook.SENDMSG, AddressMatch(ports=(90, 80))), "port range 90-80"),
    (DenyRule(4, GuardHook.SYSCTL, SysctlMatch("x" * 64)), "longer than 63 bytes"),
    (DenyRule(5, GuardHook.DEV, DeviceMatch("x")), "device type 'x'"),
    (DenyRule(6, GuardHook.DEV, DeviceMatch(access="rx")), "device access 'rx'"),
])
def test_bad_rules_are_named(rule: DenyRule, message: str) -> None:
    """Test that a rule that cannot be programmed raises InvalidRule with the rule and the reason."""
    with pytest.raises(InvalidRule, match=message.replace("(", r"\(").replace(")", r"\)")):
        compile_rules([connect(9, "10.0.0.0/8"), rule])


def test_more_rules_than_slots_are_refused() -> None:
    """Test that more than GUARD_RULES_MAX distinct rules raise InvalidRule (equal rules count once)."""
    rules = [connect(i, "10.0.0.0/8") for i in range(GUARD_RULES_MAX)]
    assert len(compile_rules([*rules, rules[0]]).slots) == GUARD_RULES_MAX
    with pytest.raises(InvalidRule, match=f"{GUARD_RULES_MAX + 1} rules wanted"):
        compile_rules([*rules, connect(99)])


def test_events_are_tetragon_tracepoint_events_with_the_pod() -> None:
    """Test that a denial record becomes a process_tracepoint event with the policy's name and index,
    the hook, the operation's arguments, an override action, and a process attributed to its pod by
    cgroup when the monitor does not know it (the record's comm as binary)."""
    resolver = DictResolver()
    resolver.set_cgroup(42, "10.0.0.5")
    resolver.set_endpoint("10.0.0.5", EndpointInfo("shop", "cart-1", ("k8s:app=cart",)))
    events = GuardEvents("node-a", ProcessMonitor(None, resolver, "node-a", cgroup=None))
    events.policy_names = {3: "no-egress"}
    records = np.zeros(2, dtype=GUARD_EVENT_DTYPE)
    records[0]["pid"], records[0]["cgroup_id"], records[0]["policy"] = 2**31 - 2, 42, 3  # no such pid
    records[0]["hook"], records[0]["action"], records[0]["family"] = GuardHook.CONNECT, GuardAction.DENY, 10
    records[0]["port"], records[0]["protocol"], records[0]["comm"] = 443, 6, b"curl"
    records[0]["addr"] = list(socket.inet_pton(socket.AF_INET6, "2001:db8::1"))
    records[1]["hook"], records[1]["action"], records[1]["policy"] = GuardHook.SYSCTL, GuardAction.AUDIT, 4
    records[1]["access"], records[1]["name"] = GuardSysctlAccess.WRITE, b"kernel/hostname"
    first, second = (e["process_tracepoint"] for e in events.ingest(records))
    assert (first["event"], first["policy_name"], first["policy_index"], first["action"]) == (
        "connect6", "no-egress", 3, "KPROBE_ACTION_OVERRIDE")
    assert first["args"][0] == {"sockaddr_arg": {"family": "AF_INET6", "addr": "2001:db8::1", "port": 443}}
    assert first["message"] == "denied connect6 to 2001:db8::1:443/TCP"
    assert first["process"]["binary"] == "curl"
    assert first["process"]["pod"] == {"namespace": "shop", "name": "cart-1", "pod_labels": {"app": "cart"}}
    assert (second["event"], second["action"], second["policy_name"]) == ("sysctl", "KPROBE_ACTION_POST", "")
    assert second["message"] == "audited sysctl write of kernel.hostname"
    assert [e["process_tracepoint"]["event"] for e in events.query(namespace="shop")] == ["connect6"]
    assert [e["process_tracepoint"]["event"] for e in events.query(pod="cart-*")] == ["connect6"]
