"""velvet.io/v1alpha1 VelvetTracingPolicy and VelvetTracingPolicyNamespaced, shaped as Tetragon's."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from velvet.model.meta import LabelSelector, ObjectMeta

EXEC_HOOK = ("sched", "sched_process_exec")
OPENAT_HOOK = ("syscalls", "sys_enter_openat")
SETUID_HOOK = ("syscalls", "sys_enter_setuid")
PTRACE_HOOK = ("syscalls", "sys_enter_ptrace")
MOUNT_HOOK = ("syscalls", "sys_enter_mount")
EXECVE_HOOK = ("syscalls", "sys_enter_execve")
OPEN_HOOK = ("syscalls", "sys_enter_open")
# Hooks a cgroup hook of guard.bpf.o can refuse (Override) or audit (Post): the syscalls whose operation
# it sits on, and Velvet's own `cgroup` events for what has no syscall of its own (sysctl writes, devices).
CONNECT_HOOK = ("syscalls", "sys_enter_connect")
SENDTO_HOOK = ("syscalls", "sys_enter_sendto")
SENDMSG_HOOK = ("syscalls", "sys_enter_sendmsg")
SOCKET_HOOK = ("syscalls", "sys_enter_socket")
SYSCTL_HOOK = ("cgroup", "sysctl")
DEV_HOOK = ("cgroup", "dev")
ADDRESS_HOOKS = (CONNECT_HOOK, SENDTO_HOOK, SENDMSG_HOOK)
GUARD_HOOKS = (*ADDRESS_HOOKS, SOCKET_HOOK, SYSCTL_HOOK, DEV_HOOK)
EPERM_ERROR = -1  # Override's argError that a cgroup hook gives: -EPERM

FAMILIES = {"AF_INET": 2, "AF_INET6": 10}
PROTOCOLS = {"IPPROTO_ICMP": 1, "IPPROTO_TCP": 6, "IPPROTO_UDP": 17, "IPPROTO_ICMPV6": 58, "IPPROTO_RAW": 255}
SOCKET_TYPES = {"SOCK_STREAM": 1, "SOCK_DGRAM": 2, "SOCK_RAW": 3, "SOCK_SEQPACKET": 5}


@dataclass(frozen=True)
class SyscallField:
    """A field of a syscalls/sys_enter_* format: its name, which syscall argument it is (-1: the syscall's
    number), and whether it is a user string."""

    name: str
    position: int
    string: bool = False


def _fields(*names: str) -> dict[int, SyscallField]:
    """Tetragon's numbering of a sys_enter format: the 4 common fields, __syscall_nr (4), then the
    arguments; a name ending in `*` is a string, `-` a pointer that is neither matched nor reported."""
    fields = {4: SyscallField("__syscall_nr", -1)}
    for position, name in enumerate(names):
        if not name.endswith("-"):
            fields[5 + position] = SyscallField(name.rstrip("*"), position, name.endswith("*"))
    return fields


# The syscall hooks a tracing policy may use (proc.bpf.o): (x86-64 syscall number, its format's fields).
SYSCALL_HOOKS: dict[tuple[str, str], tuple[int, dict[int, SyscallField]]] = {
    OPENAT_HOOK: (257, _fields("dfd", "filename*", "flags", "mode")),
    SETUID_HOOK: (105, _fields("uid")),
    PTRACE_HOOK: (101, _fields("request", "pid", "addr", "data")),
    MOUNT_HOOK: (165, _fields("dev_name*", "dir_name*", "type*", "flags", "data-")),
    EXECVE_HOOK: (59, _fields("filename*", "argv-", "envp-")),
    OPEN_HOOK: (2, _fields("filename*", "flags", "mode")),
}


def parse_number(value: str, names: dict[str, int], what: str) -> int:
    """A family, protocol or socket type given by its name (AF_INET) or its number; ValueError if neither."""
    if value in names:
        return names[value]
    if value.isdigit() and int(value) < 2**31:
        return int(value)
    raise ValueError(f"{value!r} is not a {what} (a number or one of {', '.join(names)})")


def parse_ports(value: str) -> tuple[int, int]:
    """A DPort value: a port ("443") or an inclusive range ("1000:2000", Tetragon's min:max)."""
    low, _, high = value.partition(":")
    if not (low.isdigit() and (high.isdigit() or not high)):
        raise ValueError(f"{value!r} is not a port or a range min:max")
    ports = (int(low), int(high or low))
    if not 0 <= ports[0] <= ports[1] <= 65535:
        raise ValueError(f"{value!r} is not within 0-65535 in order")
    return ports


def parse_cidr(value: str) -> str:
    """A DAddr value: an address or a CIDR of either family, as a prefix ("10.0.0.1" -> "10.0.0.1/32")."""
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR") from None


@dataclass(frozen=True)
class BinarySelector:
    """matchBinaries: the executed binary's full path is In / NotIn `values`, or starts with one (Prefix)."""

    operator: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class ArgSelector:
    """matchArgs: the hook's argument `index` compared with `values` by `operator`."""

    index: int
    operator: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class PIDSelector:
    """matchPIDs: the process id (thread-group id, as the host sees it) In / NotIn `values`."""

    operator: str
    values: tuple[int, ...]
    follow_forks: bool = False
    is_namespace_pid: bool = False


@dataclass(frozen=True)
class ActionSelector:
    """matchActions: Post, NoPost, Sigkill, Signal with `arg_sig`, or Override with `arg_error` (-EPERM)."""

    action: str
    arg_sig: int = 0
    arg_error: int = 0


@dataclass(frozen=True)
class TracingSelector:
    """One selector: every match* must hold (AND); a hook's selectors are alternatives, first match acts."""

    match_binaries: tuple[BinarySelector, ...] = ()
    match_args: tuple[ArgSelector, ...] = ()
    match_pids: tuple[PIDSelector, ...] = ()
    match_actions: tuple[ActionSelector, ...] = ()


@dataclass(frozen=True)
class TracepointArg:
    """An argument of the tracepoint to report: its field index in the tracepoint's format, and its type."""

    index: int
    type: str


@dataclass(frozen=True)
class Tracepoint:
    """A hook on the tracepoint `subsystem`/`event`; no selector means every event is posted."""

    subsystem: str
    event: str
    args: tuple[TracepointArg, ...] = ()
    selectors: tuple[TracingSelector, ...] = ()

    @property
    def hook(self) -> str:
        """`subsystem/event`, as `velvet status` names it."""
        return f"{self.subsystem}/{self.event}"


@dataclass(frozen=True)
class TracingPolicySpec:
    """The hooks, and the pods they apply to (None: every process of the node, as Tetragon without one)."""

    tracepoints: tuple[Tracepoint, ...]
    pod_selector: LabelSelector | None = None


@dataclass(frozen=True)
class VelvetTracingPolicy:
    """A cluster-wide tracing policy (Tetragon's TracingPolicy)."""

    metadata: ObjectMeta
    spec: TracingPolicySpec


@dataclass(frozen=True)
class VelvetTracingPolicyNamespaced:
    """A tracing policy for the pods of its namespace only (Tetragon's TracingPolicyNamespaced)."""

    metadata: ObjectMeta
    spec: TracingPolicySpec
