"""Typed, path-tracking access to one decoded manifest document, and the API server's value rules.

Every accessor raises `InvalidManifest(path, document, field, reason)` naming the field path the way
the API server does (`spec.ports[0].port`), so a decoder never formats an error itself.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import NoReturn

from velvet.errors import InvalidManifest

DEFAULT_NODE_PORT_RANGE = (30000, 32767)
PROTOCOLS = ("TCP", "UDP", "SCTP")

# Matched with fullmatch: `$` would also accept a value ending in "\n".
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_IANA_SVC_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
# kube-apiserver's env var name rule since RelaxedEnvironmentVariableValidation (beta 1.32, GA 1.34).
_ENV_VAR_NAME = re.compile(r"[\x20-\x3c\x3e-\x7e]+")
# NUL ends a C string (argv, paths, names) and a lone surrogate cannot be encoded as UTF-8.
_UNSAFE_CHAR = re.compile("[\x00\ud800-\udfff]")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")
_DECIMAL = re.compile(r"[0-9]{1,20}")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # decimal 0-255, no leading zero
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1
# metadata.annotations: keys and values together (apimachinery's TotalAnnotationSizeLimitB).
MAX_ANNOTATIONS_BYTES = 256 * 1024
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_QUOTED_CHARS = 100


def one_line(text: str) -> str:
    """`text` with control, line-separator and surrogate characters escaped: a message stays one line."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def quote(value: object) -> str:
    """A user value for an error message: double-quoted, escaped to one line, long values shortened.

    Lists and objects are named, never printed: printing an aliased structure is how an alias bomb
    explodes.
    """
    if isinstance(value, str):
        text = value
    elif value is None or isinstance(value, bool | int | float):
        text = json.dumps(value)
    else:
        return f"<{_type_name(value)}>"
    if len(text) > _QUOTED_CHARS:
        text = f"{text[:_QUOTED_CHARS]}... ({len(text)} characters)"
    return '"' + one_line(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


@dataclass(frozen=True, slots=True)
class Where:
    """The file and 1-based document index a node came from."""

    path: str
    document: int


class Node:
    """A value at `path` in a document; accessors check its type and fail with the path.

    A child keeps its parent and key, not its path: the path is spelled out only when asked (an error
    names it), so decoding a valid document builds no path strings.
    """

    __slots__ = ("value", "where", "_parent", "_key", "_path")

    def __init__(self, value: object, path: str, where: Where, parent: Node | None = None,
                 key: str | int = "") -> None:
        self.value, self.where, self._path = value, where, path
        self._parent, self._key = parent, key

    @property
    def path(self) -> str:
        """The field path as the API server names it (`spec.ports[0].port`; "" for the document)."""
        if self._parent is None:
            return self._path
        parent = self._parent.path
        if isinstance(self._key, int):
            return f"{parent}[{self._key}]"
        return f"{parent}.{self._key}" if parent else self._key

    def fail(self, reason: str) -> NoReturn:
        """Raise InvalidManifest for this node."""
        path = self.path
        field = one_line(path) if path else "<document>"
        raise InvalidManifest(self.where.path, self.where.document, field, one_line(reason))

    def at(self, key: str | int, value: object) -> Node:
        """The child node `key` (a field name or a list index) holding `value`."""
        return Node(value, "", self.where, self, key)

    def obj(self, known: Iterable[str], ignored: Iterable[str] = ()) -> Obj:
        """This node as a mapping whose keys must all be `known` or `ignored` (strict decoding)."""
        if not isinstance(self.value, dict):
            self.fail(f"must be an object, not {_type_name(self.value)}")
        known_set, ignored_set = _names(known), _names(ignored) if ignored else _NO_NAMES
        if known_set.issuperset(self.value) and ignored_set.isdisjoint(self.value):  # the common case
            return Obj(self, self.value)
        fields: dict[str, object] = {}
        for key, value in self.value.items():
            if not isinstance(key, str):
                self.fail(f"field names must be strings, not {_type_name(key)}")
            if key in ignored_set:
                continue
            if key not in known_set:
                self.at(key, value).fail(f"unknown field {quote(key)}")
            fields[key] = value
        return Obj(self, fields)

    def items(self) -> list[Node]:
        """This node as a list of child nodes."""
        if not isinstance(self.value, list):
            self.fail(f"must be a list, not {_type_name(self.value)}")
        return [self.at(i, v) for i, v in enumerate(self.value)]

    def as_str(self) -> str:
        """This node as a string; NUL bytes and lone surrogates are refused wherever they are."""
        if not isinstance(self.value, str):
            self.fail(f"must be a string, not {_type_name(self.value)}")
        if self.value.isascii() and "\x00" not in self.value:  # the common case, without the regex
            return self.value
        unsafe = _UNSAFE_CHAR.search(self.value)
        if unsafe is not None:
            what = "a NUL byte" if unsafe.group() == "\x00" else "a lone surrogate (not Unicode text)"
            self.fail(f"Invalid value: must not contain {what} (at character {unsafe.start()})")
        return self.value

    def as_int(self) -> int:
        """This node as a 64-bit integer (booleans, floats and wider numbers refused, as in Go)."""
        value = self._integer()
        if not INT64_MIN <= value <= INT64_MAX:
            self.fail(f"Invalid value: must fit in a 64-bit integer ({INT64_MIN} to {INT64_MAX})")
        return value

    def _integer(self) -> int:
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            self.fail(f"must be an integer, not {_type_name(self.value)}")
        return self.value

    def as_bool(self) -> bool:
        """This node as a boolean."""
        if not isinstance(self.value, bool):
            self.fail(f"must be a boolean, not {_type_name(self.value)}")
        return self.value

    def as_str_list(self) -> tuple[str, ...]:
        """This node as a list of strings."""
        return tuple(item.as_str() for item in self.items())

    def as_str_map(self) -> dict[str, str]:
        """This node as a map of string to string."""
        fields = self.obj(known=_any_key(self.value)).fields
        return {key: node.as_str() for key, node in fields.items()}

    def one_of(self, allowed: Iterable[str]) -> str:
        """This node as a string that must be one of `allowed`."""
        value, options = self.as_str(), tuple(allowed)
        if value not in options:
            supported = ", ".join(quote(o) for o in options)
            self.fail(f"Unsupported value: {quote(value)}: supported values: {supported}")
        return value

    def int_in(self, low: int, high: int) -> int:
        """This node as an integer in [low, high] (which may reach past int64, as uint64 fields do)."""
        value = self._integer()
        if not low <= value <= high:
            self.fail(f"Invalid value: {quote(value)[1:-1]}: must be between {low} and {high}, inclusive")
        return value


class Obj:
    """A checked mapping node: optional and required field access by name (child nodes made on access)."""

    __slots__ = ("node", "_values")

    def __init__(self, node: Node, values: dict[str, object]) -> None:
        self.node, self._values = node, values

    @property
    def fields(self) -> dict[str, Node]:
        """Every field that is not null, as a node."""
        return {key: self.node.at(key, value) for key, value in self._values.items() if value is not None}

    def opt(self, key: str) -> Node | None:
        """The field `key`, or None when absent or null."""
        value = self._values.get(key)
        return None if value is None else Node(value, "", self.node.where, self.node, key)

    def req(self, key: str) -> Node:
        """The field `key`, failing with "Required value" when absent or null."""
        value = self._values.get(key)
        if value is None:
            self.node.at(key, None).fail("Required value")
        return self.node.at(key, value)


_NAME_SETS: dict[tuple[str, ...], frozenset[str]] = {}
_NO_NAMES: frozenset[str] = frozenset()


def _names(names: Iterable[str]) -> frozenset[str]:
    """`names` as a set; the decoders' constant tuples are converted once."""
    if isinstance(names, frozenset):
        return names
    if not isinstance(names, tuple):
        return frozenset(names)
    found = _NAME_SETS.get(names)
    if found is None:
        found = _NAME_SETS[names] = frozenset(names)
    return found


def _any_key(value: object) -> Iterable[str]:
    return [k for k in value if isinstance(k, str)] if isinstance(value, dict) else ()


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object"}
    return names.get(type(value), type(value).__name__)


def check_dns1123_label(node: Node) -> str:
    """A lowercase RFC 1123 label (namespace, container and port names)."""
    value = node.as_str()
    if len(value) > 63 or not _DNS1123_LABEL.fullmatch(value):
        node.fail(f'Invalid value: {quote(value)}: a lowercase RFC 1123 label must consist of lower case '
                  "alphanumeric characters or '-', start and end with an alphanumeric character, "
                  "and be at most 63 characters")
    return value


def check_dns1035_label(node: Node) -> str:
    """A lowercase RFC 1035 label (service names)."""
    value = node.as_str()
    if len(value) > 63 or not _DNS1035_LABEL.fullmatch(value):
        node.fail(f'Invalid value: {quote(value)}: a DNS-1035 label must consist of lower case alphanumeric '
                  "characters or '-', start with an alphabetic character, end with an alphanumeric "
                  "character, and be at most 63 characters")
    return value


def check_dns1123_subdomain(node: Node) -> str:
    """A lowercase RFC 1123 subdomain (pod, policy and slice names)."""
    value = node.as_str()
    if len(value) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(value):
        node.fail(f'Invalid value: {quote(value)}: a lowercase RFC 1123 subdomain must consist of lower case '
                  "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
                  "character")
    return value


def check_port_name(node: Node) -> str:
    """An IANA service name (container port names and named target ports)."""
    value = node.as_str()
    if (len(value) > 15 or not _IANA_SVC_NAME.fullmatch(value) or "--" in value
            or not any(c.isalpha() for c in value)):
        node.fail(f"Invalid value: {quote(value)}: must be no more than 15 characters, contain only lower "
                  "case alphanumeric characters or '-', contain at least one letter, not start or end with "
                  "'-' and have no adjacent '-'")
    return value


def check_port_number(node: Node) -> int:
    """A port number 1-65535."""
    return node.int_in(1, 65535)


def check_int_or_port_name(node: Node) -> int | str:
    """A port given as a number (1-65535) or as an IANA service name."""
    if isinstance(node.value, str):
        return check_port_name(node)
    return check_port_number(node)


def check_resource_version(node: Node) -> int:
    """A resourceVersion as the store writes it: a decimal string of an unsigned 64-bit number."""
    value = node.as_str()
    if not _DECIMAL.fullmatch(value) or int(value) > UINT64_MAX:
        node.fail(f"Invalid value: {quote(value)}: must be a decimal number below 2^64")
    return int(value)


def check_rfc3339(node: Node) -> str:
    """A timestamp as metav1.Time reads it: RFC 3339 with a time zone (2024-01-01T00:00:00Z)."""
    value = node.as_str()
    valid = _RFC3339.fullmatch(value) is not None
    if valid:
        try:
            datetime.fromisoformat(value)
        except ValueError:
            valid = False
    if not valid:
        node.fail(f"Invalid value: {quote(value)}: must be an RFC 3339 time (e.g. 2024-01-01T00:00:00Z)")
    return value


def is_ipv4(text: str) -> bool:
    """Whether `text` is an IPv4 address in canonical dotted-decimal form (no leading zeros)."""
    return _IPV4.fullmatch(text) is not None


def check_ipv4(node: Node) -> str:
    """An IPv4 address in canonical dotted form."""
    value = node.as_str()
    if _IPV4.fullmatch(value):  # what IPv4Address reads, without its cost
        return value
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        node.fail(f'Invalid value: {quote(value)}: must be a valid IPv4 address')
    return value


def check_cidr(node: Node) -> str:
    """An IPv4 or IPv6 CIDR with no host bits set."""
    value = node.as_str()
    if "/" not in value:
        node.fail(f'Invalid value: {quote(value)}: must be a valid CIDR (e.g. 10.0.0.0/8)')
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as err:
        node.fail(f'Invalid value: {quote(value)}: must be a valid CIDR: {err}')
    return value


def check_labels(node: Node) -> dict[str, str]:
    """A label map: qualified-name keys and label values."""
    labels = node.as_str_map()
    for key, value in labels.items():
        check_qualified_name(node, key)
        check_label_value(node, value, f" (label {key})")
    return labels


def check_label_value(node: Node, value: str, what: str = "") -> str:
    """A label value (labels, selector values): at most 63 characters of [-A-Za-z0-9_.], alphanumeric ends."""
    if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
        node.fail(f'Invalid value: {quote(value)}{what}: a valid label value must be 63 characters '
                  "or less and must be empty or begin and end with an alphanumeric character "
                  "([a-z0-9A-Z]) with dashes, underscores, dots and alphanumerics between")
    return value


def check_annotations(node: Node) -> dict[str, str]:
    """An annotation map: qualified-name keys, any string values, at most 256 KiB of keys and values."""
    annotations = node.as_str_map()
    for key in annotations:
        check_qualified_name(node, key)
    total = sum(len(key.encode()) + len(value.encode()) for key, value in annotations.items())
    if total > MAX_ANNOTATIONS_BYTES:
        node.fail(f"Too long: may not be more than {MAX_ANNOTATIONS_BYTES} bytes (keys and values together; "
                  f"these are {total})")
    return annotations


def check_env_var_name(node: Node) -> str:
    """An environment variable name as kube-apiserver takes it: printable ASCII except '='."""
    value = node.as_str()
    if not _ENV_VAR_NAME.fullmatch(value):
        node.fail(f"Invalid value: {quote(value)}: a valid environment variable name must consist only of "
                  "printable ASCII characters other than '='")
    return value


def check_qualified_name(node: Node, key: str) -> None:
    """A label or annotation key: optional DNS subdomain prefix, '/', and a name of at most 63 chars."""
    prefix, _, name = key.rpartition("/")
    prefix_ok = not prefix or (len(prefix) <= 253 and _DNS1123_SUBDOMAIN.fullmatch(prefix) is not None)
    if not prefix_ok or len(name) > 63 or not _QUALIFIED_NAME.fullmatch(name):
        node.fail(f'Invalid value: {quote(key)}: name part must consist of alphanumeric characters, "-", "_" '
                  'or ".", must start and end with an alphanumeric character and be at most 63 '
                  "characters, with an optional DNS subdomain prefix and '/'")
