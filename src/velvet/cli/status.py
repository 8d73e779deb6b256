"""`velvet status`: kernel checks, agent health, programs and attachments, maps, counts."""

from __future__ import annotations

import argparse
from typing import Any

from velvet.cli.common import client, print_json, table
from velvet.errors import VelvetError


def _store_line(store: dict[str, Any]) -> str:
    """`Store: etcd http://... connected, version N` (or `disconnected: why`), or `local <dir>`; the
    Kubernetes API is the agent's source, not a store it writes: `Source: kubernetes https://...`."""
    where = store.get("endpoint") or store.get("directory") or ""
    state = "connected" if store.get("connected") else f"DISCONNECTED: {store.get('error') or 'no answer'}"
    label = "Source:" if store["kind"] == "kubernetes" else "Store:"
    return f"{label:<15}{store['kind']} {where}  {state}, version {store.get('version', 0)}"


def _probe_cells(probe: dict[str, Any] | None) -> list[str]:
    """REACHABLE and LATENCY cells of one probe ("-" before the first round)."""
    if probe is None:
        return ["-", "-"]
    if probe["reachable"]:
        return ["yes", f"{probe['latency_ms']:.3f} ms"]
    return [f"NO: {probe['error']}", "-"]


def cluster_lines(cluster: dict[str, Any]) -> list[str]:
    """The cluster as the answering node sees it: nodes and the health probes (cilium-health)."""
    health = {row["name"]: row for row in cluster.get("health") or ()}
    nodes_ok = sum(1 for row in health.values() if (row["node"] or {}).get("reachable"))
    pods = [row["pod"]["probe"] for row in health.values() if row["pod"]["name"]]
    pods_ok = sum(1 for probe in pods if (probe or {}).get("reachable"))
    lines = [f"Cluster:       {len(cluster['nodes'])} nodes; health: {nodes_ok}/{len(health)} nodes and "
             f"{pods_ok}/{len(pods)} pods reachable"]
    rows = []
    for node in cluster["nodes"]:
        row = health.get(node["name"]) or {"node": None, "pod": {"name": "", "probe": None, "why": "-"}}
        pod = row["pod"]
        target = f"{pod['name']} ({pod['ip']})" if pod["name"] else f"none: {pod.get('why', '-')}"
        rows.append([node["name"], node["internal_ip"], node["pod_cidr"], *_probe_cells(row["node"]), target,
                     *_probe_cells(pod["probe"])])
    headers = ["NODE", "INTERNAL-IP", "POD-CIDR", "REACHABLE", "LATENCY", "HEALTH POD", "POD REACHABLE",
               "POD LATENCY"]
    lines += ["  " + line for line in table(headers, rows).splitlines()]
    return lines
def _routing_line(routing: dict[str, Any]) -> str:
    """`Routing: native`, or `Routing: tunnel (vxlan velvet_vxlan, UDP 8472, VNI = source identity)`."""
    if routing["mode"] != "tunnel":
        return f"Routing:       {routing['mode']}"
    return (f"Routing:       tunnel ({routing['protocol']} {routing['device']}, UDP {routing['port']}, "
            f"VNI = {routing['vni']})")


def _enforcement_line(enforcement: dict[str, Any]) -> str:
    """`Enforcement: cgroup hooks, 2 rules (1 deny, 1 audit)`, or `Enforcement: OFF (why)`."""
    if enforcement.get("starting"):
        return "Enforcement:   starting"
    if not enforcement.get("attached"):
        why = (enforcement.get("error") or "").split("\n", 1)[0].rstrip(":")
        return f"Enforcement:   OFF ({why}): runtime policies are validated, not enforced"
    actions = [r["action"] for r in enforcement.get("rules", [])]
    return (f"Enforcement:   cgroup hooks, {len(actions)} rules ({actions.count('deny')} deny, "
            f"{actions.count('audit')} audit), {enforcement.get('lost', 0)} events lost")


