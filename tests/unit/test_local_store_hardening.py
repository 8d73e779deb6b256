"""Test that the local store never loses or corrupts its state, whatever it is given or meets on disk."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from velvet.durable import StorageError
from velvet.errors import VelvetError
from velvet.model import EndpointSlice, KubeObject, PodCondition, PodStatus, Service
from velvet.model.codec import from_dict, to_dict
from velvet.model.decode_net import MAX_SLICE_PORTS
from velvet.sources import state_files
from velvet.sources.delta import Delta
from velvet.sources.local import LocalStore, StoreError
from velvet.sources.state_files import JOURNAL_FILE, QUARANTINE_FILE, STATE_FILE


def pod(name: str, namespace: str = "default", **spec: Any) -> KubeObject:
    body: dict[str, Any] = {"containers": [{"name": "c", "ports": [{"containerPort": 8080}]}]}
    body.update(spec)
    return from_dict({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": name, "namespace": namespace, "labels": {"app": "big"}},
                      "spec": body})


def many_port_service(ports: int) -> KubeObject:
    return from_dict({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "big"},
                      "spec": {"selector": {"app": "big"},
                               "ports": [{"name": f"p{i}", "port": 1000 + i} for i in range(ports)]}})


def running(ip: str) -> PodStatus:
    return PodStatus(phase="Running", pod_ip=ip, conditions=(PodCondition("Ready", "True"),))


def slices(store: LocalStore) -> list[EndpointSlice]:
    return [s for s in store.get("endpointslices") if isinstance(s, EndpointSlice)]


def quarantined(state: Path) -> list[dict[str, Any]]:
    path = state / QUARANTINE_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def journal_lines(state: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (state / JOURNAL_FILE).read_text().splitlines()]


def failing(store: LocalStore, change: Callable[[], object]) -> tuple[StoreError, list[Delta]]:
    """The StoreError `change` raises and the deltas it published meanwhile."""
    async def scenario() -> tuple[StoreError, list[Delta]]:
        watch = store.watch()
        with pytest.raises(StoreError) as caught:
            change()
        watch.close()
        return caught.value, [d async for d in watch]
    return asyncio.run(scenario())


def big_service_store(state: Path, ports: int = 101, pods: int = 2) -> LocalStore:
    """A store with a service of `ports` named ports selecting `pods` running pods."""
    store = LocalStore.open(state)
    store.apply([many_port_service(ports)] + [pod(f"b{i}") for i in range(pods)])
    for i in range(pods):
        store.update_pod_status("default", f"b{i}", running(f"10.244.0.{10 + i}"))
    return store


def compact_now(store: LocalStore, state: Path) -> None:
    """Make changes until one folds the journal into the snapshot (the journal is then empty)."""
    for round_ in range(500):
        store.update_pod_status("default", "b1", running(f"10.244.1.{round_ % 2 + 1}"))
        if (state / JOURNAL_FILE).stat().st_size == 0:
            return
    raise AssertionError("the journal never outgrew the snapshot")


# -- a valid manifest never stops the agent from restarting --------------------------------------------


def test_a_service_with_101_named_ports_survives_a_restart(state: Path) -> None:
    store = big_service_store(state, ports=101)
    eps = slices(store)
    assert [len(s.ports) for s in eps] == [101]  # one slice, as upstream (a slice holds 20,000 ports)
    assert {p.name for s in eps for p in s.ports} == {f"p{i}" for i in range(101)}
    assert all(len(s.endpoints) == 2 for s in eps)
    again = LocalStore.open(state)
    assert again.snapshot() == store.snapshot()
    assert quarantined(state) == []


# -- start-up on the store's own state never fails on one bad document ---------------------------------


def slice_doc(store: LocalStore, ports: int) -> dict[str, Any]:
    """The store's slice for service "big" as a version with other limits might have saved it."""
    doc = to_dict(slices(store)[0])
    doc["ports"] = [{"name": f"p{i}", "port": 1000 + i, "protocol": "TCP"} for i in range(ports)]
    return doc


