"""The control plane's tables in open maps: written and read through `codecs`, and dumped raw.

`TableMaps` is the one path from the records of `tables.py` into the kernel: `KernelDatapath`
writes with it, and the datapath tests seed their freshly loaded objects with it, so both go
through the same codecs (load-balancer changes through `delta.write_lb`, in `LbDelta.batches`
order). It also flushes the conntrack and affinity entries of backends a frontend dropped.

Needs the bpf() syscall (root) on the maps it is given.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from velvet.datapath.codecs import CODECS, encode_items
from velvet.datapath.maps import Map
from velvet.datapath.structs import BE32
from velvet.datapath.tables import ConntrackSweep, StaleBackend
from velvet.datapath.views import AffinityMap, ConntrackMap, MapView, Views
from velvet.errors import DatapathError, NotFound

EXTRA_DUMPS = ("ct4", "snat4", "lb4_affinity", "lb4_sock_revnat", "metrics")
"""Maps the programs fill themselves that `velvet bpf … list` can also show."""


class TableMaps:
    """The tables (maps named in `codecs.CODECS`) and dumpable maps among a set of open views."""

    def __init__(self, views: Views) -> None:
        self.views = views
        self.maps: dict[str, Map[Any, Any]] = {
            name: view.map for name, view in views.by_name.items()
            if isinstance(view, MapView) and (name in CODECS or name in EXTRA_DUMPS)
        }

    def _map(self, table: str) -> Map[Any, Any]:
        try:
            return self.maps[table]
        except KeyError:
            raise DatapathError(f"no map {table} is loaded") from None

    def write(self, table: str, upserts: Mapping[Any, Any], deletes: Iterable[Any]) -> None:
        """Batch-upsert then batch-delete records of `tables.py`, through the table's codec."""
        codec = CODECS[table]
        m = self._map(table)
        if upserts:
            keys, values = encode_items(table, dict(upserts))
            m.update_batch(keys, values)
        doomed = [codec.encode_key(k) for k in deletes]
        if doomed:
            m.delete_batch(doomed)

    def read(self, table: str) -> dict[Any, Any]:
        """The table decoded into records (what a previous agent left)."""
        codec = CODECS[table]
        return {codec.decode_key(k): codec.decode_value(v) for k, v in self._map(table).lookup_batch()}

    def flush_backends(self, stale: Sequence[StaleBackend]) -> None:
        """Drop conntrack and affinity entries that still lead a frontend to a backend it no longer has.

        One walk of each map for the whole batch, whatever its size.
        """
        if not stale:
            return
        self.views.get(ConntrackMap).delete_by_backends(stale)
        self.views.get(AffinityMap).delete_by_backends({s.backend_id for s in stale})

    def sweep_conntrack(self, now_ns: int) -> ConntrackSweep:
        """Remove the conntrack entries whose lifetime ran out at `now_ns` (CLOCK_MONOTONIC)."""
        return self.views.get(ConntrackMap).delete_expired(now_ns)

    def dump(self, table: str) -> list[dict[str, Any]]:
        """Raw entries of one map, fields by name (for `velvet bpf … list`)."""
        if table not in CODECS and table not in EXTRA_DUMPS:
            raise NotFound(f"no map {table}")
        return [{"key": _fields(k), "value": _fields(v)} for k, v in self._map(table).items()]


def _fields(value: Any) -> Any:
    """A ctypes value as plain data: structures as dicts, arrays as lists, IPv4 addresses (every __be32
    field) dotted, other scalars as ints."""
    if hasattr(value, "_fields_"):
        fields = [(f[0], f[1], getattr(value, f[0])) for f in value._fields_ if not f[0].startswith("pad")]
        return {name: _address(v) if kind is BE32 else _fields(v) for name, kind, v in fields}
    if hasattr(value, "_length_") or isinstance(value, list | tuple):  # arrays, per-CPU values
        return [_fields(v) for v in value]
    return getattr(value, "value", value)


def _address(value: int) -> str:
    """A __be32 field's value (as ctypes reads it) in dotted-decimal form."""
    return socket.inet_ntoa(value.to_bytes(4, "big"))
