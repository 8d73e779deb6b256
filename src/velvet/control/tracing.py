"""Tracing policies → the policy maps of proc.bpf.o: rules, pods' rule masks, binary and arg sets. Pure.

Each selector of a supported hook (`sched/sched_process_exec`, the `syscalls/sys_enter_*` of SYSCALL_HOOKS)
is one rule (a bit of a u64: at most 64 on the node); its matchBinaries is a binary set (a bit of every
process's `proc_binsets` entry: at most 64), allocated here and kept while some policy (or
`extra_binaries`, the cgroup hooks' deny rules) uses it; its matchArgs on a string is an arg set (at most
64), on an int the rule's own values. Rule, policy and set numbers are stable across compilations, so a
change rewrites only the entries it changes. A policy that does not fit is a named problem and is left out
whole, never half-programmed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from velvet.datapath.rt_tables import RtRuleEntry, RtTables
from velvet.datapath.structs import RT_MAX_RULES, RT_NO_ARG, RtAction, RtHook, RtMatchOp
from velvet.model.tracing import (
    EXEC_HOOK,
    SYSCALL_HOOKS,
    ArgSelector,
    BinarySelector,
    SyscallField,
    Tracepoint,
    TracingSelector,
    VelvetTracingPolicy,
    VelvetTracingPolicyNamespaced,
)

MAX_BINARY_SETS = 64
MAX_ARG_SETS = 64
HOOKS = {EXEC_HOOK: RtHook.EXEC,
         **{("syscalls", f"sys_enter_{h.name.lower()}"): h for h in RtHook if h != RtHook.EXEC}}
_FIELDS = {HOOKS[hook]: fields for hook, (_, fields) in SYSCALL_HOOKS.items()}  # RtHook -> format fields
_STRING_OPS = {"Equal": RtMatchOp.IN, "Prefix": RtMatchOp.PREFIX, "Postfix": RtMatchOp.POSTFIX}
_INT_OPS = {"Equal": RtMatchOp.EQ, "GT": RtMatchOp.GT, "LT": RtMatchOp.LT}
MAX_POLICIES = 65535  # process_event.policy is a u16
TracingPolicy = VelvetTracingPolicy | VelvetTracingPolicyNamespaced
_ACTIONS = {"Post": RtAction.POST, "NoPost": RtAction.NOPOST, "Sigkill": RtAction.SIGKILL,
            "Signal": RtAction.SIGNAL}
K = TypeVar("K")
Json = dict[str, Any]


@dataclass(frozen=True)
class PodScope:
    """A pod of this node whose processes a policy may select: where it is, its labels, its cgroup id."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    cgroup_id: int


@dataclass(frozen=True)
class BinarySetRef:
    """A matchBinaries selector as proc_binsets sees it: bit `index`, which NotIn means to be clear."""

    index: int
    negated: bool = False


def policy_name(policy: TracingPolicy) -> str:
    """How events and `velvet status` name a policy: `name`, or `namespace/name` for a namespaced one."""
    return policy.metadata.key


def _set_key(selector: BinarySelector) -> tuple[str, tuple[str, ...]]:
    """The set a selector names: NotIn is the complement of the In set of the same paths."""
    kind = "Prefix" if selector.operator == "Prefix" else "In"
    return kind, tuple(sorted(set(selector.values)))


def _arg_key(selector: ArgSelector) -> tuple[str, tuple[str, ...]]:
    """The arg set of a string matchArgs: exact strings (Equal), prefixes or postfixes."""
    kind = selector.operator if selector.operator in ("Prefix", "Postfix") else "In"
    return kind, tuple(sorted(set(selector.values)))


def _field(hook: RtHook, selector: ArgSelector) -> SyscallField | None:
    """The syscall field a matchArgs compares (None on a hook without arguments)."""
    return _FIELDS.get(hook, {}).get(selector.index)


def _string_args(hook: RtHook, selector: TracingSelector) -> list[ArgSelector]:
    """The selector's matchArgs on strings: those that take arg sets."""
    return [a for a in selector.match_args if (f := _field(hook, a)) is not None and f.string]


