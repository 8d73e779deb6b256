"""v1 Pod: the parts of the spec and status that a node agent and the sandbox runtime use."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from velvet.model.meta import EMPTY, ObjectMeta


@dataclass(frozen=True, slots=True)
class ContainerPort:
    """A port a container declares; `name` is what named targetPorts and policy ports refer to."""

    container_port: int
    name: str | None = None
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class Probe:
    """A readinessProbe: exactly one of tcp_socket_port or exec_command is set."""

    tcp_socket_port: int | str | None = None
    exec_command: tuple[str, ...] | None = None
    initial_delay_seconds: int = 0
    period_seconds: int = 10
    timeout_seconds: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3


@dataclass(frozen=True, slots=True)
class Container:
    """A container; in the sandbox its command and args run as a real process in the pod."""

    name: str
    image: str = ""
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    ports: tuple[ContainerPort, ...] = ()
    readiness_probe: Probe | None = None


@dataclass(frozen=True, slots=True)
class PodSpec:
    """Pod spec fields Velvet uses."""

    containers: tuple[Container, ...]
    node_name: str = ""
    termination_grace_period_seconds: int = 30
    host_network: bool = False


@dataclass(frozen=True, slots=True)
class PodCondition:
    """A status condition (Ready, ContainersReady, PodScheduled, Initialized)."""

    type: str
    status: str  # "True" | "False" | "Unknown"


@dataclass(frozen=True, slots=True)
class PodStatus:
    """What the node runtime reports about a pod."""

    phase: str = "Pending"
    pod_ip: str | None = None
    host_ip: str | None = None
    conditions: tuple[PodCondition, ...] = ()
    start_time: str | None = None

    @property
    def ready(self) -> bool:
        """The Ready condition is True."""
        return any(c.type == "Ready" and c.status == "True" for c in self.conditions)


@dataclass(frozen=True, slots=True)
class Pod:
    """A pod as stored; `terminating` once a deletion timestamp is set."""

    metadata: ObjectMeta
    spec: PodSpec
    status: PodStatus = PodStatus()

    @property
    def terminating(self) -> bool:
        """The pod is being deleted (grace period running)."""
        return self.metadata.deletion_timestamp is not None

    def named_port(self, name: str, protocol: str) -> int | None:
        """The containerPort named `name` with `protocol`, as named targetPorts and policy ports resolve."""
        for container in self.spec.containers:
            for port in container.ports:
                if port.name == name and port.protocol == protocol:
                    return port.container_port
        return None
