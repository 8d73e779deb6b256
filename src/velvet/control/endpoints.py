"""The node's endpoints: one per local pod with its interface, IP and a stable endpoint id."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict
from typing import Any

from velvet.model.endpoint import EndpointRecord, EndpointReport

FIRST_ENDPOINT_ID = 1
MAX_ENDPOINT_ID = 0xFFFF


class EndpointRegistry:
    """Endpoints by pod key; endpoint ids are the lowest free ones and stay put across restarts."""

    def __init__(self, records: Mapping[str, EndpointRecord] | None = None) -> None:
        self._by_key: dict[str, EndpointRecord] = dict(records or {})

    def upsert(self, namespace: str, name: str, report: EndpointReport) -> EndpointRecord:
        """Add or update a pod's endpoint, keeping its id when it already has one."""
        key = f"{namespace}/{name}"
        old = self._by_key.get(key)
        ep_id = old.ep_id if old else self._free_id()
        record = EndpointRecord(namespace, name, ep_id, report.ip, report.ifname, report.ifindex,
                                report.netns_inode, report.cgroup_id, report.mac, report.host_mac)
        self._by_key[key] = record
        return record

    def remove(self, key: str) -> EndpointRecord | None:
        """Forget an endpoint; returns what it was."""
        return self._by_key.pop(key, None)

    def get(self, key: str) -> EndpointRecord | None:
        """The endpoint of pod `key`, if wired."""
        return self._by_key.get(key)

    def by_ip(self, ip: str) -> EndpointRecord | None:
        """The endpoint owning `ip`."""
        return next((r for r in self._by_key.values() if r.ip == ip), None)

    def __iter__(self) -> Iterator[EndpointRecord]:
        return iter(sorted(self._by_key.values(), key=lambda r: r.ep_id))

    def __len__(self) -> int:
        return len(self._by_key)

    def _free_id(self) -> int:
        used = {r.ep_id for r in self._by_key.values()}
        for candidate in range(FIRST_ENDPOINT_ID, MAX_ENDPOINT_ID + 1):
            if candidate not in used:
                return candidate
        raise ValueError("no free endpoint id left (65535 endpoints on one node)")

    def snapshot(self) -> list[dict[str, Any]]:
        """JSON-able form for the agent's state file."""
        return [asdict(r) for r in self]

    @classmethod
    def restore(cls, data: list[dict[str, Any]]) -> EndpointRegistry:
        """Rebuild from snapshot()."""
        records = [EndpointRecord(**item) for item in data]
        return cls({r.key: r for r in records})
