"""kubectl-like printing for `velvet get`: default and wide tables, -o json, -o yaml and -o name.

Every function takes objects in their `to_dict()` form (what the agent API returns as JSON), so the
CLI never needs the store or the model. Tables are laid out like kubectl's tabwriter (columns padded
by 3 spaces, at least 6 wide, last column unpadded); JSON and YAML have sorted keys like kubectl's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import yaml

from velvet.api.objects import is_ready

Obj = Mapping[str, Any]
Row = list[str]

_GROUPS = {"EndpointSlice": "discovery.k8s.io", "NetworkPolicy": "networking.k8s.io",
           "VelvetTracingPolicy": "velvet.io", "VelvetTracingPolicyNamespaced": "velvet.io"}


def render(items: Sequence[Obj], output: str | None = None, *, all_namespaces: bool = False,
           single: bool = False, now: datetime | None = None) -> str:
    """Render like `kubectl get -o <output>` (None, "wide", "json", "yaml" or "name")."""
    if output == "json":
        return render_json(items, single=single)
    if output == "yaml":
        return render_yaml(items, single=single)
    if output == "name":
        return "".join(f"{resource_name(o)}/{o['metadata']['name']}\n" for o in items)
    if output not in (None, "wide"):
        raise ValueError(f'unable to match a printer suitable for the output format "{output}", '
                         "allowed formats are: json,name,wide,yaml")
    return render_table(items, wide=output == "wide", all_namespaces=all_namespaces, now=now)


def render_json(items: Sequence[Obj], *, single: bool = False) -> str:
    """One object (`single`) or a v1 List of them, 4-space indented with sorted keys."""
    return json.dumps(_document(items, single), indent=4, sort_keys=True, ensure_ascii=False) + "\n"


def render_yaml(items: Sequence[Obj], *, single: bool = False) -> str:
    """One object (`single`) or a v1 List of them, as kubectl's YAML printer lays it out."""
    text: str = yaml.dump(_document(items, single), Dumper=_KubeDumper, default_flow_style=False,
                          sort_keys=True, allow_unicode=True, width=2**31)
    return text


def no_resources_message(namespace: str | None) -> str:
    """What kubectl says when a get finds nothing (None for cluster-scoped kinds or -A)."""
    return f"No resources found in {namespace} namespace." if namespace else "No resources found"


def resource_name(obj: Obj) -> str:
    """`pod`, `service`, `endpointslice.discovery.k8s.io`, ... as kubectl prefixes names."""
    kind = str(obj.get("kind", ""))
    group = _GROUPS.get(kind)
    return f"{kind.lower()}.{group}" if group else kind.lower()


def render_table(items: Sequence[Obj], *, wide: bool = False, all_namespaces: bool = False,
                 now: datetime | None = None) -> str:
    """kubectl's default table per kind; with several kinds, one table each with `kind/` name prefixes."""
    moment = now or datetime.now(UTC)
    kinds: dict[str, list[Obj]] = {}
    for obj in items:
        kinds.setdefault(str(obj.get("kind", "")), []).append(obj)
    tables: list[str] = []
    for kind, objs in kinds.items():
        columns, row_of = _TABLES[kind]
        header = list(columns) + (list(_WIDE[kind][0]) if wide and kind in _WIDE else [])
        namespaced = kind not in ("Namespace", "Node", "VelvetTracingPolicy")
        if all_namespaces and namespaced:
            header.insert(0, "NAMESPACE")
        rows: list[Row] = [header]
        for obj in objs:
            row = row_of(obj, moment)
            if len(kinds) > 1:
                row[0] = f"{resource_name(obj)}/{row[0]}"
            if wide and kind in _WIDE:
                row += _WIDE[kind][1](obj)
            if all_namespaces and namespaced:
                row.insert(0, str(obj["metadata"].get("namespace", "")))
            rows.append(row)
        tables.append(_tabulate(rows))
    return "\n".join(tables)


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery duration.HumanDuration, as the AGE column shows it."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes, hours = s // 60, s // 3600
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        years, days = hours // 24 // 365, (hours // 24) % 365
        return f"{years}y{days}d" if days else f"{years}y"
    return f"{hours // 24 // 365}y"


def _document(items: Sequence[Obj], single: bool) -> Any:
    if single and len(items) == 1:
        return items[0]
    return {"apiVersion": "v1", "items": list(items), "kind": "List", "metadata": {"resourceVersion": ""}}


class _KubeDumper(yaml.SafeDumper):
    """Quotes strings with double quotes where quoting is needed, as Go's YAML encoder does."""

    def choose_scalar_style(self) -> str:
        style: str = super().choose_scalar_style()
        return '"' if style == "'" else style


def _tabulate(rows: list[Row]) -> str:
    widths = [max(6, max(len(r[i]) for r in rows) + 3) for i in range(len(rows[0]) - 1)]
    lines = ["".join(cell.ljust(w) for cell, w in zip(r, widths, strict=False)) + r[-1] for r in rows]
    return "\n".join(lines) + "\n"


def _age(obj: Obj, now: datetime) -> str:
    created = obj.get("metadata", {}).get("creationTimestamp")
    if not created:
        return "<unknown>"
    when = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return human_duration((now - when).total_seconds())


