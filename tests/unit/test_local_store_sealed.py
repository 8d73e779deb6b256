"""Test that the store reads back what it sealed without validating it, and validates everything else."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from velvet.model import EndpointSlice, KubeObject, PodCondition, PodStatus, Service
from velvet.model import codec as codec_module
from velvet.model.codec import from_dict, to_dict
from velvet.model.decode_service import decode_service
from velvet.model.decode_stored import read_stored
from velvet.model.service import Endpoint, EndpointConditions, EndpointPort, ObjectReference
from velvet.sources import seal as seal_module
from velvet.sources import state_files
from velvet.sources.local import LocalStore
from velvet.sources.state_files import JOURNAL_FILE, QUARANTINE_FILE, STATE_FILE

SERVICES = 12


def service(name: str, **spec: Any) -> KubeObject:
    body: dict[str, Any] = {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80,
                                                                      "targetPort": 8080}]}
    body.update(spec)
    return from_dict({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": {"t": "x"}},
                      "spec": body})


def pod(name: str) -> KubeObject:
    return from_dict({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "web"}},
                      "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 8080}]}]}})


def running(ip: str, ready: bool = True) -> PodStatus:
    return PodStatus(phase="Running", pod_ip=ip, conditions=(PodCondition("Ready", str(ready)),))


@pytest.fixture
def validated(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The kind of every object the store's loads validate (decode with the strict decoder)."""
    kinds: list[str] = []

    def spy(doc: object, **kwargs: Any) -> KubeObject:
        kinds.append(doc.get("kind", "?") if isinstance(doc, dict) else "?")
        return from_dict(doc, **kwargs)

    monkeypatch.setattr(state_files, "from_dict", spy)
    return kinds


def populated(state: Path) -> LocalStore:
    """A store of SERVICES services over two running pods (one slice each), compacted, with journal lines."""
    store = LocalStore.open(state)
    store.apply([pod("a"), pod("b")])
    store.update_pod_status("default", "a", running("10.244.0.5"))
    store.update_pod_status("default", "b", running("10.244.0.6", ready=False))
    store.apply([service(f"s{i:02d}") for i in range(SERVICES)])
    assert (state / JOURNAL_FILE).stat().st_size == 0  # that apply outgrew the snapshot: compacted
    store.apply([service("late", type="NodePort")])  # in the journal
    assert (state / JOURNAL_FILE).stat().st_size > 0
    return store


def quarantined(state: Path) -> list[dict[str, Any]]:
    path = state / QUARANTINE_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_store_written_by_this_code_is_loaded_without_validating_services_or_slices(
        state: Path, validated: list[str]) -> None:
    store = populated(state)
    validated.clear()
    again = LocalStore.open(state)
    assert again.snapshot() == store.snapshot()
    assert again.version == store.version
    services = [o for o in again.snapshot() if isinstance(o, Service | EndpointSlice)]
    assert len(services) == 2 * (SERVICES + 1)
    assert sorted(validated) == ["Namespace", "Namespace", "Pod", "Pod"]  # kinds without a fast reader
    slices = [o for o in again.snapshot() if isinstance(o, EndpointSlice)]
    assert all(s.metadata.namespace is slices[0].metadata.namespace for s in slices)  # equal strings shared


