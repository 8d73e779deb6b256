"""Where the embedded API server keeps its objects: the seam between `LocalStore` and its storage.

`LocalStore` holds the API-server logic (validation, allocation, EndpointSlices, namespaces,
graceful deletion) and an in-memory index; a `Backend` makes its changes durable and tells it what
other writers changed. `state_files.FileBackend` is the snapshot + journal of one agent;
`etcd_store.EtcdBackend` keeps the objects in etcd, where several agents share them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from velvet.model import KubeObject
from velvet.sources.index import Key
from velvet.sources.state_files import Loaded


class Conflict(Exception):
    """Another writer changed the store since the version a change was made on (nothing was written)."""

    def __init__(self, current: int) -> None:
        super().__init__(f"the store moved on to version {current}")
        self.current = current


class Unconfirmed(Exception):
    """The backend took a change but never confirmed it: it may still be applied (e.g. a hung etcd)."""


@dataclass(frozen=True)
class Batch:
    """Changes committed to the storage, as of store `version` and storage `revision`.

    `reset` means `changes` is every object (a relist): objects not in it are gone.
    """

    version: int
    changes: Sequence[tuple[Key, KubeObject | None]]
    reset: bool = False
    revision: int = 0


class Backend(Protocol):
    """Durable storage of a `LocalStore`'s objects."""

    own_versions: bool
    """The backend numbers a change itself (etcd: its revision, every object of it stamped with it);
    False: it keeps the version of each object the store gave."""

    def open(self) -> Loaded | None:
        """The saved version and objects, or None when nothing was saved yet (a fresh store)."""
        ...

    def record(self, since: int, version: int, upserts: Sequence[KubeObject], deletes: Sequence[Key]) -> int:
        """Make one change (made on version `since`) durable; the version it got.

        Raises `durable.StorageError` (or a subclass) when it could not be saved, `Conflict` when
        another writer got there first; either way nothing was written.
        """
        ...

    def committed(self, version: int, snapshot: Callable[[], list[KubeObject]]) -> None:
        """A change was applied in memory (housekeeping such as compaction may follow)."""
        ...

    def compact(self, version: int, objects: Sequence[KubeObject]) -> None:
        """Rewrite the saved state as exactly `objects` (after documents were set aside at load)."""
        ...

    def incoming(self) -> list[Batch]:
        """What other writers committed since the last call, oldest first (taken once)."""
        ...

    def wait_for(self, version: int, timeout: float) -> bool:
        """Wait until `incoming` has everything up to store `version`; False when it did not in time."""
        ...

    def status(self) -> dict[str, Any]:
        """What `velvet status` shows about the storage (kind, where, whether it answers)."""
        ...

    def close(self) -> None:
        """Stop following other writers."""
        ...
