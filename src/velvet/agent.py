"""The node agent: wires sources → control → datapath → observe, and serves the local API.

One asyncio loop. Store deltas mark services or policy dirty; a reconcile pass recompiles only
what is dirty and writes only the difference to the datapath. On start the agent re-adopts the
pinned maps and links of its previous life, so traffic never stops while it restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from velvet import __version__
from velvet.agent_manifests import parse_all, relocate
from velvet.api.server import build_app, serve_unix
from velvet.control.endpoints import EndpointRegistry
from velvet.control.identity import IdentityAllocator
from velvet.control.labels import DEFAULT_EXCLUDED_LABELS, LabelFilter
from velvet.control.policy import CompiledPolicy, PolicyCompiler
from velvet.control.services import ServiceCompiler
from velvet.datapath import features
from velvet.datapath.delta import LbDelta, UpsertBatch, plan
from velvet.datapath.protocol import Datapath
from velvet.datapath.tables import (
    EP_POLICY_AUDIT,
    EP_POLICY_EGRESS,
    EP_POLICY_INGRESS,
    EndpointEntry,
    LbMap,
    LbState,
)
from velvet.errors import InvalidManifest, VelvetError
from velvet.model import EndpointSlice, Namespace, NetworkPolicy, Pod, PodCondition, PodStatus, Service
from velvet.model.codec import resolve_kind, to_dict
from velvet.model.endpoint import EndpointRecord
from velvet.observe.enrich import DictResolver, EndpointInfo, NamedRef
from velvet.observe.filters import FlowQuery
from velvet.observe.pipeline import FlowPipeline, event_types
from velvet.observe.ui import http_app, listen_address, loopback_listener, serve_http
from velvet.paths import AgentPaths
from velvet.sources.delta import Delta
from velvet.sources.local import ALL_NAMESPACES, LocalStore, StoreError

log = logging.getLogger("velvet.agent")
POLICY_TABLES = ("lxc_endpoints", "ipcache", "ipcache_cidr", "policy")
LB_TABLES = tuple(m.value for m in LbMap)
RECONCILE_DEBOUNCE_SECONDS = 0.02
SCTP_UNSUPPORTED = "SCTP is not supported by this kernel (CONFIG_IP_SCTP unset)"
EVENT_POLL_SECONDS = 0.25
MAP_FILL_PERIOD_SECONDS = 5.0
POLICY_AUDIT_ANNOTATION = "velvet.io/policy-audit-mode"
"""Namespace annotation: "true" puts the namespace's endpoints in policy audit mode (report, never drop)."""


@dataclass(frozen=True)
class AgentConfig:
    """How the agent runs; the sandbox passes the node's cgroup, uplink and addresses."""

    sandbox: str
    node_name: str = "velvet-node"
    node_ips: tuple[str, ...] = ()
    pod_cidr: str = "10.244.0.0/24"
    service_cidr: str = "10.96.0.0/16"
    cgroup: Path | None = None
    uplink: str | None = None
    policy_audit_mode: bool = False
    flow_capacity: int = 4095
    metrics_address: str | None = "127.0.0.1:9962"
    metrics_netns: str | None = None
    """Network namespace (a path) of the /metrics + service map listener; None: the agent's own."""
    state_dir: Path | None = None  # default: /var/lib/velvet/<sandbox>/agent
    identity_exclude_labels: tuple[str, ...] = ()
    """Regexes of pod label keys left out of identities, on top of Cilium's default list."""


def _pod_status(report: Mapping[str, Any]) -> PodStatus:
    return PodStatus(
        phase=report["phase"],
        pod_ip=report.get("podIP"),
        host_ip=report.get("hostIP"),
        conditions=tuple(PodCondition(c["type"], c["status"]) for c in report.get("conditions", [])),
        start_time=report.get("startTime"),
    )