def test_a_journal_object_that_no_longer_validates_is_quarantined_and_its_slices_derived_again(
        state: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = big_service_store(state, ports=101)
    expected = store.snapshot()
    too_many = MAX_SLICE_PORTS + 1
    old = slice_doc(store, too_many)
    journal = state / JOURNAL_FILE
    line = {"delete": [], "since": store.version, "upsert": [old], "version": store.version + 1}
    with journal.open("a") as out:
        out.write(json.dumps(line) + "\n")
    caplog.set_level(logging.WARNING, "velvet.store")
    again = LocalStore.open(state)
    (message,) = [r.getMessage() for r in caplog.records if "moved to" in r.getMessage()]
    lines = len(journal.read_text().splitlines()) if journal.stat().st_size else 0
    assert message.startswith(f"{journal}: line ")
    reason = f"Too many: {too_many}: must have at most {MAX_SLICE_PORTS} items"
    assert f", object 1: ports: {reason} (moved to " in message
    (record,) = quarantined(state)
    assert record["file"] == str(journal)
    assert record["document"] == old
    assert f"Too many: {too_many}" in record["reason"]
    assert [(s.metadata.name, s.ports, s.endpoints) for s in slices(again)] == [
        (s.metadata.name, s.ports, s.endpoints) for s in expected if isinstance(s, EndpointSlice)]
    assert lines == 0  # compacted: the bad line is gone from the journal
    third = LocalStore.open(state)
    assert third.snapshot() == again.snapshot()
    assert len(quarantined(state)) == 1  # moved aside once, not met again


def test_a_snapshot_object_that_no_longer_validates_is_quarantined_and_the_rest_loaded(
        state: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = big_service_store(state, ports=3)
    store.apply([pod("other")])
    compact_now(store, state)
    snapshot = state / STATE_FILE
    data = json.loads(snapshot.read_text())
    objects = data["objects"]
    index = next(i for i, o in enumerate(objects) if o["metadata"]["name"] == "other")
    objects[index]["spec"]["containers"] = "not a list"
    snapshot.write_text(json.dumps(data))
    caplog.set_level(logging.WARNING, "velvet.store")
    again = LocalStore.open(state)
    assert [p.metadata.name for p in again.get("pods")] == ["b0", "b1"]
    assert again.snapshot() == [o for o in store.snapshot() if o.metadata.name != "other"]
    (record,) = quarantined(state)
    assert (record["file"], record["entry"]) == (str(snapshot), f"object {index + 1}")
    assert record["document"]["metadata"]["name"] == "other"
    assert any(r.getMessage().startswith(f"{snapshot}: object {index + 1}: spec.containers")
               for r in caplog.records)


def test_a_document_is_never_dropped_before_the_quarantine_file_holds_it(
        state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = big_service_store(state, ports=3)
    store.apply([pod("other")])
    journal = state / JOURNAL_FILE
    text = journal.read_text().replace('"name":"other"', '"name":"Not_A_Name"')
    journal.write_text(text)

    def full(path: Path, data: bytes) -> None:
        raise StorageError(path, "append to", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))

    monkeypatch.setattr(state_files, "_append_whole", full)
    degraded = LocalStore.open(state)  # starts all the same, without the bad pod
    assert [p.metadata.name for p in degraded.get("pods")] == ["b0", "b1"]
    for i in range(40):  # changes that would compact, were the documents saved
        degraded.update_pod_status("default", "b1", running(f"10.244.1.{i % 2 + 1}"))
    assert b"Not_A_Name" in journal.read_bytes() + (state / STATE_FILE).read_bytes()
    assert quarantined(state) == []
    monkeypatch.undo()
    LocalStore.open(state)
    (record,) = quarantined(state)
    assert record["document"]["metadata"]["name"] == "Not_A_Name"
    assert b"Not_A_Name" not in journal.read_bytes() + (state / STATE_FILE).read_bytes()


def test_an_unreadable_snapshot_is_one_clear_error_and_kept(state: Path) -> None:
    LocalStore.open(state).apply([pod("a")])
    snapshot = state / STATE_FILE
    snapshot.write_bytes(b'{"objects": [\n{"apiVersion": "v1"')
    with pytest.raises(StorageError) as caught:
        LocalStore.open(state)
    assert str(caught.value).startswith(f"cannot read the store snapshot {snapshot}: ")
    assert "\n" not in str(caught.value)
    assert snapshot.read_bytes() == b'{"objects": [\n{"apiVersion": "v1"'


def test_a_torn_journal_tail_is_still_cut_and_not_quarantined(state: Path) -> None:
    store = big_service_store(state, ports=3)
    store.apply([pod("after")])
    journal = state / JOURNAL_FILE
    good = journal.read_bytes()
    with journal.open("ab") as out:
        out.write(b'{"delete": [], "since": 9, "upsert": [{"kind": "Pod", "metad')
    again = LocalStore.open(state)
    assert again.snapshot() == store.snapshot()
    assert journal.read_bytes() == good
    assert quarantined(state) == []


# -- a failed commit changes nothing -------------------------------------------------------------------


def fail_with(code: int) -> Callable[..., Any]:
    def fail(*_: Any) -> Any:
        raise OSError(code, os.strerror(code))
    return fail


def snapshot_write_fails(path: Path, data: bytes) -> None:
    """write_atomic on a full disk."""
    raise StorageError(path, "write", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))


@pytest.mark.parametrize(("target", "code"), [("fsync", errno.ENOSPC), ("write", errno.ENOSPC),
                                              ("open", errno.EMFILE)])
def test_a_commit_whose_journal_write_fails_changes_nothing(
        state: Path, store: LocalStore, monkeypatch: pytest.MonkeyPatch, target: str, code: int) -> None:
    store.apply([pod("kept")])
    journal = state / JOURNAL_FILE
    before, version, objects = journal.read_bytes(), store.version, store.snapshot()
    real_write = os.write

    def half_then_fail(fd: int, data: bytes) -> int:
        if len(data) > 1:
            return real_write(fd, data[:len(data) // 2])  # a short write: the disk filled up mid-line
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, target, half_then_fail if target == "write" else fail_with(code))
    error, deltas = failing(store, lambda: store.apply([pod("ghost"), svc_object("web")]))
    monkeypatch.undo()
    assert isinstance(error, VelvetError)
    assert os.strerror(code) in str(error)
    assert str(journal) in str(error)
    assert "nothing was changed" in str(error)
    assert deltas == []
    with pytest.raises(StoreError, match='pods "ghost" not found'):
        store.get("pods", name="ghost")
    assert store.version == version
    assert store.snapshot() == objects
    assert journal.read_bytes() == before
    store.apply([svc_object("other")])  # the ClusterIP the failed apply had picked was never held
    other = store.get("svc", name="other")[0]
    assert isinstance(other, Service)
    assert other.spec.cluster_ip == "10.96.1.1"
    assert LocalStore.open(state).snapshot() == store.snapshot()


def svc_object(name: str) -> KubeObject:
    return from_dict({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                      "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}})


def test_a_failed_update_never_reaches_the_snapshot(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = big_service_store(state, ports=3, pods=20)
    monkeypatch.setattr(os, "fsync", fail_with(errno.EIO))
    with pytest.raises(StoreError, match="Input/output error"):
        store.update_pod_status("default", "b0", running("10.244.9.9"))
    monkeypatch.undo()
    snapshot = (state / STATE_FILE).read_bytes()
    for round_ in range(500):  # until the journal outgrows the snapshot and is folded into it
        store.update_pod_status("default", "b1", running(f"10.244.1.{round_ % 2 + 1}"))
        if (state / STATE_FILE).read_bytes() != snapshot:
            break
    saved = json.loads((state / STATE_FILE).read_text())["objects"]
    b0 = next(o for o in saved if o["kind"] == "Pod" and o["metadata"]["name"] == "b0")
    assert b0["status"]["podIP"] == "10.244.0.10"
    assert LocalStore.open(state).snapshot() == store.snapshot()


def test_a_failed_compaction_keeps_the_change_and_is_retried(
        state: Path, store: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_files, "write_atomic", snapshot_write_fails)
    store.apply([pod(f"p{i}") for i in range(5)])  # outgrows the snapshot: compaction fails, apply does not
    assert len(store.get("pods")) == 5
    monkeypatch.undo()
    store.apply([pod("p5")])
    assert (state / JOURNAL_FILE).stat().st_size == 0
    assert LocalStore.open(state).snapshot() == store.snapshot()


# -- a journal without its snapshot --------------------------------------------------------------------


def test_a_journal_without_snapshot_is_replayed_when_it_holds_every_change(
        state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_files, "write_atomic", snapshot_write_fails)
    store = LocalStore.open(state)  # the snapshot is never written: only the journal holds the state
    store.apply([pod("a"), many_port_service(2)])
    monkeypatch.undo()
    assert not (state / STATE_FILE).exists()
    assert journal_lines(state)[0]["since"] == 0
    again = LocalStore.open(state)
    assert again.snapshot() == store.snapshot()
    assert again.version == store.version


def test_a_journal_whose_snapshot_was_deleted_is_refused_and_kept(state: Path) -> None:
    store = big_service_store(state, ports=3, pods=20)
    compact_now(store, state)
    store.apply([pod("later")])
    (state / STATE_FILE).unlink()
    journal = (state / JOURNAL_FILE).read_bytes()
    assert journal.count(b"\n") == 1
    with pytest.raises(StorageError) as caught:
        LocalStore.open(state)
    message = str(caught.value)
    assert "\n" not in message
    assert f"cannot load the store {state / JOURNAL_FILE}: store.json is missing" in message
    assert (state / JOURNAL_FILE).read_bytes() == journal
    assert not (state / STATE_FILE).exists()
    with pytest.raises(StorageError):
        LocalStore.open(state)  # still refused: nothing was truncated or replaced by the first attempt


def test_a_journal_that_does_not_follow_its_snapshot_is_refused(state: Path) -> None:
    store = big_service_store(state, ports=3, pods=20)
    old_snapshot = (state / STATE_FILE).read_bytes()
    compact_now(store, state)
    assert (state / STATE_FILE).read_bytes() != old_snapshot
    store.apply([pod("later")])
    (state / STATE_FILE).write_bytes(old_snapshot)  # e.g. restored from an old backup
    with pytest.raises(StorageError, match="changes in between are missing"):
        LocalStore.open(state)


# -- state files are private ---------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("open_umask")
def test_state_files_are_0600_in_a_0700_directory_and_existing_ones_are_fixed(state: Path) -> None:
    store = LocalStore.open(state)
    store.apply([pod("a")])
    assert mode(state) == 0o700
    assert {p.name: mode(p) for p in state.iterdir()} == {STATE_FILE: 0o600, JOURNAL_FILE: 0o600}
    (state / QUARANTINE_FILE).write_text("")
    state.chmod(0o755)
    for path in state.iterdir():
        path.chmod(0o644)
    (state / f"{STATE_FILE}.tmp").write_text("{}")  # left by an interrupted write of an older Velvet
    LocalStore.open(state).apply([pod("b")])
    assert mode(state) == 0o700
    assert {p.name: mode(p) for p in state.iterdir()} == {
        STATE_FILE: 0o600, JOURNAL_FILE: 0o600, QUARANTINE_FILE: 0o600}
