"""velvet.io/v1alpha1 VelvetTracingPolicy and VelvetTracingPolicyNamespaced, shaped as Tetragon's."""

from __future__ import annotations

from dataclasses import dataclass

from velvet.model.meta import LabelSelector, ObjectMeta

EXEC_HOOK = ("sched", "sched_process_exec")
OPENAT_HOOK = ("syscalls", "sys_enter_openat")


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
    """matchActions: Post, NoPost, Sigkill, or Signal with `arg_sig`."""

    action: str
    arg_sig: int = 0


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
