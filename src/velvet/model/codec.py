"""kubectl-style manifests ↔ the typed model: parsing, strict validation, defaulting and printing.

`parse_documents` (`parse_located` also says which document each object came from) and
`load_manifests` validate the whole input before returning anything; the first
bad document raises `InvalidManifest(path, document, field, reason)`. `to_dict` is the inverse, in the
shape `kubectl get -o json` prints; `from_dict(..., trusted=True)` reads that shape back with every
server-set field (the local store's persistence format).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from velvet.errors import InvalidManifest
from velvet.manifest_files import MANIFEST_SUFFIXES, read_manifest_file
from velvet.model import EndpointSlice, KubeObject, Namespace, NetworkPolicy, Pod, Service
from velvet.model.decode_meta import decode_namespace
from velvet.model.decode_net import decode_endpoint_slice, decode_network_policy
from velvet.model.decode_pod import decode_pod
from velvet.model.decode_service import decode_service
from velvet.model.decode_tracing import decode_tracing_policy, decode_tracing_policy_namespaced
from velvet.model.encode import (
    Json,
    encode_endpoint_slice,
    encode_namespace,
    encode_network_policy,
    encode_pod,
    encode_service,
)
from velvet.model.encode_tracing import encode_tracing_policy
from velvet.model.guards import (
    MAX_DEPTH,
    MAX_DOCUMENT_BYTES,
    MAX_INT_CHARS,
    Refused,
    check_json,
    check_text,
    check_yaml_document,
    parse_json_int,
)
from velvet.model.validate import Node, Obj, Where, one_line, quote


@dataclass(frozen=True, slots=True)
class KindInfo:
    """A supported kind: its apiVersion, resource names as kubectl accepts them, and scope."""

    kind: str
    api_version: str
    plural: str
    short: tuple[str, ...]
    namespaced: bool

    @property
    def qualified(self) -> str:
        """The singular resource and API group as kubectl prints it (`networkpolicy.networking.k8s.io`)."""
        group = self.api_version.rpartition("/")[0]
        return f"{self.kind.lower()}.{group}" if group else self.kind.lower()


KINDS: dict[str, KindInfo] = {
    info.kind: info for info in (
        KindInfo("Namespace", "v1", "namespaces", ("ns",), namespaced=False),
        KindInfo("Pod", "v1", "pods", ("po",), namespaced=True),
        KindInfo("Service", "v1", "services", ("svc",), namespaced=True),
        KindInfo("EndpointSlice", "discovery.k8s.io/v1", "endpointslices", (), namespaced=True),
        KindInfo("NetworkPolicy", "networking.k8s.io/v1", "networkpolicies", ("netpol",), namespaced=True),
        KindInfo("VelvetTracingPolicy", "velvet.io/v1alpha1", "velvettracingpolicies",
                 ("tracingpolicy", "tracingpolicies", "tp"), namespaced=False),
        KindInfo("VelvetTracingPolicyNamespaced", "velvet.io/v1alpha1", "velvettracingpoliciesnamespaced",
                 ("tracingpolicynamespaced", "tracingpoliciesnamespaced", "tpn"), namespaced=True),
    )
}
_DECODERS: dict[str, Callable[..., KubeObject]] = {
    "Namespace": decode_namespace,
    "Pod": decode_pod,
    "Service": decode_service,
    "EndpointSlice": decode_endpoint_slice,
    "NetworkPolicy": decode_network_policy,
    "VelvetTracingPolicy": decode_tracing_policy,
    "VelvetTracingPolicyNamespaced": decode_tracing_policy_namespaced,
}
_TOP_FIELDS = {"EndpointSlice": ("addressType", "endpoints", "ports")}
_KNOWN_TOP = {kind: frozenset(("apiVersion", "kind", "metadata", *_TOP_FIELDS.get(kind, ("spec", "status"))))
              for kind in KINDS}


def resolve_kind(name: str) -> KindInfo:
    """The kind a kubectl resource name means: plural, singular, short name or Kind (any case)."""
    wanted = name.lower().split(".", 1)[0]
    for info in KINDS.values():
        if wanted in (info.plural, info.kind.lower(), *info.short):
            return info
    raise KeyError(f'the server doesn\'t have a resource type "{name}"')


def kind_of(obj: KubeObject) -> KindInfo:
    """The KindInfo of a model object."""
    return KINDS[type(obj).__name__]


def from_dict(doc: object, *, path: str = "<input>", document: int = 1, trusted: bool = False) -> KubeObject:
    """Validate and decode one object; `trusted` also reads server-set fields (uid, status, ...)."""
    return _decode(Node(doc, "", Where(path, document)), trusted=trusted)


def to_dict(obj: KubeObject) -> Json:
    """The object as `kubectl get -o json` prints it."""
    if isinstance(obj, Namespace):
        return encode_namespace(obj)
    if isinstance(obj, Pod):
        return encode_pod(obj)
    if isinstance(obj, Service):
        return encode_service(obj)
    if isinstance(obj, EndpointSlice):
        return encode_endpoint_slice(obj)
    if isinstance(obj, NetworkPolicy):
        return encode_network_policy(obj)
    return encode_tracing_policy(obj)


def parse_documents(text: str, path: str) -> list[KubeObject]:
    """Every object of a YAML (multi-document) or JSON text; `kind: List` items are flattened."""
    return [obj for obj, _ in parse_located(text, path)]


def parse_located(text: str, path: str) -> list[tuple[KubeObject, int]]:
    """parse_documents' objects, each with the 1-based index of the document it came from."""
    try:
        check_text(text)
    except Refused as err:
        raise InvalidManifest(path, err.document, err.field, err.reason) from None
    located: list[tuple[KubeObject, int]] = []
    for index, doc in enumerate(_load_all(text, path), start=1):
        if doc is None:
            continue
        located.extend((obj, index) for obj in _decode_top(Node(doc, "", Where(path, index))))
    return located


