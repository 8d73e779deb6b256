"""Tests of the agent's runtime enforcement (`runtime.enforce.Enforcer`) over a fake guard: rules in,
denials out, status and metrics, and what an agent without enforcement answers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from velvet.agent import queries
from velvet.agent.config import AgentConfig
from velvet.agent.node import Agent, Dirty
from velvet.cli.status import render
from velvet.datapath.fake import FakeDatapath
from velvet.datapath.structs import GUARD_EVENT_DTYPE, GuardAction, GuardHook
from velvet.errors import DatapathError, InvalidRule, VerifierError
from velvet.observe.enrich import DictResolver, EndpointInfo
from velvet.runtime.compact import compact_line
from velvet.runtime.enforce import Enforcer
from velvet.runtime.guard import RuleWrite
from velvet.runtime.guard_rules import AddressMatch, DenyRule, compile_rules
from velvet.runtime.monitor import EventQuery, ProcessMonitor

POD_CGROUP = 4242
RULE = DenyRule(3, GuardHook.CONNECT, AddressMatch(("10.0.0.0/8",), (443, 443), 6))


class FakeGuard:
    """A GuardSource in memory: the rules it was given, records to hand out, a start that may fail."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.slots: dict[DenyRule, int] = {}
        self.pending: list[Any] = []
        self.started = self.closed = False

    def start(self) -> None:
        if self.fail:
            raise VerifierError("guard.bpf.o", "R1 invalid mem access", 13)
        self.started = True

    def set_rules(self, rules: list[DenyRule]) -> RuleWrite:
        self.slots = compile_rules(rules, self.slots).slots
        return RuleWrite({}, {})

    def read(self, max_records: int = 4096) -> Any:
        taken, self.pending = self.pending, []
        return np.concatenate(taken) if taken else np.empty(0, dtype=GUARD_EVENT_DTYPE)

    def filenos(self) -> list[int]:
        return []

    def matches(self) -> dict[int, int]:
        return {slot: 1 for slot in self.slots.values()}

    def lost(self) -> int:
        return 0

    def programs(self) -> list[dict[str, Any]]:
        return [{"name": "guard_connect4", "id": 1, "attached_to": "cgroup /x"}]

    def close(self) -> None:
        self.closed = True


def denial(pid: int) -> Any:
    """A connect4 denial of policy 3 by a process of the pod's cgroup."""
    rec = np.zeros(1, dtype=GUARD_EVENT_DTYPE)
    rec["pid"], rec["cgroup_id"], rec["policy"], rec["comm"] = pid, POD_CGROUP, 3, b"curl"
    rec["hook"], rec["action"], rec["family"], rec["port"], rec["protocol"] = (
        GuardHook.CONNECT, GuardAction.DENY, 2, 443, 6)
    rec["addr"][0][:4] = [10, 1, 2, 3]
    return rec


def enforcer(source: FakeGuard | None, registry: CollectorRegistry | None = None) -> Enforcer:
    """An enforcer whose pod cgroup is shop/cart-1."""
    resolver = DictResolver()
    resolver.set_cgroup(POD_CGROUP, "10.244.0.9")
    resolver.set_endpoint("10.244.0.9", EndpointInfo("shop", "cart-1", ("k8s:app=cart",)))
    monitor = ProcessMonitor(None, resolver, "node-a", cgroup=None, registry=registry)
    return Enforcer(source, monitor, "node-a")


def test_rules_in_denials_out_with_status_and_metrics() -> None:
    """Test that rules set through the enforcer reach the guard, that its records become events named by
    the policy's name, and that status lists the rule with its matches and metrics count per pod."""
    registry = CollectorRegistry()
    source = FakeGuard()
    enf = enforcer(source, registry)
    enf.start()
    enf.set_rules([RULE], {3: "no-egress"})
    assert source.slots == {RULE: 0}
    source.pending.append(denial(2**31 - 3))
    assert enf.poll() == 1
    [event] = enf.query({"namespace": "shop"})
    assert event["process_tracepoint"]["policy_name"] == "no-egress"
    assert event["process_tracepoint"]["message"] == "denied connect4 to 10.1.2.3:443/TCP"
    status = enf.status()
    assert status["attached"] is True
    assert status["rules"] == [{"policy_index": 3, "policy_name": "no-egress", "hook": "connect",
                                "action": "deny", "matches": 1}]
    labels = {"namespace": "shop", "pod": "cart-1", "policy": "no-egress", "action": "KPROBE_ACTION_OVERRIDE"}
    assert registry.get_sample_value("velvet_policy_actions_total", labels) == 1
    with pytest.raises(ValueError, match="last must be >= 0"):
        enf.query({"last": "-1"})


def test_a_bad_rule_set_keeps_the_rules_in_force() -> None:
    """Test that a rule set with a bad rule raises InvalidRule and leaves the previous rules listed."""
    enf = enforcer(FakeGuard())
    enf.start()
    enf.set_rules([RULE], {})
    with pytest.raises(InvalidRule):
        enf.set_rules([DenyRule(4, GuardHook.CONNECT, AddressMatch(ports=(2, 1)))], {})
    assert [r["policy_index"] for r in enf.status()["rules"]] == [3]


def test_a_refused_guard_leaves_the_agent_without_enforcement_and_says_why() -> None:
    """Test that a guard the kernel refuses is closed, status says why, and set_rules refuses with it."""
    source = FakeGuard(fail=True)
    enf = enforcer(source)
    enf.start()
    assert source.closed
    status = enf.status()
    assert status["attached"] is False
    assert "R1 invalid mem access" in status["error"]
    with pytest.raises(DatapathError, match="cannot enforce runtime rules: .*guard.bpf.o"):
        enf.set_rules([RULE], {})
    assert enf.poll() == 0


