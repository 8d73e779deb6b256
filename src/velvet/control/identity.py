"""The identity allocator: label sets and policy CIDRs to stable, refcounted numeric identities.

Three number spaces, as in Cilium:

- reserved identities 1..6 (`reserved:host`, `reserved:world`, ...), always present;
- label identities from 256 up, one per distinct set of security-relevant labels (see `labels`);
- node-local CIDR identities from 1<<24 up, one per policy CIDR prefix (`cidr:<prefix>`);
  0.0.0.0/0 is not allocated: it is `reserved:world`.

Within a space the lowest free number is handed out first, so a freshly started agent that sees
the same objects allocates the same numbers. Given a `ClusterNumbers` source (a cluster store), label
identities take their numbers from it instead, so the same labels mean the same number on every
node; references are still counted here, and the source hears only of the first and the last.
`snapshot()` / `restore()` carry the numbers across agent restarts even when objects come back in a
different order: restored numbers are kept for their label sets until `forget_restored()` hands back
those nobody re-acquired.

Operations are O(1) except taking a previously freed number, O(log f) for f freed numbers.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, Protocol, TypeVar

from velvet.control.labels import cidr_labels, reserved_labels
from velvet.errors import VelvetError
from velvet.model.identity import FIRST_ALLOCATED_IDENTITY, Identity, ReservedIdentity

FIRST_LOCAL_CIDR_IDENTITY = 1 << 24
LAST_LABEL_IDENTITY = 0xFFFF
LAST_LOCAL_CIDR_IDENTITY = (1 << 25) - 1
SNAPSHOT_VERSION = 1
WORLD_PREFIX = "0.0.0.0/0"

LabelKey = tuple[tuple[str, str], ...]
K = TypeVar("K", bound=Hashable)


class ClusterNumbers(Protocol):
    """Where label identities get cluster-wide numbers (implemented by a source, e.g. etcd)."""

    def allocate(self, labels: Mapping[str, str]) -> int:
        """The cluster's number for a label set, allocated if none exists; this node now uses it."""

    def release(self, labels: Mapping[str, str], number: int) -> None:
        """This node no longer uses the label set's identity (the cluster frees it when nobody does)."""


def normalize_prefix(cidr: str) -> str:
    """The canonical text of an IPv4 prefix, host bits cleared ("10.1.2.3/8" -> "10.0.0.0/8")."""
    return str(ipaddress.IPv4Network(cidr, strict=False))


@dataclass
class _Held:
    """An allocated identity and how many holders it has."""

    identity: Identity
    refs: int


class _Space(Generic[K]):
    """One number space: key -> refcounted identity, lowest free number first, restorable."""

    def __init__(self, name: str, first: int, last: int, cluster: ClusterNumbers | None = None) -> None:
        self.name = name
        self.first = first
        self.last = last
        self.cluster = cluster
        self.held: dict[K, _Held] = {}
        self.by_id: dict[int, Identity] = {}
        self.restored: dict[K, int] = {}
        self._next = first
        self._free: list[int] = []

    def acquire(self, key: K, labels: Mapping[str, str]) -> Identity:
        """The identity of `key`, allocated on first use; one more reference."""
        held = self.held.get(key)
        if held is None:
            number = self.restored.pop(key, None)
            if number is None:
                number = self._take() if self.cluster is None else self._from_cluster(self.cluster, labels)
            identity = Identity(number, labels)
            held = self.held[key] = _Held(identity, 0)
            self.by_id[identity.id] = identity
        held.refs += 1
        return held.identity

    def release(self, key: K) -> bool:
        """Drop one reference; True when that was the last one and the number is free again."""
        held = self.held.get(key)
        if held is None:
            raise KeyError(f"{self.name} identity for {key!r} is not held")
        held.refs -= 1
        if held.refs:
            return False
        del self.held[key]
        del self.by_id[held.identity.id]
        if self.cluster is None:
            heapq.heappush(self._free, held.identity.id)
        else:
            self.cluster.release(held.identity.labels, held.identity.id)
        return True

    def restore(self, entries: Mapping[K, int]) -> None:
        """Reserve `entries` (key -> number) for their keys; the space must be empty."""
        if self.held or self.restored or self._next != self.first:
            raise VelvetError(f"cannot restore {self.name} identities into a used allocator")
        numbers = set(entries.values())
        if len(numbers) != len(entries) or any(not self.first <= n <= self.last for n in numbers):
            raise VelvetError(f"invalid {self.name} identity snapshot: duplicate or out-of-range numbers")
        self.restored = dict(entries)
        self._next = max(numbers, default=self.first - 1) + 1
        self._free = [n for n in range(self.first, self._next) if n not in numbers]

    def forget_restored(self) -> int:
        """Free every restored number whose key was not acquired again; how many were freed."""
        for number in self.restored.values():
            heapq.heappush(self._free, number)
        count = len(self.restored)
        self.restored.clear()
        return count

    def _from_cluster(self, cluster: ClusterNumbers, labels: Mapping[str, str]) -> int:
        """The cluster's number for `labels`, checked against this space and what is held here."""
        number = cluster.allocate(labels)
        if not self.first <= number <= self.last or number in self.by_id:
            cluster.release(labels, number)
            raise VelvetError(f"the cluster gave {self.name} identity {number} to {dict(labels)}, but it is "
                              f"outside {self.first}..{self.last} or held here for other labels")
        return number

    def _take(self) -> int:
        """The lowest free number."""
        if self._free:
            return heapq.heappop(self._free)
        if self._next > self.last:
            raise VelvetError(f"{self.name} identity space exhausted ({self.first}..{self.last})")
        self._next += 1
        return self._next - 1