def load_manifests(paths: list[Path]) -> list[KubeObject]:
    """Objects from files and directories (their *.yaml, *.yml, *.json in name order), all validated."""
    objects: list[KubeObject] = []
    for path in paths:
        files = [path]
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in MANIFEST_SUFFIXES)
        for file in files:
            objects.extend(parse_documents(read_manifest_file(file), str(file)))
    return objects


def _decode_top(node: Node) -> list[KubeObject]:
    if isinstance(node.value, dict) and node.value.get("kind") == "List":
        fields = node.obj(known=("apiVersion", "kind", "items", "metadata"))
        items = fields.opt("items")
        return [_decode(item, trusted=False) for item in items.items()] if items else []
    return [_decode(node, trusted=False)]


def _decode(node: Node, *, trusted: bool) -> KubeObject:
    if not isinstance(node.value, dict):
        node.fail("a manifest must be an object with apiVersion and kind")
    head = Obj(node, node.value)  # any field, for now: the kind says which are known
    kind_node, version_node = head.req("kind"), head.req("apiVersion")
    kind, version = kind_node.as_str(), version_node.as_str()
    info = KINDS.get(kind)
    if info is None:
        kind_node.fail(f"no matches for kind {quote(kind)} in version {quote(version)}")
    if info.api_version != version:
        version_node.fail(f"no matches for kind {quote(kind)} in version {quote(version)} "
                          f"(use {info.api_version})")
    root = node.obj(known=_KNOWN_TOP[kind])
    return _DECODERS[kind](root, trusted=trusted)


def _load_all(text: str, path: str) -> list[Any]:
    """YAML (or JSON) documents within the guards' bounds; timestamps stay strings, duplicate keys fail."""
    docs: list[Any] = []
    try:
        if path.endswith(".json"):
            check_json(text)
            return [json.loads(text, parse_int=parse_json_int)]
        for doc in yaml.load_all(text, Loader=_StrictLoader):
            docs.append(doc)
    except json.JSONDecodeError as err:
        reason = f"invalid JSON: {err.msg} (column {err.colno})"
        raise InvalidManifest(path, 1, f"line {err.lineno}", reason) from None
    except Refused as err:
        raise InvalidManifest(path, err.document or len(docs) + 1, err.field, err.reason) from None
    except yaml.MarkedYAMLError as err:
        raise InvalidManifest(path, len(docs) + 1, *_yaml_problem(err)) from None
    except yaml.YAMLError as err:
        reason = f"invalid YAML: {one_line(str(err))}"
        raise InvalidManifest(path, len(docs) + 1, "<document>", reason) from None
    return docs


def _yaml_problem(err: yaml.MarkedYAMLError) -> tuple[str, str]:
    """(field, reason) of a YAML error on one line: the line as field, problem, column and context."""
    mark = err.problem_mark or err.context_mark
    problem = one_line(err.problem or err.context or "syntax error")
    context = f" ({one_line(err.context)})" if err.context and err.problem else ""
    if mark is None:
        return "<document>", f"invalid YAML: {problem}{context}"
    return f"line {mark.line + 1}", f"invalid YAML: {problem} (column {mark.column + 1}){context}"


_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when built: ~10x faster


