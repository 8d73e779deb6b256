"""Test that the local store recomputes only the services a change affects and journals only the change."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Collection, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from velvet.errors import InvalidManifest
from velvet.model import EndpointSlice, KubeObject, Pod, PodCondition, PodStatus, Service
from velvet.model.codec import from_dict, to_dict
from velvet.sources import slice_sync, state_files
from velvet.sources.delta import Delta
from velvet.sources.endpointslices import CONTROLLER_NAME, MANAGED_BY_LABEL, desired_slices, is_managed
from velvet.sources.index import key_of
from velvet.sources.local import LocalStore, ObjectRef
from velvet.sources.seal import seal
from velvet.sources.state_files import JOURNAL_FILE, QUARANTINE_FILE, STATE_FILE


def pod(name: str, **labels: str) -> KubeObject:
    return from_dict({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
                      "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 8080}]}]}})


def svc(name: str, **selector: str) -> KubeObject:
    spec: dict[str, Any] = {"ports": [{"port": 80, "targetPort": 8080}]}
    if selector:
        spec["selector"] = selector
    return from_dict({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})


def running(ip: str, ready: bool = True) -> PodStatus:
    return PodStatus(phase="Running", pod_ip=ip, conditions=(PodCondition("Ready", str(ready)),))


def watched(store: LocalStore, change: Callable[[], object]) -> list[Delta]:
    """The deltas `change` publishes."""
    async def scenario() -> list[Delta]:
        watch = store.watch()
        change()
        watch.close()
        return [d async for d in watch]
    return asyncio.run(scenario())


def slice_owners(deltas: Iterable[Delta]) -> list[str]:
    return [d.obj.metadata.labels["kubernetes.io/service-name"] for d in deltas if d.kind == "EndpointSlice"]


@pytest.fixture
def recomputed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the services whose slices the store computes from now on."""
    names: list[str] = []

    def spy(service: Service, pods: Iterable[Pod],
            registered: Collection[str] | None = None) -> list[EndpointSlice]:
        names.append(service.metadata.name)
        return desired_slices(service, pods, registered)

    monkeypatch.setattr(slice_sync, "desired_slices", spy)
    return names


def test_a_pod_change_recomputes_only_the_services_selecting_its_old_or_new_labels(
        store: LocalStore, recomputed: list[str]) -> None:
    store.apply([svc("a", app="a"), svc("b", app="b"), svc("ax", app="a", tier="x"), svc("none"),
                 pod("p", app="a"), pod("q", app="b")])
    store.update_pod_status("default", "p", running("10.244.0.5"))
    store.update_pod_status("default", "q", running("10.244.0.6"))
    recomputed.clear()
    deltas = watched(store, lambda: store.update_pod_status("default", "p", running("10.244.0.5", False)))
    assert recomputed == ["a"]
    assert [d.kind for d in deltas] == ["Pod", "EndpointSlice"]
    assert slice_owners(deltas) == ["a"]

    recomputed.clear()
    deltas = watched(store, lambda: store.apply([pod("p", app="b")]))
    assert sorted(recomputed) == ["a", "b"]
    assert sorted(slice_owners(deltas)) == ["a", "b"]
    assert addresses(store, "a") == []
    assert addresses(store, "b") == ["10.244.0.5", "10.244.0.6"]


def test_a_service_change_recomputes_itself_and_a_namespace_change_its_services(
        store: LocalStore, recomputed: list[str]) -> None:
    store.apply([svc("a", app="a"), svc("b", app="b"), pod("p", app="a")])
    recomputed.clear()
    store.apply([svc("b", app="a")])
    assert recomputed == ["b"]
    recomputed.clear()
    store.delete([ObjectRef("svc", "a")])
    assert recomputed == []  # a removed service has no slices to compute, only to remove
    assert [s.metadata.name.rsplit("-", 1)[0] for s in store.get("endpointslices")] == ["b"]
    store.apply([from_dict({"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": "default", "labels": {"team": "x"}}})])
    assert recomputed == ["b"]


def test_a_slice_claiming_to_be_the_controllers_is_reconciled_and_a_users_slice_is_kept(
        store: LocalStore) -> None:
    store.apply([svc("web", app="web")])

    def user_slice(name: str, labels: dict[str, str]) -> KubeObject:
        labels = {"kubernetes.io/service-name": "web", **labels}
        return from_dict({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                          "metadata": {"name": name, "labels": labels}, "addressType": "IPv4",
                          "endpoints": [{"addresses": ["192.0.2.1"]}], "ports": [{"port": 80}]})

    claimed = user_slice("web-claimed", {MANAGED_BY_LABEL: CONTROLLER_NAME})
    deltas = watched(store, lambda: store.apply([claimed, user_slice("web-mine", {})]))
    assert [(d.op, d.obj.metadata.name) for d in deltas] == [
        ("upsert", "web-claimed"), ("upsert", "web-mine"), ("delete", "web-claimed")]
    assert sorted(s.metadata.name for s in store.get("endpointslices")) == [
        "web-mine", *[s.metadata.name for s in full_recompute(store).values()]]


