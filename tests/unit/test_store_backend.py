"""Test the store's backend seam without etcd: key layout, value encoding, conflicts, and catching up."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from velvet.model import KubeObject, ObjectMeta, Service
from velvet.model.service import ServicePort, ServiceSpec
from velvet.sources.backend import Batch, Conflict, Unconfirmed
from velvet.sources.delta import Delta
from velvet.sources.etcd_client import KeyValue, prefix_end
from velvet.sources.etcd_store import DEFAULT_PREFIX, decode, encode, object_key, store_key
from velvet.sources.index import Key, key_of
from velvet.sources.local import LocalStore, StoreError
from velvet.sources.state_files import Loaded


def service(name: str) -> Service:
    """A ClusterIP service with one port, in default."""
    return Service(ObjectMeta(name=name, namespace="default"), ServiceSpec(ports=(ServicePort(port=80),)))


class MemoryBackend:
    """A backend in memory that numbers versions itself and can be told to refuse writes."""

    own_versions = True

    def __init__(self) -> None:
        self.revision = 100
        self.conflicts = 0  # how many of the next writes are refused as conflicts
        self.unconfirmed = False  # the next write gets no answer (it may land later)
        self.batches: list[Batch] = []
        self.waited: list[int] = []

    def open(self) -> Loaded | None:
        return None

    def record(self, since: int, version: int, upserts: Sequence[KubeObject], deletes: Sequence[Key]) -> int:
        if self.conflicts:
            self.conflicts -= 1
            raise Conflict(self.revision)
        if self.unconfirmed:
            self.unconfirmed = False
            raise Unconfirmed("the backend did not answer (it may still apply the change)")
        self.revision += 1
        return self.revision

    def committed(self, version: int, snapshot: Callable[[], list[KubeObject]]) -> None:
        pass

    def compact(self, version: int, objects: Sequence[KubeObject]) -> None:
        pass

    def incoming(self) -> list[Batch]:
        batches, self.batches = self.batches, []
        return batches

    def wait_for(self, version: int, timeout: float) -> bool:
        self.waited.append(version)
        return True

    def status(self) -> dict[str, Any]:
        return {"kind": "memory", "connected": True}

    def close(self) -> None:
        pass


def queued(watch_queue: Any) -> list[Delta]:
    """Deltas queued on a watch taken without an event loop."""
    found = []
    while not watch_queue.empty():
        item = watch_queue.get_nowait()
        if item is not None:
            found.append(item)
    return found


def test_keys_cover_exactly_the_prefix() -> None:
    """Test that the range end of a prefix is its last byte plus one, and keys map both ways."""
    assert prefix_end("/velvet/registry/") == "/velvet/registry0"
    key = ("Service", "blue", "echo")
    assert object_key(DEFAULT_PREFIX, key) == "/velvet/registry/Service/blue/echo"
    assert store_key(DEFAULT_PREFIX, object_key(DEFAULT_PREFIX, key)) == key
    assert store_key(DEFAULT_PREFIX, object_key(DEFAULT_PREFIX, ("Namespace", "", "blue"))) == (
        "Namespace", "", "blue")
    assert store_key(DEFAULT_PREFIX, DEFAULT_PREFIX + "_head") is None


def test_values_leave_the_resource_version_to_etcd() -> None:
    """Test that a stored value has no resourceVersion and a decoded one takes the key's mod revision."""
    svc = service("echo")
    value = encode(svc)
    assert b"resourceVersion" not in value
    obj = decode(KeyValue("/velvet/registry/Service/default/echo", value, 5, 9))
    assert obj is not None
    assert obj.metadata.resource_version == 9
    assert decode(KeyValue("/velvet/registry/Service/default/bad", b"{not json", 5, 9)) is None


