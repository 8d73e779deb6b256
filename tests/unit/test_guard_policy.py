"""Test that tracing policies on the hooks a cgroup hook can refuse (connect, sendto/sendmsg, socket, and
Velvet's cgroup/sysctl and cgroup/dev) decode with Tetragon's operators, refuse in one line what the guard
cannot do, and compile into the guard's rules: Override denies, Post audits, matchBinaries is the binary
set the tracing compiler numbered, the pods are the policy's cgroups."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from velvet.agent.guard_policy import compile_guard, guard_binaries
from velvet.control.tracing import PodScope, TracingCompiler, TracingPolicy
from velvet.datapath.structs import GUARD_RULES_MAX, GuardAction, GuardHook
from velvet.errors import InvalidManifest
from velvet.model.codec import from_dict, parse_documents
from velvet.runtime.guard_rules import AddressMatch, DeviceMatch, SocketMatch, SysctlMatch, compile_rules

PODS = [PodScope("shop", "web-1", {"app": "web"}, 101), PodScope("shop", "db-1", {"app": "db"}, 102),
        PodScope("other", "web-1", {"app": "web"}, 201)]
DENY = [{"action": "Override", "argError": -1}]
CONNECT_ARGS = [{"index": 6, "type": "sockaddr"}]


def doc(event: str, selectors: list[dict[str, Any]], *, args: list[dict[str, Any]] | None = None,
        subsystem: str = "syscalls", namespace: str = "", pod_selector: dict[str, Any] | None = None,
        name: str = "p") -> dict[str, Any]:
    """A tracing policy document with one tracepoint."""
    spec: dict[str, Any] = {"tracepoints": [{"subsystem": subsystem, "event": event, "args": args or [],
                                             "selectors": selectors}]}
    if pod_selector is not None:
        spec["podSelector"] = pod_selector
    return {"apiVersion": "velvet.io/v1alpha1",
            "kind": "VelvetTracingPolicyNamespaced" if namespace else "VelvetTracingPolicy",
            "metadata": {"name": name, **({"namespace": namespace} if namespace else {})}, "spec": spec}


def decoded(document: dict[str, Any]) -> TracingPolicy:
    obj = from_dict(yaml.safe_load(yaml.safe_dump(document)))
    assert isinstance(obj, TracingPolicy)
    return obj


def compiled(*documents: dict[str, Any]) -> tuple[list[Any], dict[int, str], Any]:
    """The guard rules and policy names of `documents`, through the tracing compiler as the agent does."""
    policies = [decoded(d) for d in documents]
    tracing = TracingCompiler().compile(policies, PODS, guard_binaries(policies))
    plan = compile_guard(policies, PODS, tracing)
    assert plan.problems == []
    compile_rules(plan.rules)  # the guard takes them as they are
    return plan.rules, plan.names, tracing


def refusal(document: dict[str, Any]) -> str:
    with pytest.raises(InvalidManifest) as err:
        parse_documents(yaml.safe_dump(document), "p.yaml")
    message = str(err.value)
    assert "\n" not in message
    assert "p.yaml" in message
    return message


def test_connect_deny_for_one_binary_in_a_namespace_is_one_rule_per_port_range() -> None:
    rules, names, tracing = compiled(doc("sys_enter_connect", [{
        "matchBinaries": [{"operator": "In", "values": ["/usr/bin/curl"]}],
        "matchArgs": [{"index": 6, "operator": "DAddr", "values": ["10.0.0.0/8", "fd00::1"]},
                      {"index": 6, "operator": "DPort", "values": [80, "8000:8080"]},
                      {"index": 6, "operator": "Protocol", "values": ["IPPROTO_TCP"]}],
        "matchActions": DENY}], args=CONNECT_ARGS, namespace="shop"))
    curl_set = 1 << tracing.binary_sets[("In", ("/usr/bin/curl",))]
    assert names == {rules[0].policy: "shop/p"}
    assert {(r.hook, r.match, r.binsets, r.cgroups, r.action) for r in rules} == {
        (GuardHook.CONNECT, AddressMatch(("10.0.0.0/8", "fd00::1/128"), ports, 6), curl_set,
         frozenset({101, 102}), GuardAction.DENY) for ports in ((80, 80), (8000, 8080))}


def test_post_audits_family_alone_is_every_address_and_sendto_sendmsg_are_sendmsg_rules() -> None:
    rules, _, _ = compiled(
        doc("sys_enter_sendto", [{"matchArgs": [{"index": 9, "operator": "Family", "values": ["AF_INET6"]}],
                                  "matchActions": [{"action": "Post"}]}],
            args=[{"index": 9, "type": "sockaddr"}]),
        {**doc("sys_enter_sendmsg", [{"matchActions": DENY}], name="q"),
         "kind": "VelvetTracingPolicy"})
    assert {(r.hook, r.match, r.action, r.cgroups) for r in rules} == {
        (GuardHook.SENDMSG, AddressMatch(("::/0",)), GuardAction.AUDIT, frozenset()),
        (GuardHook.SENDMSG, AddressMatch(), GuardAction.DENY, frozenset())}


def test_socket_sysctl_and_device_rules() -> None:
    rules, _, _ = compiled(
        doc("sys_enter_socket", [{"matchArgs": [{"index": 6, "operator": "Equal", "values": ["SOCK_RAW"]},
                                                {"index": 5, "operator": "Equal", "values": [2, 10]}],
                                  "matchActions": DENY}],
            args=[{"index": 5, "type": "int"}, {"index": 6, "type": "int"}], name="raw",
            pod_selector={"matchLabels": {"app": "web"}}),
        doc("sysctl", [{"matchArgs": [{"index": 0, "operator": "Prefix", "values": ["net.ipv4."]},
                                      {"index": 1, "operator": "Equal", "values": [1]}],
                        "matchActions": DENY}],
            subsystem="cgroup", args=[{"index": 0, "type": "string"}, {"index": 1, "type": "int"}],
            name="sysctl"),
        doc("dev", [{"matchArgs": [{"index": 0, "operator": "Equal", "values": ["c"]},
                                   {"index": 1, "operator": "Equal", "values": [1]},
                                   {"index": 3, "operator": "Equal", "values": ["w"]}],
                     "matchActions": DENY}],
            subsystem="cgroup", args=[{"index": i, "type": "auto"} for i in (0, 1, 3)], name="dev"))
    assert {(r.hook, r.match, r.cgroups) for r in rules} == {
        (GuardHook.SOCK_CREATE, SocketMatch(2, 3, 0), frozenset({101, 201})),
        (GuardHook.SOCK_CREATE, SocketMatch(10, 3, 0), frozenset({101, 201})),
        (GuardHook.SYSCTL, SysctlMatch("net.ipv4.", reads=False, writes=True), frozenset()),
        (GuardHook.DEV, DeviceMatch("c", 1, None, "w"), frozenset())}


def test_a_namespaced_policy_without_pods_on_the_node_makes_no_rule() -> None:
    rules, names, _ = compiled(doc("sys_enter_connect", [{"matchActions": DENY}], namespace="empty"))
    assert (rules, names) == ([], {})


def test_rules_that_do_not_fit_name_the_policy_and_leave_it_out_whole() -> None:
    ports = [str(p) for p in range(1, GUARD_RULES_MAX + 2)]
    dports = [[{"index": 6, "operator": "DPort", "values": ports[i:i + 16]}]
              for i in range(0, len(ports), 16)]
    many = [doc("sys_enter_connect", [{"matchArgs": match, "matchActions": DENY}], args=CONNECT_ARGS,
                name=f"p{i * 16}")
            for i, match in enumerate(dports)]
    policies = [decoded(d) for d in many]
    plan = compile_guard(policies, PODS, TracingCompiler().compile(policies, PODS))
    assert len(plan.rules) == GUARD_RULES_MAX
    assert plan.problems == [f"tracing policy p64 is not enforced: it needs 1 cgroup-hook rules and 0 of "
                             f"{GUARD_RULES_MAX} are free"]


@pytest.mark.parametrize(("document", "field", "words"), [
    (doc("sys_enter_connect", [{"matchActions": [{"action": "Override", "argError": -13}]}]),
     "matchActions[0].argError", "EPERM only (argError: -1)"),
    (doc("sys_enter_connect", [{"matchActions": [{"action": "Override"}]}]),
     "matchActions[0].argError", "Required value"),
    (doc("sys_enter_connect", [{"matchActions": [{"action": "Post", "argError": -1}]}]),
     "matchActions[0].argError", "only for action Override"),
    (doc("sys_enter_connect", [{"matchActions": [{"action": "Sigkill"}]}]),
     "matchActions[0].action", 'not supported: action "Sigkill" on syscalls/sys_enter_connect'),
    (doc("sys_enter_connect", [{"matchPIDs": [{"operator": "In", "values": [1]}], "matchActions": DENY}]),
     "selectors[0].matchPIDs", "not supported: matchPIDs"),
    (doc("sys_enter_connect", [{"matchBinaries": [{"operator": "NotIn", "values": ["/bin/a"]}],
                                "matchActions": DENY}]),
     "matchBinaries[0].operator", 'not supported: operator "NotIn"'),
    (doc("sys_enter_connect", [{"matchArgs": [{"index": 6, "operator": "DAddr", "values": ["10.0.0.300"]}]}],
         args=CONNECT_ARGS), "matchArgs[0].values[0]", "not an IP address or CIDR"),
    (doc("sys_enter_connect", [{"matchArgs": [{"index": 6, "operator": "DPort", "values": ["90:80"]}]}],
         args=CONNECT_ARGS), "matchArgs[0].values[0]", "not within 0-65535 in order"),
    (doc("sys_enter_connect", [{"matchArgs": [{"index": 6, "operator": "SAddr", "values": ["1.2.3.4"]}]}],
         args=CONNECT_ARGS), "matchArgs[0].operator", 'not supported: operator "SAddr"'),
    (doc("sys_enter_connect", [{"matchArgs": [{"index": 6, "operator": "Equal", "values": ["x"]}]}],
         args=CONNECT_ARGS), "matchArgs[0].operator", "supported: DAddr, DPort, Family, Protocol"),
    (doc("sys_enter_socket", [{"matchArgs": [{"index": 5, "operator": "Equal", "values": ["AF_PACKET"]}]}],
         args=[{"index": 5, "type": "int"}]), "matchArgs[0].values[0]", "not a family"),
    (doc("sys_enter_socket", [{"matchArgs": [{"index": 5, "operator": "Equal", "values": [17]}]}],
         args=[{"index": 5, "type": "int"}]), "matchArgs[0].values[0]", "AF_INET and AF_INET6 only"),
    (doc("sysctl", [{"matchArgs": [{"index": 0, "operator": "Equal", "values": ["net.ipv4.ip_forward"]}]}],
         subsystem="cgroup", args=[{"index": 0, "type": "string"}]),
     "matchArgs[0].operator", "supported: Prefix"),
    (doc("dev", [{"matchArgs": [{"index": 3, "operator": "Equal", "values": ["rx"]}]}],
         subsystem="cgroup", args=[{"index": 3, "type": "string"}]), "matchArgs[0].values[0]", "r, w and m"),
    (doc("nope", [], subsystem="cgroup"), "event", "cgroup/sysctl, cgroup/dev"),
])
def test_what_the_guard_cannot_do_is_refused_in_one_line(document: dict[str, Any], field: str,
                                                         words: str) -> None:
    message = refusal(document)
    assert field in message
    assert words in message