def addresses(store: LocalStore, service: str) -> list[str]:
    return sorted(a for s in store.get("endpointslices") if isinstance(s, EndpointSlice)
                  and s.metadata.labels.get("kubernetes.io/service-name") == service
                  for e in s.endpoints for a in e.addresses)


def full_recompute(store: LocalStore) -> dict[str, EndpointSlice]:
    """What the controller's slices would be if every service were recomputed from every pod."""
    pods = [p for p in store.get("pods", "all") if isinstance(p, Pod)]
    return {s.metadata.name: s for service in store.get("services", "all") if isinstance(service, Service)
            for s in desired_slices(service, pods)}


def content(eps: EndpointSlice) -> EndpointSlice:
    return replace(eps, metadata=replace(eps.metadata, uid="", resource_version=0, creation_timestamp=""))


def test_incremental_slices_equal_a_full_recompute_after_random_changes(store: LocalStore) -> None:
    rng = random.Random(7)
    apps = ["a", "b", "c"]
    for step in range(300):
        action = rng.randrange(5)
        name = f"p{rng.randrange(12)}"
        if action == 0:
            store.apply([pod(name, app=rng.choice(apps), **({"tier": "x"} if rng.random() < 0.3 else {}))])
        elif action == 1:
            store.update_pod_status("default", name, running(f"10.244.0.{rng.randrange(1, 250)}",
                                                             rng.random() < 0.7))
        elif action == 2:
            store.delete([ObjectRef("po", name)], grace_seconds=rng.choice([0, 30]), ignore_not_found=True)
        elif action == 3:
            selector = {"app": rng.choice(apps)} if rng.random() < 0.8 else {}
            if rng.random() < 0.3:
                selector["tier"] = "x"
            store.apply([svc(f"s{rng.randrange(4)}", **selector)])
        else:
            store.delete([ObjectRef("svc", f"s{rng.randrange(4)}")], ignore_not_found=True)
        managed = {s.metadata.name: content(s) for s in store.get("endpointslices", "all")
                   if isinstance(s, EndpointSlice) and is_managed(s)}
        assert managed == {n: content(s) for n, s in full_recompute(store).items()}, f"step {step}"


def test_a_failed_apply_allocates_nothing(store: LocalStore) -> None:
    store.apply([svc("a", app="a"), svc("b", app="a")])
    taken = from_dict({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "c"},
                       "spec": {"clusterIP": "10.96.1.1", "ports": [{"port": 80}]}})
    with pytest.raises(InvalidManifest, match="already allocated"):
        store.apply([svc("new", app="a"), taken])
    store.delete([ObjectRef("svc", "a")])
    store.apply([svc("d", app="a"), svc("e", app="a")])
    ips = {s.metadata.name: s.spec.cluster_ip for s in store.get("svc") if isinstance(s, Service)}
    assert ips == {"b": "10.96.1.2", "d": "10.96.1.1", "e": "10.96.1.3"}


# -- persistence -------------------------------------------------------------------------------------


def big_store(state: Path) -> LocalStore:
    """A store whose snapshot is much larger than one pod's change, so changes stay in the journal."""
    store = LocalStore.open(state)
    store.apply([pod(f"p{i}", app="a") for i in range(30)] + [svc("a", app="a")])
    assert (state / JOURNAL_FILE).stat().st_size == 0  # that big apply outgrew the snapshot: compacted
    return store


def journal_lines(state: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (state / JOURNAL_FILE).read_text().splitlines()]


def test_a_change_appends_one_readable_journal_line(state: Path) -> None:
    store = big_store(state)
    snapshot_before = (state / STATE_FILE).read_bytes()
    store.update_pod_status("default", "p3", running("10.244.0.3"))
    assert (state / STATE_FILE).read_bytes() == snapshot_before
    (entry,) = journal_lines(state)
    assert entry["version"] == store.version
    assert entry["delete"] == []
    assert [(o["kind"], o["metadata"]["name"]) for o in entry["upsert"]] == [
        ("Pod", "p3"), ("EndpointSlice", store.get("endpointslices")[0].metadata.name)]
    assert entry["upsert"][0]["status"]["podIP"] == "10.244.0.3"
    store.delete([ObjectRef("po", "p4")], grace_seconds=0)
    assert journal_lines(state)[1]["delete"] == [["Pod", "default", "p4"]]
    again = LocalStore.open(state)
    assert again.snapshot() == store.snapshot()
    assert again.version == store.version


def test_a_torn_last_journal_line_is_dropped_and_cut_off(state: Path) -> None:
    store = big_store(state)
    store.update_pod_status("default", "p1", running("10.244.0.1"))
    expected, version = store.snapshot(), store.version
    journal = state / JOURNAL_FILE
    good = journal.read_bytes()
    with journal.open("ab") as out:  # the agent died while appending the next change
        out.write(b'{"delete": [], "upsert": [{"apiVersion": "v1", "kind": "Pod", "metadata": {"na')
    again = LocalStore.open(state)
    assert again.snapshot() == expected
    assert again.version == version
    assert journal.read_bytes() == good
    again.update_pod_status("default", "p2", running("10.244.0.2"))
    third = LocalStore.open(state)
    assert third.snapshot() == again.snapshot()
    assert len(journal_lines(state)) == 2