class _Slots(Generic[K]):
    """Stable small numbers for keys: a key keeps its number while it is in use, freed ones are reused."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.numbers: dict[K, int] = {}

    def keep_only(self, keys: Iterable[K]) -> None:
        """Free the numbers of every key not in `keys`."""
        wanted = set(keys)
        self.numbers = {k: n for k, n in self.numbers.items() if k in wanted}

    def take(self, key: K) -> int | None:
        """The key's number, a free one for a new key (None: all are taken)."""
        if key in self.numbers:
            return self.numbers[key]
        used = set(self.numbers.values())
        free = next((n for n in range(self.capacity) if n not in used), None)
        if free is not None:
            self.numbers[key] = free
        return free


@dataclass
class CompiledTracing:
    """What the exec policies make of the node: the tables, the policies' names by index, problems."""

    tables: RtTables
    names: dict[int, str] = field(default_factory=dict)  # policy index -> policy_name
    hooks: dict[str, list[str]] = field(default_factory=dict)  # policy_name -> its hooks
    problems: list[str] = field(default_factory=list)
    binary_sets: dict[tuple[str, tuple[str, ...]], int] = field(default_factory=dict)
    args: dict[tuple[int, int], tuple[int, ...]] = field(default_factory=dict)  # (policy, hook) -> reported

    def binary_set(self, selector: BinarySelector) -> BinarySetRef:
        """The bit of `selector` in proc_binsets (compiled: in a policy or `extra_binaries`)."""
        return BinarySetRef(self.binary_sets[_set_key(selector)], negated=selector.operator == "NotIn")

    def sets_of(self, path: str) -> int:
        """The binary sets of a process that executed `path` (what proc.bpf.o computes at exec)."""
        sets = self.tables.paths.get(path, 0)
        for prefix, bits in self.tables.prefixes.items():
            if path.startswith(prefix):
                sets |= bits
        return sets


