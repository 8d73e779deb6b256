"""Test that hostile or broken manifest input is refused in one line naming file, document and field.

Alias bombs, oversized documents, deep nesting, complex keys, bad encodings, huge integers and odd YAML
tags each used to freeze the agent, fill its disk, or escape as a traceback.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from velvet.agent.manifests import parse_all
from velvet.cli.objects import read_manifests
from velvet.errors import InvalidManifest
from velvet.manifest_files import MAX_FILE_BYTES
from velvet.model import Namespace, Pod, guards
from velvet.model.codec import from_dict, load_manifests, parse_documents, parse_located

NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n"


def _refused(text: str, path: str = "in.yaml") -> InvalidManifest:
    """The error parsing `text` raises; it must be one line that starts with the file and document."""
    with pytest.raises(InvalidManifest) as caught:
        parse_documents(text, path)
    err = caught.value
    assert "\n" not in str(err)
    assert str(err).startswith(f"{path}: document {err.document}: {err.field}: ")
    return err


def _bomb(levels: int, fan_out: int = 9) -> str:
    """The classic YAML alias bomb: each level is a list of `fan_out` aliases to the level below."""
    lines = [f"a0: &a0 [{', '.join(['x'] * fan_out)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fan_out)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def _service_with(field_yaml: str, prelude: str = "") -> str:
    return (f"{prelude}apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\n"
            f"spec:\n  ports: [{{port: 80}}]\n  {field_yaml}\n")


# -- 1. alias bombs ------------------------------------------------------------------------------------


def test_the_reported_alias_bomb_is_refused_as_excessive_aliasing() -> None:
    text = NAMESPACE + "---\n" + _service_with("externalTrafficPolicy: *a8", prelude=_bomb(8))
    assert len(text) < 1000
    err = _refused(text)
    assert (err.document, err.field) == (2, "<document>")
    assert "excessive aliasing" in err.reason
    expanded = int(re.search(r"(\d+) nodes once aliases are expanded", err.reason).group(1))  # type: ignore[union-attr]
    assert expanded > 9**9  # counted, never built


def test_a_small_bomb_that_old_code_would_print_is_refused_too() -> None:
    err = _refused(_service_with("externalTrafficPolicy: *a5", prelude=_bomb(5)))
    assert "excessive aliasing" in err.reason


def test_the_alias_check_measures_each_collection_once(monkeypatch: pytest.MonkeyPatch) -> None:
    measured: list[int] = []
    real = guards._measure

    def counting(node: yaml.Node, done: dict[int, tuple[int, int, int]]) -> Any:
        measured.append(id(node))
        return real(node, done)

    monkeypatch.setattr(guards, "_measure", counting)
    for levels in (8, 40):  # 9^41 nodes once expanded: only memoisation makes this finish
        measured.clear()
        err = _refused(_service_with(f"externalTrafficPolicy: *a{levels}", prelude=_bomb(levels)))
        assert "excessive aliasing" in err.reason
        # the levels, the root mapping, metadata, spec, ports and its item: each measured once
        assert len(measured) == len(set(measured)) == levels + 1 + 5


def test_aliases_expanding_past_3_mib_are_refused() -> None:
    """199 aliases of a 1 MB string once made a 200 MB state file; 60 of 64 KiB already pass 3 MiB."""
    blob = "x" * 65536
    args = ", ".join(["*s"] * 60)
    text = (f"apiVersion: v1\nkind: Pod\nmetadata: {{name: p, annotations: {{blob: &s {blob}}}}}\n"
            f"spec:\n  containers: [{{name: c, args: [{args}]}}]\n")
    assert len(text) < 100_000
    err = _refused(text)
    assert (err.document, err.field) == (1, "<document>")
    assert "Too long" in err.reason
    assert "3145728" in err.reason


def test_a_few_aliases_are_fine() -> None:
    text = ("apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: &l {app: web}}\n"
            "spec:\n  containers:\n"
            "  - {name: a, command: &cmd [sleep, '1'], env: &env [{name: A, value: b}]}\n"
            "  - {name: b, command: *cmd, env: *env}\n")
    (pod,) = parse_documents(text, "p.yaml")
    assert isinstance(pod, Pod)
    assert pod.spec.containers[1].command == ("sleep", "1")
    assert pod.metadata.labels == {"app": "web"}


def test_a_recursive_alias_is_refused() -> None:
    err = _refused(_service_with("selector: &s {app: *s}"))
    assert err.field == "line 6"
    assert err.reason == "recursive alias: an anchor may not contain an alias to itself"


def test_merge_keys_work_as_with_kubectl() -> None:
    text = ("apiVersion: v1\nkind: Namespace\nmetadata:\n  <<: &defaults {name: merged, labels: {a: b}}\n"
            "  labels: {c: d}\n")
    (ns,) = parse_documents(text, "m.yaml")
    assert isinstance(ns, Namespace)
    assert ns.metadata.name == "merged"
    assert dict(ns.metadata.labels) == {"c": "d", "kubernetes.io/metadata.name": "merged"}


# -- 2. size limits ------------------------------------------------------------------------------------


def test_a_document_over_3_mib_is_refused() -> None:
    big = "x" * (3 * 1024 * 1024)
    err = _refused(NAMESPACE + "---\n" + _service_with(f"x: {big}") + "---\n" + NAMESPACE)
    assert (err.document, err.field) == (2, "<document>")
    assert "Too long" in err.reason


def test_a_json_document_over_3_mib_is_refused() -> None:
    doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n", "x": "y" * (3 * 1024 * 1024)}}
    err = _refused(json.dumps(doc), "big.json")
    assert (err.document, err.field) == (1, "<document>")
    assert "Too long" in err.reason


def test_annotations_over_256_kib_in_total_are_refused() -> None:
    half = 128 * 1024
    fits = {"a": "x" * (half - 1), "b": "y" * (half - 1)}  # 2 + 262142 bytes: the limit exactly
    meta: dict[str, Any] = {"name": "n", "annotations": fits}
    doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}
    (ns,) = parse_documents(yaml.safe_dump(doc), "ok.yaml")
    assert ns.metadata.annotations == fits
    meta["annotations"] = {**fits, "c": ""}  # one key byte over
    err = _refused(yaml.safe_dump(doc))
    assert err.field == "metadata.annotations"
    assert "262144 bytes" in err.reason


def test_a_file_over_the_limit_is_refused_before_parsing() -> None:
    text = "#" * (MAX_FILE_BYTES + 1)
    err = _refused(text)
    assert (err.document, err.field) == (0, "<file>")
    assert "Too long" in err.reason


def test_the_cli_refuses_an_oversized_file_without_reading_it_all(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as out:
        out.truncate(MAX_FILE_BYTES + 4096)
    with pytest.raises(InvalidManifest) as caught:
        read_manifests([str(big)])
    assert (caught.value.path, caught.value.field) == (str(big), "<file>")
    assert caught.value.reason.startswith(f"Too long: {MAX_FILE_BYTES + 4096} bytes; ")


# -- 5. complex keys, deep nesting, encodings ------------------------------------------------------------


@pytest.mark.parametrize(("text", "field", "kind"), [
    ("? [a, b]\n: c\n", "line 1", "a list"),
    ("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n  labels:\n    ? {a: b}\n    : c\n", "line 6",
     "an object"),
    ("apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {[x]: y}}\n", "line 3", "a list"),
])
def test_complex_mapping_keys_are_refused(text: str, field: str, kind: str) -> None:
    err = _refused(text)
    assert (err.document, err.field, err.reason) == (1, field, f"a field name must be a string, not {kind}")


def test_json_nested_5000_deep_is_refused() -> None:
    deep = "[" * 5000 + "]" * 5000
    err = _refused('{"apiVersion": "v1", "kind": "Namespace", "x": ' + deep + "}", "d.json")
    assert (err.document, err.field) == (1, "<document>")
    assert "nested more than 100 levels" in err.reason


@pytest.mark.parametrize("depth", [101, 5000])
def test_yaml_nested_deeper_than_100_is_refused(depth: int) -> None:
    err = _refused(NAMESPACE + "---\n" + NAMESPACE + "x: " + "[" * depth + "]" * depth + "\n")
    assert err.document == 2
    assert "nest" in err.reason


def test_nesting_to_the_limit_is_read() -> None:
    err = _refused(NAMESPACE + "x: " + "[" * 99 + "]" * 99 + "\n")  # 99 lists in the root object
    assert err.reason == 'unknown field "x"'  # decoded: refused only by the schema


def test_a_non_utf8_file_names_file_document_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(NAMESPACE.encode() + b"---\n# caf\xe9\n" + NAMESPACE.encode())
    with pytest.raises(InvalidManifest) as caught:
        read_manifests([str(bad)])
    err = caught.value
    assert (err.path, err.document, err.field) == (str(bad), 2, "line 5")
    assert err.reason == "not UTF-8 text: byte 0xe9 at offset 61"
    with pytest.raises(InvalidManifest):
        load_manifests([tmp_path])


def test_a_lone_surrogate_in_the_text_is_refused() -> None:
    err = _refused(NAMESPACE + "---\nkind: \ud800\n")
    assert (err.document, err.field) == (2, "line 5")


def test_an_escaped_lone_surrogate_in_json_is_refused() -> None:
    doc = '{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n", "labels": {"a": "\\ud800"}}}'
    err = _refused(doc, "s.json")
    assert err.field == "metadata.labels.a"
    assert "surrogate" in err.reason


# -- 6. integers that Python would not convert ---------------------------------------------------------


@pytest.mark.parametrize("path", ["big.yaml", "big.json"])
def test_an_integer_of_5000_digits_is_refused(path: str) -> None:
    digits = "9" * 5000
    text = (f'{{"apiVersion": "v1", "kind": "Namespace", "x": {digits}}}' if path.endswith(".json")
            else NAMESPACE + f"x: {digits}\n")
    err = _refused(text, path)
    assert "does not fit in 64 bits" in err.reason


def test_a_stored_resource_version_must_be_a_plain_decimal() -> None:
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}}
    for bad in ("-1", "1_0", " 7", "\uff17", "18446744073709551616"):
        doc["metadata"]["resourceVersion"] = bad
        with pytest.raises(InvalidManifest) as caught:
            from_dict(doc, trusted=True)
        assert caught.value.field == "metadata.resourceVersion"
    doc["metadata"]["resourceVersion"] = "42"
    assert from_dict(doc, trusted=True).metadata.resource_version == 42


# -- YAML that PyYAML reads but JSON (and so the API) has no value for -----------------------------------


@pytest.mark.parametrize(("scalar", "reason"), [
    ("0b_", 'invalid YAML: invalid int "0b_"'),
    ("!!int ten", 'invalid YAML: invalid int "ten"'),
    ("!!float x", 'invalid YAML: invalid float "x"'),
    ("!!bool maybe", 'invalid YAML: invalid bool "maybe"'),
    ("!!timestamp 2024-01-01", 'unsupported YAML tag "!!timestamp"'),
    ("!!binary aGk=", 'unsupported YAML tag "!!binary"'),
    ("!!set {a}", 'unsupported YAML tag "!!set"'),
    ("!!map [a]", "invalid YAML: expected a mapping node, but found sequence"),
    ("!!python/name:os.system", "invalid YAML: could not determine a constructor"),
])
def test_bad_or_unsupported_tags_are_one_line_errors(scalar: str, reason: str) -> None:
    err = _refused(NAMESPACE + f"x: {scalar}\n")
    assert err.field == "line 4"
    assert err.reason.startswith(reason)


def test_yaml_syntax_errors_are_one_line_with_the_line() -> None:
    err = _refused(NAMESPACE + "---\nmetadata: {name: [\n")
    assert (err.document, err.field) == (2, "line 6")
    assert err.reason.startswith("invalid YAML: ")


def test_duplicate_fields_name_the_line() -> None:
    err = _refused(NAMESPACE + "metadata: {name: again}\n")
    assert (err.field, err.reason) == ("line 4", 'duplicate field "metadata"')


def test_values_in_errors_are_escaped_and_shortened() -> None:
    err = _refused("apiVersion: v1\nkind: Namespace\nmetadata: {name: \"a\\nb" + "c" * 500 + "\"}\n")
    assert err.reason.startswith('Invalid value: "a\\nbccc')
    assert "(503 characters)" in err.reason
    assert len(str(err)) < 400


# -- the agent's side: what the API hands to parse_all --------------------------------------------------


@pytest.mark.parametrize(("documents", "field"), [
    ({"path": "a.yaml", "text": NAMESPACE}, "documents"),
    ([{"path": "a.yaml"}], "documents[0]"),
    ([{"path": "a.yaml", "text": NAMESPACE}, {"path": 1, "text": NAMESPACE}], "documents[1]"),
    ([{"path": "a\n.yaml", "text": NAMESPACE}], "documents[0].path"),
    ([{"path": "", "text": NAMESPACE}], "documents[0].path"),
    (["a.yaml"], "documents[0]"),
])
def test_malformed_apply_requests_are_refused(documents: object, field: str) -> None:
    with pytest.raises(InvalidManifest) as caught:
        parse_all(documents)
    assert (caught.value.path, caught.value.field) == ("<request>", field)


def test_parse_all_reports_origins() -> None:
    objects, origins = parse_all([{"path": "a.yaml", "text": NAMESPACE + "---\n" + NAMESPACE}])
    assert len(objects) == 2
    assert [(o.path, o.document) for o in origins] == [("a.yaml", 1), ("a.yaml", 2)]
    assert parse_located("", "empty.yaml") == []
