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
from velvet.model import EndpointSlice, KubeObject, Namespace, Pod, Service
from velvet.model.decode_meta import decode_namespace
from velvet.model.decode_net import decode_endpoint_slice, decode_network_policy
from velvet.model.decode_pod import decode_pod
from velvet.model.decode_service import decode_service
from velvet.model.encode import (
    Json,
    encode_endpoint_slice,
    encode_namespace,
    encode_network_policy,
    encode_pod,
    encode_service,
)
from velvet.model.validate import Node, Where

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
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
    )
}
_DECODERS: dict[str, Callable[..., KubeObject]] = {
    "Namespace": decode_namespace,
    "Pod": decode_pod,
    "Service": decode_service,
    "EndpointSlice": decode_endpoint_slice,
    "NetworkPolicy": decode_network_policy,
}
_TOP_FIELDS = {"EndpointSlice": ("addressType", "endpoints", "ports")}


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
    return encode_network_policy(obj)


def parse_documents(text: str, path: str) -> list[KubeObject]:
    """Every object of a YAML (multi-document) or JSON text; `kind: List` items are flattened."""
    return [obj for obj, _ in parse_located(text, path)]


def parse_located(text: str, path: str) -> list[tuple[KubeObject, int]]:
    """parse_documents' objects, each with the 1-based index of the document it came from."""
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
            try:
                text = file.read_text()
            except OSError as err:
                raise InvalidManifest(str(file), 0, "<file>", err.strerror or str(err)) from err
            objects.extend(parse_documents(text, str(file)))
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
    head = node.obj(known=node.value.keys())
    kind_node, version_node = head.req("kind"), head.req("apiVersion")
    kind, version = kind_node.as_str(), version_node.as_str()
    info = KINDS.get(kind)
    if info is None:
        kind_node.fail(f'no matches for kind "{kind}" in version "{version}"')
    if info.api_version != version:
        version_node.fail(f'no matches for kind "{kind}" in version "{version}" (use {info.api_version})')
    known = ("apiVersion", "kind", "metadata", *_TOP_FIELDS.get(kind, ("spec", "status")))
    root = node.obj(known=known)
    return _DECODERS[kind](root, trusted=trusted)


def _load_all(text: str, path: str) -> list[Any]:
    """Parse YAML (or JSON) documents; timestamps stay strings and duplicate keys are errors."""
    docs: list[Any] = []
    try:
        if path.endswith(".json"):
            return [json.loads(text)]
        for doc in yaml.load_all(text, Loader=_StrictLoader):
            docs.append(doc)
    except json.JSONDecodeError as err:
        raise InvalidManifest(path, 1, "<document>", f"invalid JSON: {err}") from err
    except _DuplicateKey as err:
        raise InvalidManifest(path, len(docs) + 1, err.field, f'duplicate field "{err.key}"') from err
    except yaml.YAMLError as err:
        raise InvalidManifest(path, len(docs) + 1, "<document>", f"invalid YAML: {err}") from err
    return docs


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int) -> None:
        super().__init__(key)
        self.key = key
        self.field = f"line {line}"


_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when built: ~10x faster


class _StrictLoader(_SafeLoader):  # type: ignore[misc]
    """SafeLoader that keeps timestamps as strings (as sigs.k8s.io/yaml does) and refuses duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(str(key), key_node.start_mark.line + 1)
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
