"""An in-memory `Datapath` for unprivileged tests of the control plane (never evidence a feature works)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from velvet.datapath.protocol import DatapathStatus, FeatureCheck, KernelInfo, MapStatus, ProgramStatus
from velvet.datapath.structs import FLOW_EVENT_DTYPE
from velvet.datapath.tables import ConntrackSweep, StaleBackend
from velvet.model.endpoint import EndpointRecord


class FakeDatapath:
    """Tables are dicts; attachments are a set of interface names."""

    def __init__(self, features: tuple[FeatureCheck, ...] = ()) -> None:
        self.features = features
        self.tables: dict[str, dict[Any, Any]] = {}
        self.attached: dict[str, EndpointRecord] = {}
        self.started = False
        self.writes = 0
        self.flushed: list[StaleBackend] = []
        self.pending_events: Any = np.zeros(0, FLOW_EVENT_DTYPE)

    def start(self) -> None:
        """Nothing to load."""
        self.started = True

    def kernel(self) -> KernelInfo:
        """The checks given at construction (none: every feature counts as missing)."""
        return KernelInfo("fake", self.features)

    def attach_endpoint(self, endpoint: EndpointRecord) -> None:
        """Remember the endpoint as attached."""
        self.attached[endpoint.ifname] = endpoint

    def has_interface(self, ifname: str) -> bool:
        """Interfaces exist while attached."""
        return ifname in self.attached

    def detach_endpoint(self, endpoint: EndpointRecord) -> None:
        """Forget the attachment."""
        self.attached.pop(endpoint.ifname, None)

    def endpoint_problems(self, endpoint: EndpointRecord) -> list[str]:
        """Nothing missing while attached."""
        return [] if endpoint.ifname in self.attached else [f"{endpoint.ifname} has no programs attached"]

    def write(self, table: str, upserts: Mapping[Any, Any], deletes: Iterable[Any]) -> None:
        """Apply upserts then deletes to the table's dict."""
        contents = self.tables.setdefault(table, {})
        contents.update(upserts)
        for key in deletes:
            contents.pop(key, None)
        self.writes += 1

    def flush_backends(self, stale: Sequence[StaleBackend]) -> None:
        """Remember what was flushed."""
        self.flushed.extend(stale)

    def sweep_conntrack(self) -> ConntrackSweep:
        """Nothing expires here: the fake keeps no conntrack."""
        return ConntrackSweep(0, 0, 0)

    def read(self, table: str) -> dict[Any, Any]:
        """A copy of the table."""
        return dict(self.tables.get(table, {}))

    def dump(self, table: str) -> list[dict[str, Any]]:
        """Entries as key/value strings."""
        return [{"key": str(k), "value": str(v)} for k, v in self.tables.get(table, {}).items()]

    def status(self) -> DatapathStatus:
        """Programs 'attached' to every endpoint and table sizes."""
        programs = (ProgramStatus("lxc_from_pod", 0, tuple(self.attached)),)
        maps = tuple(MapStatus(name, "fake", len(t), 0) for name, t in sorted(self.tables.items()))
        return DatapathStatus("fake", programs, maps)

    def read_events(self, max_records: int = 65536) -> Any:
        """Queued synthetic events (tests push numpy batches into `pending_events`)."""
        batch = self.pending_events[:max_records]
        self.pending_events = self.pending_events[max_records:]
        return batch

    def events_fd(self) -> int | None:
        """No pollable source: the agent polls."""
        return None

    def events_lost(self) -> int:
        """Nothing is ever lost here."""
        return 0

    def close(self) -> None:
        """Nothing to release."""