def test_texts_in_the_stdlib_json_of_earlier_versions_still_load_sealed_beside_the_new_ones(
        state: Path, validated: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as earlier:
        earlier.setattr(state_files, "_dump", lambda obj: json.dumps(to_dict(obj), sort_keys=True).encode())
        old = populated(state)  # snapshot and journal as written before the store's texts were orjson's
    assert b'"port": 80' in (state / STATE_FILE).read_bytes() + (state / JOURNAL_FILE).read_bytes()
    validated.clear()
    store = LocalStore.open(state)
    assert store.snapshot() == old.snapshot()
    assert sorted(validated) == ["Namespace", "Namespace", "Pod", "Pod"]  # services and slices read sealed
    note = {"note": "caf\u00e9 \u2713"}
    store.apply([service("new", type="NodePort"), from_dict({**to_dict(pod("c")), "metadata": {
        "name": "c", "labels": {"app": "web"}, "annotations": note}})])
    assert "café ✓".encode() in (state / JOURNAL_FILE).read_bytes()  # UTF-8, not escaped
    again = LocalStore.open(state)
    assert again.snapshot() == store.snapshot()
    assert next(p for p in again.get("pods") if p.metadata.name == "c").metadata.annotations == note
    store.apply([service(f"t{i:02d}") for i in range(SERVICES)])  # compacts: old and new texts together
    assert (state / JOURNAL_FILE).stat().st_size == 0
    validated.clear()
    assert LocalStore.open(state).snapshot() == store.snapshot()
    assert sorted(validated) == ["Namespace", "Namespace", "Pod", "Pod", "Pod"]  # still no service nor slice


def test_a_hand_edited_service_in_the_snapshot_is_validated_and_refused(
        state: Path, validated: list[str], caplog: pytest.LogCaptureFixture) -> None:
    store = populated(state)
    snapshot = state / STATE_FILE
    text = snapshot.read_bytes()
    ip = next(s for s in store.get("services") if s.metadata.name == "s03")
    assert isinstance(ip, Service)
    assert ip.spec.cluster_ip
    edited = text.replace(f'"{ip.spec.cluster_ip}"'.encode(), b'"10.96.0.999"')  # clusterIP and clusterIPs
    assert edited != text
    assert edited.endswith(text[-48:])  # the old seal kept: it no longer matches
    snapshot.write_bytes(edited)
    validated.clear()
    caplog.set_level(logging.INFO, "velvet.store")
    again = LocalStore.open(state)
    names = [s.metadata.name for s in again.get("services")]
    assert "s03" not in names
    assert len(names) == SERVICES  # the 11 others and "late"
    (record,) = quarantined(state)
    assert record["document"]["metadata"]["name"] == "s03"
    assert "must be a valid IPv4 address" in record["reason"]
    (line,) = [r.getMessage() for r in caplog.records if "moved to" in r.getMessage()]
    assert line.startswith(f"{snapshot}: object ")
    assert "spec.clusterIP" in line
    assert validated.count("Service") == SERVICES  # every one of the snapshot ("late" is in the journal)
    assert validated.count("EndpointSlice") == SERVICES


def test_a_hand_edited_journal_line_is_validated_and_refused(state: Path, validated: list[str]) -> None:
    populated(state)
    journal = state / JOURNAL_FILE
    text = journal.read_bytes()
    edited = text.replace(b'"port":80,', b'"port":70000,', 1)
    assert edited != text
    journal.write_bytes(edited)
    validated.clear()
    again = LocalStore.open(state)
    assert "late" not in [s.metadata.name for s in again.get("services")]
    (record,) = quarantined(state)
    assert record["document"]["metadata"]["name"] == "late"
    assert "must be between 1 and 65535" in record["reason"]
    assert validated.count("Service") == 1  # the journal's service; the snapshot's sealed ones were not
    assert LocalStore.open(state).snapshot() == again.snapshot()


def test_texts_sealed_by_other_code_are_validated_then_sealed_again(
        state: Path, validated: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as other:
        other.setattr(seal_module, "code_digest", lambda: b"another Velvet".ljust(32, b"\0"))
        store = populated(state)
    validated.clear()
    again = LocalStore.open(state)  # every object validated, then all of it written again, sealed
    assert again.snapshot() == store.snapshot()
    assert validated.count("Service") == SERVICES + 1
    assert validated.count("EndpointSlice") == SERVICES + 1
    assert (state / JOURNAL_FILE).stat().st_size == 0
    validated.clear()
    third = LocalStore.open(state)
    assert third.snapshot() == store.snapshot()
    assert "Service" not in validated
    assert "EndpointSlice" not in validated


def test_a_rule_tightened_in_the_models_code_refuses_what_it_sealed_before(
        state: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    store = populated(state)
    expected = [s.metadata.name for s in store.get("services")]
    monkeypatch.setattr(codec_module, "_DECODERS", {**codec_module._DECODERS, "Service": refuse_nodeports})
    monkeypatch.setattr(seal_module, "code_digest", lambda: b"the tightened code".ljust(32, b"\0"))
    caplog.set_level(logging.WARNING, "velvet.store")
    again = LocalStore.open(state)
    assert [s.metadata.name for s in again.get("services")] == [n for n in expected if n != "late"]
    (record,) = quarantined(state)
    assert (record["document"]["metadata"]["name"], record["reason"]) == ("late", "spec.type: no NodePorts")
    assert any("moved to" in r.getMessage() for r in caplog.records)


def refuse_nodeports(root: Any, *, trusted: bool) -> KubeObject:
    """The Service decoder with a rule it did not have: no NodePort services."""
    if root.node.value["spec"].get("type") == "NodePort":
        spec = root.req("spec")
        spec.obj(known=spec.value.keys()).req("type").fail("no NodePorts")
    decoded: KubeObject = decode_service(root, trusted=trusted)
    return decoded


# -- the fast reader gives what the strict decoder gives, for every field ------------------------------


def stored(objects: list[KubeObject]) -> list[dict[str, Any]]:
    """The objects as the store writes and reads them: to_dict, JSON text, orjson."""
    return [orjson.loads(json.dumps(to_dict(o), sort_keys=True)) for o in objects]


def every_kind_of_service(state: Path) -> list[KubeObject]:
    store = LocalStore.open(state)
    ports = [{"name": "http", "port": 80, "targetPort": "web"},
             {"name": "dns", "port": 53, "protocol": "UDP"}]
    store.apply([
        service("plain"),
        service("one", ports=[{"port": 8080}]),
        service("headless", clusterIP="None"),
        service("np", type="NodePort", ports=ports, externalTrafficPolicy="Local",
                sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}}),
        service("lb", type="LoadBalancer", loadBalancerSourceRanges=["10.0.0.0/8"],
                externalTrafficPolicy="Local", healthCheckNodePort=31000, publishNotReadyAddresses=True,
                internalTrafficPolicy="Local"),
        service("ext", externalIPs=["192.0.2.7"], externalTrafficPolicy="Cluster"),
        from_dict({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "byname", "annotations": {"a/b": "c"}},
                   "spec": {"type": "ExternalName", "externalName": "db.example"}}),
        from_dict({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ingress"},
                   "spec": {"type": "LoadBalancer", "ports": [{"port": 443, "nodePort": 30443}]},
                   "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"},
                                                           {"hostname": "x.example"}]}}}),
    ])
    return store.get("services")


