"""Cilium-style inspection: `service list`, `endpoint list`, `identity list`, `policy get|trace`, `bpf …`."""

from __future__ import annotations

import argparse
from typing import Any

from velvet.api.client import ApiClient
from velvet.cli.common import client, node_client, print_json, table
from velvet.errors import NotFound

BPF_MAPS = {
    "lb": ("lb4_services", "lb4_backends", "lb4_revnat"),
    "ct": ("ct4",),
    "nat": ("snat4", "node_config"),
    "policy": ("policy",),
    "ipcache": ("ipcache", "ipcache_cidr"),
    "endpoint": ("lxc_endpoints",),
    "affinity": ("lb4_affinity",),
    "metrics": ("metrics",),
}


def _labels(labels: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" if v else k for k, v in sorted(labels.items())) or "-"


def render_services(rows: list[dict[str, Any]]) -> str:
    """`cilium service list` layout: one line per backend under its frontend."""
    out = []
    problems = [f"service {row['service']}: {row['problem']}" for row in rows if row["problem"]]
    for row in rows:
        if row["frontend"] is None:
            continue  # not programmed: named below the table
        extra = [*row["flags"]]
        if row["session_affinity_timeout"]:
            extra.append(f"affinity {row['session_affinity_timeout']}s")
        kind = row["type"] + (f" ({', '.join(extra)})" if extra else "")
        backends = row["backends"] or [None]
        for i, b in enumerate(backends):
            first = i == 0
            out.append([
                str(row["id"]) if first else "", row["frontend"] if first else "",
                kind if first else "", row["service"] if first else "",
                f"{i + 1} => {b['address']} ({b['state']})" if b else "(no backends)",
            ])
    text = table(["ID", "FRONTEND", "SERVICE TYPE", "SERVICE", "BACKEND"], out)
    return "\n".join([text, *(f"Problem: {p}" for p in dict.fromkeys(problems))])


def cmd_service_list(args: argparse.Namespace) -> int:
    """Frontends → backends with state."""
    rows = client(args.sandbox, args.node).get("/v1/query/services")
    print_json(rows) if args.output == "json" else print(render_services(rows))
    return 0


def cmd_endpoint_list(args: argparse.Namespace) -> int:
    """Local endpoints with identity and enforcement per direction."""
    rows = client(args.sandbox, args.node).get("/v1/query/endpoints")
    if args.output == "json":
        print_json(rows)
        return 0
    out = [[str(r["id"]), r["ingress_enforcement"], r["egress_enforcement"], str(r["identity"]), r["pod"],
            r["ipv4"], r["interface"]] for r in rows]
    print(table(["ENDPOINT", "POLICY (ingress)", "POLICY (egress)", "IDENTITY", "POD", "IPv4", "INTERFACE"],
                out))
    return 0


def cmd_identity_list(args: argparse.Namespace) -> int:
    """Identities and their labels."""
    rows = client(args.sandbox, args.node).get("/v1/query/identities")
    if args.output == "json":
        print_json(rows)
        return 0
    print(table(["ID", "LABELS"], [[str(r["id"]), _labels(r["labels"])] for r in rows]))
    return 0


def cmd_policy_get(args: argparse.Namespace) -> int:
    """What policy is loaded and what it compiled to."""
    answer = client(args.sandbox, args.node).get("/v1/query/policy")
    if args.output == "json":
        print_json(answer)
        return 0
    print(f"NetworkPolicies: {', '.join(answer['policies']) or 'none'}")
    tracing = answer.get("tracing_policies") or []
    if tracing:
        rows = [[t["name"], t["kind"], ",".join(t["hooks"]), str(t["selectors"]), t["scope"],
                 "yes" if t["programmed"] else "NO"] for t in tracing]
        print("\nTracing policies:")
        print(table(["NAME", "KIND", "HOOKS", "SELECTORS", "SCOPE", "PROGRAMMED"], rows))
    for ep in answer["endpoints"]:
        isolated = [d for d in ("ingress", "egress") if ep[f"{d}_policies"]]
        print(f"\nEndpoint {ep['id']} {ep['pod']} (identity {ep['identity']}): "
              f"isolated for {', '.join(isolated) or 'nothing'}")
        rows = [[e["direction"], e["match"], ", ".join(e["policies"])] for e in ep["entries"]]
        if rows:  # every entry allows (NetworkPolicy has no deny): what matches none is dropped
            print(table(["DIRECTION", "ALLOWS", "POLICIES"], rows))
    return 0


def _enforced_where(api: ApiClient, answer: dict[str, Any], query: dict[str, Any]) -> dict[str, Any]:
    """Each direction as the node that enforces it decides: egress on the source pod's node, ingress
    on the destination's (the answering node knows only its own endpoints' side)."""
    asked: dict[str, dict[str, Any] | None] = {}  # node -> its trace; None: not registered
    for direction, node in (("egress", answer.get("from_node")), ("ingress", answer.get("to_node"))):
        if not node or node == answer.get("node"):
            continue
        if node not in asked:  # both pods on one other node: that node is asked once
            try:
                asked[node] = node_client(api, node).get("/v1/query/trace", **query)
            except NotFound:  # a pod bound to a node that left: nothing enforces its side
                asked[node] = None
        found = asked[node]
        there = found[direction] if found is not None else {
            "allowed": True, "policies": [], "reason": f"node {node} is not registered"}
        answer[direction] = {**there, "reason": f"{there['reason']}, on {node}"}
    both = answer["egress"]["allowed"] and answer["ingress"]["allowed"]
    return {**answer, "verdict": "ALLOWED" if both else "DENIED"}


def cmd_policy_trace(args: argparse.Namespace) -> int:
    """Verdict for a connection between two pods and the policies that decide it, each direction asked
    of the node that enforces it."""
    query = {"from": args.src, "to": args.dst, "port": args.port}
    api = client(args.sandbox, args.node)
    answer = _enforced_where(api, api.get("/v1/query/trace", **query), query)
    if args.output == "json":
        print_json(answer)
        return 0 if answer["verdict"] == "ALLOWED" else 1
    print(f"Tracing {answer['from']} -> {answer['to']} {answer['port']}/{answer['protocol']}")
    for direction in ("egress", "ingress"):
        v = answer[direction]
        by = f" by {', '.join(v['policies'])}" if v["policies"] else ""
        print(f"  {direction:7}: {'allowed' if v['allowed'] else 'DENIED'}{by} ({v['reason']})")
    print(f"Final verdict: {answer['verdict']}")
    return 0 if answer["verdict"] == "ALLOWED" else 1


def cmd_bpf(args: argparse.Namespace) -> int:
    """Raw map contents, like `cilium bpf <map> list`."""
    api = client(args.sandbox, args.node)
    dumps = {name: api.get("/v1/query/bpf", map=name) for name in BPF_MAPS[args.map]}
    if args.output == "json":
        print_json(dumps)
        return 0
    for name, entries in dumps.items():
        print(f"{name} ({len(entries)} entries)")
        for entry in sorted(entries, key=_order):
            print(f"  {_flat(entry['key'])} => {_flat(entry['value'])}")
    return 0


def _order(entry: dict[str, Any]) -> tuple[Any, ...]:
    """Sort key of a map entry: its key's fields in order (one map's keys all have the same shape)."""
    key = entry["key"]
    return tuple(key.values()) if isinstance(key, dict) else (key,)


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={_flat(v)}" for k, v in value.items())
    if isinstance(value, list):
        return f"[{len(value)} items]" if len(value) > 8 else ",".join(map(str, value))
    return str(value)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add service, endpoint, identity, policy and bpf groups."""
    def group(name: str, help_text: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        parser = sub.add_parser(name, help=help_text)
        return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION")

    for name, func, help_text in (("service", cmd_service_list, "services known to the datapath"),
                                  ("endpoint", cmd_endpoint_list, "local endpoints (pods)"),
                                  ("identity", cmd_identity_list, "security identities")):
        p = group(name, help_text).add_parser("list", help=help_text)
        p.add_argument("-o", "--output", choices=["json"], default=None)
        p.set_defaults(func=func)

    policy = group("policy", "NetworkPolicy as loaded in the datapath")
    p = policy.add_parser("get", help="loaded policies and their compiled entries")
    p.add_argument("-o", "--output", choices=["json"], default=None)
    p.set_defaults(func=cmd_policy_get)
    p = policy.add_parser("trace", help="verdict of a connection between two pods")
    p.add_argument("--from", dest="src", required=True, metavar="NS/POD")
    p.add_argument("--to", dest="dst", required=True, metavar="NS/POD")
    p.add_argument("--port", required=True, metavar="N[/tcp|udp]")
    p.add_argument("-o", "--output", choices=["json"], default=None)
    p.set_defaults(func=cmd_policy_trace)

    bpf = group("bpf", "raw datapath maps")
    for map_group in BPF_MAPS:
        verb = bpf.add_parser(map_group, help=f"{', '.join(BPF_MAPS[map_group])}")
        actions = verb.add_subparsers(dest="bpf_action", required=True, metavar="ACTION")
        p = actions.add_parser("list", help="dump the entries")
        p.add_argument("-o", "--output", choices=["json"], default=None)
        p.set_defaults(func=cmd_bpf, map=map_group)
