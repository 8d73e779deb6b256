"""Hubble-style flow filters: CLI arguments -> a serialisable spec -> a predicate over `Flow`.

Semantics follow `hubble observe`: values of one flag are ORed, different flags are ANDed, a flag
without a direction (`--pod`) matches either side, `--not` sends the next flag to the denylist.
A flow is shown when it matches any allowlist filter (or there is none) and no denylist filter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from ipaddress import IPv4Address, IPv4Network, ip_network
from typing import Any

from velvet.observe.codes import (
    EVENT_TYPE_ALIASES,
    OBS_POINTS,
    PROTOCOL_NUMBERS,
    RESERVED_IDENTITY_NAMES,
    Verdict,
    verdict_name,
)
from velvet.observe.enrich import NamedRef
from velvet.observe.flow import Endpoint, Flow

Predicate = Callable[[Flow], bool]


@dataclass(frozen=True)
class FilterArg:
    """One filter flag as given on the command line, e.g. ("from-pod", "default/web", negated)."""

    name: str
    value: str
    negated: bool = False


@dataclass(frozen=True)
class FlowFilter:
    """One Hubble `FlowFilter`: every non-empty field must match; values within a field are ORed."""

    source_ip: tuple[str, ...] = ()
    destination_ip: tuple[str, ...] = ()
    source_pod: tuple[str, ...] = ()
    destination_pod: tuple[str, ...] = ()
    source_namespace: tuple[str, ...] = ()
    destination_namespace: tuple[str, ...] = ()
    source_label: tuple[str, ...] = ()
    destination_label: tuple[str, ...] = ()
    source_identity: tuple[str, ...] = ()
    destination_identity: tuple[str, ...] = ()
    source_port: tuple[str, ...] = ()
    destination_port: tuple[str, ...] = ()
    source_service: tuple[str, ...] = ()
    destination_service: tuple[str, ...] = ()
    protocol: tuple[str, ...] = ()
    verdict: tuple[str, ...] = ()
    event_type: tuple[str, ...] = ()
    node_name: tuple[str, ...] = ()

    def to_json(self) -> dict[str, list[str]]:
        """Non-empty fields only."""
        return {f.name: list(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FlowFilter:
        """Inverse of `to_json`; unknown fields are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown flow filter fields: {sorted(unknown)}")
        return cls(**{k: tuple(str(v) for v in values) for k, values in data.items()})


