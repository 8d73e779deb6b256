"""Read an upstream NetworkPolicy case file (the 9-pod model, cases, steps, expected matrices) into data.

The format is the one of /work/shared/conformance/netpol_cases.yaml: `model` (namespaces with labels,
pods with labels, pod_order) and `cases` (id, name, servers {ports, protocols}, steps of actions and
probes with expected_rows; every step probes). Everything is checked on load, so a malformed file
fails with one line naming the case and the field. Unknown extra keys are ignored (the file carries
notes for people).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PROTOCOLS = ("TCP", "UDP", "SCTP")
ACTION_KINDS = (
    "create_policy", "update_policy", "delete_policy", "delete_all_policies",
    "add_namespace_labels", "remove_namespace_labels", "set_namespace_labels", "reset_namespace_labels",
    "add_pod_labels", "remove_pod_labels", "set_pod_labels", "reset_pod_labels",
)
ALLOWED, BLOCKED = ".", "X"
_PLACEHOLDER = re.compile(r"^\$\((?P<pod>[^()/\s]+/[^()/\s]+)\)(?:/(?P<bits>\d+))?$")


class CaseFileError(ValueError):
    """The case file does not have the expected shape (the message names where)."""


@dataclass(frozen=True)
class Action:
    """One step action: its kind (the single key of the YAML mapping) and that key's value."""

    kind: str
    value: Any


@dataclass(frozen=True)
class Probe:
    """Probe every ordered pair on one port/protocol; expected[src][dst] is '.' or 'X'."""

    port: int
    protocol: str
    expected: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class Step:
    """Actions applied in order, then probes."""

    number: int
    description: str
    actions: tuple[Action, ...]
    probes: tuple[Probe, ...]


@dataclass(frozen=True)
class Case:
    """One upstream test: the servers every pod runs and its steps."""

    id: str
    name: str
    ports: tuple[int, ...]
    protocols: tuple[str, ...]
    steps: tuple[Step, ...]

    @property
    def servers(self) -> tuple[tuple[int, str], ...]:
        """(port, protocol) of every server container, in model order (ports outer, protocols inner)."""
        return tuple((port, proto) for port in self.ports for proto in self.protocols)


@dataclass(frozen=True)
class Model:
    """Namespaces and pods (labels each) and the order of the matrix rows and columns."""

    namespaces: Mapping[str, Mapping[str, str]]
    pods: Mapping[str, Mapping[str, str]]
    pod_order: tuple[str, ...]


@dataclass(frozen=True)
class CaseFile:
    """A whole case file."""

    path: Path
    model: Model
    cases: tuple[Case, ...]


def _labels(data: Any, where: str) -> dict[str, str]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise CaseFileError(f"{where}: labels must be a mapping")
    return {str(k): str(v) for k, v in data.items()}


def _model(data: Any) -> Model:
    if not isinstance(data, Mapping):
        raise CaseFileError("model: missing or not a mapping")
    namespaces = {str(name): _labels((spec or {}).get("labels"), f"model.namespaces.{name}")
                  for name, spec in (data.get("namespaces") or {}).items()}
    pods = {}
    for key, spec in (data.get("pods") or {}).items():
        ns, _, name = str(key).partition("/")
        if ns not in namespaces or not name:
            raise CaseFileError(f"model.pods.{key}: want NAMESPACE/POD with a namespace of model.namespaces")
        pods[str(key)] = _labels((spec or {}).get("labels"), f"model.pods.{key}")
    order = tuple(str(p) for p in data.get("pod_order") or pods)
    if sorted(order) != sorted(pods) or not pods:
        raise CaseFileError("model.pod_order: must list every pod of model.pods exactly once")
    return Model(namespaces, pods, order)


