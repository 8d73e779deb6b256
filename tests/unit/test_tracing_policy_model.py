"""Test that tracing policies decode with Tetragon's field names, refuse what Velvet does not do with one line
naming the document and field, and are stored (and kept across a restart) like every other kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from velvet.errors import InvalidManifest
from velvet.model import VelvetTracingPolicy, VelvetTracingPolicyNamespaced
from velvet.model.codec import from_dict, parse_documents, resolve_kind, to_dict
from velvet.sources.etcd_client import KeyValue
from velvet.sources.etcd_store import DEFAULT_PREFIX, decode, encode, object_key
from velvet.sources.index import key_of
from velvet.sources.local import LocalStore

KILL_NC = """
apiVersion: velvet.io/v1alpha1
kind: VelvetTracingPolicy
metadata: {name: no-nc}
spec:
  podSelector: {matchLabels: {app: web}}
  tracepoints:
  - subsystem: sched
    event: sched_process_exec
    args: [{index: 4, type: string}]
    selectors:
    - matchBinaries: [{operator: In, values: [/bin/nc, /usr/bin/nc]}]
      matchPIDs: [{operator: NotIn, values: [1]}]
      matchActions: [{action: Sigkill}]
    - matchBinaries: [{operator: Prefix, values: [/tmp/]}]
      matchActions: [{action: Signal, argSig: 10}]
