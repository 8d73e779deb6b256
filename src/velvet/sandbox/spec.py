"""What the pod runtime is asked to run and what it reports: small frozen, JSON-friendly dataclasses.

The lead maps the Kubernetes Pod model to `PodSpecLite`; nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from velvet.errors import SandboxError

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
PHASE_RUNNING = "Running"
PHASE_SUCCEEDED = "Succeeded"
PHASE_FAILED = "Failed"


@dataclass(frozen=True)
class PortLite:
    """A declared container port (informational, as in Kubernetes)."""

    container_port: int
    protocol: str = "TCP"
    name: str = ""


@dataclass(frozen=True)
class ContainerLite:
    """One container: the process `command + args` with `env`; no image, the host filesystem is used."""

    name: str
    command: tuple[str, ...]
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[PortLite, ...] = ()

    @property
    def argv(self) -> tuple[str, ...]:
        """The full command line."""
        return (*self.command, *self.args)


@dataclass(frozen=True)
class ProbeLite:
    """A readiness probe: exactly one of `tcp_port` (tcpSocket) or `exec_command` (exec)."""

    tcp_port: int | None = None
    exec_command: tuple[str, ...] | None = None
    initial_delay_seconds: float = 0.0
    period_seconds: float = 10.0
    timeout_seconds: float = 1.0
    failure_threshold: int = 3
    success_threshold: int = 1

    def __post_init__(self) -> None:
        """Check that the probe has exactly one handler."""
        if (self.tcp_port is None) == (self.exec_command is None):
            raise SandboxError("a probe needs exactly one of tcp_port and exec_command")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "tcp_port": self.tcp_port,
            "exec_command": list(self.exec_command) if self.exec_command is not None else None,
            "initial_delay_seconds": self.initial_delay_seconds,
            "period_seconds": self.period_seconds,
            "timeout_seconds": self.timeout_seconds,
            "failure_threshold": self.failure_threshold,
            "success_threshold": self.success_threshold,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProbeLite:
        """Inverse of `to_dict`."""
        cmd = data.get("exec_command")
        return cls(**{**data, "exec_command": tuple(cmd) if cmd is not None else None})


@dataclass(frozen=True)
class PodSpecLite:
    """The part of a Pod the sandbox runtime needs."""

    namespace: str
    name: str
    uid: str
    containers: tuple[ContainerLite, ...]
    readiness: ProbeLite | None = None
    termination_grace_seconds: float = 30.0
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Check containers: at least one, names unique DNS labels (they name log files), commands set."""
        names = [c.name for c in self.containers]
        if not names or len(set(names)) != len(names) or not all(_DNS_LABEL.match(n) for n in names):
            raise SandboxError(f"pod {self.namespace}/{self.name}: containers need unique DNS-label names")
        if not all(c.argv for c in self.containers):
            raise SandboxError(f"pod {self.namespace}/{self.name}: every container needs a command")


@dataclass(frozen=True)
class PodRecord:
    """A pod as created: every name and id the agent and the datapath need. JSON via to_dict/from_dict."""

    namespace: str
    name: str
    uid: str
    ip: str
    host_veth: str
    host_ifindex: int
    netns: str
    netns_inode: int
    cgroup: str
    cgroup_id: int
    pids: Mapping[str, int]
    started_at: float
    labels: Mapping[str, str] = field(default_factory=dict)
    host_mac: str = ""  # "": a record of an older sandbox
    pod_mac: str = ""
    readiness: ProbeLite | None = None
    termination_grace_seconds: float = 30.0

    @property
    def key(self) -> str:
        """`namespace/name`."""
        return f"{self.namespace}/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "namespace": self.namespace,
            "name": self.name,
            "uid": self.uid,
            "ip": self.ip,
            "host_veth": self.host_veth,
            "host_ifindex": self.host_ifindex,
            "host_mac": self.host_mac,
            "pod_mac": self.pod_mac,
            "netns": self.netns,
            "netns_inode": self.netns_inode,
            "cgroup": self.cgroup,
            "cgroup_id": self.cgroup_id,
            "pids": dict(self.pids),
            "started_at": self.started_at,
            "labels": dict(self.labels),
            "readiness": self.readiness.to_dict() if self.readiness else None,
            "termination_grace_seconds": self.termination_grace_seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PodRecord:
        """Inverse of `to_dict`."""
        probe = data.get("readiness")
        return cls(
            **{
                **data,
                "pids": {str(k): int(v) for k, v in data["pids"].items()},
                "labels": dict(data.get("labels", {})),
                "readiness": ProbeLite.from_dict(probe) if probe else None,
            }
        )


@dataclass(frozen=True)
class ContainerStatusLite:
    """One container's process state; `exit_code` is known once its shim recorded it."""

    name: str
    running: bool
    pid: int
    exit_code: int | None = None


@dataclass(frozen=True)
class PodStatusLite:
    """Phase (Running/Succeeded/Failed), readiness and per-container state of a pod."""

    phase: str
    ready: bool
    pod_ip: str
    containers: tuple[ContainerStatusLite, ...]
