"""The runtime policy maps of proc.bpf.o as the control plane builds them: plain, comparable records.

`control.tracing` compiles tracing policies into `RtTables`; `runtime.source` writes the difference between
two of them to the kernel (`rt_rules`, `rt_config`, `rt_cgroup_rules`, `rt_bin_*`, `rt_arg_*`) and attaches
the syscall hooks in use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from velvet.datapath.structs import (
    RT_MAX_ARG_NUMS,
    RT_MAX_PIDS,
    RT_NO_ARG,
    RT_PATH_MAX,
    RtHook,
    RtMatchOp,
    RtPath,
    RtPathLpm,
    RtRule,
)
from velvet.model.tracing import SYSCALL_HOOKS
from velvet.model.tracing import SyscallField as SyscallField  # what the runtime reads events with

_EMPTY: Mapping[int, int] = MappingProxyType({})
# each syscall hook's program (enum rt_hook) -> (subsystem, event, x86-64 syscall number, format fields)
SYSCALL_HOOK_FIELDS: dict[RtHook, tuple[str, str, int, dict[int, SyscallField]]] = {
    RtHook[event.removeprefix("sys_enter_").upper()]: (subsystem, event, number, fields)
    for (subsystem, event), (number, fields) in SYSCALL_HOOKS.items()}


@dataclass(frozen=True)
class RtRuleEntry:
    """struct rt_rule: one selector of an exec policy (see types.h)."""

    policy_rules: int
    policy: int
    action: int
    signal: int = 0
    bin_op: int = 0
    binset: int = 0
    pid_op: int = 0
    pid_follow: bool = False
    pids: tuple[int, ...] = ()
    hook: int = 0
    arg_op: int = 0
    argset: int = 0
    arg_pos: int = 0  # the syscall argument matchArgs compares
    arg_nums: tuple[int, ...] = ()  # an int matchArgs' values
    report_str: tuple[int, int] = (RT_NO_ARG, RT_NO_ARG)  # the syscall arguments reported as strings

    def to_c(self) -> RtRule:
        """The C struct."""
        rule = RtRule(policy_rules=self.policy_rules, policy=self.policy, action=self.action,
                      signal=self.signal, bin_op=self.bin_op, binset=self.binset, pid_op=self.pid_op,
                      pid_follow=int(self.pid_follow), npids=len(self.pids), hook=self.hook,
                      arg_op=self.arg_op, argset=self.argset, arg_pos=self.arg_pos,
                      arg_nnums=len(self.arg_nums[:RT_MAX_ARG_NUMS]))
        for i, pid in enumerate(self.pids[:RT_MAX_PIDS]):
            rule.pids[i] = pid
        for i, number in enumerate(self.arg_nums[:RT_MAX_ARG_NUMS]):
            rule.arg_nums[i] = number
        rule.report_str[0], rule.report_str[1] = self.report_str
        return rule

    @classmethod
    def from_c(cls, rule: RtRule) -> RtRuleEntry:
        """The record of a C struct (read back from the kernel)."""
        return cls(int(rule.policy_rules), int(rule.policy), int(rule.action), int(rule.signal),
                   int(rule.bin_op), int(rule.binset), int(rule.pid_op), bool(rule.pid_follow),
                   tuple(int(p) for p in rule.pids[:min(int(rule.npids), RT_MAX_PIDS)]), int(rule.hook),
                   int(rule.arg_op), int(rule.argset), int(rule.arg_pos),
                   tuple(int(n) for n in rule.arg_nums[:min(int(rule.arg_nnums), RT_MAX_ARG_NUMS)]),
                   (int(rule.report_str[0]), int(rule.report_str[1])))


@dataclass(frozen=True)
class RtTables:
    """Everything the exec policies put in the kernel; two of them differ in what must be written."""

    rules: Mapping[int, RtRuleEntry] = field(default_factory=dict)
    global_rules: int = 0
    cgroup_rules: Mapping[int, int] = field(default_factory=lambda: _EMPTY)
    paths: Mapping[str, int] = field(default_factory=dict)  # exact binary path -> binary sets
    prefixes: Mapping[str, int] = field(default_factory=dict)  # path prefix -> its and shorter prefixes' sets
    arg_paths: Mapping[str, int] = field(default_factory=dict)  # a syscall's string argument: exact -> sets
    arg_prefixes: Mapping[str, int] = field(default_factory=dict)  # and prefixes, as `prefixes`
    arg_postfixes: Mapping[str, int] = field(default_factory=dict)  # postfixes (not reversed here)
    hooks: frozenset[int] = frozenset()  # the syscall hooks (enum rt_hook) whose programs must be attached


def bin_in_rules(rules: Mapping[int, RtRuleEntry]) -> int:
    """rt_config's bin_in_rules: the rules with matchBinaries In (a process in no binary set skips them)."""
    return sum(1 << number for number, rule in rules.items() if rule.bin_op == RtMatchOp.IN)


def path_key(path: str) -> RtPath:
    """rt_bin_paths' key: the path's bytes, zero-padded."""
    return RtPath(path.encode()[:RT_PATH_MAX - 1])


def prefix_key(prefix: str) -> RtPathLpm:
    """rt_bin_prefixes' key: the prefix's bytes (without NUL) and their length in bits."""
    data = prefix.encode()[:RT_PATH_MAX - 1]
    return RtPathLpm(prefixlen=len(data) * 8, path=data)