class Agent:
    """State and behaviour of one node agent; the API calls its public methods."""

    def __init__(self, config: AgentConfig, datapath: Datapath) -> None:
        self.config = config
        self.paths = AgentPaths(config.sandbox)
        self.state_dir = config.state_dir or self.paths.state_dir
        self.datapath = datapath
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = LocalStore.open(self.state_dir / "store", service_cidr=config.service_cidr,
                                     node_name=config.node_name)
        self.endpoints = self._load_endpoints()
        self.identities = IdentityAllocator()
        self.policy_compiler = PolicyCompiler(
            self.identities, LabelFilter((*DEFAULT_EXCLUDED_LABELS, *config.identity_exclude_labels)))
        self.services = ServiceCompiler(config.node_name, config.node_ips)
        self.compiled_policy: CompiledPolicy | None = None
        self._sctp = features.sctp_supported()
        self.audit_namespaces: frozenset[str] = frozenset()
        self._applied: dict[str, dict[Any, Any]] = {}
        self._dirty_services: set[str] = set()
        self._policy_dirty = True
        self._wake = asyncio.Event()
        self.started_at = time.time()
        self.reconcile_stats: dict[str, float] = {"services": 0.0, "policy": 0.0, "passes": 0}
        self.resolver = DictResolver()
        self.metrics_registry = CollectorRegistry()
        self.flows = FlowPipeline(self.resolver, node_name=config.node_name, capacity=config.flow_capacity,
                                  kernel_lost=datapath.events_lost, registry=self.metrics_registry)
        self.http_address: str | None = None

    # -- persistence -----------------------------------------------------------------------------

    def _endpoints_file(self) -> Path:
        return self.state_dir / "endpoints.json"

    def _load_endpoints(self) -> EndpointRegistry:
        path = self._endpoints_file()
        if path.exists():
            return EndpointRegistry.restore(json.loads(path.read_text()))
        return EndpointRegistry()

    def _save_endpoints(self) -> None:
        path = self._endpoints_file()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.endpoints.snapshot()))
        os.replace(tmp, path)

    # -- start: adopt what the previous agent left -----------------------------------------------

    def start(self) -> None:
        """Load/adopt the datapath, re-attach endpoints, and converge every table to the store."""
        self.datapath.start()
        for record in list(self.endpoints):
            if self.datapath.has_interface(record.ifname):
                self.datapath.attach_endpoint(record)
            else:
                self.endpoints.remove(record.key)
        self._save_endpoints()
        for table in POLICY_TABLES:
            self._applied[table] = self.datapath.read(table)
        self._adopt_services()
        self.reconcile_policy()

    def _adopt_services(self) -> None:
        """Keep backend ids and rev-NAT indexes of the pinned maps, then write only the difference."""
        current = LbState(*(self.datapath.read(t) for t in LB_TABLES))
        self.services.restore(current)
        slices = self._slices_by_service()
        for svc in self.store.get("services", ALL_NAMESPACES):
            assert isinstance(svc, Service)
            delta = self.services.update(svc, slices.get(svc.metadata.key, []), svc.metadata.key)
            self._name_services(delta, svc.metadata.namespace, svc.metadata.name)
        self._write_lb(self.services.resync(current))
        self._dirty_services.clear()

    # -- reconciliation --------------------------------------------------------------------------

    def on_delta(self, delta: Delta) -> None:
        """Mark what a store change makes dirty."""
        obj = delta.obj
        if isinstance(obj, Service):
            self._dirty_services.add(obj.metadata.key)
        elif isinstance(obj, EndpointSlice):
            if obj.service_name:
                self._dirty_services.add(f"{obj.metadata.namespace}/{obj.service_name}")
        else:
            self._policy_dirty = True
        self._wake.set()

    def reconcile(self) -> None:
        """One pass over whatever is dirty."""
        if self._dirty_services:
            started = time.perf_counter()
            keys, self._dirty_services = self._dirty_services, set()
            slices = self._slices_by_service()
            for key in sorted(keys):
                try:
                    self.reconcile_service(key, slices.get(key, []))
                except VelvetError:
                    log.exception("service %s not programmed; retried on the next change", key)
                    self._dirty_services.add(key)
            self.reconcile_stats["services"] = time.perf_counter() - started
            self._observe_duration("services")
        if self._policy_dirty:
            self.reconcile_policy()
        self.reconcile_stats["passes"] += 1

    def _slices_by_service(self) -> dict[str, list[EndpointSlice]]:
        """Every EndpointSlice by its service's key, in one pass over the store (not one per service)."""
        found: dict[str, list[EndpointSlice]] = {}
        for eps in self.store.get("endpointslices", ALL_NAMESPACES):
            if isinstance(eps, EndpointSlice) and eps.service_name:
                found.setdefault(f"{eps.metadata.namespace}/{eps.service_name}", []).append(eps)
        return found

    def reconcile_service(self, key: str, slices: list[EndpointSlice]) -> None:
        """Recompile one service from its object and `slices` (its EndpointSlices); write its delta."""
        namespace, name = key.split("/", 1)
        try:
            found = self.store.get("services", namespace, name)
        except StoreError:  # deleted: compile it away
            found = []
        service = found[0] if found and isinstance(found[0], Service) else None
        delta = self.services.update(service, slices, key)
        self._name_services(delta, namespace, name)
        self._write_lb(delta)

    def _name_services(self, delta: LbDelta, namespace: str, name: str) -> None:
        """Tell flow enrichment which Service the delta's rev-NAT ids stand for (also after a restart)."""
        for front, value in delta.services.upserts.items():
            if not front.backend_slot:
                self.resolver.set_service(value.rev_nat_index, NamedRef(namespace, name))

    def _write_lb(self, delta: LbDelta) -> None:
        for batch in delta.batches():
            if isinstance(batch, UpsertBatch):
                self.datapath.write(batch.map.value, batch.entries, ())
            else:
                self.datapath.write(batch.map.value, {}, batch.keys)
        if delta.stale:
            self.datapath.flush_backends(delta.stale)

    def reconcile_policy(self) -> None:
        """Recompile identities and policy for every local endpoint and write the differences."""
        started = time.perf_counter()
        self._policy_dirty = False
        pods = [p for p in self.store.get("pods", ALL_NAMESPACES) if isinstance(p, Pod)]
        namespaces = [n for n in self.store.get("namespaces") if isinstance(n, Namespace)]
        policies = [p for p in self.store.get("networkpolicies", ALL_NAMESPACES)
                    if isinstance(p, NetworkPolicy)]
        self.policy_compiler.sync(namespaces, pods, policies, host_ips=self._host_ips())
        self.audit_namespaces = frozenset(n.metadata.name for n in namespaces
                                          if n.metadata.annotations.get(POLICY_AUDIT_ANNOTATION) == "true")
        local = {pod.metadata.key for pod in pods}
        wired = {r.key: r.ep_id for r in self.endpoints if r.key in local}
        compiled = self.policy_compiler.compile(wired)
        self.compiled_policy = compiled
        desired = self._policy_tables(compiled)
        for table in POLICY_TABLES:
            self._sync_table(table, desired[table])
        self._update_resolver(pods, compiled)
        self.reconcile_stats["policy"] = time.perf_counter() - started
        self._observe_duration("policy")

    def _observe_duration(self, what: str) -> None:
        self.flows.metrics.reconcile_duration.labels(what=what).observe(self.reconcile_stats[what])

    def _update_resolver(self, pods: Sequence[Pod], compiled: CompiledPolicy) -> None:
        """Give flow enrichment the current pods, identities and policy names."""
        for pod in pods:
            identity = self.policy_compiler.identity_of(pod.metadata.key)
            if pod.status.pod_ip and identity is not None:
                record = self.endpoints.get(pod.metadata.key)
                labels = tuple(f"{k}={v}" for k, v in sorted(identity.labels.items()))
                compiled_ep = compiled.endpoints.get(record.ep_id) if record else None
                ingress, egress = ((compiled_ep.ingress_policies, compiled_ep.egress_policies)
                                   if compiled_ep else ((), ()))
                self.resolver.set_endpoint(pod.status.pod_ip, EndpointInfo(
                    pod.metadata.namespace, pod.metadata.name, labels, record.ep_id if record else 0,
                    identity.id, tuple(map(NamedRef.parse, ingress)), tuple(map(NamedRef.parse, egress))))
                if record is not None and record.cgroup_id:
                    self.resolver.set_cgroup(record.cgroup_id, pod.status.pod_ip)
                self.resolver.set_identity(identity.id, pod.metadata.namespace, identity.labels)
        for policy_id, names in compiled.policy_sets.items():
            self.resolver.set_policies(policy_id, names)

    def _host_ips(self) -> list[str]:
        gateway = self.config.pod_cidr.split("/")[0].rsplit(".", 1)[0] + ".1"
        return [*self.config.node_ips, gateway]

    def policy_audit(self, pod_key: str) -> bool:
        """Whether the endpoint of pod "namespace/name" reports policy drops instead of dropping."""
        return self.config.policy_audit_mode or pod_key.split("/", 1)[0] in self.audit_namespaces

    def _policy_tables(self, compiled: CompiledPolicy) -> dict[str, dict[Any, Any]]:
        endpoints: dict[Any, Any] = {}
        policy: dict[Any, Any] = {}
        for record in self.endpoints:
            ep = compiled.endpoints.get(record.ep_id)
            if ep is None:
                continue
            flags = (EP_POLICY_INGRESS if ep.ingress_isolated else 0) | (
                EP_POLICY_EGRESS if ep.egress_isolated else 0) | (
                EP_POLICY_AUDIT if self.policy_audit(record.key) else 0)
            endpoints[record.ip] = EndpointEntry(record.ifindex, ep.identity, record.ep_id, flags)
            policy.update(ep.entries)
        return {
            "lxc_endpoints": endpoints,
            "ipcache": dict(compiled.ipcache),
            "ipcache_cidr": dict(compiled.cidr_identities),
            "policy": policy,
        }

    def _sync_table(self, table: str, desired: Mapping[Any, Any]) -> None:
        current = self._applied.get(table, {})
        change = plan(current, desired)
        if change.upserts or change.deletes:
            self.datapath.write(table, change.upserts, change.deletes)
        self._applied[table] = dict(desired)

    async def reconcile_loop(self) -> None:
        """Follow the store and reconcile whenever something became dirty."""
        watch = self.store.watch()

        async def follow() -> None:
            async for delta in watch:
                self.on_delta(delta)

        follower = asyncio.create_task(follow())
        try:
            while True:
                await self._wake.wait()
                await asyncio.sleep(RECONCILE_DEBOUNCE_SECONDS)
                self._wake.clear()
                try:
                    self.reconcile()
                except Exception:
                    log.exception("reconcile failed; will retry on the next change")
                    self._policy_dirty = True
        finally:
            follower.cancel()
            watch.close()

    async def expiry_loop(self) -> None:
        """Remove pods whose grace period ran out without the node runtime finishing them."""
        while True:
            await asyncio.sleep(1.0)
            self.store.expire_terminating()

    async def event_loop(self) -> None:
        """Move datapath events into the flow pipeline, woken by the ring's fd (or polling without one)."""
        ready = asyncio.Event()
        fd = self.datapath.events_fd()
        loop = asyncio.get_running_loop()
        if fd is not None:
            loop.add_reader(fd, ready.set)
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready.wait(), EVENT_POLL_SECONDS)
                ready.clear()
                while len(batch := self.datapath.read_events()):
                    self.flows.ingest(batch)
        finally:
            if fd is not None:
                loop.remove_reader(fd)

    async def map_fill_loop(self) -> None:
        """Refresh the map fill-ratio gauges now and then."""
        while True:
            for m in self.datapath.status().maps:
                if m.capacity:
                    self.flows.metrics.map_fill_ratio.labels(map=m.name).set(m.entries / m.capacity)
            await asyncio.sleep(MAP_FILL_PERIOD_SECONDS)

    def flow_stats(self) -> Any:
        """Flows seen, stored, lost and the current rate."""
        return self.flows.status()

    def query_flows(self, params: Mapping[str, str]) -> Any:
        """Stored flows matching a Hubble-style query."""
        return self.flows.query(FlowQuery.from_params(params))

    def follow_flows(self, params: Mapping[str, str]) -> AsyncIterator[Any]:
        """Matching flows as they come."""
        return self.flows.stream(FlowQuery.from_params(params))

    def follow_events(self, params: Mapping[str, str]) -> AsyncIterator[Any]:
        """Raw datapath events as they come."""
        return self.flows.stream_events(event_types(params.get("type", "")))

    # -- API: health, objects ---------------------------------------------------------------------

    def health(self) -> Any:
        """Liveness answer."""
        return {"ok": True, "version": __version__, "started_at": self.started_at,
                "uptime_seconds": time.time() - self.started_at}

    def apply(self, documents: list[Mapping[str, str]]) -> Any:
        """Validate every document, then apply all objects or none."""
        objects, origins = parse_all(documents)
        try:
            results = self.store.apply(objects, source=documents[0]["path"] if documents else "<apply>")
        except InvalidManifest as exc:
            raise relocate(exc, origins) from None
        return {"results": [str(r) for r in results], "warnings": self._sctp_warnings(objects)}

    def _sctp_warnings(self, objects: Sequence[Any]) -> list[str]:
        """Applied SCTP ports this kernel cannot carry (kubectl shows such server notes as warnings)."""
        if self._sctp:
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
        return {"results": [str(r) for r in results]}

    def get_objects(self, kind: str, namespace: str | None, name: str | None) -> Any:
        """Objects of a kind as kubectl prints them."""
        info = resolve_kind(kind)
        items = self.store.get(info.plural, namespace, name)
        if name and not items:
            raise KeyError(f'{info.plural} "{name}" not found')
        return {"kind": info.kind, "namespaced": info.namespaced, "items": [to_dict(o) for o in items]}

    # -- API: the node runtime (kubelet + CNI) ----------------------------------------------------

    def list_node_pods(self) -> Any:
        """Pods scheduled to this node, for the kubelet."""
        return [to_dict(p) for p in self.store.get("pods", ALL_NAMESPACES)
                if isinstance(p, Pod) and p.spec.node_name == self.config.node_name]

    def add_endpoint(self, namespace: str, name: str, report: Mapping[str, Any]) -> Any:
        """CNI ADD: attach the datapath to the pod's veth and enforce its policy at once."""
        record = self.endpoints.upsert(namespace, name, report["ip"], report["ifname"], report["ifindex"],
                                       report.get("netns_inode", 0), report.get("cgroup_id", 0))
        self.datapath.attach_endpoint(record)
        self._save_endpoints()
        self._policy_dirty = True
        self._wake.set()
        return {"ep_id": record.ep_id}

    def report_pod(self, namespace: str, name: str, report: Mapping[str, Any]) -> Any:
        """The kubelet's status report (phase, IP, readiness)."""
        return {"updated": self.store.update_pod_status(namespace, name, _pod_status(report))}

    def pod_gone(self, namespace: str, name: str) -> Any:
        """The kubelet finished deleting a pod: drop its endpoint, let the store forget it."""
        record = self.endpoints.remove(f"{namespace}/{name}")
        if record is not None:
            self.datapath.detach_endpoint(record)
            self._save_endpoints()
            self._policy_dirty = True
            self._wake.set()
        return {"removed": self.store.finalize_pod_deletion(namespace, name)}

    def endpoint_records(self) -> Sequence[EndpointRecord]:
        """Wired endpoints ordered by id."""
        return list(self.endpoints)

    # -- API: inspection (filled by velvet.agent_queries) -----------------------------------------

    def status(self) -> Any:
        """Everything `velvet status` prints."""
        from velvet.agent_queries import status

        return status(self)

    def query(self, what: str, params: Mapping[str, str]) -> Any:
        """Named read-only queries (service list, endpoint list, identity list, policy, bpf maps...)."""
        from velvet.agent_queries import query

        return query(self, what, params)

    def stream(self, what: str, params: Mapping[str, str]) -> AsyncIterator[Any]:
        """Named streams (flows, events)."""
        from velvet.agent_queries import stream

        return stream(self, what, params)


