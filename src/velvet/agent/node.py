"""One node's agent: a source of objects, the controllers that follow it, the datapath they write.

Data flows one way: the source (the local store, or the Kubernetes API with `source="kubernetes"`)
→ deltas mark services or policy dirty → a reconcile pass runs the controllers, which compile only
what is dirty → the table writer hands the difference to the `Datapath`. Everything here is
synchronous and runs on one thread at a time (the handlers put it on the agent's state worker); the
event loop keeps serving health, flows and metrics meanwhile.
On start the agent re-adopts the pinned maps and links of its previous life, so traffic never stops
while it restarts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from velvet import __version__
from velvet.agent.config import AgentConfig
from velvet.agent.health import HealthProber, choose_targets
from velvet.agent.manifests import parse_all, relocate
from velvet.agent.routes import NetlinkRoutes
from velvet.agent.tracing import TracingPolicies
from velvet.agent.tunnel import NetlinkVxlan, TunnelDevice
from velvet.cni.attachments import RUNTIME_ANNOTATION, Attachment, CniAttachments
from velvet.cni.wiring import NetlinkWiring, Wiring
from velvet.control.identity import LAST_LABEL_IDENTITY, IdentityAllocator
from velvet.control.labels import DEFAULT_EXCLUDED_LABELS, LabelFilter
from velvet.control.policy import PolicyCompiler
from velvet.control.services import ServiceCompiler
from velvet.controllers.endpoints import EndpointController
from velvet.controllers.nodes import NodeRouteController, RouteTable
from velvet.controllers.policy import PolicyController
from velvet.controllers.saved_services import SAVED_FILE
from velvet.controllers.services import LB_TABLES, ServiceController
from velvet.datapath.host_routing import host_routing_active
from velvet.datapath.protocol import Datapath
from velvet.datapath.tables import ConntrackSweep, LbState, NodeSettings
from velvet.datapath.writer import TableWriter
from velvet.durable import private_dir
from velvet.errors import InvalidManifest, NotFound
from velvet.ipam import FIRST_POD_HOST, PodIpam, ipam_file
from velvet.model import FIRST_ALLOCATED_IDENTITY, NetworkPolicy, Pod, Service
from velvet.model.cluster_endpoint import ClusterEndpoint
from velvet.model.codec import resolve_kind, to_dict
from velvet.model.decode_report import decode_endpoint_report, decode_pod_status_report
from velvet.model.node import NodeRecord
from velvet.model.pod import PodCondition, PodStatus
from velvet.observe.enrich import DictResolver
from velvet.observe.pipeline import FlowPipeline
from velvet.paths import AgentPaths
from velvet.runtime.enforce import Enforcer
from velvet.runtime.guard import GuardSource
from velvet.runtime.monitor import ProcessMonitor
from velvet.runtime.source import ProcessSource
from velvet.sources.backend import Backend
from velvet.sources.delta import Delta
from velvet.sources.etcd_client import EtcdClient, EtcdError
from velvet.sources.etcd_endpoints import EtcdEndpoints
from velvet.sources.etcd_identities import EtcdIdentities
from velvet.sources.etcd_nodes import NODE_LEASE_FILE, NodeRegistry
from velvet.sources.etcd_store import EtcdBackend
from velvet.sources.local import ALL_NAMESPACES, LocalStore
from velvet.sources.source import AgentSource, NodeView

NODE_KIND_NAMES = ("node", "nodes", "no")
SCTP_UNSUPPORTED = "SCTP is not supported by this kernel (CONFIG_IP_SCTP unset)"

CLUSTER_VIEW_WAIT_SECONDS = 2.0
KUBE_LIST_LOG_SECONDS = 10.0
if TYPE_CHECKING:  # the Kubernetes source (lightkube, httpx) is imported only by agents that use it
    from velvet.sources.kube_endpoints import KubeEndpoints
    from velvet.sources.kube_identities import KubeIdentities
    from velvet.sources.kube_source import KubeSource

log = logging.getLogger("velvet.agent")


@dataclass
class Dirty:
    """What a reconcile pass has to do: services by key, and whether policy must be recompiled."""

    services: set[str] = field(default_factory=set)
    policy: bool = False


class Agent:
    """State and behaviour of one node agent; `handlers.AgentHandlers` serves it over the API."""

    def __init__(self, config: AgentConfig, datapath: Datapath, wiring: Wiring | None = None,
                 routes: RouteTable | None = None, tunnel: TunnelDevice | None = None,
                 proc_source: ProcessSource | None = None, guard_source: GuardSource | None = None) -> None:
        """An agent over `datapath`; `wiring` makes the veths of runtime pods, `routes` the routes to other
        nodes, `tunnel` the VXLAN device of tunnel mode (netlink in the agent's namespace unless given),
        `proc_source` the process events (None: no process monitor), `guard_source` the runtime
        enforcement in cgroup hooks (None: none; rules are set with `guard.set_rules`).

        With the Kubernetes source the node's pod CIDR is its Node's (waited for until it has one)."""
        self.kube: KubeSource | None = None
        if config.source == "kubernetes":
            from velvet.sources.kube_client import load_config
            from velvet.sources.kube_source import KubeSource, node_pod_cidr

            kube_config = load_config(config.kubeconfig)
            config = replace(config, pod_cidr=node_pod_cidr(kube_config, config.node_name))
            self.kube = KubeSource(kube_config, config.node_name, crds=bool(config.node_ips))
        self.config = config
        self.paths = AgentPaths(config.sandbox, config.node_dir)
        self.state_dir = config.resolved_state_dir
        self.datapath = datapath
        private_dir(self.state_dir)
        backend: Backend | None = None
        self.etcd: EtcdBackend | None = None
        self.registry: NodeRegistry | None = None
        self.cluster_identities: EtcdIdentities | KubeIdentities | None = None
        self.kube_identities: KubeIdentities | None = None
        self.cluster_endpoints: EtcdEndpoints | KubeEndpoints | None = None
        if config.store == "etcd":
            backend = self.etcd = EtcdBackend(EtcdClient(config.etcd_endpoint))
            self.registry = NodeRegistry(EtcdClient(config.etcd_endpoint),
                                         lease_file=self.state_dir / NODE_LEASE_FILE)
            if config.node_ips:  # a registered node: identities, endpoints are the cluster's, under its lease
                self.cluster_identities = EtcdIdentities(
                    EtcdClient(config.etcd_endpoint), config.node_name,
                    range(FIRST_ALLOCATED_IDENTITY, LAST_LABEL_IDENTITY + 1))
                self.cluster_endpoints = EtcdEndpoints(EtcdClient(config.etcd_endpoint), config.node_name)
                self.registry.on_lease = self._use_lease
        # a registered node probes the others and serves their probes on its InternalIP (cilium-health)
        self.prober = HealthProber(config.node_ips[0]) if self.cluster_identities is not None else None
        if self.kube is not None and config.node_ips:
            self._use_crds(self.kube)
        self.store: AgentSource
        self.node_view: NodeView | None = self.registry if self.registry is not None else self.kube
        if self.kube is not None:
            self.store = self.kube
        else:
            local = LocalStore.open(self.state_dir / "store", service_cidr=config.service_cidr,
                                    node_name=config.node_name, backend=backend)
            local.nodes = self._node_names
            local.registered = self._registered
            self.store = local
        self.tunnel: TunnelDevice | None = None
        if config.routing == "tunnel":
            self.tunnel = tunnel or NetlinkVxlan(config.uplink)
        self.node_routes = NodeRouteController(routes or NetlinkRoutes(), config.node_name, config.pod_cidr,
                                               self.tunnel.name if self.tunnel else None)
        self.started_at = time.time()
        self.monitors_started = False  # set by start_monitors: until then the status says "starting"
        self.resolver = DictResolver()
        self.metrics_registry = CollectorRegistry()
        self.flows = FlowPipeline(self.resolver, node_name=config.node_name, capacity=config.flow_capacity,
                                  kernel_lost=datapath.events_lost, registry=self.metrics_registry)
        self.processes = ProcessMonitor(proc_source, self.resolver, config.node_name, cgroup=config.cgroup,
                                        registry=self.metrics_registry)
        self.tracing = TracingPolicies(config.node_name, self.state_dir / "tracing.json")
        self.processes.policy_names.update(self.tracing.names())
        self.flows.processes = self.processes.flow_processes  # flows name the process of their connection
        self.guard = Enforcer(guard_source, self.processes, config.node_name)
        self.writer = writer = TableWriter(datapath)
        self.endpoints = EndpointController(self.state_dir / "endpoints.json", datapath)
        gateway = config.host_ips[-1]
        # The node's one allocator: the sandbox kubelet leases from the same file (one level up).
        ipam = PodIpam(ipam_file(self.state_dir.parent), config.pod_cidr, FIRST_POD_HOST, (gateway,))
        self.cni = CniAttachments(self.state_dir / "cni.json", ipam, wiring or NetlinkWiring(),
                                  self.endpoints, gateway)
        self.identities = IdentityAllocator(self.cluster_identities)
        labels = LabelFilter((*DEFAULT_EXCLUDED_LABELS, *config.identity_exclude_labels))
        self.policy = PolicyController(self.store, self.endpoints, PolicyCompiler(self.identities, labels),
                                       writer, self.resolver, host_ips=config.host_ips,
                                       audit_all=config.policy_audit_mode, node_name=config.node_name,
                                       tunnel=self.tunnel is not None)
        self.services = ServiceController(self.store, ServiceCompiler(config.node_name, config.node_ips),
                                          writer, self.resolver)
        self.policy.local_node = config.node_name
        self.reconcile_stats: dict[str, float] = {"services": 0.0, "policy": 0.0, "passes": 0}
        self._refs_checked = False  # the previous life's stale identity refs were dropped

    def _use_crds(self, kube: KubeSource) -> None:
        """Number identities and publish endpoints through VelvetIdentity and VelvetEndpoint objects."""
        from velvet.sources.kube_client import KubeCalls
        from velvet.sources.kube_endpoints import KubeEndpoints
        from velvet.sources.kube_identities import KubeIdentities

        cache = kube.cache
        self.cluster_identities = self.kube_identities = KubeIdentities(
            KubeCalls(kube.config), range(FIRST_ALLOCATED_IDENTITY, LAST_LABEL_IDENTITY + 1),
            lambda: cache.raw("VelvetIdentity"), lambda: cache.raw("VelvetEndpoint"))
        self.cluster_endpoints = KubeEndpoints(
            KubeCalls(kube.config), self.config.node_name, lambda: cache.raw("VelvetEndpoint"),
            lambda timeout: kube.wait_listed(timeout, ("VelvetEndpoint",)))

    # -- start: adopt what the previous agent left -----------------------------------------------

    def on_remote_change(self, wake: Callable[[], None]) -> None:
        """Call `wake` (from another thread) when other writers changed etcd: objects or nodes."""
        if self.etcd is not None:
            self.etcd.on_change = wake
        if self.registry is not None:
            self.registry.on_change = wake
        if self.cluster_endpoints is not None:
            self.cluster_endpoints.on_change = wake
        if self.kube is not None:
            self.kube.on_change = wake

    def start(self) -> None:
        """Load/adopt the datapath, re-attach endpoints, register the node, converge every table."""
        self.start_state()
        self.start_monitors()

    def start_state(self) -> None:
        """The start up to the first pass: the datapath adopted and every table converged."""
        if self.cluster_identities is not None:
            self.cluster_identities.start()
        if self.cluster_endpoints is not None:
            self.cluster_endpoints.start()
        if self.registry is not None and self.config.node_ips:
            self.registry.start(self.own_node())
        if self.prober is not None:
            self.prober.start()
        if self.kube is not None:
            self.kube.start()
        if self.tunnel is not None:  # before the datapath, which attaches to it
            self.tunnel.ensure()
        self.datapath.start()
        settings = self.node_settings()
        if self.datapath.read("node_config").get(0) != settings:
            self.datapath.write("node_config", {0: settings}, ())
        self.endpoints.restore()
        self.cni.drain(self.state_dir / "cni-delete-queue")
        self._await_kube_lists()
        self.policy.adopt()
        if self.config.kube_proxy_replacement:
            pinned = LbState(*(self.datapath.read(t) for t in LB_TABLES))
            compiled = self.services.adopt(pinned, self.state_dir / SAVED_FILE)
            log.info("adopted the pinned load-balancing maps; %d services compiled", compiled)
        else:
            self._leave_services_to_kube_proxy()
        self._await_cluster_view()
        self.reconcile(Dirty(policy=True))

    def start_monitors(self) -> None:
        """Start the process monitor and the enforcer (after `start_state`): they touch nothing of the
        state that `queries.status` reads, so the status may be answered meanwhile (`monitors_started`)."""
        self.processes.start()  # after the first pass: the pods' cgroups name the processes found in /proc
        self.guard.start()
        self.monitors_started = True

    def _leave_services_to_kube_proxy(self) -> None:
        """Without kube-proxy replacement: empty the load-balancing maps, so no entry of a previous life
        shadows kube-proxy's rules (frontends first: nothing points at a removed backend meanwhile)."""
        for table in LB_TABLES:
            if stale := list(self.datapath.read(table)):
                self.datapath.write(table, {}, stale)

    def _await_kube_lists(self) -> None:
        """Wait until the Kubernetes source listed every resource once, then take the lists in: adopting
        the pinned maps against an empty cache would take every service and policy out of them."""
        if self.kube is None:
            return
        while not self.kube.wait_listed(KUBE_LIST_LOG_SECONDS):
            log.warning("waiting for the first list of every resource from %s: %s", self.kube.server,
                        self.kube.storage_status()["error"] or "no answer yet")
        self.store.refresh()

    def _await_cluster_view(self) -> None:
        """Let the first pass see the other nodes and their endpoints (listed within a short wait), so a
        restarted agent does not take remote entries out of the pinned ipcache meanwhile."""
        if self.node_view is None or (self.kube is None and not self.config.node_ips):
            return
        deadline = time.monotonic() + CLUSTER_VIEW_WAIT_SECONDS
        for follower in (self.node_view, self.cluster_endpoints):
            if follower is not None and not follower.wait_listed(max(0.0, deadline - time.monotonic())):
                log.warning("the cluster's objects, nodes or endpoints are not listed yet; the first pass "
                            "is without them")
        self.store.refresh()
        self._follow_cluster(tuple(self.node_view.nodes()))

    # -- reconciliation --------------------------------------------------------------------------

    @staticmethod
    def mark(dirty: Dirty, delta: Delta) -> None:
        """Add to `dirty` what a store change makes dirty."""
        service = ServiceController.touched(delta)
        if service is not None:
            dirty.services.add(service)
        else:
            dirty.policy = True

    def reconcile(self, dirty: Dirty) -> Dirty:
        """One pass over what is dirty; returns what failed and must be retried."""
        retry = Dirty()
        if dirty.services and self.config.kube_proxy_replacement:
            started = time.perf_counter()
            retry.services = self.services.reconcile(dirty.services)
            self._took("services", started)
        if dirty.policy:
            self._report_runtime_pods()
            started = time.perf_counter()
            try:
                self.policy.reconcile()
            finally:
                self._took("policy", started)
            self._publish_endpoints()
            self._drop_stale_refs()
            self.tracing.compile(self.store, self.endpoints)  # programmed by `program_tracing`, on the loop
        self.reconcile_stats["passes"] += 1
        return retry

    def program_tracing(self) -> None:
        """Program what the last reconcile compiled of the tracing policies (on the event loop: the process
        monitor's thread)."""
        self.tracing.program(self.processes, self.guard)

    def save_services(self) -> None:
        """Save the compiled services for the next life's start, if they changed since last saved."""
        if self.config.kube_proxy_replacement and self.services.unsaved:
            self.services.save(self.state_dir / SAVED_FILE)

    def flush_stale(self) -> int:
        """Flush the conntrack entries of backends the passes dropped (a walk kept off their path)."""
        return self.writer.flush_stale()

    def sweep_conntrack(self) -> ConntrackSweep:
        """Remove the conntrack entries whose lifetime ran out (safe from any thread), with its metrics."""
        started = time.perf_counter()
        sweep = self.datapath.sweep_conntrack()
        metrics = self.flows.metrics
        metrics.conntrack_gc_duration.observe(time.perf_counter() - started)
        metrics.conntrack_gc_runs.inc()
        metrics.conntrack_gc_entries.labels(status="alive").set(sweep.alive)
        metrics.conntrack_gc_entries.labels(status="deleted").set(sweep.deleted)
        return sweep

    def _took(self, what: str, started: float) -> None:
        self.reconcile_stats[what] = time.perf_counter() - started
        self.flows.metrics.reconcile_duration.labels(what=what).observe(self.reconcile_stats[what])

    def catch_up(self) -> None:
        """Take in what other writers changed (their deltas mark what is dirty) and route to the nodes."""
        self.store.refresh()
        self.reconcile_nodes()

    def reconcile_nodes(self) -> None:
        """Routes to every other registered node's pod CIDR, none to a node that left (via the node's IP,
        or through the VXLAN device in tunnel mode); the ipcache follows the other nodes' IPs, endpoints
        and their tunnel endpoints; the slices follow which nodes are left."""
        if self.node_view is not None:
            nodes = tuple(self.node_view.nodes())
            self.node_routes.reconcile(nodes)
            if self._follow_cluster(nodes):
                self.reconcile(Dirty(policy=True))
            if self.prober is not None and self.prober.due():  # the probes follow nodes and pods
                pods = [p for p in self.store.get("pods", ALL_NAMESPACES) if isinstance(p, Pod)]
                policies = [p for p in self.store.get("networkpolicies", ALL_NAMESPACES)
                            if isinstance(p, NetworkPolicy)]
                self.prober.aim(choose_targets(nodes, pods, policies))
            self.store.follow_nodes()
        if self.kube_identities is not None:  # garbage-collects unused VelvetIdentities
            self.kube_identities.collect()

    def _follow_cluster(self, nodes: tuple[NodeRecord, ...]) -> bool:
        """Give policy the nodes (their IPs are remote-node, and tunnel endpoints) and the endpoints they
        published; whether they changed."""
        others = tuple(sorted(n.internal_ip for n in nodes if n.name != self.config.node_name))
        remote = self.cluster_endpoints.view() if self.cluster_endpoints is not None else None
        policy = self.policy
        if (others, nodes, remote) == (policy.remote_node_ips, policy.nodes, policy.remote_endpoints):
            return False
        self.policy.remote_node_ips, self.policy.nodes, self.policy.remote_endpoints = others, nodes, remote
        return True

    def node_settings(self) -> NodeSettings:
        """What the programs need: the node address that external connections to backends on other nodes
        are SNATed to (the first node IP; none without an uplink), and whether they forward themselves."""
        snat = self.config.node_ips[0] if self.config.uplink and self.config.node_ips else "0.0.0.0"
        bpf = host_routing_active(self.config.host_routing, self.datapath.kernel())
        return NodeSettings(snat, host_routing=bpf)

    def own_node(self) -> NodeRecord:
        """This node as it registers itself."""
        created = datetime.fromtimestamp(self.started_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return NodeRecord(self.config.node_name, (*self.config.node_ips, "")[0] or self.config.host_ips[-1],
                          self.config.pod_cidr, created, api=str(self.paths.socket))

    def _use_lease(self, lease: int) -> None:
        """The node is registered under `lease`: hold this node's identity refs and endpoints under it."""
        if isinstance(self.cluster_identities, EtcdIdentities):
            self.cluster_identities.use_lease(lease)
        if isinstance(self.cluster_endpoints, EtcdEndpoints):
            self.cluster_endpoints.use_lease(lease)

    def _publish_endpoints(self) -> None:
        """Publish this node's endpoints (IP, identity, pod) to the cluster, for every node's ipcache."""
        compiled = self.policy.compiled
        if self.cluster_endpoints is None or compiled is None:
            return
        node = self.config.node_name
        self.cluster_endpoints.publish({ep.ip: ClusterEndpoint(ep.ip, ep.identity, node, ep.pod)
                                        for ep in compiled.endpoints.values() if ep.ip})

    def _drop_stale_refs(self) -> None:
        """Once, after the first full pass: drop identity refs of the previous agent life this one lacks."""
        if self.cluster_identities is None or self._refs_checked:
            return
        try:
            self.cluster_identities.drop_stale_refs()
            self._refs_checked = True
        except EtcdError as err:
            log.warning("checking this node's identity references: %s; trying again on the next pass", err)

    def _registered(self) -> frozenset[str] | None:
        """The cluster's registered nodes and this one; None when not known yet (or not a cluster)."""
        names = self.registry.registered() if self.registry is not None and self.config.node_ips else None
        return None if names is None else names | {self.config.node_name}

    def nodes(self) -> list[NodeRecord]:
        """The cluster's registered nodes; with no registry (local store), this node alone."""
        if self.node_view is None:
            return [self.own_node()]
        return self.node_view.nodes()

    def _node_names(self) -> list[str]:
        """Nodes the store may schedule pods to: the registered ones, or this one before any is known."""
        return [n.name for n in self.nodes()] or [self.config.node_name]

    def close(self) -> None:
        """Leave the cluster (revoke the node's lease) and stop following the store."""
        self.processes.close()
        self.guard.close()
        if self.prober is not None:
            self.prober.close()
        if self.registry is not None:
            self.registry.close()
        if self.cluster_identities is not None:
            self.cluster_identities.close()
        if self.cluster_endpoints is not None:
            self.cluster_endpoints.close()
        self.store.close()

    def expire_terminating(self) -> None:
        """Remove pods whose grace period ran out without the node runtime finishing them."""
        self.store.expire_terminating()

    def refresh_map_fill(self) -> None:
        """Refresh the map fill-ratio gauges."""
        for m in self.datapath.status().maps:
            if m.capacity:
                self.flows.metrics.map_fill_ratio.labels(map=m.name).set(m.entries / m.capacity)

    # -- objects ---------------------------------------------------------------------------------

    def health(self) -> Any:
        """Liveness answer (safe to call from any thread: reads constants only)."""
        return {"ok": True, "version": __version__, "started_at": self.started_at,
                "uptime_seconds": time.time() - self.started_at}

    def apply(self, documents: list[Mapping[str, str]]) -> Any:
        """Validate every document, then apply all objects or none."""
        objects, origins = parse_all(documents)
        try:
            results = self.store.apply(objects, source=documents[0]["path"] if documents else "<apply>")
        except InvalidManifest as exc:
            raise relocate(exc, origins) from None
        return {"results": [str(r) for r in results], "warnings": self._sctp_warnings(objects),
                "version": self.store.version,
                "services": [obj.metadata.key for obj in objects if isinstance(obj, Service)]}

    def _sctp_warnings(self, objects: Sequence[Any]) -> list[str]:
        """Applied SCTP ports this kernel cannot carry (kubectl shows such server notes as warnings)."""
        if self.datapath.kernel().supports("SCTP"):
            return []
        warnings = []
        for obj in objects:
            if isinstance(obj, NetworkPolicy):
                rules = (*obj.spec.ingress, *obj.spec.egress)
                if any(port.protocol == "SCTP" for rule in rules for port in rule.ports):
                    warnings.append(f"networkpolicy {obj.metadata.key}: {SCTP_UNSUPPORTED}; the policy "
                                    "still isolates its pods, and its SCTP ports can never match")
            elif isinstance(obj, Service) and any(p.protocol == "SCTP" for p in obj.spec.ports):
                warnings.append(f"service {obj.metadata.key}: {SCTP_UNSUPPORTED}; its SCTP ports are not "
                                "served")
        return warnings

    def delete(self, documents: list[Mapping[str, str]], grace_seconds: int | None) -> Any:
        """Delete the objects the documents name (missing ones are reported, not fatal)."""
        objects, _ = parse_all(documents)
        results = self.store.delete(objects, grace_seconds, ignore_not_found=True)
        return {"results": [str(r) for r in results], "version": self.store.version}

    def get_objects(self, kind: str, namespace: str | None, name: str | None) -> Any:
        """Objects of a kind as kubectl prints them."""
        if kind.lower() in NODE_KIND_NAMES:
            found = [n.to_v1() for n in self.nodes() if name in (None, n.name)]
            if name and not found:
                raise NotFound(f'nodes "{name}" not found')
            return {"kind": "Node", "namespaced": False, "items": found}
        try:
            info = resolve_kind(kind)
        except KeyError as exc:
            raise NotFound(str(exc.args[0])) from None
        items = self.store.get(info.plural, namespace, name)
        runtime = self._unknown_runtime_pods(namespace, name) if info.kind == "Pod" else []
        if name and not items and not runtime:
            raise NotFound(f'{info.plural} "{name}" not found')
        return {"kind": info.kind, "namespaced": info.namespaced,
                "items": [to_dict(o) for o in items] + runtime}

    # -- the node runtime (kubelet + CNI) --------------------------------------------------------

    def list_node_pods(self) -> Any:
        """Pods scheduled to this node, for the kubelet."""
        return [to_dict(p) for p in self.store.get("pods", ALL_NAMESPACES)
                if isinstance(p, Pod) and p.spec.node_name == self.config.node_name
                and p.metadata.annotations.get(RUNTIME_ANNOTATION) != "cni"
                and self.cni.by_pod(p.metadata.key) is None]

    def add_endpoint(self, namespace: str, name: str, report: object) -> Any:
        """CNI ADD, validated: attach the datapath to the pod's veth; its policy follows on the next pass."""
        wired = decode_endpoint_report(report, f"endpoint report for {namespace}/{name}")
        return {"ep_id": self.endpoints.add(namespace, name, wired).ep_id}

    def report_pod(self, namespace: str, name: str, report: object) -> Any:
        """The kubelet's status report (phase, IP, readiness), validated like a manifest."""
        status = decode_pod_status_report(report, f"pod status report for {namespace}/{name}")
        return {"updated": self.store.update_pod_status(namespace, name, status)}

    def pod_gone(self, namespace: str, name: str) -> Any:
        """The kubelet finished deleting a pod: drop its endpoint, let the store forget it."""
        self.endpoints.remove(f"{namespace}/{name}")
        return {"removed": self.store.finalize_pod_deletion(namespace, name)}

    # -- runtime pods (velvet-cni) -----------------------------------------------------------------

    def cni_call(self, request: object) -> Any:
        """A CNI call relayed by velvet-cni; the endpoint's policy is programmed before it answers."""
        answer = self.cni.handle(request)
        if "error" not in answer:
            self._report_runtime_pods()
            self.reconcile(Dirty(policy=True))
        return answer

    def _report_runtime_pods(self) -> None:
        """Give known runtime pods their address and readiness in the store, take it from departed ones."""
        for pod in self.store.get("pods", ALL_NAMESPACES):
            if not isinstance(pod, Pod):
                continue
            attachment = self.cni.by_pod(pod.metadata.key)
            if attachment is None and pod.metadata.annotations.get(RUNTIME_ANNOTATION) != "cni":
                continue
            status = PodStatus() if attachment is None else PodStatus(
                phase="Running", pod_ip=attachment.ip, host_ip=(self.config.node_ips or (None,))[0],
                conditions=(PodCondition("Ready", "True"), PodCondition("ContainersReady", "True")))
            self.store.update_pod_status(pod.metadata.namespace, pod.metadata.name, status)

    def _unknown_runtime_pods(self, namespace: str | None, name: str | None) -> list[dict[str, Any]]:
        """Runtime pods the store does not know, as `velvet get pods` shows them (identity reserved:init)."""
        known = {p.metadata.key for p in self.store.get("pods", ALL_NAMESPACES)}
        return [_runtime_pod(a, self.config.node_name) for a in self.cni
                if (namespace or "default") in (ALL_NAMESPACES, a.namespace) and name in (None, a.name)
                and a.pod not in known]


def _runtime_pod(attachment: Attachment, node_name: str) -> dict[str, Any]:
    """A pod known only from its runtime's CNI call, in the API's shape."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": attachment.namespace, "name": attachment.name, "uid": attachment.uid,
                         "annotations": {RUNTIME_ANNOTATION: "cni", "velvet.io/identity": "reserved:init",
                                         "velvet.io/container-id": attachment.container_id}},
            "spec": {"nodeName": node_name, "containers": []},
            "status": {"phase": "Running", "podIP": attachment.ip}}