class TracingCompiler:
    """Compiles the applied tracing policies for this node's pods; keeps its numbers between calls."""

    def __init__(self) -> None:
        self._rules: _Slots[tuple[str, int, int]] = _Slots(RT_MAX_RULES)
        self._policies: _Slots[str] = _Slots(MAX_POLICIES)
        self._sets: _Slots[tuple[str, tuple[str, ...]]] = _Slots(MAX_BINARY_SETS)
        self._args: _Slots[tuple[str, tuple[str, ...]]] = _Slots(MAX_ARG_SETS)

    def numbers(self) -> Json:
        """The numbers given so far (policies, rules, binary sets), as JSON for a restarted agent."""
        return {"policies": dict(self._policies.numbers),
                "rules": [[*key, n] for key, n in self._rules.numbers.items()],
                "sets": [[kind, list(values), n] for (kind, values), n in self._sets.numbers.items()],
                "arg_sets": [[kind, list(values), n] for (kind, values), n in self._args.numbers.items()]}

    def restore(self, saved: Json) -> None:
        """Take back `numbers()` of an earlier life, so its programmed maps stay valid as they are."""
        self._policies.numbers = {str(k): int(v) for k, v in saved.get("policies", {}).items()}
        self._rules.numbers = {(str(name), int(t), int(s)): int(n)
                               for name, t, s, n in saved.get("rules", [])}
        self._sets.numbers = {(str(kind), tuple(map(str, values))): int(n)
                              for kind, values, n in saved.get("sets", [])}
        self._args.numbers = {(str(kind), tuple(map(str, values))): int(n)
                              for kind, values, n in saved.get("arg_sets", [])}

    def compile(self, policies: Sequence[TracingPolicy], pods: Sequence[PodScope],
                extra_binaries: Sequence[BinarySelector] = ()) -> CompiledTracing:
        """The tables for `policies` (in name order) over `pods`; `extra_binaries` get binary sets too."""
        ordered = sorted(policies, key=lambda p: (type(p).__name__, p.metadata.namespace, p.metadata.name))
        self._free_unused(ordered, extra_binaries)
        out = CompiledTracing(RtTables())
        rules: dict[int, RtRuleEntry] = {}
        global_rules, cgroups = 0, dict[int, int]()
        for selector in extra_binaries:
            if self._sets.take(_set_key(selector)) is None:
                out.problems.append(f"binary set {list(selector.values)}: more than {MAX_BINARY_SETS} sets")
        for policy in ordered:
            name = policy_name(policy)
            out.hooks[name] = [tp.hook for tp in policy.spec.tracepoints]
            compiled = self._compile_policy(policy, name, out)
            if compiled is None:
                continue
            entries, mask = compiled
            rules.update(entries)
            targets = selected_cgroups(policy, pods)
            if targets is None:
                global_rules |= mask
            for cgroup_id in targets or ():
                cgroups[cgroup_id] = cgroups.get(cgroup_id, 0) | mask
        out.binary_sets = dict(self._sets.numbers)
        paths, prefixes = _set_entries(self._sets.numbers)
        arg_paths, arg_prefixes = _set_entries(self._args.numbers)
        # postfixes are matched reversed, as prefixes of the reversed string
        reversed_sets = {("Prefix", tuple(v[::-1] for v in values)): n
                         for (kind, values), n in self._args.numbers.items() if kind == "Postfix"}
        _, postfixes = _set_entries(reversed_sets)
        hooks = frozenset(rule.hook for rule in rules.values() if rule.hook != RtHook.EXEC)
        out.tables = RtTables(rules, global_rules, cgroups, paths, prefixes, arg_paths, arg_prefixes,
                              {p[::-1]: bits for p, bits in postfixes.items()}, hooks)
        return out

    def _free_unused(self, policies: Sequence[TracingPolicy], extra: Sequence[BinarySelector]) -> None:
        """Release the numbers of policies, selectors and binary sets no longer applied."""
        self._policies.keep_only(policy_name(p) for p in policies)
        selectors = [(key, hook, s) for p in policies for key, hook, s, _ in _hook_selectors(p)]
        self._rules.keep_only(key for key, _, _ in selectors)
        self._sets.keep_only([*(_set_key(b) for _, _, s in selectors for b in s.match_binaries),
                              *(_set_key(b) for b in extra)])
        self._args.keep_only(_arg_key(a) for _, hook, s in selectors for a in _string_args(hook, s))

    def _compile_policy(self, policy: TracingPolicy, name: str,
                        out: CompiledTracing) -> tuple[dict[int, RtRuleEntry], int] | None:
        """A policy's rules by number and their mask (None: it does not fit; a problem says why)."""
        index = self._policies.take(name)
        selectors = _hook_selectors(policy)
        numbers = [self._rules.take(key) for key, _, _, _ in selectors]
        sets = [[self._sets.take(_set_key(b)) for b in s.match_binaries] for _, _, s, _ in selectors]
        args = [[self._args.take(_arg_key(a)) for a in _string_args(hook, s)] for _, hook, s, _ in selectors]
        if index is None or None in numbers or any(None in s for s in (*sets, *args)):
            what = "rules" if None in numbers else "binary or argument sets"
            out.problems.append(f"tracing policy {name} is not applied: the node's {what} are full "
                                f"({RT_MAX_RULES} selectors, {MAX_BINARY_SETS} binary sets, {MAX_ARG_SETS} "
                                "argument sets)")
            self._rules.keep_only(k for k in self._rules.numbers if k[0] != name)
            return None
        out.names[index] = name
        for tp in policy.spec.tracepoints:
            hook = HOOKS.get((tp.subsystem, tp.event))
            if hook is not None:
                out.args[(index, int(hook))] = tuple(a.index for a in tp.args)
        mask = sum(1 << n for n in numbers if n is not None)
        entries = {number: _rule(selector, hook, index, mask, binsets, argsets, _reported(hook, tp))
                   for number, (_, hook, selector, tp), binsets, argsets
                   in zip(numbers, selectors, sets, args, strict=True)
                   if number is not None}
        return entries, mask