def _probe(data: Any, order: tuple[str, ...], where: str) -> Probe:
    if not isinstance(data, Mapping):
        raise CaseFileError(f"{where}: not a mapping")
    port, protocol = data.get("port"), str(data.get("protocol", "TCP")).upper()
    if not isinstance(port, int) or not 0 < port < 65536:
        raise CaseFileError(f"{where}.port: want a port number, got {port!r}")
    if protocol not in PROTOCOLS:
        raise CaseFileError(f"{where}.protocol: want one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    rows = data.get("expected_rows")
    if not isinstance(rows, Mapping) or sorted(map(str, rows)) != sorted(order):
        raise CaseFileError(f"{where}.expected_rows: want one row per pod of model.pod_order")
    expected = {}
    for src in order:
        cells = tuple(str(rows[src]).split())
        if len(cells) != len(order) or set(cells) - {ALLOWED, BLOCKED}:
            raise CaseFileError(f"{where}.expected_rows.{src}: want {len(order)} cells of '.' or 'X'")
        expected[src] = cells
    return Probe(port, protocol, expected)


def _action(data: Any, where: str) -> Action:
    if not isinstance(data, Mapping) or len(data) != 1:
        raise CaseFileError(f"{where}: an action is a mapping with exactly one key (its kind)")
    ((kind, value),) = data.items()
    if kind not in ACTION_KINDS:
        raise CaseFileError(f"{where}: unknown action {kind!r} (known: {', '.join(ACTION_KINDS)})")
    return Action(str(kind), value)


def _case(data: Any, order: tuple[str, ...], index: int) -> Case:
    if not isinstance(data, Mapping):
        raise CaseFileError(f"cases[{index}]: not a mapping")
    where = f"case {data.get('id', index)}"
    servers = data.get("servers") or {}
    ports = tuple(servers.get("ports") or ())
    protocols = tuple(str(p).upper() for p in servers.get("protocols") or ())
    if not ports or not all(isinstance(p, int) and 0 < p < 65536 for p in ports):
        raise CaseFileError(f"{where}.servers.ports: want a list of port numbers")
    if not protocols or set(protocols) - set(PROTOCOLS):
        raise CaseFileError(f"{where}.servers.protocols: want a list of {', '.join(PROTOCOLS)}")
    steps = []
    for i, step in enumerate(data.get("steps") or ()):
        swhere = f"{where}.steps[{i}]"
        if not isinstance(step, Mapping):
            raise CaseFileError(f"{swhere}: not a mapping")
        actions = tuple(_action(a, f"{swhere}.actions[{j}]")
                        for j, a in enumerate(step.get("actions") or ()))
        probes = tuple(_probe(p, order, f"{swhere}.probes[{j}]")
                       for j, p in enumerate(step.get("probes") or ()))
        if not probes:
            raise CaseFileError(f"{swhere}.probes: a step needs at least one probe (else nothing is checked)")
        steps.append(Step(int(step.get("step", i + 1)), str(step.get("description", "")), actions, probes))
    if not steps:
        raise CaseFileError(f"{where}.steps: a case needs at least one step")
    return Case(str(data.get("id", index)), str(data.get("name", "")), ports, protocols, tuple(steps))


def load(path: Path) -> CaseFile:
    """Read and check a case file."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CaseFileError(f"{path}: {exc}") from exc
    if not isinstance(data, Mapping):
        raise CaseFileError(f"{path}: not a YAML mapping")
    model = _model(data.get("model"))
    cases = tuple(_case(c, model.pod_order, i) for i, c in enumerate(data.get("cases") or ()))
    if not cases:
        raise CaseFileError(f"{path}: no cases")
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        raise CaseFileError(f"{path}: case ids are not unique")
    return CaseFile(path, model, cases)


def resolve_placeholders(value: Any, pod_ips: Mapping[str, str]) -> Any:
    """`value` with every '$(ns/pod)' string made that pod's IP and '$(ns/pod)/N' its masked /N network."""
    if isinstance(value, Mapping):
        return {k: resolve_placeholders(v, pod_ips) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_placeholders(v, pod_ips) for v in value]
    if not isinstance(value, str):
        return value
    match = _PLACEHOLDER.match(value)
    if match is None:
        return value
    if match["pod"] not in pod_ips:
        raise CaseFileError(f"placeholder {value!r} names an unknown pod")
    ip = pod_ips[match["pod"]]
    if match["bits"] is None:
        return ip
    return str(ipaddress.IPv4Network(f"{ip}/{match['bits']}", strict=False))
