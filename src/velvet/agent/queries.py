"""Read-only answers of the agent's API: status, service/endpoint/identity/policy lists, bpf dumps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from velvet.agent.tunnel import VXLAN_PORT
from velvet.control.policy_lookup import describe_key, trace
from velvet.datapath.structs import BackendState, SvcFlag
from velvet.datapath.tables import Proto
from velvet.errors import BadRequest, NotFound
from velvet.model import NetworkPolicy, Pod, Service
from velvet.model.identity import ReservedIdentity
from velvet.sources.local import ALL_NAMESPACES

if TYPE_CHECKING:
    from velvet.agent.node import Agent

PROTO_NAMES = {int(p): p.name for p in Proto}
FLAG_NAMES = [(SvcFlag.CLUSTERIP, "ClusterIP"), (SvcFlag.NODEPORT, "NodePort"),
              (SvcFlag.EXTERNAL_IP, "ExternalIPs"), (SvcFlag.LOADBALANCER, "LoadBalancer")]


def nodes(agent: Agent) -> list[dict[str, Any]]:
    """The registered nodes with the API address each agent advertises (the relay's peers)."""
    return [{"name": n.name, "internal_ip": n.internal_ip, "pod_cidr": n.pod_cidr, "api": n.api}
            for n in agent.nodes()]


def cluster(agent: Agent) -> dict[str, Any]:
    """The cluster as this node sees it: routing mode, registered nodes, health probes (cilium-health)."""
    return {"routing": routing(agent)["mode"], "nodes": nodes(agent),
            "health": agent.prober.report() if agent.prober is not None else None}


def status(agent: Agent) -> dict[str, Any]:
    """Kernel checks, agent health, programs and their attachments, maps, object counts."""
    kernel = agent.datapath.kernel()
    dp = agent.datapath.status()
    services = agent.store.get("services", ALL_NAMESPACES)
    policies = agent.store.get("networkpolicies", ALL_NAMESPACES)
    compiled = agent.policy.compiled
    return {
        "kernel": {"release": kernel.release, "features": [asdict(c) for c in kernel.features]},
        "agent": {**agent.health(), "sandbox": agent.config.sandbox, "node": agent.config.node_name,
                  "policy_audit_mode": agent.config.policy_audit_mode, "socket": str(agent.paths.socket),
                  "routing": routing(agent), "host_routing": host_routing(agent),
                  "kube_proxy_replacement": agent.config.kube_proxy_replacement,
                  "reconcile": dict(agent.reconcile_stats)},
        "datapath": {
            "kind": dp.kind,
            "programs": [asdict(p) for p in dp.programs],
            "maps": [asdict(m) for m in dp.maps],
            "counters": dict(dp.counters),
        },
        "store": agent.store.storage_status(),
        "cluster": cluster(agent),
        "problems": [{"service": key, "reason": why} for key, why in agent.services.problems().items()],
        "counts": {
            "endpoints": len(agent.endpoints),
            "services": len(services),
            "identities": len(agent.identities.all()),
            "policies": len(policies),
            "policy_entries": sum(len(ep.entries) for ep in compiled.endpoints.values()) if compiled else 0,
        },
    }


def routing(agent: Agent) -> dict[str, Any]:
    """How pods reach other nodes: the mode; in tunnel mode the device, its UDP port, what the VNI is."""
    if agent.tunnel is None:
        return {"mode": "native"}
    return {"mode": "tunnel", "device": agent.tunnel.name, "protocol": "vxlan", "port": VXLAN_PORT,
            "vni": "source identity"}


def host_routing(agent: Agent) -> dict[str, str]:
    """Who forwards pod traffic, as the datapath was told (node_config): "BPF" (the tc programs, FIB
    lookup + redirect) or "Legacy" (the node's IP stack); and the mode the agent was asked for."""
    settings = agent.datapath.read("node_config").get(0)
    active = settings is not None and settings.host_routing
    return {"mode": "BPF" if active else "Legacy", "requested": agent.config.host_routing}


def _service_names(agent: Agent) -> dict[tuple[str, int, int], str]:
    """(address or "*" for NodePorts, port, proto) -> "namespace/name" of the service owning it."""
    names: dict[tuple[str, int, int], str] = {}
    for svc in agent.store.get("services", ALL_NAMESPACES):
        assert isinstance(svc, Service)
        ips = (svc.spec.cluster_ip, *svc.spec.external_ips, *svc.load_balancer_ingress)
        addresses = [a for a in ips if a]
        for port in svc.spec.ports:
            proto = int(Proto[port.protocol])
            for address in addresses:
                names[(address, port.port, proto)] = svc.metadata.key
            if port.node_port:
                names[("*", port.node_port, proto)] = svc.metadata.key
    return names


def service_list(agent: Agent) -> list[dict[str, Any]]:
    """Frontends with their backends, like `cilium service list`."""
    desired = agent.services.compiler.desired()
    names = _service_names(agent)
    problems = agent.services.problems()
    rows = []
    for key, value in sorted(desired.services.items(), key=lambda kv: (kv[1].rev_nat_index, kv[0].scope)):
        if key.backend_slot:
            continue
        slots = [desired.services.get(type(key)(key.address, key.dport, i, key.proto, key.scope))
                 for i in range(1, value.count + 1)]
        backends = []
        for slot in slots:
            backend = desired.backends.get(slot.backend_id) if slot else None
            if backend is not None:
                state = "terminating" if backend.state == BackendState.TERMINATING else "active"
                backends.append({"id": slot.backend_id if slot else 0,
                                 "address": f"{backend.address}:{backend.port}", "state": state})
        kinds = [name for flag, name in FLAG_NAMES if value.flags & flag]
        service = names.get((key.address, key.dport, key.proto)) or names.get(("*", key.dport, key.proto), "")
        rows.append({
            "id": value.rev_nat_index,
            "frontend": f"{key.address}:{key.dport}/{PROTO_NAMES.get(key.proto, key.proto)}",
            "type": "/".join(kinds) or "ClusterIP",
            "scope": "internal" if key.scope else "external",
            "service": service,
            "flags": [f.name for f in SvcFlag if value.flags & f and f not in dict(FLAG_NAMES)],
            "session_affinity_timeout": value.affinity_timeout if value.flags & SvcFlag.AFFINITY else 0,
            "backends": backends,
            "problem": problems.get(service),
        })
    shown = {row["service"] for row in rows}
    rows += [{"id": None, "frontend": None, "type": None, "scope": None, "service": key, "flags": [],
              "session_affinity_timeout": 0, "backends": [], "problem": why}
             for key, why in problems.items() if key not in shown]  # never programmed: no frontend
    return rows


def endpoint_list(agent: Agent) -> list[dict[str, Any]]:
    """Local endpoints with identity, IP and policy enforcement per direction, like `cilium endpoint list`."""
    compiled = agent.policy.compiled
    rows = []
    for record in agent.endpoints:
        enforced = "audit" if agent.policy.audited(record.key) else "enabled"
        ep = compiled.endpoints.get(record.ep_id) if compiled else None
        number = ep.identity if ep else int(ReservedIdentity.INIT)  # no pod in the store: a runtime's
        identity = agent.identities.lookup(number)
        rows.append({
            "id": record.ep_id,
            "pod": record.key,
            "ipv4": record.ip,
            "interface": record.ifname,
            "identity": number,
            "labels": dict(identity.labels) if identity else {},
            "ingress_enforcement": enforced if ep and ep.ingress_isolated else "disabled",
            "egress_enforcement": enforced if ep and ep.egress_isolated else "disabled",
            "ingress_policies": list(ep.ingress_policies) if ep else [],
            "egress_policies": list(ep.egress_policies) if ep else [],
        })
    return rows


def identity_list(agent: Agent) -> list[dict[str, Any]]:
    """Every identity with its labels, like `cilium identity list`."""
    identities = sorted(agent.identities.all(), key=lambda i: i.id)
    return [{"id": i.id, "labels": dict(i.labels)} for i in identities]


def policy_get(agent: Agent) -> dict[str, Any]:
    """Loaded NetworkPolicies and the compiled entries per endpoint."""
    compiled = agent.policy.compiled
    policies = [p for p in agent.store.get("networkpolicies", ALL_NAMESPACES) if isinstance(p, NetworkPolicy)]
    endpoints = []
    for ep in compiled.endpoints.values() if compiled else ():
        entries = [{"direction": k.direction.name.lower(), "match": describe_key(k),
                    "policies": list(compiled.policy_sets.get(v.policy_id, ())) if compiled else []}
                   for k, v in ep.entries.items()]
        endpoints.append({"id": ep.ep_id, "pod": ep.pod, "identity": ep.identity,
                          "ingress_policies": list(ep.ingress_policies),
                          "egress_policies": list(ep.egress_policies), "entries": entries})
    return {"policies": [p.metadata.key for p in policies], "endpoints": endpoints,
            "cidr_identities": dict(compiled.cidr_identities) if compiled else {},
            "tracing_policies": agent.tracing.listing()}


def _pod(agent: Agent, ref: str) -> Pod:
    namespace, _, name = ref.rpartition("/")
    found = agent.store.get("pods", namespace or "default", name)
    if not found or not isinstance(found[0], Pod):
        raise NotFound(f"pod {namespace or 'default'}/{name} not found")
    return found[0]


def _param(params: Mapping[str, str], name: str) -> str:
    """A query parameter the query needs."""
    if name not in params:
        raise BadRequest(f"missing query parameter {name!r}")
    return params[name]


def policy_trace(agent: Agent, params: Mapping[str, str]) -> dict[str, Any]:
    """Verdict of a connection from one pod to another, from the compiled state the datapath uses."""
    compiled = agent.policy.compiled
    if compiled is None:
        raise ValueError("policy not compiled yet")
    src, dst = _pod(agent, _param(params, "from")), _pod(agent, _param(params, "to"))
    port, _, proto = _param(params, "port").partition("/")
    result = trace(compiled, src, dst, int(port), (proto or "tcp").upper())
    def verdict(v: Any) -> Any:
        if v is None:
            return {"allowed": True, "policies": [], "reason": "not a local endpoint"}
        return {"allowed": v.allowed, "policies": list(v.policy_names), "reason": v.reason}
    egress, ingress = verdict(result.egress), verdict(result.ingress)
    return {
        "from": src.metadata.key, "to": dst.metadata.key, "port": int(port),
        "protocol": (proto or "tcp").upper(), "node": agent.config.node_name,
        "from_node": src.spec.node_name, "to_node": dst.spec.node_name,
        "egress": egress, "ingress": ingress,
        "verdict": "ALLOWED" if egress["allowed"] and ingress["allowed"] else "DENIED",
    }


def query(agent: Agent, what: str, params: Mapping[str, str]) -> Any:
    """Dispatch a named query."""
    if what == "services":
        return service_list(agent)
    if what == "endpoints":
        return endpoint_list(agent)
    if what == "identities":
        return identity_list(agent)
    if what == "policy":
        return policy_get(agent)
    if what == "trace":
        return policy_trace(agent, params)
    if what == "nodes":
        return nodes(agent)
    if what == "bpf":
        return agent.datapath.dump(_param(params, "map"))
    raise NotFound(f"unknown query {what!r}")
