"""The node's endpoints: which pod is wired to which interface, kept in a state file and attached."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from velvet.control.endpoints import EndpointRegistry
from velvet.datapath.protocol import Datapath
from velvet.durable import write_atomic
from velvet.model.endpoint import EndpointRecord, EndpointReport

log = logging.getLogger("velvet.controllers.endpoints")


class EndpointController:
    """Endpoint records by pod, their datapath attachments, and the file that outlives the agent."""

    def __init__(self, state_file: Path, datapath: Datapath) -> None:
        self._file = state_file
        self._datapath = datapath
        self.registry = self._load()

    def __iter__(self) -> Iterator[EndpointRecord]:
        return iter(self.registry)

    def __len__(self) -> int:
        return len(self.registry)

    def get(self, key: str) -> EndpointRecord | None:
        """The endpoint of pod "namespace/name", if wired."""
        return self.registry.get(key)

    def restore(self) -> None:
        """Re-attach the endpoints whose interface still exists; forget those deleted while no agent ran."""
        for record in list(self.registry):
            if self._datapath.has_interface(record.ifname):
                self._datapath.attach_endpoint(record)
            else:
                self.registry.remove(record.key)
        self._save()

    def add(self, namespace: str, name: str, report: EndpointReport) -> EndpointRecord:
        """Wire a pod (the node runtime's CNI ADD): record it and attach the pod-veth programs."""
        record = self.registry.upsert(namespace, name, report)
        self._datapath.attach_endpoint(record)
        self._save()
        return record

    def problems(self, key: str) -> list[str]:
        """What the datapath lacks of pod "namespace/name"'s endpoint: programs, its lxc_endpoints entry."""
        record = self.registry.get(key)
        if record is None:
            return [f"pod {key} has no endpoint"]
        problems = self._datapath.endpoint_problems(record)
        entry = self._datapath.read("lxc_endpoints").get(record.ip)
        if entry is None or entry.ifindex != record.ifindex:
            problems.append(f"the datapath's endpoint map has no entry of {record.ip} on {record.ifname}")
        return problems

    def remove(self, key: str) -> EndpointRecord | None:
        """Unwire a pod: detach its programs and forget it; None when it was not wired."""
        record = self.registry.remove(key)
        if record is not None:
            self._datapath.detach_endpoint(record)
            self._save()
        return record

    def _load(self) -> EndpointRegistry:
        """The saved endpoints; an unreadable file is set aside (the node runtime re-announces its pods)."""
        try:
            return EndpointRegistry.restore(json.loads(self._file.read_bytes()))
        except FileNotFoundError:
            return EndpointRegistry()
        except (OSError, ValueError, TypeError, KeyError) as err:
            aside = self._file.with_name(self._file.name + ".unreadable")
            os.replace(self._file, aside)
            log.error("endpoint state %s is unreadable (%s): moved to %s; pods are re-wired as the node "
                      "runtime reports them", self._file, err, aside)
            return EndpointRegistry()

    def _save(self) -> None:
        write_atomic(self._file, json.dumps(self.registry.snapshot()).encode())
