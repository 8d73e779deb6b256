"""Test that the fast builder of plain YAML documents reads exactly what PyYAML's constructor reads."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from velvet.errors import InvalidManifest
from velvet.model import Service, codec
from velvet.model.codec import parse_documents

PLAIN = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {"on": "yes", n: "80"}}
spec:
  ints: [0, -1, 0x1f, 0o17, 1_000, +5]
  floats: [1.5, .inf, -.Inf, .nan, 1e3]
  bools: [true, False, yes, no, on, Off]
  nulls: [~, null, ]
  strings: ['1', "true", 2024-01-01, 2024-01-01T00:00:00Z, 10.96.0.1, s00001, ""]
  nested: [{a: [b, {c: d}]}, []]
  1: integer key
---
# an empty document
---
plain: [text]
"""


class FullLoader(codec._StrictLoader):
    """The strict loader with the plain builder switched off: PyYAML's constructor for every document."""

    def _build_plain(self, node: yaml.Node, *_: object) -> Any:
        raise codec._NotPlain


def both(text: str) -> tuple[list[Any], list[Any]]:
    """The documents as the strict loader reads them, and as PyYAML's constructor alone does."""
    return codec._load_all(text, "t.yaml"), list(yaml.load_all(text, Loader=FullLoader))


def test_plain_documents_read_as_the_full_constructor_reads_them() -> None:
    """Test that every JSON scalar form, nesting and empty documents come out identical (NaN aside)."""
    fast, full = both(PLAIN)
    assert fast[0]["spec"]["floats"][3] != fast[0]["spec"]["floats"][3]  # NaN
    for docs in (fast, full):
        docs[0]["spec"]["floats"][3] = "nan"
    assert fast == full
    assert fast[0]["spec"]["strings"][2] == "2024-01-01"


def test_aliases_and_merge_keys_still_read_through_the_full_constructor() -> None:
    """Test that a document with an anchor, alias and merge key is read (by PyYAML) as before."""
    fast, full = both("base: &b {port: 80}\nfirst: *b\nsecond: {<<: *b, name: x}\n")
    port = {"port": 80}
    assert fast == full == [{"base": port, "first": port, "second": {**port, "name": "x"}}]


@pytest.mark.parametrize(("text", "field", "reason"), [
    ("a: 1\nb: 2\na: 3\n", "line 3", 'duplicate field "a"'),
    ("ports: [!!int x]\n", "line 1", 'invalid int "x"'),
    ("when: !!timestamp 2024-01-01\n", "line 1", 'unsupported YAML tag "!!timestamp"'),
])
def test_bad_plain_documents_fail_with_the_same_line(text: str, field: str, reason: str) -> None:
    """Test that a duplicate field, a bad tagged scalar and an unsupported tag name their line."""
    with pytest.raises(InvalidManifest) as err:
        codec._load_all(text, "t.yaml")
    assert err.value.field == field
    assert reason in err.value.reason


def test_equal_strings_of_one_text_become_one_object() -> None:
    """Test that the services of one apply share their equal namespace, selector and port strings (10,000
    services kept ~2.6 MB of copies), and that each keeps its own name."""
    text = "".join(f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: shop}}\n"
                   f"spec:\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, protocol: TCP}}]\n"
                   for i in range(2))
    first, second = parse_documents(text, "s.yaml")
    assert isinstance(first, Service)
    assert isinstance(second, Service)
    assert first.metadata.namespace is second.metadata.namespace
    ((key, value),) = (first.spec.selector or {}).items()
    ((other_key, other_value),) = (second.spec.selector or {}).items()
    assert (key, value) == (other_key, other_value) == ("app", "web")
    assert key is other_key
    assert value is other_value
    assert first.spec.ports[0].name is second.spec.ports[0].name
    assert (first.metadata.name, second.metadata.name) == ("s0", "s1")


def test_the_guards_speak_before_a_plain_document_is_refused_for_itself() -> None:
    """Test that a document with a duplicate field that is also nested too deep is refused for its depth,
    as when the guards measured every document before it was built."""
    with pytest.raises(InvalidManifest) as err:
        codec._load_all("a: 1\na: 2\nx: " + "[" * 101 + "]" * 101 + "\n", "t.yaml")
    assert err.value.field == "line 3"
    assert err.value.reason == "Invalid value: nested more than 100 levels deep"
