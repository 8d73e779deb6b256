"""Writes what the controllers want into a `Datapath`: only the difference, in a safe order."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from velvet.datapath.delta import LbDelta, plan, write_batches
from velvet.datapath.protocol import Datapath
from velvet.datapath.tables import StaleBackend


class TableWriter:
    """Remembers what each whole-table controller last wrote, so a sync costs what changed."""

    def __init__(self, datapath: Datapath) -> None:
        self._datapath = datapath
        self._applied: dict[str, dict[Any, Any]] = {}
        self._stale: list[StaleBackend] = []  # backends dropped by written changes, conntrack not flushed yet

    def adopt(self, tables: Iterable[str]) -> None:
        """Take the current contents of `tables` from the datapath (what a previous agent pinned)."""
        for table in tables:
            self._applied[table] = self._datapath.read(table)

    def sync(self, table: str, desired: Mapping[Any, Any]) -> None:
        """Turn `table` into `desired` with one batch of upserts and one of deletes."""
        change = plan(self._applied.get(table, {}), desired)
        if change.upserts or change.deletes:
            self._datapath.write(table, change.upserts, change.deletes)
        self._applied[table] = dict(desired)  # only once the write went through: a failure is retried

    def write_lb(self, delta: LbDelta) -> None:
        """A load-balancer change in `LbDelta.batches` order; the conntrack flush it calls for waits.

        Flushing walks the whole conntrack map (its size is the node's connections, not the change),
        so it is left to `flush_stale`, which the agent runs once the pass is programmed and answered.
        A change that writes a backend id still pending a flush flushes first: conntrack and affinity
        entries name backends by id, and a freed id taken by another backend would lead them there.
        """
        if self._stale and not {s.backend_id for s in self._stale}.isdisjoint(delta.backends.upserts):
            self.flush_stale()
        write_batches(self._datapath, delta)
        self._stale.extend(delta.stale)

    @property
    def stale(self) -> tuple[StaleBackend, ...]:
        """Backends dropped by written changes whose conntrack entries are not flushed yet."""
        return tuple(self._stale)

    def flush_stale(self) -> int:
        """Flush the conntrack and affinity entries of every dropped backend in one walk; how many."""
        pending, self._stale = self._stale, []
        if pending:
            try:
                self._datapath.flush_backends(pending)
            except BaseException:
                self._stale = pending + self._stale  # tried again on the next call
                raise
        return len(pending)
