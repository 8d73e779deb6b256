"""The `Datapath` protocol: what the agent asks of the kernel, with a real and an in-memory implementation."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from velvet.datapath.tables import ConntrackSweep, StaleBackend
from velvet.model.endpoint import EndpointRecord


@dataclass(frozen=True)
class FeatureCheck:
    """One probed kernel capability: ok or not, what was seen, and what its absence disables."""

    name: str
    ok: bool
    detail: str
    disables: str


@dataclass(frozen=True)
class KernelInfo:
    """The kernel a datapath runs on: its release and the capabilities probed when it started."""

    release: str
    features: tuple[FeatureCheck, ...] = ()

    def supports(self, name: str) -> bool:
        """Whether the check called `name` passed (an unknown check counts as missing)."""
        return any(c.ok for c in self.features if c.name == name)


@dataclass(frozen=True)
class ProgramStatus:
    """A loaded program and where it is attached."""

    name: str
    id: int
    attached_to: tuple[str, ...]


@dataclass(frozen=True)
class MapStatus:
    """A map's fill level."""

    name: str
    type: str
    entries: int
    capacity: int


@dataclass(frozen=True)
class DatapathStatus:
    """Everything `velvet status` shows about the datapath."""

    kind: str
    programs: tuple[ProgramStatus, ...] = ()
    maps: tuple[MapStatus, ...] = ()
    counters: Mapping[str, int] = field(default_factory=dict)


class Datapath(Protocol):
    """Tables are named like the maps they fill; keys and values are the control plane's frozen records."""

    def start(self) -> None:
        """Probe the kernel, load (or re-adopt) programs and maps and attach the node-wide hooks."""

    def kernel(self) -> KernelInfo:
        """The kernel's release and the capabilities probed by `start` (no syscalls after it)."""

    def attach_endpoint(self, endpoint: EndpointRecord) -> None:
        """Attach the pod-veth programs to an endpoint's host interface."""

    def has_interface(self, ifname: str) -> bool:
        """Whether the node still has the interface (pods deleted while no agent ran have none)."""

    def detach_endpoint(self, endpoint: EndpointRecord) -> None:
        """Remove an endpoint's attachments (its interface may already be gone)."""

    def endpoint_problems(self, endpoint: EndpointRecord) -> list[str]:
        """What an attached endpoint lacks in the datapath: its interface, its programs on it."""

    def write(self, table: str, upserts: Mapping[Any, Any], deletes: Iterable[Any]) -> None:
        """Apply a difference to one table: batch upserts first, then deletes."""

    def flush_backends(self, stale: Sequence[StaleBackend]) -> None:
        """Delete conntrack entries that still send a frontend's flows to a backend it dropped."""

    def sweep_conntrack(self) -> ConntrackSweep:
        """Remove the conntrack entries whose lifetime ran out (the table does not evict by itself)."""

    def read(self, table: str) -> dict[Any, Any]:
        """Current contents of a table, decoded (used to re-adopt state after a restart)."""

    def dump(self, table: str) -> list[dict[str, Any]]:
        """Raw entries of a map for `velvet bpf … list`."""

    def status(self) -> DatapathStatus:
        """Programs, attachments, map fill levels, counters."""

    def read_events(self, max_records: int = 65536) -> Any:
        """Pending flow events as a numpy array of struct flow_event records (empty when none)."""

    def events_fd(self) -> int | None:
        """A file descriptor that polls readable when events are pending (None: no event source)."""

    def events_lost(self) -> int:
        """Events the datapath could not queue because the ring was full."""

    def close(self) -> None:
        """Release file descriptors; attachments and pinned maps stay so traffic keeps flowing."""
