"""Namespaces, pods and NetworkPolicies to identities and the policy maps of the local endpoints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from velvet.control.policy import CompiledPolicy, PolicyCompiler
from velvet.control.tunnel import with_tunnel_endpoints
from velvet.controllers.endpoints import EndpointController
from velvet.datapath.tables import EP_POLICY_AUDIT, EP_POLICY_EGRESS, EP_POLICY_INGRESS, EndpointEntry
from velvet.datapath.writer import TableWriter
from velvet.model import Namespace, NetworkPolicy, Pod
from velvet.model.cluster_endpoint import ClusterEndpoint
from velvet.model.identity import ReservedIdentity
from velvet.model.node import NodeRecord
from velvet.observe.enrich import DictResolver, EndpointInfo, NamedRef
from velvet.sources.informer import ObjectCache

POLICY_TABLES = ("lxc_endpoints", "ipcache", "ipcache_cidr", "policy")
POLICY_AUDIT_ANNOTATION = "velvet.io/policy-audit-mode"
"""Namespace annotation: "true" puts the namespace's endpoints in policy audit mode (report, never drop)."""


class PolicyController:
    """Recompiles identities and policy for every local endpoint and writes the differences."""

    def __init__(self, cache: ObjectCache, endpoints: EndpointController, compiler: PolicyCompiler,
                 writer: TableWriter, resolver: DictResolver, *, host_ips: Sequence[str],
                 audit_all: bool, node_name: str = "", tunnel: bool = False) -> None:
        """`node_name` is this node's (its pods need no tunnel endpoint); `tunnel`: tunnel mode."""
        self.cache = cache
        self.compiler = compiler
        self._endpoints = endpoints
        self._writer = writer
        self._resolver = resolver
        self._host_ips = list(host_ips)
        self._audit_all = audit_all
        self.remote_node_ips: tuple[str, ...] = ()  # the other nodes' IPs (remote-node identity)
        self.remote_endpoints: Mapping[str, ClusterEndpoint] | None = None  # the cluster's, by IP (etcd)
        self.local_node = node_name  # its pods' ipcache entries come from the pod objects
        self.nodes: tuple[NodeRecord, ...] = ()  # the registered nodes: tunnel endpoints of remote pods
        self._tunnel = tunnel
        self.compiled: CompiledPolicy | None = None
        self.audit_namespaces: frozenset[str] = frozenset()

    def adopt(self) -> None:
        """Start from what the pinned maps hold, so the first pass writes only the difference."""
        self._writer.adopt(POLICY_TABLES)

    def audited(self, pod_key: str) -> bool:
        """Whether the endpoint of pod "namespace/name" reports policy drops instead of dropping."""
        return self._audit_all or pod_key.split("/", 1)[0] in self.audit_namespaces

    def reconcile(self) -> None:
        """Recompile from the current namespaces, pods and policies; write every table's difference."""
        pods = [p for p in self.cache.objects("Pod") if isinstance(p, Pod)]
        namespaces = [n for n in self.cache.objects("Namespace") if isinstance(n, Namespace)]
        policies = [p for p in self.cache.objects("NetworkPolicy") if isinstance(p, NetworkPolicy)]
        self.compiler.sync(namespaces, pods, policies, host_ips=self._host_ips,
                           remote_node_ips=self.remote_node_ips, remote_endpoints=self.remote_endpoints,
                           local_node=self.local_node)
        self.audit_namespaces = frozenset(n.metadata.name for n in namespaces
                                          if n.metadata.annotations.get(POLICY_AUDIT_ANNOTATION) == "true")
        local = {pod.metadata.key for pod in pods}
        compiled = self.compiler.compile({r.key: r.ep_id for r in self._endpoints if r.key in local})
        self.compiled = compiled
        for table, desired in self._tables(compiled, pods).items():
            self._writer.sync(table, desired)
        self._resolve(pods, compiled)

    def _tables(self, compiled: CompiledPolicy, pods: Sequence[Pod]) -> dict[str, dict[Any, Any]]:
        endpoints: dict[Any, Any] = {}
        policy: dict[Any, Any] = {}
        placement = ({ip: ep.node for ip, ep in self.remote_endpoints.items()}
                     if self.remote_endpoints is not None else
                     {p.status.pod_ip: p.spec.node_name for p in pods
                      if p.status.pod_ip and not p.spec.host_network})  # hostNetwork: its node's IP
        ipcache: dict[str, Any] = with_tunnel_endpoints(compiled.ipcache, placement, self.nodes,
                                                        self.local_node, pod_cidrs=self._tunnel)
        for record in self._endpoints:
            ep = compiled.endpoints.get(record.ep_id)
            if ep is None:  # a runtime's pod the store does not know (yet): reserved:init, like Cilium
                init = int(ReservedIdentity.INIT)
                endpoints[record.ip] = EndpointEntry(record.ifindex, init, record.ep_id, 0, record.mac,
                                                     record.host_mac)
                ipcache[f"{record.ip}/32"] = init
                continue
            flags = (EP_POLICY_INGRESS if ep.ingress_isolated else 0) | (
                EP_POLICY_EGRESS if ep.egress_isolated else 0) | (
                EP_POLICY_AUDIT if self.audited(record.key) else 0)
            endpoints[record.ip] = EndpointEntry(record.ifindex, ep.identity, record.ep_id, flags, record.mac,
                                                 record.host_mac)
            policy.update(ep.entries)
        return {
            "lxc_endpoints": endpoints,
            "ipcache": ipcache,
            "ipcache_cidr": dict(compiled.cidr_identities),
            "policy": policy,
        }

    def _resolve(self, pods: Sequence[Pod], compiled: CompiledPolicy) -> None:
        """Give flow enrichment exactly the current pods, identities and policy names."""
        endpoints: dict[str, EndpointInfo] = {}
        cgroups: dict[int, str] = {}
        identities: dict[int, EndpointInfo] = {}
        for pod in pods:
            identity = self.compiler.identity_of(pod.metadata.key)
            if not pod.status.pod_ip or identity is None:
                continue
            record = self._endpoints.get(pod.metadata.key)
            compiled_ep = compiled.endpoints.get(record.ep_id) if record else None
            ingress, egress = ((compiled_ep.ingress_policies, compiled_ep.egress_policies)
                               if compiled_ep else ((), ()))
            labels = tuple(f"{k}={v}" for k, v in sorted(identity.labels.items()))
            endpoints[pod.status.pod_ip] = EndpointInfo(
                pod.metadata.namespace, pod.metadata.name, labels, record.ep_id if record else 0,
                identity.id, tuple(map(NamedRef.parse, ingress)), tuple(map(NamedRef.parse, egress)))
            if record is not None and record.cgroup_id:
                cgroups[record.cgroup_id] = pod.status.pod_ip
            identities[identity.id] = EndpointInfo(namespace=pod.metadata.namespace,
                                                   labels=tuple(sorted(labels)))
        known = {pod.metadata.key for pod in pods}
        for record in self._endpoints:
            if record.key not in known:
                endpoints[record.ip] = EndpointInfo(record.namespace, record.name, ("reserved:init",),
                                                    record.ep_id, int(ReservedIdentity.INIT))
        self._resolver.sync_pods(endpoints, cgroups, identities, compiled.policy_sets)
