"""Test that the tracing compiler gives stable rule, policy and binary-set numbers, scopes policies to the
right pods' cgroups, fills the prefix trie with shorter prefixes' sets, and names what does not fit."""

from __future__ import annotations

from typing import Any

import yaml

from velvet.control.tracing import PodScope, TracingCompiler, TracingPolicy
from velvet.datapath.rt_tables import RtRuleEntry, bin_in_rules
from velvet.datapath.structs import RT_MAX_RULES, RtAction, RtHook, RtMatchOp
from velvet.model.codec import from_dict
from velvet.model.tracing import BinarySelector

PODS = [PodScope("shop", "web-1", {"app": "web"}, 101), PodScope("shop", "db-1", {"app": "db"}, 102),
        PodScope("other", "web-1", {"app": "web"}, 201)]


def policy(name: str, selectors: list[dict[str, Any]], *, namespace: str = "",
           pod_selector: dict[str, Any] | None = None) -> TracingPolicy:
    spec: dict[str, Any] = {"tracepoints": [{"subsystem": "sched", "event": "sched_process_exec",
                                             "selectors": selectors}]}
    if pod_selector is not None:
        spec["podSelector"] = pod_selector
    doc = {"apiVersion": "velvet.io/v1alpha1",
           "kind": "VelvetTracingPolicyNamespaced" if namespace else "VelvetTracingPolicy",
           "metadata": {"name": name, **({"namespace": namespace} if namespace else {})}, "spec": spec}
    obj = from_dict(yaml.safe_load(yaml.safe_dump(doc)))
    assert isinstance(obj, TracingPolicy)
    return obj


def binaries(operator: str, *values: str, action: str = "Sigkill") -> dict[str, Any]:
    return {"matchBinaries": [{"operator": operator, "values": list(values)}],
            "matchActions": [{"action": action}]}


def test_scopes_cluster_namespaced_and_labelled_policies() -> None:
    compiler = TracingCompiler()
    out = compiler.compile([policy("all", [binaries("In", "/bin/nc")]),
                            policy("web", [binaries("In", "/bin/nc")],
                                   pod_selector={"matchLabels": {"app": "web"}}),
                            policy("shop", [binaries("In", "/bin/nc")], namespace="shop")], PODS)
    by_name = {name: index for index, name in out.names.items()}
    rule_of = {out.tables.rules[n].policy: 1 << n for n in out.tables.rules}
    assert out.tables.global_rules == rule_of[by_name["all"]]
    assert out.tables.cgroup_rules == {101: rule_of[by_name["web"]] | rule_of[by_name["shop/shop"]],
                                       102: rule_of[by_name["shop/shop"]], 201: rule_of[by_name["web"]]}
    assert out.problems == []
    assert len(out.binary_sets) == 1  # the same paths are one set, whatever the policy


def test_numbers_are_stable_and_notin_is_the_complement_of_the_in_set() -> None:
    compiler = TracingCompiler()
    first = compiler.compile([policy("b", [binaries("NotIn", "/bin/sh", "/bin/nc", action="Post")])], PODS)
    second = compiler.compile([policy("a", [binaries("Prefix", "/tmp/")]),
                               policy("b", [binaries("NotIn", "/bin/nc", "/bin/sh", action="Post")])], PODS)
    [(number, rule)] = first.tables.rules.items()
    assert second.tables.rules[number] == rule  # "a" sorts first but takes new numbers
    assert rule.bin_op == RtMatchOp.NOT_IN
    assert rule.action == RtAction.POST
    assert second.binary_set(BinarySelector("In", ("/bin/sh", "/bin/nc"))).index == rule.binset
    assert second.binary_set(BinarySelector("NotIn", ("/bin/nc", "/bin/sh"))).negated


def test_prefixes_carry_shorter_prefixes_sets_and_extra_binaries_get_sets() -> None:
    compiler = TracingCompiler()
    extra = BinarySelector("In", ("/usr/bin/curl",))
    prefixes = policy("p", [binaries("Prefix", "/usr/"), binaries("Prefix", "/usr/local/bin/")])
    out = compiler.compile([prefixes], PODS, extra_binaries=[extra])
    usr = 1 << out.binary_set(BinarySelector("Prefix", ("/usr/",))).index
    local = 1 << out.binary_set(BinarySelector("Prefix", ("/usr/local/bin/",))).index
    curl = 1 << out.binary_set(extra).index
    assert out.tables.prefixes == {"/usr/": usr, "/usr/local/bin/": usr | local}
    assert out.tables.paths == {"/usr/bin/curl": curl}
    assert out.sets_of("/usr/local/bin/x") == usr | local
    assert out.sets_of("/usr/bin/curl") == usr | curl


def test_a_policy_that_does_not_fit_is_a_named_problem_and_left_out_whole() -> None:
    compiler = TracingCompiler()
    many = [policy(f"p{i:03}", [binaries("In", f"/bin/x{i}")]) for i in range(RT_MAX_RULES)]
    big = policy("zz-big", [binaries("In", "/bin/a"), binaries("In", "/bin/b")])
    out = compiler.compile([*many, big], PODS)
    assert len(out.tables.rules) == RT_MAX_RULES
    assert [p for p in out.problems if "zz-big" in p]
    assert "zz-big" not in out.names.values()
    fewer = compiler.compile([*many[2:], big], PODS)  # room again: it goes in
    assert fewer.problems == []
    assert "zz-big" in fewer.names.values()