def test_the_agent_starts_and_closes_its_guard(tmp_path: Path) -> None:
    """Test that the agent starts the guard it is given with the process monitor, and closes it."""
    source = FakeGuard()
    agent = Agent(AgentConfig(sandbox="unit", node_ips=("192.168.77.2",), state_dir=tmp_path), FakeDatapath(),
                  guard_source=source)
    agent.start()
    assert source.started
    agent.guard.set_rules([RULE], {3: "no-egress"})
    assert source.slots == {RULE: 0}
    agent.close()
    assert source.closed


CLUSTER_DENY = """
apiVersion: velvet.io/v1alpha1
kind: VelvetTracingPolicy
metadata: {name: no-https}
spec:
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_connect
    args: [{index: 6, type: sockaddr}]
    selectors:
    - matchArgs: [{index: 6, operator: DPort, values: [443]}]
      matchActions: [{action: Override, argError: -1}]
"""


class RecordingGuard(FakeGuard):
    """A FakeGuard that keeps every rule set it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[DenyRule]] = []

    def set_rules(self, rules: list[DenyRule]) -> RuleWrite:
        self.calls.append(list(rules))
        return super().set_rules(rules)


def apply_policy(agent: Agent, text: str) -> None:
    """velvet apply, the reconcile pass, and the programming on the loop, as the daemon does them."""
    agent.apply([{"path": "p.yaml", "text": text}])
    agent.reconcile(Dirty(policy=True))
    agent.program_tracing()


def test_an_applied_policy_sets_the_guard_rules_and_deleting_it_clears_them(tmp_path: Path) -> None:
    """Test that the agent compiles an applied connect-deny policy into the guard's rules with the policy's
    name, writes nothing again when nothing changed, and sets no rule once the policy is deleted."""
    source = RecordingGuard()
    calls = source.calls
    agent = Agent(AgentConfig(sandbox="unit", node_ips=("192.168.77.2",), state_dir=tmp_path), FakeDatapath(),
                  guard_source=source)
    agent.start()
    try:
        apply_policy(agent, CLUSTER_DENY)
        [rule] = calls[-1]
        assert (rule.hook, rule.match, rule.action, rule.cgroups) == (
            GuardHook.CONNECT, AddressMatch((), (443, 443), 0), GuardAction.DENY, frozenset())
        assert agent.guard.events.policy_names == {rule.policy: "no-https"}
        agent.reconcile(Dirty(policy=True))
        agent.program_tracing()
        assert len(calls) == 1  # unchanged: not written again
        agent.delete([{"path": "p.yaml", "text": CLUSTER_DENY}], None)
        agent.reconcile(Dirty(policy=True))
        agent.program_tracing()
        assert calls[-1] == []
    finally:
        agent.close()


def test_without_the_guard_a_policy_still_applies_and_status_says_it_is_not_enforced(tmp_path: Path) -> None:
    """Test that on a node whose guard was refused, the policy applies and the tracing status says why it
    is not enforced."""
    agent = Agent(AgentConfig(sandbox="unit", node_ips=("192.168.77.2",), state_dir=tmp_path), FakeDatapath(),
                  guard_source=FakeGuard(fail=True))
    agent.start()
    try:
        apply_policy(agent, CLUSTER_DENY)
        [problem] = agent.tracing.status()["problems"]
        refused = "the kernel refused to load guard.bpf.o (verifier log below)"
        assert problem == f"cgroup-hook rules not enforced: {refused}"
        status = {**queries.status(agent), "enforcement": agent.guard.status(),
                  "tracing": agent.tracing.status(), "flows": {}}
        lines = render(status).splitlines()
        [off] = [line for line in lines if line.startswith("Enforcement:   OFF (")]
        assert off.endswith(f"({refused}): runtime policies are validated, not enforced")
        assert f"Problem:       {problem}" in lines
    finally:
        agent.close()


def test_velvet_events_merges_denials_with_process_events_and_prints_them_compact() -> None:
    """Test that the process events query holds the guard's denials (type, namespace and pod filters
    applied) and that -o compact prints a denial as one line naming pod, binary, operation and policy."""
    source = FakeGuard()
    enf = enforcer(source)
    enf.start()
    enf.set_rules([RULE], {3: "shop/no-egress"})
    source.pending.append(denial(2**31 - 3))
    enf.poll()
    [event] = enf.process_events(EventQuery(frozenset({"process_tracepoint"}), "cart-*", "shop"))
    assert enf.process_events(EventQuery(frozenset({"process_exec"}))) == []
    assert enf.process_events(EventQuery(namespace="other")) == []
    assert compact_line(event) == ("🚫 shop/cart-1 curl denied connect4 to 10.1.2.3:443/TCP "
                                   "by policy shop/no-egress")


def test_velvet_events_follow_gets_new_denials() -> None:
    """Test that a follower of the merged stream receives a denial taken after it started."""
    source = FakeGuard()
    enf = enforcer(source)
    enf.start()

    async def follow() -> Any:
        stream = enf.stream_process_events(EventQuery(namespace="shop"))
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)
        source.pending.append(denial(2**31 - 3))
        enf.poll()
        event = await asyncio.wait_for(first, 5)
        await stream.aclose()
        return event

    event = asyncio.run(follow())
    assert event["process_tracepoint"]["event"] == "connect4"
