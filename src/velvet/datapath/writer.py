"""Writes what the controllers want into a `Datapath`: only the difference, in a safe order."""

from __future__ import annotations

import threading
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
        self._stale_lock = threading.Lock()  # guards _stale: flushes may run on another thread
        self._flush_lock = threading.Lock()  # one flush at a time; a writer reusing an id waits for it
        self._stale_ids: set[int] = set()  # their backend ids
        self._flushing: frozenset[int] = frozenset()  # backend ids of the flush in progress

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
        so it is left to `flush_stale`, which the agent runs on its own thread once the pass is
        programmed. A change that writes a backend id still pending (or in) a flush flushes first:
        conntrack and affinity entries name backends by id, and a freed id taken by another backend
        would lead them there.
        """
        with self._stale_lock:
            reused = not (self._stale_ids.isdisjoint(delta.backends.upserts)
                          and self._flushing.isdisjoint(delta.backends.upserts))
        if reused:
            self.flush_stale()
        write_batches(self._datapath, delta)
        with self._stale_lock:
            self._stale.extend(delta.stale)
            self._stale_ids.update(s.backend_id for s in delta.stale)

    @property
    def stale(self) -> tuple[StaleBackend, ...]:
        """Backends dropped by written changes whose conntrack entries are not flushed yet."""
        with self._stale_lock:
            return tuple(self._stale)

    def flush_stale(self) -> int:
        """Flush the conntrack and affinity entries of every dropped backend in one walk; how many.

        Safe from any thread: it touches only the conntrack and affinity maps, never what passes write.
        """
        with self._flush_lock:
            with self._stale_lock:
                pending, self._stale = self._stale, []
                self._flushing, self._stale_ids = frozenset(self._stale_ids), set()
            try:
                if pending:
                    self._datapath.flush_backends(pending)
            except BaseException:
                with self._stale_lock:
                    self._stale = pending + self._stale  # tried again on the next call
                    self._stale_ids |= self._flushing
                raise
            finally:
                with self._stale_lock:
                    self._flushing = frozenset()
            return len(pending)