def test_openat_selectors_get_arg_sets_and_their_hook_is_in_use() -> None:
    compiler = TracingCompiler()
    openat = {"apiVersion": "velvet.io/v1alpha1", "kind": "VelvetTracingPolicy",
              "metadata": {"name": "files"},
              "spec": {"tracepoints": [{"subsystem": "syscalls", "event": "sys_enter_openat",
                                        "args": [{"index": 6, "type": "string"}],
                                        "selectors": [{"matchArgs": [{"index": 6, "operator": "Prefix",
                                                                      "values": ["/etc/"]}],
                                                       "matchBinaries": [{"operator": "In",
                                                                          "values": ["/bin/cat"]}]}]}]}}
    files = from_dict(openat)
    assert isinstance(files, TracingPolicy)
    out = compiler.compile([files, policy("exec-only", [binaries("In", "/bin/nc")])], PODS)
    hooks = {rule.hook for rule in out.tables.rules.values()}
    assert hooks == {RtHook.EXEC, RtHook.OPENAT}
    assert out.tables.hooks == frozenset({RtHook.OPENAT})
    [rule] = [r for r in out.tables.rules.values() if r.hook == RtHook.OPENAT]
    assert rule.arg_op == RtMatchOp.PREFIX
    assert out.tables.arg_prefixes == {"/etc/": 1 << rule.argset}
    assert out.tables.paths == {"/bin/cat": 1 << rule.binset, "/bin/nc": out.tables.paths["/bin/nc"]}
    index = next(i for i, name in out.names.items() if name == "files")
    assert out.args[(index, int(RtHook.OPENAT))] == (6,)
    assert compiler.compile([], PODS).tables.hooks == frozenset()


def _syscall_policy(name: str, event: str, args: list[dict[str, Any]], selectors: list[dict[str, Any]]
                    ) -> TracingPolicy:
    doc = {"apiVersion": "velvet.io/v1alpha1", "kind": "VelvetTracingPolicy", "metadata": {"name": name},
           "spec": {"tracepoints": [{"subsystem": "syscalls", "event": event, "args": args,
                                     "selectors": selectors}]}}
    obj = from_dict(doc)
    assert isinstance(obj, TracingPolicy)
    return obj


def test_postfixes_int_args_and_reported_strings_compile_to_rule_fields() -> None:
    """Postfixes go to arg_postfixes with every shorter postfix's sets; an int matchArgs is the rule's own
    values at the syscall argument's position; the declared string args are the positions reported."""
    mount = _syscall_policy("m", "sys_enter_mount", [{"index": 8}, {"index": 6}, {"index": 5}], [
        {"matchArgs": [{"index": 6, "operator": "Postfix", "values": ["/keys", "/my/keys"]}]},
        {"matchArgs": [{"index": 8, "operator": "Equal", "values": [1, 2]}]}])
    ptrace = _syscall_policy("p", "sys_enter_ptrace", [{"index": 5}],
                             [{"matchArgs": [{"index": 5, "operator": "GT", "values": [16]}]}])
    out = TracingCompiler().compile([mount, ptrace], PODS)
    assert out.tables.hooks == frozenset({RtHook.MOUNT, RtHook.PTRACE})
    request, postfix, flags = sorted(out.tables.rules.values(), key=lambda r: (r.hook, r.arg_op))
    assert (postfix.arg_op, postfix.arg_pos, postfix.report_str) == (RtMatchOp.POSTFIX, 1, (1, 0))
    assert out.tables.arg_postfixes == {"/keys": 1 << postfix.argset, "/my/keys": 1 << postfix.argset}
    assert out.tables.arg_prefixes == {}
    assert out.tables.arg_paths == {}
    assert (flags.arg_op, flags.arg_pos, flags.arg_nums) == (RtMatchOp.EQ, 3, (1, 2))
    assert (request.hook, request.arg_op, request.arg_pos) == (RtHook.PTRACE, RtMatchOp.GT, 0)
    assert request.arg_nums == (16,)
    assert request.report_str == (0xFF, 0xFF)
    assert request.to_c().arg_nums[0] == 16


def test_bin_in_rules_marks_the_rules_a_process_of_no_binary_set_cannot_match() -> None:
    """Test that rt_config's bin_in_rules has the bit of each matchBinaries In rule only (NotIn and rules
    without matchBinaries stay candidates for a process in no binary set)."""
    post, kill = int(RtAction.POST), int(RtAction.SIGKILL)
    rules = {0: RtRuleEntry(policy_rules=1, policy=1, action=post, bin_op=int(RtMatchOp.IN)),
             1: RtRuleEntry(policy_rules=2, policy=2, action=post, bin_op=int(RtMatchOp.NOT_IN)),
             2: RtRuleEntry(policy_rules=4, policy=3, action=post),
             5: RtRuleEntry(policy_rules=32, policy=4, action=kill, bin_op=int(RtMatchOp.IN))}
    assert bin_in_rules(rules) == 0b100001
