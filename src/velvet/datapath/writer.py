"""Writes what the controllers want into a `Datapath`: only the difference, in a safe order."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from velvet.datapath.delta import LbDelta, plan, write_lb
from velvet.datapath.protocol import Datapath


class TableWriter:
    """Remembers what each whole-table controller last wrote, so a sync costs what changed."""

    def __init__(self, datapath: Datapath) -> None:
        self._datapath = datapath
        self._applied: dict[str, dict[Any, Any]] = {}

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
        """A load-balancer change in `LbDelta.batches` order, then the conntrack flush it calls for."""
        write_lb(self._datapath, delta)