def _hook_selectors(policy: TracingPolicy) -> list[tuple[tuple[str, int, int], RtHook, TracingSelector,
                                                          Tracepoint]]:
    """The policy's selectors, each with its stable key, hook and tracepoint; a hook without selectors
    posts all."""
    name = policy_name(policy)
    found: list[tuple[tuple[str, int, int], RtHook, TracingSelector, Tracepoint]] = []
    for t, tp in enumerate(policy.spec.tracepoints):
        hook = HOOKS.get((tp.subsystem, tp.event))
        if hook is None:
            continue
        for s, selector in enumerate(tp.selectors or (TracingSelector(),)):
            found.append(((name, t, s), hook, selector, tp))
    return found


def _reported(hook: RtHook, tp: Tracepoint) -> tuple[int, int]:
    """The syscall arguments the kernel copies as strings for the event: the declared string args."""
    fields = _FIELDS.get(hook, {})
    positions = [fields[a.index].position for a in tp.args if a.index in fields and fields[a.index].string]
    first, second = (*positions, RT_NO_ARG, RT_NO_ARG)[:2]
    return first, second


def _rule(selector: TracingSelector, hook: RtHook, policy: int, mask: int, binsets: list[int | None],
          argsets: list[int | None], report: tuple[int, int]) -> RtRuleEntry:
    action = selector.match_actions[0] if selector.match_actions else None
    bin_op, binset = int(RtMatchOp.ANY), 0
    if selector.match_binaries and binsets[0] is not None:
        negated = selector.match_binaries[0].operator == "NotIn"
        bin_op, binset = int(RtMatchOp.NOT_IN if negated else RtMatchOp.IN), binsets[0]
    pid_op, follow, pids = int(RtMatchOp.ANY), False, tuple[int, ...]()
    if selector.match_pids:
        match = selector.match_pids[0]
        pid_op = int(RtMatchOp.IN if match.operator == "In" else RtMatchOp.NOT_IN)
        follow, pids = match.follow_forks, match.values
    arg_op, argset, position, numbers = int(RtMatchOp.ANY), 0, 0, tuple[int, ...]()
    arg = selector.match_args[0] if selector.match_args else None
    field = _field(hook, arg) if arg else None
    if arg and field and field.string and argsets and argsets[0] is not None:
        arg_op, argset, position = int(_STRING_OPS[arg.operator]), argsets[0], field.position
    elif arg and field:
        arg_op, position, numbers = int(_INT_OPS[arg.operator]), field.position, tuple(map(int, arg.values))
    return RtRuleEntry(mask, policy, int(_ACTIONS[action.action] if action else RtAction.POST),
                       action.arg_sig if action else 0, bin_op, binset, pid_op, follow, pids, int(hook),
                       arg_op, argset, position, numbers, report)


def selected_cgroups(policy: TracingPolicy, pods: Sequence[PodScope]) -> list[int] | None:
    """The cgroups of the pods a policy applies to (None: every process of the node)."""
    selector = policy.spec.pod_selector
    namespaced = isinstance(policy, VelvetTracingPolicyNamespaced)
    if selector is None and not namespaced:
        return None
    return [pod.cgroup_id for pod in pods
            if (not namespaced or pod.namespace == policy.metadata.namespace)
            and (selector is None or selector.matches(pod.labels))]


def _set_entries(sets: Mapping[tuple[str, tuple[str, ...]], int]) -> tuple[dict[str, int], dict[str, int]]:
    """rt_bin_paths (path -> sets) and rt_bin_prefixes (prefix -> its sets and every shorter prefix's: the
    trie answers with the longest match only)."""
    paths: dict[str, int] = {}
    own: dict[str, int] = {}
    for (kind, values), index in sets.items():
        if kind == "Postfix":
            continue  # compiled reversed, as prefixes
        target = own if kind == "Prefix" else paths
        for value in values:
            target[value] = target.get(value, 0) | 1 << index
    prefixes = {prefix: _or(bits for other, bits in own.items() if prefix.startswith(other))
                for prefix in own}
    return paths, prefixes


def _or(values: Iterable[int]) -> int:
    result = 0
    for value in values:
        result |= value
    return result
