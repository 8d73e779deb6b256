"""Bounds on manifest input checked before anything is decoded: size, encoding, nesting and alias expansion.

The numbers follow Kubernetes. A document may be as large as a request kube-apiserver takes (3 MiB), and
that holds once YAML aliases are expanded; aliases are also held to go-yaml v3's "excessive aliasing"
rule (the decoder behind sigs.k8s.io/yaml). Both are measured on the composed node graph, each
collection once, so a 600-byte alias bomb costs as little to refuse as it costs to read. `Refused` is
internal: the codec turns it into InvalidManifest with the file and document. Upstream allows nesting 10,000
deep (go-yaml v3, apimachinery's util/json); no Velvet kind nests more than about 20 levels, even with
managedFields, so 100 refuses nothing real and stays far from Python's recursion limit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import accumulate, chain

import yaml

from velvet.manifest_files import MAX_FILE_BYTES, document_at, file_too_long

MAX_DOCUMENT_BYTES = 3 * 1024 * 1024  # kube-apiserver's request body limit
MAX_DEPTH = 100  # nested lists and objects in one document
MAX_INT_CHARS = 100  # an integer literal; 64-bit numbers need at most 67 (0b, sign and 64 digits)

_ALIAS_FREE_NODES, _ALIAS_ANY_NODES = 400_000, 4_000_000  # go-yaml v3's alias_ratio_range
_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_JSON_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class Refused(Exception):
    """Input refused before decoding: `field` says where ("line 3", "<document>", "<file>").

    `document` is the 1-based document when the guard knows it, else 0 (the caller knows it, or the
    whole file is meant).
    """

    def __init__(self, field: str, reason: str, document: int = 0) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.document = document


def check_text(text: str) -> None:
    """Refuse a manifest text (as the agent receives it) that is too large or not Unicode text."""
    if len(text) > MAX_FILE_BYTES:
        _check_file_size(len(text))
    surrogate = _SURROGATE.search(text)
    if surrogate is not None:
        before = text[:surrogate.start()]
        raise Refused(f"line {before.count(chr(10)) + 1}", "not UTF-8 text: a lone surrogate code point",
                      document_at(before))
    if 4 * len(text) > MAX_FILE_BYTES:  # a character is at most 4 bytes of UTF-8
        _check_file_size(len(text.encode()))


def check_json(text: str) -> None:
    """Refuse a JSON document over MAX_DOCUMENT_BYTES or nested deeper than MAX_DEPTH, before parsing it."""
    size = len(text.encode())
    if size > MAX_DOCUMENT_BYTES:
        raise Refused("<document>", _too_long(size, yaml_size=False), 1)
    brackets = _JSON_NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    if max(accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0) > MAX_DEPTH:
        raise Refused("<document>", f"Invalid value: nested more than {MAX_DEPTH} levels deep", 1)


def parse_json_int(literal: str) -> int:
    """A JSON integer literal, refused beyond MAX_INT_CHARS (Python's int() guards itself with an error)."""
    if len(literal) > MAX_INT_CHARS:
        raise Refused("<document>", f"Invalid value: an integer of {len(literal)} digits does not fit in "
                      "64 bits", 1)
    return int(literal)


def check_yaml_document(root: yaml.Node) -> None:
    """Refuse a composed YAML document before it is constructed, with the line where possible.

    Refused: a recursive alias, nesting deeper than MAX_DEPTH, excessive aliasing, and more than
    MAX_DOCUMENT_BYTES once aliases are expanded. Each collection is measured once; scalars are summed
    where they appear, so the check is linear in the composed graph whatever the expansion.
    """
    if type(root) is yaml.ScalarNode:
        size = _scalar_bytes(root)
        if size > MAX_DOCUMENT_BYTES:
            raise Refused("<document>", _too_long(size, yaml_size=True))
        return
    measured: dict[int, tuple[int, int, int]] = {}  # id(collection) -> (nodes, bytes, depth) expanded
    open_nodes: set[int] = set()
    direct = 0  # nodes as written: each collection once, with its scalars
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_measured = stack.pop()
        key = id(node)
        if children_measured:
            measured[key], scalars = _measure(node, measured)
            direct += 1 + scalars
            open_nodes.discard(key)
        elif key in open_nodes:  # reached again below itself: an alias inside its own anchor
            raise Refused(_line(node), "recursive alias: an anchor may not contain an alias to itself")
        elif key not in measured:
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node) if type(child) is not yaml.ScalarNode)
    nodes, size, depth = measured[id(root)]
    if depth > MAX_DEPTH:
        raise Refused(_line(_deepest(root, measured)),
                      f"Invalid value: nested more than {MAX_DEPTH} levels deep")
    aliased = nodes - direct
    if aliased > 100 and nodes > 1000 and aliased / nodes > _allowed_alias_ratio(nodes):
        raise Refused("<document>", f"document contains excessive aliasing: {nodes} nodes once aliases are "
                      f"expanded, {aliased} of them through aliases")
    if size > MAX_DOCUMENT_BYTES:
        raise Refused("<document>", _too_long(size, yaml_size=True))


def _check_file_size(size: int) -> None:
    too_long = file_too_long(size)
    if too_long is not None:
        raise Refused("<file>", too_long)


def _too_long(size: int, *, yaml_size: bool) -> str:
    measure = f"about {size} bytes as JSON (aliases expanded)" if yaml_size else f"{size} bytes"
    return (f"Too long: {measure}; a document may have at most {MAX_DOCUMENT_BYTES} bytes "
            f"({MAX_DOCUMENT_BYTES // 2**20} MiB, kube-apiserver's request limit)")


def _children(node: yaml.Node) -> Iterable[yaml.Node]:
    if type(node) is yaml.MappingNode:
        return chain.from_iterable(node.value)
    return node.value if type(node) is yaml.SequenceNode else ()


def _scalar_bytes(node: yaml.Node) -> int:
    """Bytes of a scalar in compact JSON, about: its UTF-8 and two quotes."""
    return len(node.value.encode("utf-8", "surrogatepass")) + 2


def _measure(node: yaml.Node, measured: dict[int, tuple[int, int, int]]) -> tuple[tuple[int, int, int], int]:
    """((nodes, bytes, depth) expanded, scalar children) of a collection whose collections are measured."""
    nodes, size, depth, scalars = 1, 2, 0, 0
    for child in _children(node):
        if type(child) is yaml.ScalarNode:
            scalars += 1
            size += _scalar_bytes(child)
        else:
            child_nodes, child_size, child_depth = measured[id(child)]
            nodes += child_nodes
            size += child_size
            depth = max(depth, child_depth)
    return (nodes + scalars, size, depth + 1), scalars


def _deepest(root: yaml.Node, measured: dict[int, tuple[int, int, int]]) -> yaml.Node:
    """The collection MAX_DEPTH levels down the deepest path: where the document first nests too deep."""
    node = root
    for _ in range(MAX_DEPTH):
        collections = [child for child in _children(node) if type(child) is not yaml.ScalarNode]
        node = max(collections, key=lambda child: measured[id(child)][2])
    return node


def _allowed_alias_ratio(nodes: int) -> float:
    """go-yaml v3: 99% may come from aliases up to 400k nodes, scaling down to 10% at 4M."""
    if nodes <= _ALIAS_FREE_NODES:
        return 0.99
    if nodes >= _ALIAS_ANY_NODES:
        return 0.10
    return 0.99 - 0.89 * (nodes - _ALIAS_FREE_NODES) / (_ALIAS_ANY_NODES - _ALIAS_FREE_NODES)


def _line(node: yaml.Node) -> str:
    return f"line {node.start_mark.line + 1}"