def render(status: dict[str, Any], verbose: bool = False) -> str:
    """The human form of the status answer, in the spirit of `cilium status`."""
    kernel, agent, dp, counts = status["kernel"], status["agent"], status["datapath"], status["counts"]
    cluster = status.get("cluster") or {}
    missing = [f for f in kernel["features"] if not f["ok"]]
    lines = [
        f"Kernel:        Linux {kernel['release']}, "
        + ("all features present" if not missing else f"{len(missing)} feature(s) missing"),
    ]
    for f in missing:
        lines.append(f"                 missing {f['name']}: {f['detail']} (disables {f['disables']})")
    lines += [
        f"Agent:         Ok  v{agent['version']}  up {agent['uptime_seconds']:.0f}s  node {agent['node']}  "
        f"sandbox {agent['sandbox']}" + ("  POLICY AUDIT MODE" if agent["policy_audit_mode"] else "")
        + (f"  still starting: {', '.join(agent['starting'])}" if agent.get("starting") else ""),
        f"Datapath:      {dp['kind']}, {len(dp['programs'])} programs, {len(dp['maps'])} maps",
        _store_line(status.get("store") or {"kind": "local", "connected": True}),
        _routing_line(agent.get("routing") or {"mode": "native"}),
        f"Host Routing:  {(agent.get('host_routing') or {'mode': 'Legacy'})['mode']}",
        "KubeProxyReplacement: " + ("True" if agent.get("kube_proxy_replacement", True)
                                    else "False (services are left to kube-proxy)"),
        *(cluster_lines(cluster) if cluster.get("health") is not None else ()),
        f"Endpoints:     {counts['endpoints']}",
        f"Services:      {counts['services']}",
        f"Identities:    {counts['identities']}",
        f"Policies:      {counts['policies']} ({counts['policy_entries']} datapath entries)",
    ]
    tracing = status.get("tracing") or {}
    if tracing.get("policies"):
        lines.append(f"Tracing:       {tracing['policies']} policies on {', '.join(tracing['hooks'])} "
                     f"({tracing['rules']} rules, {tracing['binary_sets']} binary sets): "
                     + ", ".join(tracing.get("names", [])))
    enforcement = status.get("enforcement")
    if enforcement is not None:
        lines.append(_enforcement_line(enforcement))
    for problem in tracing.get("problems", []):
        lines.append(f"Problem:       {problem}")
    for problem in status["problems"]:
        lines.append(f"Problem:       service {problem['service']}: {problem['reason']}")
    flows = status.get("flows") or {}
    if flows:
        lines.append(f"Flows:         {flows.get('seen', 0)} seen, {flows.get('stored', 0)} stored "
                     f"(capacity {flows.get('capacity', 0)}), {flows.get('lost', 0)} lost, "
                     f"{flows.get('rate', 0.0):.1f}/s")
    http = status.get("http")
    if http:
        where = "host network namespace" if http["netns"] != "agent" else "the agent's network namespace"
        lines.append(f"Metrics:       {http['metrics']} (loopback, {where})")
        lines.append(f"Service map:   {http['ui']}")
    lines.append("")
    lines.append("Programs:")
    rows = [[p["name"], str(p["id"]), ", ".join(p["attached_to"]) or "-"] for p in dp["programs"]]
    lines.append(table(["NAME", "ID", "ATTACHED TO"], rows))
    lines.append("")
    lines.append("Maps:")
    rows = [[m["name"], m["type"], str(m["entries"]), str(m["capacity"]),
             f"{100 * m['entries'] / m['capacity']:.1f}%" if m["capacity"] else "-"] for m in dp["maps"]]
    lines.append(table(["NAME", "TYPE", "ENTRIES", "CAPACITY", "FILL"], rows))
    if verbose:
        lines.append("")
        lines.append("Kernel features:")
        rows = [[f["name"], "ok" if f["ok"] else "MISSING", f["detail"]] for f in kernel["features"]]
        lines.append(table(["FEATURE", "STATE", "DETAIL"], rows))
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    """Print the agent's status."""
    status = client(args.sandbox, args.node).get("/v1/status")
    if args.output == "json":
        print_json(status)
    else:
        print(render(status, args.verbose))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """Print the service map's address (open it in a browser on this machine)."""
    http = client(args.sandbox, args.node).get("/v1/status").get("http")
    if not http:
        raise VelvetError("the agent serves no service map (it runs with --metrics-address '')")
    print(http["ui"])
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `velvet status` and `velvet ui`."""
    ui = sub.add_parser("ui", help="print the address of the service map (a web page on loopback)")
    ui.set_defaults(func=cmd_ui)
    p = sub.add_parser("status", help="health of the agent, the datapath and the cluster's nodes")
    p.add_argument("-o", "--output", choices=["json"], default=None)
    p.add_argument("-v", "--verbose", action="store_true", help="list every kernel feature check")
    p.set_defaults(func=cmd_status)