def test_a_corrupt_journal_line_before_the_last_is_quarantined_and_the_rest_replayed(state: Path) -> None:
    store = big_store(state)
    store.update_pod_status("default", "p1", running("10.244.0.1"))
    journal = state / JOURNAL_FILE
    journal.write_bytes(journal.read_bytes() + b"garbage\n")
    store.update_pod_status("default", "p2", running("10.244.0.2"))
    again = LocalStore.open(state)
    assert again.snapshot() == store.snapshot()
    assert again.version == store.version
    (record,) = [json.loads(line) for line in (state / QUARANTINE_FILE).read_text().splitlines()]
    assert (record["file"], record["entry"], record["text"]) == (str(journal), "line 2", "garbage\n")
    assert "not a JSON line" in record["reason"]
    assert b"garbage" not in journal.read_bytes()  # moved aside: the next start does not meet it again
    assert LocalStore.open(state).snapshot() == store.snapshot()
    assert len((state / QUARANTINE_FILE).read_text().splitlines()) == 1


def test_compaction_folds_the_journal_into_the_snapshot(state: Path) -> None:
    store = big_store(state)
    journal = state / JOURNAL_FILE
    stale = b""
    for round_ in range(200):
        before = journal.read_bytes()
        store.update_pod_status("default", "p0", running("10.244.0.9", ready=round_ % 2 == 0))
        if journal.stat().st_size == 0:
            stale = before
            break
    assert stale, "the journal never outgrew the snapshot"
    assert json.loads((state / STATE_FILE).read_text())["version"] == store.version
    assert LocalStore.open(state).snapshot() == store.snapshot()
    journal.write_bytes(stale)  # a crash between writing the snapshot and emptying the journal
    again = LocalStore.open(state)
    assert again.snapshot() == store.snapshot()
    assert again.version == store.version


def test_a_one_line_snapshot_without_journal_loads(state: Path) -> None:
    store = big_store(state)
    store.update_pod_status("default", "p1", running("10.244.0.1"))
    old_format = {"version": store.version, "objects": [to_dict(o) for o in store.snapshot()]}
    (state / STATE_FILE).write_text(json.dumps(old_format, sort_keys=True))  # as earlier versions saved it
    (state / JOURNAL_FILE).unlink()
    again = LocalStore.open(state)
    assert again.snapshot() == store.snapshot()
    again.update_pod_status("default", "p2", running("10.244.0.2"))
    assert LocalStore.open(state).snapshot() == again.snapshot()


def test_compaction_copies_the_saved_texts_and_keeps_only_where_they_lie(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    encoded: list[str] = []

    def dump(obj: KubeObject) -> bytes:
        encoded.append(obj.metadata.name)
        return orjson.dumps(to_dict(obj), option=orjson.OPT_SORT_KEYS)

    def expected(version: int, objects: list[KubeObject]) -> bytes:
        lines = b",\n".join(orjson.dumps(to_dict(o), option=orjson.OPT_SORT_KEYS) for o in objects)
        head = b'{"objects": [\n' + lines + f'\n], "version": {version}'.encode()
        return head + b', "seal": "' + seal(head) + b'"}\n'  # sealed by this code: read back unvalidated

    monkeypatch.setattr(state_files, "_dump", dump)
    files = state_files.StateFiles(tmp_path)
    files.prepare()
    first = [pod(f"p{i}", app="a") for i in range(4)]
    files.record(0, 1, first, [])
    files.compact(1, first)  # every text from the journal
    assert (tmp_path / STATE_FILE).read_bytes() == expected(1, first)
    changed = [pod("p1", app="b"), pod("p9", app="c")]
    files.record(1, 2, changed, [key_of(first[3])])
    now = [first[0], changed[0], first[2], changed[1]]
    files.compact(2, now)  # texts from the snapshot and from the journal
    assert (tmp_path / STATE_FILE).read_bytes() == expected(2, now)
    assert encoded == ["p0", "p1", "p2", "p3", "p1", "p9"]  # each object encoded once, when journaled
    spans = [where for group in files._spans.groups.values() for where in group.values()]
    assert len(spans) == len(now)
    assert all(type(where) is int for where in spans)  # no second copy of any text
    (tmp_path / STATE_FILE).write_bytes(expected(2, now) + b" ")  # the files changed behind the store
    files.compact(2, now)
    assert (tmp_path / STATE_FILE).read_bytes() == expected(2, now)
    assert encoded[6:] == ["p0", "p1", "p2", "p9"]  # then every object is encoded again


def test_objects_loaded_from_the_snapshot_share_their_equal_strings(state: Path) -> None:
    store = big_store(state)
    again = LocalStore.open(state)
    assert again.snapshot() == store.snapshot()
    pods = [o for o in again.snapshot() if isinstance(o, Pod)]
    assert len(pods) == 30
    assert all(p.metadata.namespace is pods[0].metadata.namespace for p in pods)  # one "default"
    assert all(p.metadata.labels["app"] is pods[0].metadata.labels["app"] for p in pods)