async def _serve_http(agent: Agent) -> web.AppRunner | None:
    """Serve /metrics and the service map on the configured loopback address (a failure is logged)."""
    address = agent.config.metrics_address
    if not address:
        return None
    try:
        sock = loopback_listener(address, agent.config.metrics_netns)
    except (OSError, ValueError, VelvetError) as exc:
        log.error("not serving /metrics and the service map on %s: %s", address, exc)
        return None
    agent.http_address = listen_address(sock)
    app = http_app(agent.metrics_registry, agent.flows.store, agent.flow_stats)
    runner = await serve_http(app, sock)
    log.info("metrics on http://%s/metrics, service map on http://%s/ui/", agent.http_address,
             agent.http_address)
    return runner


async def run_agent(agent: Agent) -> None:
    """Start the agent and serve until SIGTERM/SIGINT; attachments and pins stay when it exits."""
    agent.start()
    runner = await serve_unix(build_app(agent), agent.paths.socket)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("agent up: API on %s", agent.paths.socket)
    http_runner = await _serve_http(agent)
    tasks = [asyncio.create_task(loop()) for loop in (agent.reconcile_loop, agent.expiry_loop,
                                                       agent.event_loop, agent.map_fill_loop)]
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        agent.flows.close()
        await runner.cleanup()
        if http_runner is not None:
            await http_runner.cleanup()
        agent.store.close()
        agent.datapath.close()