"""


def policy(**spec: Any) -> dict[str, Any]:
    """A VelvetTracingPolicy document on the exec hook with `spec` fields of its tracepoint."""
    tracepoint = {"subsystem": "sched", "event": "sched_process_exec", **spec}
    return {"apiVersion": "velvet.io/v1alpha1", "kind": "VelvetTracingPolicy", "metadata": {"name": "p"},
            "spec": {"tracepoints": [tracepoint]}}


def openat(**spec: Any) -> dict[str, Any]:
    """A VelvetTracingPolicy document on syscalls/sys_enter_openat."""
    doc = policy(**spec)
    doc["spec"]["tracepoints"][0].update(subsystem="syscalls", event="sys_enter_openat")
    return doc


def syscall(event: str, **spec: Any) -> dict[str, Any]:
    """A VelvetTracingPolicy document on syscalls/`event`."""
    doc = policy(**spec)
    doc["spec"]["tracepoints"][0].update(subsystem="syscalls", event=event)
    return doc


@pytest.mark.parametrize(("event", "index", "operator", "values"), [
    ("sys_enter_setuid", 5, "Equal", [0]),
    ("sys_enter_ptrace", 5, "GT", [15]),
    ("sys_enter_ptrace", 5, "LT", [0x4200]),
    ("sys_enter_mount", 6, "Postfix", ["/secrets"]),
    ("sys_enter_mount", 8, "Equal", [4096, "-1"]),
    ("sys_enter_openat", 6, "Postfix", [".key", ".pem"]),
    ("sys_enter_execve", 5, "Prefix", ["/tmp/"]),
    ("sys_enter_open", 5, "Equal", ["/etc/shadow"]),
])
def test_syscall_hooks_take_string_and_int_match_args(event: str, index: int, operator: str,
                                                      values: list[Any]) -> None:
    doc = syscall(event, args=[{"index": index}],
                  selectors=[{"matchBinaries": [{"operator": "In", "values": ["/usr/bin/x"]}],
                              "matchArgs": [{"index": index, "operator": operator, "values": values}],
                              "matchActions": [{"action": "Sigkill"}]}])
    obj = from_dict(doc)
    assert isinstance(obj, VelvetTracingPolicy)
    [arg] = obj.spec.tracepoints[0].selectors[0].match_args
    assert (arg.index, arg.operator, arg.values) == (index, operator, tuple(str(v) for v in values))


def test_an_openat_policy_with_a_path_prefix_decodes() -> None:
    doc = openat(args=[{"index": 6, "type": "string"}],
                 selectors=[{"matchArgs": [{"index": 6, "operator": "Prefix", "values": ["/etc/"]}],
                             "matchActions": [{"action": "Post"}]}])
    [obj] = parse_documents(yaml.safe_dump(doc), "p.yaml")
    assert isinstance(obj, VelvetTracingPolicy)
    assert obj.spec.tracepoints[0].hook == "syscalls/sys_enter_openat"
    assert obj.spec.tracepoints[0].selectors[0].match_args[0].values == ("/etc/",)


def refusal(doc: dict[str, Any]) -> str:
    """The one-line message the document is refused with."""
    with pytest.raises(InvalidManifest) as err:
        parse_documents(yaml.safe_dump(doc), "p.yaml")
    message = str(err.value)
    assert "\n" not in message
    assert "p.yaml" in message
    return message


def test_a_tetragon_exec_policy_decodes_with_its_field_names() -> None:
    [obj] = parse_documents(KILL_NC, "kill.yaml")
    assert isinstance(obj, VelvetTracingPolicy)
    tp = obj.spec.tracepoints[0]
    assert tp.hook == "sched/sched_process_exec"
    assert tp.selectors[0].match_binaries[0].values == ("/bin/nc", "/usr/bin/nc")
    assert tp.selectors[0].match_pids[0].operator == "NotIn"
    assert tp.selectors[1].match_actions[0].arg_sig == 10
    assert obj.spec.pod_selector is not None
    assert dict(obj.spec.pod_selector.match_labels) == {"app": "web"}
    assert from_dict(to_dict(obj), trusted=True) == obj  # what the stores write reads back the same


def test_the_namespaced_kind_takes_its_namespace() -> None:
    doc = policy() | {"kind": "VelvetTracingPolicyNamespaced", "metadata": {"name": "p", "namespace": "shop"}}
    obj = from_dict(doc)
    assert isinstance(obj, VelvetTracingPolicyNamespaced)
    assert obj.metadata.namespace == "shop"
    assert resolve_kind("tpn").kind == "VelvetTracingPolicyNamespaced"
    assert resolve_kind("tracingpolicies").kind == "VelvetTracingPolicy"


@pytest.mark.parametrize(("doc", "field", "words"), [
    (policy(selectors=[{"matchBinaries": [{"operator": "NotPrefix", "values": ["/a"]}]}]),
     "spec.tracepoints[0].selectors[0].matchBinaries[0].operator", 'not supported: operator "NotPrefix"'),
    (policy(selectors=[{"matchBinaries": [{"operator": "Inn", "values": ["/a"]}]}]),
     "matchBinaries[0].operator", 'Unsupported value: "Inn"'),
    (policy(selectors=[{"matchBinaries": [{"operator": "In", "values": ["nc"]}]}]),
     "matchBinaries[0].values[0]", "must be an absolute path"),
    (policy(selectors=[{"matchActions": [{"action": "Override", "argError": -1}]}]),
     "matchActions[0].action", "not supported: action \"Override\" on sched/sched_process_exec"),
    (policy(selectors=[{"matchActions": [{"action": "Signal"}]}]),
     "matchActions[0].argSig", "Required value"),
    (policy(selectors=[{"matchActions": [{"action": "Sigkill", "rateLimit": "1m"}]}]),
     "matchActions[0].rateLimit", "not supported"),
    (policy(selectors=[{"matchNamespaces": [{"namespace": "Pid", "operator": "In", "values": ["1"]}]}]),
     "selectors[0].matchNamespaces", "spec.podSelector"),
    (policy(selectors=[{"matchPIDs": [{"operator": "In", "values": [5], "isNamespacePID": True}]}]),
     "matchPIDs[0].isNamespacePID", "not supported"),
    (policy(args=[{"index": 4, "type": "string"}],
            selectors=[{"matchArgs": [{"index": 4, "operator": "Prefix", "values": ["/tmp"]}]}]),
     "selectors[0].matchArgs", "use matchBinaries"),
    (policy(selectors=[{"matchArgs": [{"index": 4, "operator": "Equal", "values": ["/a"]}]}]),
     "matchArgs[0].index", "no argument with this index"),
    (policy(args=[{"index": 5, "type": "string"}]), "args[0].type", 'not supported: type "string"'),
    (policy(args=[{"index": 0, "type": "int"}]), "args[0].index", "4 (filename), 5 (pid), 6 (old_pid)"),
    (openat(args=[{"index": 7, "type": "int"}],
            selectors=[{"matchArgs": [{"index": 7, "operator": "Postfix", "values": [".key"]}]}]),
     "matchArgs[0].operator",
     'operator "Postfix" on field 7 (flags) of syscalls/sys_enter_openat (supported: Equal, GT, LT)'),
    (openat(args=[{"index": 6, "type": "string"}],
            selectors=[{"matchArgs": [{"index": 6, "operator": "GT", "values": [1]}]}]),
     "matchArgs[0].operator", "on field 6 (filename) of syscalls/sys_enter_openat (supported: Equal, Prefix, "
                              "Postfix)"),
    (openat(args=[{"index": 6, "type": "string"}],
            selectors=[{"matchArgs": [{"index": 6, "operator": "NotPostfix", "values": ["x"]}]}]),
     "matchArgs[0].operator", 'not supported: operator "NotPostfix"'),
    (openat(args=[{"index": 4, "type": "int"}],
            selectors=[{"matchArgs": [{"index": 4, "operator": "Equal", "values": [257]}]}]),
     "matchArgs[0].index", "not supported: matchArgs on field 4"),
    (syscall("sys_enter_setuid", args=[{"index": 5, "type": "int"}],
             selectors=[{"matchArgs": [{"index": 5, "operator": "GT", "values": [0, 5]}]}]),
     "matchArgs[0].values", "operator GT takes exactly one value"),
    (syscall("sys_enter_setuid", args=[{"index": 5, "type": "int"}],
             selectors=[{"matchArgs": [{"index": 5, "operator": "Equal", "values": ["root"]}]}]),
     "matchArgs[0].values[0]", "32-bit signed integer"),
    (syscall("sys_enter_setuid", args=[{"index": 5, "type": "int"}],
             selectors=[{"matchArgs": [{"index": 5, "operator": "Equal", "values": [1, 2, 3, 4, 5]}]}]),
     "matchArgs[0].values", "at most 4"),
    (syscall("sys_enter_mount", args=[{"index": 5, "type": "string"}, {"index": 6, "type": "string"},
                                      {"index": 7, "type": "string"}]),
     "spec.tracepoints[0].args", "more than 2 string arguments"),
    (syscall("sys_enter_mount", args=[{"index": 9, "type": "int"}]), "args[0].index", "8 (flags)"),
    (syscall("sys_enter_ptrace", args=[{"index": 5, "type": "string"}]), "args[0].type",
     'not supported: type "string" for field 5 (request)'),
    (policy(selectors=[{"matchCapabilities": []}]), "selectors[0].matchCapabilities", "not supported"),
    (policy(selectors=[{"bogus": 1}]), "selectors[0].bogus", "unknown field"),
    (policy(selectors=[{}] * 6), "spec.tracepoints[0].selectors", "at most 5"),
    (policy(message="x"), "spec.tracepoints[0].message", "not supported"),
])
def test_bad_or_unsupported_fields_are_refused_by_name(doc: dict[str, Any], field: str, words: str) -> None:
    message = refusal(doc)
    assert field in message
    assert words in message


def test_other_hooks_and_kprobes_are_refused_as_not_supported() -> None:
    doc = policy()
    doc["spec"]["tracepoints"][0]["event"] = "sched_switch"
    assert 'not supported: tracepoint "sched/sched_switch"' in refusal(doc)
    doc = policy()
    doc["spec"]["kprobes"] = [{"call": "fd_install"}]
    assert "spec.kprobes" in refusal(doc)
    assert "no kprobes" in refusal(doc)


def test_apply_is_all_or_nothing_and_the_store_keeps_both_kinds(tmp_path: Path) -> None:
    store = LocalStore.open(tmp_path / "state")
    good = parse_documents(KILL_NC, "kill.yaml")
    [first] = good
    assert isinstance(first, VelvetTracingPolicy)
    namespaced = from_dict(policy() | {"kind": "VelvetTracingPolicyNamespaced",
                                       "metadata": {"name": "p", "namespace": "default"}})
    with pytest.raises(InvalidManifest):  # the second document is bad: nothing of the input is applied
        parse_documents(KILL_NC + "---\n" + yaml.safe_dump(policy(message="x")), "two.yaml")
    assert store.get("tracingpolicies", "all") == []
    results = store.apply([*good, namespaced])
    assert [r.action for r in results] == ["created", "created"]
    reopened = LocalStore.open(tmp_path / "state")
    [stored] = reopened.get("tracingpolicies", "all")
    assert isinstance(stored, VelvetTracingPolicy)
    assert stored.spec == first.spec
    assert [o.metadata.key for o in reopened.get("tpn", "all")] == ["default/p"]


def test_the_etcd_store_encodes_and_decodes_both_kinds() -> None:
    [obj] = parse_documents(KILL_NC, "kill.yaml")
    namespaced = from_dict(policy() | {"kind": "VelvetTracingPolicyNamespaced",
                                       "metadata": {"name": "p", "namespace": "shop"}})
    for original in (obj, namespaced):
        key = object_key(DEFAULT_PREFIX, key_of(original))
        back = decode(KeyValue(key, encode(original), 3, 4))
        assert back is not None
        assert type(back) is type(original)
        assert back.metadata.resource_version == 4
        assert to_dict(back)["spec"] == to_dict(original)["spec"]
