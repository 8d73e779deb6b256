"""The difference between two contents of the datapath's tables, and the safe order to write it.

`plan` is the generic diff of one map. `LbDelta.batches` orders a load-balancer change so that a
lookup racing with it never finds a slot that points to a backend, a Maglev table or a rev-NAT entry
that is not there yet, or that is already gone; `write_lb` writes a change in that order.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from velvet.datapath.tables import (
    BackendValue,
    LbMap,
    LbState,
    RevNatValue,
    ServiceKey,
    ServiceValue,
    SourceRangeKey,
    StaleBackend,
)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class MapPlan(Generic[K, V]):
    """What to write to and delete from one map to turn its current contents into the desired ones."""

    upserts: dict[K, V] = field(default_factory=dict)
    deletes: list[K] = field(default_factory=list)

    def __len__(self) -> int:
        """The number of map operations."""
        return len(self.upserts) + len(self.deletes)


_MISSING: Any = object()


def merge_plans(plans: Iterable[MapPlan[K, V]]) -> MapPlan[K, V]:
    """Successive plans as one: the last operation on each key wins (a delete may name an absent key)."""
    upserts: dict[K, V] = {}
    deletes: dict[K, None] = {}
    for step in plans:
        for key in step.deletes:
            upserts.pop(key, None)
            deletes[key] = None
        for key, value in step.upserts.items():
            deletes.pop(key, None)
            upserts[key] = value
    return MapPlan(upserts, list(deletes))


def plan(current: Mapping[K, V], desired: Mapping[K, V]) -> MapPlan[K, V]:
    """The upserts (new or changed values) and deletes that turn `current` into `desired`."""
    if not current:
        return MapPlan(dict(desired), [])
    upserts = {k: v for k, v in desired.items() if current.get(k, _MISSING) != v}
    deletes = [k for k in current if k not in desired]
    return MapPlan(upserts, deletes)


@dataclass(frozen=True)
class UpsertBatch:
    """Entries to write to one map, in one batch."""

    map: LbMap
    entries: Mapping[Any, Any]


@dataclass(frozen=True)
class DeleteBatch:
    """Keys to delete from one map, in one batch."""

    map: LbMap
    keys: tuple[Any, ...]


Batch = UpsertBatch | DeleteBatch


@dataclass(frozen=True)
class LbDelta:
    """A change to the load-balancer maps, with the conntrack entries it turned stale.

    `unprogrammed` names services that could not be compiled (no free ids): their entries stay as they
    were, and the operator should hear about it.
    """

    services: MapPlan[ServiceKey, ServiceValue] = field(default_factory=MapPlan)
    backends: MapPlan[int, BackendValue] = field(default_factory=MapPlan)
    revnat: MapPlan[int, RevNatValue] = field(default_factory=MapPlan)
    src_range: MapPlan[SourceRangeKey, None] = field(default_factory=MapPlan)
    maglev: MapPlan[int, tuple[int, ...]] = field(default_factory=MapPlan)
    stale: tuple[StaleBackend, ...] = ()
    unprogrammed: tuple[tuple[str, str], ...] = ()  # (service key, why)

    def __len__(self) -> int:
        """The number of map operations."""
        return sum(len(p) for p in (self.services, self.backends, self.revnat, self.src_range, self.maglev))

    def batches(self) -> list[Batch]:
        """The operations as batches in a safe order (keep the order within a batch too); none is empty.

        Everything a frontend may point to is written first (backends, rev-NAT, Maglev tables, source
        ranges), then backend slots, then frontends (internal scope before the external scope that
        announces it with TWO_SCOPES), so a grown count only ever covers written slots. Deletes run the
        other way round: frontends, then slots beyond the new count, then what nothing points to any more.
        """
        svc = self.services
        slots = {k: v for k, v in svc.upserts.items() if k.backend_slot}
        fronts = {k: v for k, v in svc.upserts.items() if not k.backend_slot}
        fronts = dict(sorted(fronts.items(), key=lambda kv: -kv[0].scope))
        front_deletes = sorted((k for k in svc.deletes if not k.backend_slot), key=lambda k: k.scope)
        ordered: list[Batch] = [
            UpsertBatch(LbMap.BACKENDS, self.backends.upserts),
            UpsertBatch(LbMap.REVNAT, self.revnat.upserts),
            UpsertBatch(LbMap.MAGLEV, self.maglev.upserts),
            UpsertBatch(LbMap.SRC_RANGE, self.src_range.upserts),
            UpsertBatch(LbMap.SERVICES, slots),
            UpsertBatch(LbMap.SERVICES, fronts),
            DeleteBatch(LbMap.SERVICES, tuple(front_deletes)),
            DeleteBatch(LbMap.SERVICES, tuple(k for k in svc.deletes if k.backend_slot)),
            DeleteBatch(LbMap.SRC_RANGE, tuple(self.src_range.deletes)),
            DeleteBatch(LbMap.MAGLEV, tuple(self.maglev.deletes)),
            DeleteBatch(LbMap.REVNAT, tuple(self.revnat.deletes)),
            DeleteBatch(LbMap.BACKENDS, tuple(self.backends.deletes)),
        ]
        return [b for b in ordered if (b.entries if isinstance(b, UpsertBatch) else b.keys)]


class TableSink(Protocol):
    """Where load-balancer changes go: the agent's `Datapath`, or `TableMaps` over a loaded object."""

    def write(self, table: str, upserts: Mapping[Any, Any], deletes: Iterable[Any]) -> None:
        """Apply a difference to one table: batch upserts first, then deletes."""

    def flush_backends(self, stale: Sequence[StaleBackend]) -> None:
        """Delete conntrack entries that still send a frontend's flows to a backend it dropped."""


def write_batches(sink: TableSink, delta: LbDelta) -> None:
    """Write a load-balancer change in `LbDelta.batches` order (its stale backends are the caller's)."""
    for batch in delta.batches():
        if isinstance(batch, UpsertBatch):
            sink.write(batch.map.value, batch.entries, ())
        else:
            sink.write(batch.map.value, {}, batch.keys)


def write_lb(sink: TableSink, delta: LbDelta) -> None:
    """Write a load-balancer change in `LbDelta.batches` order, then flush the entries it made stale."""
    write_batches(sink, delta)
    if delta.stale:
        sink.flush_backends(delta.stale)


def merge_deltas(deltas: Sequence[LbDelta]) -> LbDelta:
    """Successive deltas as one, in time linear in their size."""
    if len(deltas) == 1:
        return deltas[0]
    return LbDelta(
        merge_plans(d.services for d in deltas),
        merge_plans(d.backends for d in deltas),
        merge_plans(d.revnat for d in deltas),
        merge_plans(d.src_range for d in deltas),
        merge_plans(d.maglev for d in deltas),
        tuple(s for d in deltas for s in d.stale),
        tuple(u for d in deltas for u in d.unprogrammed),
    )


def lb_delta(current: LbState, desired: LbState, stale: Iterable[StaleBackend] = ()) -> LbDelta:
    """The full difference between two states of the maps (resync and adoption after a restart)."""
    return LbDelta(
        plan(current.services, desired.services),
        plan(current.backends, desired.backends),
        plan(current.revnat, desired.revnat),
        plan(current.src_range, desired.src_range),
        plan(current.maglev, desired.maglev),
        tuple(stale),
    )