class _StrictLoader(_SafeLoader):  # type: ignore[misc]
    """SafeLoader within the guards' bounds that keeps timestamps as strings (as sigs.k8s.io/yaml does),
    refuses duplicate and non-scalar keys, tags with no JSON value, and bad tagged scalars (`!!int x`)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._strings: dict[str, str] = {}  # equal strings of the text's documents become one object
        self._tags: dict[str, str] = {}  # plain scalar -> its resolved tag (a path resolver would matter)
        self._may_alias = "&" in stream  # no anchor, no alias: the plain builder need not look for one
        self._chars = 0  # the plain builder's tally of a document: scalar characters, quotes and brackets

    def resolve(self, kind: type, value: str, implicit: tuple[bool, bool]) -> str:
        """The tag of a node; a plain scalar's depends on its text alone and is looked up once per text."""
        if kind is not yaml.ScalarNode or not implicit[0] or self.yaml_path_resolvers:
            return super().resolve(kind, value, implicit)  # type: ignore[no-any-return]
        tag = self._tags.get(value)
        if tag is None:
            tag = self._tags[value] = super().resolve(kind, value, implicit)
        return tag

    def construct_document(self, node: yaml.Node) -> Any:
        """The document's value, or the guards' refusal before anything else is said about it.

        A plain document is built at once, counting its depth and size as it goes: without aliases
        these are all the guards measure. Anything else (aliases, merge keys, other tags, a document
        deep or large enough to be refused, an error while building) is measured by the guards first,
        as every document was, and then left to PyYAML's constructor or its error.
        """
        self._chars = 0
        try:
            value = self._build_plain(node, 0, set() if self._may_alias else None)
        except _NotPlain:
            check_yaml_document(node)  # before anything is built: alias bombs never expand
            return super().construct_document(node)
        except Exception:
            check_yaml_document(node)  # the guards' refusal comes first, as when they ran first
            raise
        if 4 * self._chars > MAX_DOCUMENT_BYTES:  # a character is at most 4 bytes: maybe too long
            check_yaml_document(node)
        return value

    def _build_plain(self, node: yaml.Node, depth: int, seen: set[int] | None) -> Any:
        """The value of a document of only maps, lists and JSON scalars, by the rules below, without the
        base class's generic machinery (about 3x faster); raises _NotPlain at anything else and where
        the guards may refuse (nesting past MAX_DEPTH). `seen` holds the nodes built when the text may
        have aliases."""
        if seen is not None:
            if id(node) in seen:
                raise _NotPlain  # an alias: the base class keeps the shared value shared
            seen.add(id(node))
        kind, tag = type(node), node.tag
        if isinstance(node, yaml.ScalarNode):
            self._chars += len(node.value) + 2
            if tag == _STR_TAG:
                return self._strings.setdefault(node.value, node.value)
            if tag == _NULL_TAG:
                return None
            if tag in _SCALAR_CONSTRUCTORS:
                return self.construct_checked_scalar(node)
            raise _NotPlain
        if depth == MAX_DEPTH:
            raise _NotPlain  # nested too deep: the guards say where
        self._chars += 2
        depth += 1
        if kind is yaml.SequenceNode and tag == _SEQ_TAG:
            return [self._build_plain(child, depth, seen) for child in node.value]
        if kind is not yaml.MappingNode or tag != _MAP_TAG:
            raise _NotPlain
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if type(key_node) is not yaml.ScalarNode or key_node.tag == _MERGE_TAG:
                raise _NotPlain
            key = self._build_plain(key_node, depth, seen)
            if key in mapping:
                raise Refused(_line(key_node), f"duplicate field {quote(key)}")
            mapping[key] = self._build_plain(value_node, depth, seen)
        return mapping

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):  # `!!map [a]`: the base class says so with the line
            return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):  # `? [a, b]`: Python cannot even hash it
                kind = "a list" if isinstance(key_node, yaml.SequenceNode) else "an object"
                raise Refused(_line(key_node), f"a field name must be a string, not {kind}")
            if key_node.tag == _MERGE_TAG:  # `<<: *defaults` is a merge, not a field
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise Refused(_line(key_node), f"duplicate field {quote(key)}")
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping

    def construct_checked_scalar(self, node: yaml.ScalarNode) -> Any:
        """An int, float or bool scalar; a value its constructor cannot read is a YAML error with a line."""
        if node.tag == _INT_TAG and len(node.value) > MAX_INT_CHARS:
            raise Refused(_line(node), f"Invalid value: an integer of {len(node.value)} characters does not "
                          "fit in 64 bits")
        try:
            return _SCALAR_CONSTRUCTORS[node.tag](self, node)
        except (ValueError, KeyError) as err:
            problem = f"invalid {node.tag.rpartition(':')[2]} {quote(node.value)}"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from err

    def construct_unsupported(self, node: yaml.Node) -> Any:
        """A tag JSON has no value for (!!timestamp, !!binary, !!set, !!omap, !!pairs)."""
        raise Refused(_line(node), f"unsupported YAML tag {quote(node.tag.replace(_YAML, '!!'))}")


class _NotPlain(Exception):
    """A document the plain builder leaves to PyYAML's constructor."""


def _line(node: yaml.Node) -> str:
    return f"line {node.start_mark.line + 1}"


_YAML = "tag:yaml.org,2002:"
_MERGE_TAG, _INT_TAG = _YAML + "merge", _YAML + "int"
_STR_TAG, _NULL_TAG, _SEQ_TAG, _MAP_TAG = (_YAML + name for name in ("str", "null", "seq", "map"))
_SCALAR_CONSTRUCTORS = {_YAML + name: yaml.SafeLoader.yaml_constructors[_YAML + name]
                        for name in ("int", "float", "bool")}
for _tag in _SCALAR_CONSTRUCTORS:
    _StrictLoader.add_constructor(_tag, _StrictLoader.construct_checked_scalar)
for _name in ("timestamp", "binary", "set", "omap", "pairs"):
    _StrictLoader.add_constructor(_YAML + _name, _StrictLoader.construct_unsupported)
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _YAML + "timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