class IdentityAllocator:
    """Allocates label identities and local CIDR identities; reserved identities are always present.

    With `cluster`, label identities are numbered by the cluster (CIDR identities stay node-local,
    as in Cilium); `acquire` then raises the source's `VelvetError` when it cannot be asked.
    """

    def __init__(self, cluster: ClusterNumbers | None = None) -> None:
        self._reserved = {
            int(r): Identity(int(r), reserved_labels(r.name.lower().replace("_", "-")))
            for r in ReservedIdentity
            if r is not ReservedIdentity.UNKNOWN
        }
        self._labels: _Space[LabelKey] = _Space("label", FIRST_ALLOCATED_IDENTITY, LAST_LABEL_IDENTITY,
                                                    cluster)
        self._cidrs: _Space[str] = _Space("CIDR", FIRST_LOCAL_CIDR_IDENTITY, LAST_LOCAL_CIDR_IDENTITY)

    def acquire(self, labels: Mapping[str, str]) -> Identity:
        """The identity of a label set (allocated on first use), taking one reference to it."""
        key = _label_key(labels)
        return self._labels.acquire(key, MappingProxyType(dict(key)))

    def release(self, labels: Mapping[str, str]) -> bool:
        """Drop one reference to a label set's identity; True when its number was freed."""
        return self._labels.release(_label_key(labels))

    def lookup_labels(self, labels: Mapping[str, str]) -> Identity | None:
        """The identity currently allocated to a label set, if any (takes no reference)."""
        held = self._labels.held.get(_label_key(labels))
        return held.identity if held else None

    def allocate_cidr(self, cidr: str) -> Identity:
        """The local CIDR identity of an IPv4 prefix, taking one reference; 0.0.0.0/0 is WORLD."""
        prefix = normalize_prefix(cidr)
        if prefix == WORLD_PREFIX:
            return self._reserved[ReservedIdentity.WORLD]
        return self._cidrs.acquire(prefix, cidr_labels(prefix))

    def release_cidr(self, cidr: str) -> bool:
        """Drop one reference to a prefix's CIDR identity; True when its number was freed."""
        prefix = normalize_prefix(cidr)
        return prefix != WORLD_PREFIX and self._cidrs.release(prefix)

    def lookup(self, identity: int) -> Identity | None:
        """The identity with this number, whatever its kind."""
        found = self._reserved.get(identity)
        if found is None:
            found = self._labels.by_id.get(identity) or self._cidrs.by_id.get(identity)
        return found

    def all(self) -> tuple[Identity, ...]:
        """Every identity (reserved, label, CIDR), ascending by number."""
        every = [*self._reserved.values(), *self._labels.by_id.values(), *self._cidrs.by_id.values()]
        return tuple(sorted(every, key=lambda i: i.id))

    def snapshot(self) -> dict[str, Any]:
        """The allocated numbers as JSON-able data (reserved identities are implied)."""
        return {
            "version": SNAPSHOT_VERSION,
            "identities": [
                {"id": h.identity.id, "labels": dict(h.identity.labels)}
                for h in sorted(self._labels.held.values(), key=lambda h: h.identity.id)
            ],
            "cidr_identities": [
                {"id": h.identity.id, "cidr": prefix}
                for prefix, h in sorted(self._cidrs.held.items(), key=lambda kv: kv[1].identity.id)
            ],
        }

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Keep the numbers of a snapshot for their label sets / prefixes (fresh allocator only).

        Restored identities hold no reference: acquire them again as objects come back, then call
        `forget_restored()` to free the rest.
        """
        if snapshot.get("version") != SNAPSHOT_VERSION:
            raise VelvetError(f"unsupported identity snapshot version {snapshot.get('version')!r}")
        try:
            labels = {_label_key(e["labels"]): int(e["id"]) for e in snapshot["identities"]}
            cidrs = {normalize_prefix(e["cidr"]): int(e["id"]) for e in snapshot["cidr_identities"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise VelvetError(f"malformed identity snapshot: {exc!r}") from exc
        self._labels.restore(labels)
        self._cidrs.restore(cidrs)

    def forget_restored(self) -> int:
        """Free restored numbers that were not acquired again since `restore`; how many."""
        return self._labels.forget_restored() + self._cidrs.forget_restored()


def _label_key(labels: Mapping[str, str]) -> LabelKey:
    """The canonical, hashable form of a label set."""
    return tuple(sorted(labels.items()))