def _name(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


def _pod_row(obj: Obj, now: datetime) -> Row:
    status, spec = obj.get("status", {}), obj.get("spec", {})
    containers = len(spec.get("containers", []))
    phase = "Terminating" if obj["metadata"].get("deletionTimestamp") else status.get("phase", "Pending")
    return [_name(obj), f"{containers if is_ready(obj) else 0}/{containers}", phase, "0", _age(obj, now)]


def _pod_wide(obj: Obj) -> Row:
    ip = obj.get("status", {}).get("podIP") or "<none>"
    node = obj.get("spec", {}).get("nodeName") or "<none>"
    return [ip, node, "<none>", "<none>"]


def _service_row(obj: Obj, now: datetime) -> Row:
    spec = obj.get("spec", {})
    return [_name(obj), spec.get("type", "ClusterIP"), spec.get("clusterIP") or "<none>",
            _external_ip(obj), _service_ports(spec.get("ports", [])), _age(obj, now)]


def _service_wide(obj: Obj) -> Row:
    selector = obj.get("spec", {}).get("selector") or {}
    return [",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "<none>"]


def _external_ip(obj: Obj) -> str:
    spec = obj.get("spec", {})
    kind, external = spec.get("type", "ClusterIP"), list(spec.get("externalIPs", []))
    if kind == "ExternalName":
        return str(spec.get("externalName", "<none>"))
    if kind == "LoadBalancer":
        ingress = obj.get("status", {}).get("loadBalancer", {}).get("ingress", [])
        ips = [i.get("ip") or i.get("hostname", "") for i in ingress] + external
        return ",".join(ips) if ips else "<pending>"
    return ",".join(external) if external else "<none>"


def _service_ports(ports: Sequence[Obj]) -> str:
    parts = []
    for p in ports:
        node_port = f":{p['nodePort']}" if p.get("nodePort") else ""
        parts.append(f"{p['port']}{node_port}/{p.get('protocol', 'TCP')}")
    return ",".join(parts) or "<none>"


def _slice_row(obj: Obj, now: datetime) -> Row:
    ports = [str(p["port"]) if p.get("port") is not None else (p.get("name") or "*")
             for p in obj.get("ports") or []]
    addresses = [a for e in obj.get("endpoints") or [] for a in e.get("addresses", [])]
    return [_name(obj), obj.get("addressType", ""), _more(ports), _more(addresses), _age(obj, now)]


def _more(values: list[str], limit: int = 3) -> str:
    if len(values) > limit:
        return ",".join(values[:limit]) + f" + {len(values) - limit} more..."
    return ",".join(values) or "<unset>"


def _policy_row(obj: Obj, now: datetime) -> Row:
    return [_name(obj), format_selector(obj.get("spec", {}).get("podSelector", {})), _age(obj, now)]


def _tracing_row(obj: Obj, now: datetime) -> Row:
    spec = obj.get("spec", {})
    hooks = ",".join(f"{t['subsystem']}/{t['event']}" for t in spec.get("tracepoints", []))
    selector = spec.get("podSelector")
    return [_name(obj), hooks, format_selector(selector) if selector is not None else "<all>", _age(obj, now)]


def format_selector(selector: Obj) -> str:
    """metav1.FormatLabelSelector: requirements sorted by key, `<none>` when empty."""
    reqs: list[tuple[str, str]] = [(k, f"{k}={v}") for k, v in (selector.get("matchLabels") or {}).items()]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], ",".join(sorted(expr.get("values") or []))
        text = {"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})", "Exists": key,
                "DoesNotExist": f"!{key}"}.get(op, f"{key} {op}")
        reqs.append((key, text))
    return ",".join(text for _, text in sorted(reqs, key=lambda r: r[0])) or "<none>"


def _namespace_row(obj: Obj, now: datetime) -> Row:
    return [_name(obj), obj.get("status", {}).get("phase", "Active"), _age(obj, now)]


def _node_row(obj: Obj, now: datetime) -> Row:
    status = obj.get("status", {})
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))
    version = status.get("nodeInfo", {}).get("kubeletVersion", "<none>")
    return [_name(obj), "Ready" if ready else "NotReady", "<none>", _age(obj, now), version]


def _node_wide(obj: Obj) -> Row:
    addresses = obj.get("status", {}).get("addresses", [])
    internal = next((a["address"] for a in addresses if a.get("type") == "InternalIP"), "<none>")
    external = next((a["address"] for a in addresses if a.get("type") == "ExternalIP"), "<none>")
    return [internal, external]


_TABLES: dict[str, tuple[tuple[str, ...], Callable[[Obj, datetime], Row]]] = {
    "Pod": (("NAME", "READY", "STATUS", "RESTARTS", "AGE"), _pod_row),
    "Service": (("NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"), _service_row),
    "EndpointSlice": (("NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"), _slice_row),
    "NetworkPolicy": (("NAME", "POD-SELECTOR", "AGE"), _policy_row),
    "VelvetTracingPolicy": (("NAME", "HOOKS", "POD-SELECTOR", "AGE"), _tracing_row),
    "VelvetTracingPolicyNamespaced": (("NAME", "HOOKS", "POD-SELECTOR", "AGE"), _tracing_row),
    "Namespace": (("NAME", "STATUS", "AGE"), _namespace_row),
    "Node": (("NAME", "STATUS", "ROLES", "AGE", "VERSION"), _node_row),
}
_WIDE: dict[str, tuple[tuple[str, ...], Callable[[Obj], Row]]] = {
    "Pod": (("IP", "NODE", "NOMINATED NODE", "READINESS GATES"), _pod_wide),
    "Service": (("SELECTOR",), _service_wide),
    "Node": (("INTERNAL-IP", "EXTERNAL-IP"), _node_wide),
}
