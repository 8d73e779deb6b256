"""A store transaction: changes over the committed objects, read through, committed whole or dropped.

Only the changed objects are held (`changes`, key -> new object or None when removed), also by kind
and namespace; every read looks there first and then at the committed `ObjectIndex`, so opening and
reading a transaction costs what it touches, never the number of changes it holds. Each change
bumps the store-wide resourceVersion and records a `Delta`.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterable
from dataclasses import fields, replace
from datetime import UTC, datetime
from typing import Any

from velvet.model import KubeObject
from velvet.sources.delta import Delta
from velvet.sources.index import Key, ObjectIndex, key_of

NAMESPACED_KINDS = ("Pod", "Service", "EndpointSlice", "NetworkPolicy", "VelvetTracingPolicyNamespaced")


def with_metadata(obj: KubeObject, **changes: Any) -> KubeObject:
    """`obj` with metadata fields changed: `dataclasses.replace` of both, at a fraction of its cost.

    The store stamps every object it writes (a version, a uid); replace() re-runs the generated __init__
    with every field and its defaults. The model's objects are frozen slotted dataclasses without
    __post_init__ (which `_plain` checks once per class), so their fields are copied as they are.
    """
    meta = obj.metadata
    obj_fields, meta_fields = _plain(type(obj)), _plain(type(meta))
    if not (obj_fields and meta_fields):
        return replace(obj, metadata=replace(meta, **changes))
    unknown = changes.keys() - set(meta_fields)
    if unknown:
        raise TypeError(f"{type(meta).__name__} has no field {sorted(unknown)[0]}")
    new: KubeObject = _copy(obj, obj_fields, {"metadata": _copy(meta, meta_fields, changes)})
    return new


_FIELDS: dict[type, tuple[str, ...]] = {}
_set = object.__setattr__


def _plain(cls: type) -> tuple[str, ...]:
    """The fields of a dataclass that checks nothing on creation (no __post_init__); () for others."""
    if cls not in _FIELDS:
        _FIELDS[cls] = () if hasattr(cls, "__post_init__") else tuple(f.name for f in fields(cls))
    return _FIELDS[cls]


def _copy(obj: Any, names: tuple[str, ...], changes: dict[str, Any]) -> Any:
    """A copy of the frozen dataclass `obj` with `changes`, made without its __init__."""
    new = object.__new__(type(obj))
    for name in names:
        _set(new, name, changes[name] if name in changes else getattr(obj, name))
    return new


def format_time(when: datetime) -> str:
    """RFC 3339 in UTC with second precision, as metav1.Time is serialized."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Txn:
    """Changes being made to the store's objects."""

    def __init__(self, base: ObjectIndex, version: int, now: datetime,
                 registered: frozenset[str] | None = None) -> None:
        self.base = base
        self.version = version
        self.now = now
        self._created = format_time(now)  # one string for every object this transaction creates
        self.registered = registered  # the cluster's nodes as the writer sees them (None: no cluster)
        self.changes: dict[Key, KubeObject | None] = {}
        self.deltas: list[Delta] = []
        self._new: dict[Key, int] = {}  # creation position of objects new in this transaction
        self._changed: dict[tuple[str, str], dict[str, None]] = {}  # (kind, namespace) -> names, in order

    def get(self, key: Key) -> KubeObject | None:
        """The object under `key` as this transaction sees it."""
        if key in self.changes:
            return self.changes[key]
        return self.base.objects.get(key)

    def of_kind(self, kind: str, namespace: str) -> list[KubeObject]:
        """Objects of `kind` in `namespace` ("" for cluster-scoped kinds), in creation order."""
        found = [obj for name, committed in self.base.of_kind(kind, namespace).items()
                 if (obj := self.changes.get((kind, namespace, name), committed)) is not None]
        found += [obj for name in self.changed(kind, namespace)
                  if (kind, namespace, name) not in self.base.objects
                  and (obj := self.changes[(kind, namespace, name)]) is not None]
        return found

    def changed(self, kind: str, namespace: str) -> Iterable[str]:
        """Names of the objects of `kind` in `namespace` this transaction changed, first change first."""
        return self._changed.get((kind, namespace), {}).keys()

    def is_empty(self, namespace: str) -> bool:
        """No object is left in `namespace`."""
        for kind in NAMESPACED_KINDS:
            if any(self.changes.get((kind, namespace, name), obj) is not None
                   for name, obj in self.base.of_kind(kind, namespace).items()):
                return False
            if any(self.changes[(kind, namespace, n)] is not None for n in self.changed(kind, namespace)):
                return False
        return True

    def position(self, key: Key) -> int:
        """Creation position of an object (after every existing one when it is new; last when unknown)."""
        if key in self.base.objects:
            return self.base.position(key)
        return self._new.get(key, sys.maxsize)

    def put(self, obj: KubeObject, **metadata: Any) -> KubeObject:
        """Store `obj` with the next resourceVersion (and `metadata` fields changed); the stored object."""
        self.version += 1
        stored = with_metadata(obj, resource_version=self.version, **metadata)
        key = key_of(stored)
        if key not in self.base.objects and key not in self._new:
            self._new[key] = self.base.next_position + len(self._new)
        self._record(key, stored)
        self.deltas.append(Delta(key[0], "upsert", stored))
        return stored

    def create(self, obj: KubeObject) -> KubeObject:
        """Store a new object with a fresh uid and creationTimestamp."""
        return self.put(obj, uid=str(uuid.uuid4()), creation_timestamp=self._created)

    def remove(self, key: Key) -> None:
        """Remove the object under `key` (which must exist)."""
        obj = self.get(key)
        if obj is None:
            raise KeyError(key)
        self._record(key, None)
        self.version += 1
        gone = with_metadata(obj, resource_version=self.version)
        self.deltas.append(Delta(key[0], "delete", gone))

    def _record(self, key: Key, obj: KubeObject | None) -> None:
        self.changes[key] = obj
        self._changed.setdefault((key[0], key[1]), {})[key[2]] = None