@dataclass(frozen=True)
class FilterSpec:
    """Allowlist and denylist of `FlowFilter`s (Hubble's whitelist / blacklist)."""

    allow: tuple[FlowFilter, ...] = ()
    deny: tuple[FlowFilter, ...] = ()

    def to_json(self) -> dict[str, list[dict[str, list[str]]]]:
        """{"allowlist": [...], "denylist": [...]}."""
        return {"allowlist": [f.to_json() for f in self.allow], "denylist": [f.to_json() for f in self.deny]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FilterSpec:
        """Inverse of `to_json`; each filter is validated as `build_spec` would."""
        spec = cls(allow=tuple(FlowFilter.from_json(f) for f in data.get("allowlist", ())),
                   deny=tuple(FlowFilter.from_json(f) for f in data.get("denylist", ())))
        compile_spec(spec)
        return spec


# flag -> (source field, destination field); a flag names one side or, like "pod", either.
_EITHER = {name: (f"source_{attr}", f"destination_{attr}") for name, attr in (
    ("ip", "ip"), ("pod", "pod"), ("namespace", "namespace"), ("label", "label"),
    ("identity", "identity"), ("port", "port"), ("service", "service"))}
_BOTH = {**{f"from-{name}": src for name, (src, _) in _EITHER.items()},
         **{f"to-{name}": dst for name, (_, dst) in _EITHER.items()},
         "protocol": "protocol", "verdict": "verdict", "type": "event_type", "node-name": "node_name"}

FILTER_FLAGS: tuple[str, ...] = (*_EITHER, *_BOTH)
"""Every filter flag `velvet observe` accepts (without the leading dashes)."""


def _normalise(attr: str, value: str) -> str:
    """Validate one value for a filter field and put it in canonical form."""
    kind = attr.removeprefix("source_").removeprefix("destination_")
    if kind == "ip":
        return str(ip_network(value, strict=False)) if "/" in value else str(IPv4Address(value))
    if kind == "identity":
        names = {v: k for k, v in RESERVED_IDENTITY_NAMES.items()}
        return str(names[value] if value in names else int(value))
    if kind == "port":
        if not value.isdigit() or int(value) > 65535:
            raise ValueError(f"invalid port {value!r}")
        return str(int(value))
    if kind == "protocol":
        if value.lower() not in PROTOCOL_NUMBERS:
            raise ValueError(f"unknown protocol {value!r} (one of {', '.join(PROTOCOL_NUMBERS)})")
        return value.lower()
    if kind == "verdict":
        if value.upper() not in Verdict.__members__:
            raise ValueError(f"unknown verdict {value!r} (one of {', '.join(Verdict.__members__)})")
        return value.upper()
    if kind == "event_type":
        name, _, sub = value.lower().partition(":")
        if name not in EVENT_TYPE_ALIASES:
            raise ValueError(f"unknown event type {value!r} (one of {', '.join(EVENT_TYPE_ALIASES)})")
        if sub and sub not in {short for _, short, _ in OBS_POINTS.values()}:
            raise ValueError(f"unknown observation point {sub!r} in {value!r}")
        return value.lower()
    if kind == "node_name" and not _NODE_NAME.fullmatch(value):
        raise ValueError(f"invalid node name pattern {value!r} (a node name, * and ? as wildcards)")
    if kind == "label":
        _parse_selector(value)
    elif not value:
        raise ValueError(f"empty value for {attr}")
    return value


_NODE_NAME = re.compile(r"[a-z0-9*?]([-a-z0-9.*?/]*[a-z0-9*?])?")


class _Sides:
    """Hubble's filter tracker: the 'left' (source-side) and 'right' (destination-side) filters."""

    def __init__(self) -> None:
        self.left: dict[str, list[str]] = {}
        self.right: dict[str, list[str]] = {}
        self.used = False

    def add(self, name: str, value: str) -> None:
        self.used = True
        if name in _EITHER:
            src, dst = _EITHER[name]
            self.left.setdefault(src, []).append(_normalise(src, value))
            self.right.setdefault(dst, []).append(_normalise(dst, value))
        elif name in _BOTH:
            attr = _BOTH[name]
            for side in (self.left, self.right):
                side.setdefault(attr, []).append(_normalise(attr, value))
        else:
            raise ValueError(f"unknown filter --{name}")

    def filters(self) -> tuple[FlowFilter, ...]:
        if not self.used:
            return ()
        left = FlowFilter(**{k: tuple(v) for k, v in self.left.items()})
        right = FlowFilter(**{k: tuple(v) for k, v in self.right.items()})
        return (left,) if left == right else (left, right)


def build_spec(args: Iterable[FilterArg]) -> FilterSpec:
    """The spec `hubble observe` would build from these flags, in command-line order."""
    allow, deny = _Sides(), _Sides()
    for arg in args:
        (deny if arg.negated else allow).add(arg.name, arg.value)
    return FilterSpec(allow=allow.filters(), deny=deny.filters())


# --- matching -------------------------------------------------------------------------------------

_Term = tuple[str | None, str, str, frozenset[str]]  # (label source or None for any, key, op, values)
_TERM = re.compile(r"^\s*(!?)\s*([^\s=!,()]+)\s*"
                   r"(?:(==|=|!=)\s*([^\s=!,()]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$")


def _split_key(key: str) -> tuple[str | None, str]:
    source, sep, rest = key.partition(":")
    return (source, rest) if sep else (None, key)


def _parse_selector(text: str) -> tuple[_Term, ...]:
    """A Kubernetes label selector ("app=web,tier!=db,env in (a,b),!debug"), keys optionally "k8s:"."""
    parts = re.split(r",(?![^()]*\))", text)
    terms: list[_Term] = []
    for part in parts:
        m = _TERM.match(part)
        if not m or (m.group(1) and (m.group(3) or m.group(5))):
            raise ValueError(f"invalid label selector {text!r}")
        neg, key, eq_op, eq_val, set_op, set_vals = m.groups()
        source, name = _split_key(key)
        if eq_op:
            op, values = ("!=" if eq_op == "!=" else "="), frozenset({eq_val})
        elif set_op:
            op, values = set_op, frozenset(v.strip() for v in set_vals.split(","))
        else:
            op, values = ("!exists" if neg else "exists"), frozenset()
        terms.append((source, name, op, values))
    return tuple(terms)


def _label_values(labels: tuple[str, ...], source: str | None, key: str) -> list[str]:
    out = []
    for label in labels:
        lkey, _, value = label.partition("=")
        lsource, lname = _split_key(lkey)
        if lname == key and (source is None or source == lsource):
            out.append(value)
    return out


def _selector_matches(terms: tuple[_Term, ...], labels: tuple[str, ...]) -> bool:
    for source, key, op, values in terms:
        present = _label_values(labels, source, key)
        ok = {
            "=": any(v in values for v in present),
            "in": any(v in values for v in present),
            "!=": not any(v in values for v in present),
            "notin": not any(v in values for v in present),
            "exists": bool(present),
            "!exists": not present,
        }[op]
        if not ok:
            return False
    return True


def _ip_check(values: tuple[str, ...], side: Callable[[Flow], str]) -> Predicate:
    exact = {v for v in values if "/" not in v}
    nets = [ip_network(v) for v in values if "/" in v]

    def check(flow: Flow) -> bool:
        ip = side(flow)
        if ip in exact:
            return True
        if not nets or not ip:
            return False
        addr = IPv4Address(ip)
        return any(addr in n for n in nets if isinstance(n, IPv4Network))
    return check


def _pod_check(values: tuple[str, ...], side: Callable[[Flow], Endpoint]) -> Predicate:
    wanted = [(ns, pod) if sep else (None, v) for v in values for ns, sep, pod in [v.partition("/")]]

    def check(flow: Flow) -> bool:
        ep = side(flow)
        return any((ns is None or ep.namespace == ns) and ep.pod_name.startswith(prefix)
                   for ns, prefix in wanted)
    return check


def _service_check(values: tuple[str, ...], side: Callable[[Flow], NamedRef | None]) -> Predicate:
    wanted = [(ns, name) if sep else (None, v) for v in values for ns, sep, name in [v.partition("/")]]

    def check(flow: Flow) -> bool:
        svc = side(flow)
        return svc is not None and any((ns is None or svc.namespace == ns) and svc.name == name
                                       for ns, name in wanted)
    return check


def _type_check(values: tuple[str, ...]) -> Predicate:
    wanted = [(EVENT_TYPE_ALIASES[name], sub) for v in values for name, _, sub in [v.partition(":")]]

    def check(flow: Flow) -> bool:
        return any(flow.type == typ and (not sub or OBS_POINTS.get(flow.obs_point, ("", "", 0))[1] == sub)
                   for typ, sub in wanted)
    return check


def _side_checks(f: FlowFilter, prefix: str) -> list[Predicate]:
    def ep(flow: Flow) -> Endpoint:
        return flow.source if prefix == "source" else flow.destination

    def ip(flow: Flow) -> str:
        return flow.src_ip if prefix == "source" else flow.dst_ip

    def port(flow: Flow) -> int:
        return flow.src_port if prefix == "source" else flow.dst_port

    def svc(flow: Flow) -> NamedRef | None:
        return flow.source_service if prefix == "source" else flow.destination_service

    checks: list[Predicate] = []
    if values := getattr(f, f"{prefix}_ip"):
        checks.append(_ip_check(values, ip))
    if values := getattr(f, f"{prefix}_pod"):
        checks.append(_pod_check(values, ep))
    if values := getattr(f, f"{prefix}_namespace"):
        namespaces = frozenset(values)
        checks.append(lambda flow: ep(flow).namespace in namespaces)
    if values := getattr(f, f"{prefix}_label"):
        selectors = [_parse_selector(v) for v in values]
        checks.append(lambda flow: any(_selector_matches(s, ep(flow).labels) for s in selectors))
    if values := getattr(f, f"{prefix}_identity"):
        identities = frozenset(int(v) for v in values)
        checks.append(lambda flow: ep(flow).identity in identities)
    if values := getattr(f, f"{prefix}_port"):
        ports = frozenset(int(v) for v in values)
        checks.append(lambda flow: port(flow) in ports)
    if values := getattr(f, f"{prefix}_service"):
        checks.append(_service_check(values, svc))
    return checks


def compile_filter(f: FlowFilter) -> Predicate:
    """A predicate that is true when every field of `f` matches."""
    f = FlowFilter(**{a.name: tuple(_normalise(a.name, v) for v in getattr(f, a.name)) for a in fields(f)})
    checks = _side_checks(f, "source") + _side_checks(f, "destination")
    if f.protocol:
        protos = frozenset(PROTOCOL_NUMBERS[p] for p in f.protocol)
        checks.append(lambda flow: flow.proto in protos)
    if f.verdict:
        verdicts = frozenset(f.verdict)
        checks.append(lambda flow: verdict_name(flow.verdict) in verdicts)
    if f.event_type:
        checks.append(_type_check(f.event_type))
    if f.node_name:
        patterns = f.node_name
        checks.append(lambda flow: any(fnmatchcase(flow.node_name, p) for p in patterns))
    return lambda flow: all(check(flow) for check in checks)


def compile_spec(spec: FilterSpec) -> Predicate:
    """A predicate for the whole spec: any allowlist filter (if any) and no denylist filter."""
    allow = [compile_filter(f) for f in spec.allow]
    deny = [compile_filter(f) for f in spec.deny]

    def matches(flow: Flow) -> bool:
        if allow and not any(p(flow) for p in allow):
            return False
        return not any(p(flow) for p in deny)
    return matches


# --- query ----------------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_FRACTION = re.compile(r"\.(\d+)")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNIT_NS = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9}


def parse_time(text: str, now_ns: int) -> int:
    """Unix ns of `--since/--until`: a duration ago ("90s", "1h30m") or an RFC 3339 / ISO time."""
    if text and _DURATION.sub("", text) == "":
        return now_ns - int(sum(float(n) * _UNIT_NS[u] for n, u in _DURATION.findall(text)))
    match = _FRACTION.search(text)
    digits = match.group(1) if match else ""
    try:
        when = datetime.fromisoformat(text[:match.start()] + text[match.end():] if match else text)
    except ValueError:
        raise ValueError(f"invalid time {text!r}: use a duration (5m, 1h30m) or RFC 3339") from None
    if when.tzinfo is None:
        when = when.astimezone()
    # integer arithmetic: a float of Unix seconds cannot hold nanoseconds (or even microseconds) exactly
    since_epoch = when.astimezone(UTC) - _EPOCH
    seconds = since_epoch.days * 86_400 + since_epoch.seconds
    return seconds * 10**9 + int((digits + "0" * 9)[:9])


@dataclass(frozen=True)
class FlowQuery:
    """What `velvet observe` asks the agent for; travels as query parameters."""

    spec: FilterSpec = field(default_factory=FilterSpec)
    last: int | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    from_process: tuple[str, ...] = ()
    """The process that opened the connection sends the flow: binary (* ? patterns), pid or exec_id."""
    to_process: tuple[str, ...] = ()
    """The process that opened the connection receives the flow (the replies)."""

    def to_params(self) -> dict[str, str]:
        """Query parameters for `/v1/query/flows` and `/v1/stream/flows`."""
        params = {"filter": json.dumps(self.spec.to_json(), separators=(",", ":"))}
        for name, value in (("last", self.last), ("since", self.since_ns), ("until", self.until_ns)):
            if value is not None:
                params[name] = str(value)
        for name, values in (("from_process", self.from_process), ("to_process", self.to_process)):
            if values:
                params[name] = json.dumps(list(values))
        return params

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> FlowQuery:
        """Inverse of `to_params`; raises ValueError on malformed input."""
        raw = params.get("filter")
        spec = FilterSpec.from_json(json.loads(raw)) if raw else FilterSpec()

        def number(name: str) -> int | None:
            value = params.get(name)
            return int(value) if value not in (None, "") else None
        def processes(name: str) -> tuple[str, ...]:
            raw_values = json.loads(params.get(name) or "[]")
            if not isinstance(raw_values, list) or not all(isinstance(v, str) for v in raw_values):
                raise ValueError(f"{name} must be a JSON list of strings")
            return tuple(raw_values)
        return cls(spec=spec, last=number("last"), since_ns=number("since"), until_ns=number("until"),
                   from_process=processes("from_process"), to_process=processes("to_process"))