def test_the_backend_numbers_versions_and_deltas_carry_them(tmp_path: Path) -> None:
    """Test that objects and deltas of a change carry the version the backend gave it."""
    backend = MemoryBackend()
    store = LocalStore.open(tmp_path, backend=backend)
    watch = store.watch()
    store.apply([service("echo")])
    stored = store.find("Service", "default", "echo")
    assert stored is not None
    assert stored.metadata.resource_version == backend.revision == store.version
    assert [d.obj.metadata.resource_version for d in queued(watch._queue)] == [backend.revision]


def test_every_object_of_a_change_gets_its_revision_also_one_equal_to_the_stores_count(
        tmp_path: Path) -> None:
    """Test that when other keys moved the backend's revision on so that a change of two objects gets
    exactly the number the store counted for its last object, both objects carry that revision (as they
    will when listed again), not the store's own count."""
    backend = MemoryBackend()
    store = LocalStore.open(tmp_path, backend=backend)
    backend.revision = store.version + 1  # etcd's revision moved on by one write elsewhere (an endpoint key)
    store.apply([service("a"), service("b")])
    assert store.version == backend.revision
    assert [s.metadata.resource_version for s in store.get("services")] == [backend.revision] * 2


def test_a_conflict_is_retried_on_the_caught_up_state(tmp_path: Path) -> None:
    """Test that a refused write waits for the other writer's change, applies it, and runs again on it."""
    backend = MemoryBackend()
    store = LocalStore.open(tmp_path, backend=backend)
    other = service("theirs")
    backend.revision += 1
    backend.batches.append(Batch(backend.revision, [(key_of(other), other)], revision=backend.revision))
    backend.conflicts = 1
    store.apply([service("mine")])
    assert backend.waited == [backend.revision - 1]
    assert store.find("Service", "default", "theirs") is not None
    assert store.find("Service", "default", "mine") is not None


def test_a_store_that_keeps_losing_fails_in_one_line(tmp_path: Path) -> None:
    """Test that a write refused every time fails with a Conflict error and changes nothing."""
    backend = MemoryBackend()
    store = LocalStore.open(tmp_path, backend=backend)
    backend.conflicts = 10
    with pytest.raises(StoreError) as failure:
        store.apply([service("mine")])
    assert failure.value.reason == "Conflict"
    assert "\n" not in str(failure.value)
    assert store.find("Service", "default", "mine") is None


def test_an_unconfirmed_write_never_claims_that_nothing_changed(tmp_path: Path) -> None:
    """Test that a write the backend took but never confirmed fails in one line that says it may land,
    not that nothing was changed, and the store shows it only once the backend reports it."""
    backend = MemoryBackend()
    store = LocalStore.open(tmp_path, backend=backend)
    backend.unconfirmed = True
    with pytest.raises(StoreError) as failure:
        store.apply([service("maybe")])
    assert "may still apply" in str(failure.value)
    assert "nothing was changed" not in str(failure.value)
    assert store.find("Service", "default", "maybe") is None


def test_a_relist_removes_what_is_gone_and_skips_what_the_store_already_has(tmp_path: Path) -> None:
    """Test that a reset batch deletes objects missing from it (with a delete delta), and that a batch
    no newer than what the store holds (its own write coming back) is skipped."""
    backend = MemoryBackend()
    store = LocalStore.open(tmp_path, backend=backend)
    store.apply([service("a"), service("b")])
    watch = store.watch()
    own = backend.revision
    backend.batches.append(Batch(own, [(("Service", "default", "a"), None)], revision=own))
    assert store.find("Service", "default", "a") is not None  # its own write: skipped
    keep = [o for o in store.snapshot() if o.metadata.name != "b"]
    backend.batches.append(Batch(own + 5, [(key_of(o), o) for o in keep], reset=True, revision=own + 5))
    assert store.find("Service", "default", "b") is None
    assert store.find("Service", "default", "a") is not None
    assert [(d.op, d.obj.metadata.name) for d in queued(watch._queue)] == [("delete", "b")]
    assert store.version == own + 5