def every_kind_of_slice() -> list[KubeObject]:
    ref = ObjectReference(kind="Pod", name="a", namespace="default", uid="u-1")
    endpoints = [Endpoint(addresses=("10.244.0.5",), conditions=EndpointConditions(r, s, t),
                          node_name=node, hostname=host, target_ref=target)
                 for r, s, t, node, host, target in ((True, True, False, "node-1", None, ref),
                                                     (None, None, None, None, "h1", None),
                                                     (False, True, True, "node-2", None, ref))]
    meta = service("x").metadata
    return [EndpointSlice(metadata=meta, endpoints=tuple(endpoints),
                          ports=(EndpointPort(80, "TCP", "http"), EndpointPort(None, "UDP", None),
                                 EndpointPort(53, "SCTP", "dns"))),
            EndpointSlice(metadata=meta)]


def test_the_fast_reader_reads_every_field_as_the_strict_decoder_does(state: Path) -> None:
    objects = every_kind_of_service(state) + every_kind_of_slice()
    objects += LocalStore.open(state).get("endpointslices")
    for doc in stored(objects):
        seen: dict[str, str] = {}
        fast = read_stored(doc, seen.setdefault)
        assert fast is not None
        assert fast == from_dict(doc, trusted=True), doc["metadata"]["name"]
    none: dict[str, str] = {}
    assert read_stored(stored([pod("p")])[0], none.setdefault) is None  # no fast reader: validated


def test_a_sealed_snapshot_is_parsed_one_object_at_a_time(
        state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = populated(state)
    snapshot = (state / STATE_FILE).stat().st_size
    parsed: list[int] = []

    def loads(text: bytes | str) -> Any:
        parsed.append(len(text))
        return json.loads(text)

    monkeypatch.setattr(state_files, "json", SimpleNamespace(loads=loads, dumps=json.dumps))
    again = LocalStore.open(state)
    assert again.snapshot() == store.snapshot()
    assert len(parsed) > 2 * SERVICES  # a parse per object, and one per journal line
    assert max(parsed) < snapshot / 4  # never the whole snapshot (20,000 documents at 10k services)
