"""Service compiler: upstream Service behaviours expressed as lb4_* map contents (no kernel needed)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from velvet.control.maglev import DEFAULT_TABLE_SIZE
from velvet.control.services import (
    ALGORITHM_ANNOTATION,
    LB_CAPACITY,
    NODEPORT_WILDCARD,
    IdAllocator,
    ServiceCompiler,
    stable_order,
)
from velvet.datapath.delta import LbDelta, UpsertBatch
from velvet.datapath.structs import BackendState, LbScope, SvcFlag
from velvet.datapath.tables import LbMap, LbState, Proto, ServiceKey, ServiceValue, SourceRangeKey
from velvet.errors import MapFull
from velvet.model.meta import ObjectMeta
from velvet.model.service import (
    HEADLESS_LABEL,
    SERVICE_NAME_LABEL,
    SERVICE_PROXY_NAME_LABEL,
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    Service,
    ServicePort,
    ServiceSpec,
)

NODE = "node-a"
NODE_IP = "192.168.1.10"
CLUSTER_IP = "10.96.0.10"
TCP, UDP = int(Proto.TCP), int(Proto.UDP)


def service(
    name: str = "web",
    *,
    ports: Sequence[ServicePort] = (ServicePort(80, name="http", target_port="http"),),
    cluster_ip: str | None = CLUSTER_IP,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    ingress: Sequence[str] = (),
    **spec: Any,
) -> Service:
    """A Service in namespace default."""
    meta = ObjectMeta(name, "default", labels=MappingProxyType(labels or {}),
                      annotations=MappingProxyType(annotations or {}))
    return Service(meta, ServiceSpec(ports=tuple(ports), cluster_ip=cluster_ip, **spec),
                   load_balancer_ingress=tuple(ingress))


def ep(ip: str, node: str = NODE, *, ready: bool | None = True, serving: bool | None = None,
       terminating: bool | None = None) -> Endpoint:
    """An endpoint on `node` with the given conditions."""
    return Endpoint((ip,), EndpointConditions(ready, serving, terminating), node_name=node)


def terminating_ep(ip: str, node: str = NODE) -> Endpoint:
    """An endpoint of a pod in its grace period that still passes its readiness probe."""
    return ep(ip, node, ready=False, serving=True, terminating=True)


def eps_slice(endpoints: Sequence[Endpoint], *, svc: str = "web", name: str = "",
              ports: Sequence[EndpointPort] = (EndpointPort(8080, name="http"),),
              address_type: str = "IPv4") -> EndpointSlice:
    """An EndpointSlice of service `svc` in namespace default."""
    meta = ObjectMeta(name or f"{svc}-abcde", "default", labels=MappingProxyType({SERVICE_NAME_LABEL: svc}))
    return EndpointSlice(meta, tuple(endpoints), tuple(ports), address_type)


@pytest.fixture
def compiler() -> ServiceCompiler:
    """A compiler for node-a with one node address."""
    return ServiceCompiler(NODE, [NODE_IP, "fd00::10"])


def front(state: LbState, address: str, port: int, proto: int = TCP, scope: int = LbScope.EXT
          ) -> ServiceValue:
    """The slot-0 entry of a frontend."""
    return state.services[ServiceKey(address, port, 0, proto, scope)]


def backends_of(state: LbState, address: str, port: int, proto: int = TCP, scope: int = LbScope.EXT
                ) -> set[tuple[str, int]]:
    """The (address, port) of every backend in the slots of a frontend scope."""
    count = front(state, address, port, proto, scope).count
    found = set()
    for slot in range(1, count + 1):
        backend = state.backends[state.services[ServiceKey(address, port, slot, proto, scope)].backend_id]
        found.add((backend.address, backend.port))
    return found


def apply(state: dict[str, dict[object, object]], delta: LbDelta) -> None:
    """Apply a delta's batches to a dict-of-maps, as the agent applies them to the kernel maps."""
    for batch in delta.batches():
        target = state.setdefault(batch.map.value, {})
        if isinstance(batch, UpsertBatch):
            target.update(batch.entries)
        else:
            for key in batch.keys:
                target.pop(key, None)


# ClusterIP basics


def test_should_serve_a_basic_endpoint_from_pods(compiler: ServiceCompiler) -> None:
    """ClusterIP:port balances over every ready endpoint; the frontend has a rev-NAT entry."""
    compiler.update(service(), [eps_slice([ep("10.0.1.1"), ep("10.0.1.2", "node-b")])], "default/web")
    state = compiler.desired()
    frontend = front(state, CLUSTER_IP, 80)
    assert frontend.count == 2
    assert frontend.flags == SvcFlag.CLUSTERIP
    assert backends_of(state, CLUSTER_IP, 80) == {("10.0.1.1", 8080), ("10.0.1.2", 8080)}
    assert state.revnat[frontend.rev_nat_index].address == CLUSTER_IP
    assert state.revnat[frontend.rev_nat_index].port == 80
    assert {b.state for b in state.backends.values()} == {BackendState.ACTIVE}
    assert all(v.rev_nat_index == frontend.rev_nat_index for v in state.services.values())
    assert not state.maglev


def test_should_serve_multiport_endpoints_from_pods(compiler: ServiceCompiler) -> None:
    """Each service port reaches its own target port, matched by port name."""
    ports = (ServicePort(80, name="portname1", target_port=8080),
             ServicePort(81, name="portname2", target_port=9090))
    slice_ports = (EndpointPort(9090, name="portname2"), EndpointPort(8080, name="portname1"))
    compiler.update(service(ports=ports), [eps_slice([ep("10.0.1.1")], ports=slice_ports)], "default/web")
    state = compiler.desired()
    assert backends_of(state, CLUSTER_IP, 80) == {("10.0.1.1", 8080)}
    assert backends_of(state, CLUSTER_IP, 81) == {("10.0.1.1", 9090)}
    assert front(state, CLUSTER_IP, 80).rev_nat_index != front(state, CLUSTER_IP, 81).rev_nat_index


def test_endpoints_should_be_updated_after_adding_or_deleting_ports(compiler: ServiceCompiler) -> None:
    """Removing a service port removes exactly its frontend, slots and rev-NAT entry."""
    ports = (ServicePort(80, name="a"), ServicePort(81, name="b"))
    slice_ports = (EndpointPort(8080, name="a"), EndpointPort(8081, name="b"))
    slices = [eps_slice([ep("10.0.1.1")], ports=slice_ports)]
    compiler.update(service(ports=ports), slices, "default/web")
    index = front(compiler.desired(), CLUSTER_IP, 81).rev_nat_index
    delta = compiler.update(service(ports=ports[:1]), slices, "default/web")
    assert set(delta.services.deletes) == {ServiceKey(CLUSTER_IP, 81, s, TCP) for s in (0, 1)}
    assert not delta.services.upserts
    assert delta.revnat.deletes == [index]
    stale = [(s.backend_address, s.backend_port, s.frontend_port) for s in delta.stale]
    assert stale == [("10.0.1.1", 8081, 81)]


def test_should_serve_endpoints_on_same_port_and_different_protocols(compiler: ServiceCompiler) -> None:
    """Port 53 on TCP and on UDP are two frontends with their own backends and rev-NAT indexes."""
    ports = (ServicePort(53, "TCP", name="dns-tcp"), ServicePort(53, "UDP", name="dns"))
    slice_ports = (EndpointPort(5353, "UDP", name="dns"), EndpointPort(5354, "TCP", name="dns-tcp"))
    compiler.update(service(ports=ports), [eps_slice([ep("10.0.1.1")], ports=slice_ports)], "default/web")
    state = compiler.desired()
    assert backends_of(state, CLUSTER_IP, 53, TCP) == {("10.0.1.1", 5354)}
    assert backends_of(state, CLUSTER_IP, 53, UDP) == {("10.0.1.1", 5353)}
    assert front(state, CLUSTER_IP, 53, TCP).rev_nat_index != front(state, CLUSTER_IP, 53, UDP).rev_nat_index
    assert {b.proto for b in state.backends.values()} == {TCP, UDP}


def test_port_name_matches_only_the_same_protocol(compiler: ServiceCompiler) -> None:
    """A slice port with the right name but another protocol is not the service port's."""
    compiler.update(service(), [eps_slice([ep("10.0.1.1")], ports=[EndpointPort(8080, "UDP", name="http")])],
                    "default/web")
    assert front(compiler.desired(), CLUSTER_IP, 80).count == 0


def test_named_target_port_resolves_per_slice(compiler: ServiceCompiler) -> None:
    """targetPort "http" may be 8080 on some pods and 9090 on others: each slice carries its number."""
    slices = [eps_slice([ep("10.0.1.1")], name="web-1"),
              eps_slice([ep("10.0.1.2")], name="web-2", ports=[EndpointPort(9090, name="http")])]
    compiler.update(service(), slices, "default/web")
    assert backends_of(compiler.desired(), CLUSTER_IP, 80) == {("10.0.1.1", 8080), ("10.0.1.2", 9090)}


def test_should_support_a_service_with_multiple_endpoint_ips_specified_in_multiple_endpointslices(
    compiler: ServiceCompiler,
) -> None:
    """Endpoints of every slice of the service are merged; duplicates count once."""
    slices = [eps_slice([ep("10.0.1.1"), ep("10.0.1.2")], name="web-1"),
              eps_slice([ep("10.0.1.2"), ep("10.0.1.3")], name="web-2")]
    compiler.update(service(), slices, "default/web")
    state = compiler.desired()
    assert backends_of(state, CLUSTER_IP, 80) == {("10.0.1.1", 8080), ("10.0.1.2", 8080), ("10.0.1.3", 8080)}
    assert front(state, CLUSTER_IP, 80).count == 3


def test_should_support_a_service_with_multiple_ports_specified_in_multiple_endpointslices(
    compiler: ServiceCompiler,
) -> None:
    """One slice per port (as the EndpointSlice controller writes for differing ports) still serves both."""
    ports = (ServicePort(80, name="a"), ServicePort(81, name="b"))
    slices = [eps_slice([ep("10.0.1.1")], name="web-a", ports=[EndpointPort(8080, name="a")]),
              eps_slice([ep("10.0.1.1")], name="web-b", ports=[EndpointPort(8081, name="b")])]
    compiler.update(service(ports=ports), slices, "default/web")
    state = compiler.desired()
    assert backends_of(state, CLUSTER_IP, 80) == {("10.0.1.1", 8080)}
    assert backends_of(state, CLUSTER_IP, 81) == {("10.0.1.1", 8081)}


@pytest.mark.parametrize(
    ("slice_", "why"),
    [
        (eps_slice([ep("10.0.1.1")], svc="other"), "a slice of another service"),
        (eps_slice([ep("fd00::1")], address_type="IPv6"), "an IPv6 slice (lb6's business)"),
        (eps_slice([Endpoint(())]), "an endpoint without addresses"),
        (eps_slice([ep("10.0.1.1")], ports=[EndpointPort(None, name="http")]), "a port without number"),
    ],
)
def test_ignores_slices_and_endpoints_it_cannot_use(compiler: ServiceCompiler, slice_: EndpointSlice,
                                                    why: str) -> None:
    """Nothing but the service's own IPv4 endpoints with a port number becomes a backend."""
    compiler.update(service(), [slice_], "default/web")
    assert front(compiler.desired(), CLUSTER_IP, 80).count == 0, why


def test_should_be_rejected_when_no_endpoints_exist(compiler: ServiceCompiler) -> None:
    """A service without endpoints keeps its frontend with count 0, so the datapath refuses at once."""
    compiler.update(service(type="NodePort", ports=[ServicePort(80, name="http", node_port=30080)]), [],
                    "default/web")
    state = compiler.desired()
    assert front(state, CLUSTER_IP, 80).count == 0
    assert front(state, NODE_IP, 30080).count == 0
    assert not state.backends
    assert not state.maglev  # no table for an empty backend set


def test_should_be_rejected_for_evicted_pods(compiler: ServiceCompiler) -> None:
    """When the only endpoint goes away, its slots go and the frontend stays with count 0."""
    compiler.update(service(), [eps_slice([ep("10.0.1.1")])], "default/web")
    delta = compiler.update(service(), [eps_slice([])], "default/web")
    empty = ServiceValue(0, 0, 0, 1, SvcFlag.CLUSTERIP)
    assert delta.services.upserts == {ServiceKey(CLUSTER_IP, 80, 0, TCP): empty}
    assert delta.services.deletes == [ServiceKey(CLUSTER_IP, 80, 1, TCP)]
    assert len(delta.backends.deletes) == 1


def test_should_be_able_to_up_and_down_services(compiler: ServiceCompiler) -> None:
    """Deleting a service removes every entry it had and frees its ids."""
    created = compiler.update(service(), [eps_slice([ep("10.0.1.1"), ep("10.0.1.2")])], "default/web")
    state = compiler.desired()
    removed = compiler.delete("default/web")
    assert set(removed.services.deletes) == set(state.services) == set(created.services.upserts)
    assert set(removed.backends.deletes) == set(state.backends)
    assert set(removed.revnat.deletes) == set(state.revnat)
    assert compiler.desired() == LbState()
    assert compiler.delete("default/web").batches() == []


def test_should_be_possible_to_connect_to_a_service_via_external_ip(compiler: ServiceCompiler) -> None:
    """Each externalIP:port is a frontend over the same endpoints, flagged EXTERNAL_IP."""
    compiler.update(service(external_ips=("203.0.113.7",)), [eps_slice([ep("10.0.1.1")])], "default/web")
    state = compiler.desired()
    frontend = front(state, "203.0.113.7", 80)
    assert frontend.flags & SvcFlag.EXTERNAL_IP
    assert backends_of(state, "203.0.113.7", 80) == {("10.0.1.1", 8080)}
    assert state.revnat[frontend.rev_nat_index].address == "203.0.113.7"


@pytest.mark.parametrize(
    ("svc", "why"),
    [
        (service(cluster_ip="None"), "headless (clusterIP: None)"),
        (service(cluster_ip=None, type="ExternalName", external_name="example.com"), "ExternalName"),
        (service(labels={SERVICE_PROXY_NAME_LABEL: "other-proxy"}), "service-proxy-name label"),
        (service(labels={SERVICE_PROXY_NAME_LABEL: ""}), "service-proxy-name label with any value"),
        (service(labels={HEADLESS_LABEL: ""}), "service.kubernetes.io/headless label"),
        (service(cluster_ip=None), "no ClusterIP allocated yet"),
        (service(cluster_ip="fd00::10"), "an IPv6 ClusterIP"),
    ],
)
def test_services_that_get_no_datapath_entries(compiler: ServiceCompiler, svc: Service, why: str) -> None:
    """kube-proxy programs nothing for these services."""
    delta = compiler.update(svc, [eps_slice([ep("10.0.1.1")])], "default/web")
    assert len(delta) == 0, why
    assert compiler.desired() == LbState()


def test_should_implement_service_kubernetes_io_service_proxy_name(compiler: ServiceCompiler) -> None:
    """Adding the label removes the service's entries; removing it programs them again."""
    slices = [eps_slice([ep("10.0.1.1")])]
    compiler.update(service(), slices, "default/web")
    before = compiler.desired()
    labelled = compiler.update(service(labels={SERVICE_PROXY_NAME_LABEL: "foo-bar"}), slices, "default/web")
    assert set(labelled.services.deletes) == set(before.services)
    assert compiler.desired() == LbState()
    compiler.update(service(), slices, "default/web")
    assert set(compiler.desired().services) == set(before.services)


def test_should_implement_service_kubernetes_io_headless(compiler: ServiceCompiler) -> None:
    """The headless label toggles the service off and on, like service-proxy-name."""
    slices = [eps_slice([ep("10.0.1.1")])]
    compiler.update(service(labels={HEADLESS_LABEL: ""}), slices, "default/web")
    assert compiler.desired() == LbState()
    compiler.update(service(), slices, "default/web")
    assert front(compiler.desired(), CLUSTER_IP, 80).count == 1


def test_should_be_able_to_change_the_type_from_clusterip_to_externalname(compiler: ServiceCompiler) -> None:
    """ClusterIP -> ExternalName removes all entries; back to ClusterIP restores them."""
    slices = [eps_slice([ep("10.0.1.1")])]
    compiler.update(service(), slices, "default/web")
    compiler.update(service(cluster_ip=None, type="ExternalName", external_name="example.com"), slices,
                    "default/web")
    assert compiler.desired() == LbState()
    compiler.update(service(), slices, "default/web")
    assert front(compiler.desired(), CLUSTER_IP, 80).count == 1


# Session affinity


def test_should_have_session_affinity_work_for_service_with_type_clusterip(compiler: ServiceCompiler) -> None:
    """ClientIP affinity sets AFFINITY and the timeout on the frontend entry."""
    compiler.update(service(session_affinity="ClientIP", affinity_timeout_seconds=15),
                    [eps_slice([ep("10.0.1.1")])], "default/web")
    frontend = front(compiler.desired(), CLUSTER_IP, 80)
    assert frontend.flags & SvcFlag.AFFINITY
    assert frontend.affinity_timeout == 15


def test_should_be_able_to_switch_session_affinity_for_service_with_type_clusterip(
    compiler: ServiceCompiler,
) -> None:
    """Switching affinity rewrites only the frontend entry, not the backend slots."""
    slices = [eps_slice([ep("10.0.1.1"), ep("10.0.1.2")])]
    compiler.update(service(), slices, "default/web")
    delta = compiler.update(service(session_affinity="ClientIP"), slices, "default/web")
    assert list(delta.services.upserts) == [ServiceKey(CLUSTER_IP, 80, 0, TCP)]
    assert delta.services.upserts[ServiceKey(CLUSTER_IP, 80, 0, TCP)].affinity_timeout == 10800
    back = compiler.update(service(), slices, "default/web")
    assert back.services.upserts[ServiceKey(CLUSTER_IP, 80, 0, TCP)].flags == SvcFlag.CLUSTERIP
    assert len(back) == 1


# NodePort, LoadBalancer, external traffic policy


def nodeport_service(**spec: Any) -> Service:
    """A NodePort service: port 80 -> named target "http", nodePort 30080."""
    return service(type="NodePort", ports=[ServicePort(80, name="http", target_port="http", node_port=30080)],
                   **spec)


def test_should_be_able_to_create_a_functioning_nodeport_service(compiler: ServiceCompiler) -> None:
    """NodePort frontends on each IPv4 node address and the wildcard, plus the ClusterIP."""
    compiler.update(nodeport_service(), [eps_slice([ep("10.0.1.1"), ep("10.0.2.1", "node-b")])],
                    "default/web")
    state = compiler.desired()
    for address in (NODE_IP, NODEPORT_WILDCARD):
        frontend = front(state, address, 30080)
        assert frontend.flags == SvcFlag.NODEPORT | SvcFlag.MAGLEV
        assert backends_of(state, address, 30080) == {("10.0.1.1", 8080), ("10.0.2.1", 8080)}
    assert front(state, CLUSTER_IP, 80).flags == SvcFlag.CLUSTERIP
    assert {k.address for k in state.services} == {CLUSTER_IP, NODE_IP, NODEPORT_WILDCARD}


def test_should_support_basic_nodeport_udp_functionality(compiler: ServiceCompiler) -> None:
    """A UDP NodePort is a UDP frontend on the node addresses."""
    svc = service(type="NodePort", ports=[ServicePort(53, "UDP", name="dns", node_port=30053)])
    compiler.update(svc, [eps_slice([ep("10.0.1.1")], ports=[EndpointPort(5353, "UDP", name="dns")])],
                    "default/web")
    assert backends_of(compiler.desired(), NODE_IP, 30053, UDP) == {("10.0.1.1", 5353)}


def test_nodeport_without_wildcard_and_node_address_changes() -> None:
    """Without the wildcard only node addresses listen; changing them recompiles NodePort services only."""
    compiler = ServiceCompiler(NODE, [NODE_IP], nodeport_wildcard=False)
    compiler.update(nodeport_service(), [eps_slice([ep("10.0.1.1")])], "default/web")
    compiler.update(service("plain"), [eps_slice([ep("10.0.1.2")], svc="plain")], "default/plain")
    assert {k.address for k in compiler.desired().services if k.dport == 30080} == {NODE_IP}
    delta = compiler.set_node_ips(["192.168.1.11"])
    assert {k.address for k in delta.services.upserts} == {"192.168.1.11"}
    assert {k.address for k in delta.services.deletes} == {NODE_IP}


def test_should_implement_nodeport_with_external_traffic_policy_local(compiler: ServiceCompiler) -> None:
    """eTP=Local: external scope only local endpoints, internal scope all of them, ClusterIP untouched."""
    slices = [eps_slice([ep("10.0.1.1"), ep("10.0.2.1", "node-b")])]
    compiler.update(nodeport_service(external_traffic_policy="Local"), slices, "default/web")
    state = compiler.desired()
    frontend = front(state, NODE_IP, 30080)
    assert frontend.flags & SvcFlag.LOCAL_ONLY_EXT
    assert frontend.flags & SvcFlag.TWO_SCOPES
    assert backends_of(state, NODE_IP, 30080) == {("10.0.1.1", 8080)}
    internal = backends_of(state, NODE_IP, 30080, scope=LbScope.INT)
    assert internal == {("10.0.1.1", 8080), ("10.0.2.1", 8080)}
    assert front(state, NODE_IP, 30080, scope=LbScope.INT).rev_nat_index == frontend.rev_nat_index
    assert backends_of(state, CLUSTER_IP, 80) == {("10.0.1.1", 8080), ("10.0.2.1", 8080)}
    assert not front(state, CLUSTER_IP, 80).flags & SvcFlag.LOCAL_ONLY_EXT
    assert not any(k.scope == LbScope.INT for k in state.services if k.address == CLUSTER_IP)


def test_external_traffic_policy_local_node_without_local_endpoints(compiler: ServiceCompiler) -> None:
    """No local endpoint: the external scope has count 0 (dropped) while pods here still reach remote ones."""
    compiler.update(nodeport_service(external_traffic_policy="Local"),
                    [eps_slice([ep("10.0.2.1", "node-b")])], "default/web")
    state = compiler.desired()
    assert front(state, NODE_IP, 30080).count == 0
    assert front(state, NODE_IP, 30080).flags & SvcFlag.TWO_SCOPES
    assert backends_of(state, NODE_IP, 30080, scope=LbScope.INT) == {("10.0.2.1", 8080)}
    assert not state.maglev.get(front(state, NODE_IP, 30080).rev_nat_index)


def test_external_traffic_policy_local_with_only_local_endpoints_needs_one_scope(
    compiler: ServiceCompiler,
) -> None:
    """When every endpoint is local both scopes are equal: a single scope, no TWO_SCOPES."""
    compiler.update(nodeport_service(external_traffic_policy="Local"), [eps_slice([ep("10.0.1.1")])],
                    "default/web")
    state = compiler.desired()
    assert not front(state, NODE_IP, 30080).flags & SvcFlag.TWO_SCOPES
    assert front(state, NODE_IP, 30080).flags & SvcFlag.LOCAL_ONLY_EXT
    assert not any(k.scope == LbScope.INT for k in state.services)


def test_should_fallback_to_terminating_endpoints_when_there_are_no_ready_endpoints_with_etp_cluster(
    compiler: ServiceCompiler,
) -> None:
    """Only terminating (serving) endpoints: NodePort and ClusterIP still use them, state TERMINATING."""
    compiler.update(nodeport_service(), [eps_slice([terminating_ep("10.0.2.1", "node-b")])], "default/web")
    state = compiler.desired()
    assert backends_of(state, NODE_IP, 30080) == {("10.0.2.1", 8080)}
    assert backends_of(state, CLUSTER_IP, 80) == {("10.0.2.1", 8080)}
    assert [b.state for b in state.backends.values()] == [BackendState.TERMINATING]


def test_should_fallback_to_local_terminating_endpoints_when_there_are_no_ready_endpoints_with_etp_local(
    compiler: ServiceCompiler,
) -> None:
    """eTP=Local with a local terminating endpoint and a remote ready one: external uses the local one."""
    slices = [eps_slice([terminating_ep("10.0.1.1"), ep("10.0.2.1", "node-b")])]
    compiler.update(nodeport_service(external_traffic_policy="Local"), slices, "default/web")
    state = compiler.desired()
    assert backends_of(state, NODE_IP, 30080) == {("10.0.1.1", 8080)}
    assert backends_of(state, NODE_IP, 30080, scope=LbScope.INT) == {("10.0.2.1", 8080)}


def test_should_prefer_ready_endpoints_and_keep_terminating_ones_for_existing_connections(
    compiler: ServiceCompiler,
) -> None:
    """Ready endpoints exist: slots hold only them; a terminating one stays in lb4_backends (draining)."""
    compiler.update(service(), [eps_slice([ep("10.0.1.1"), terminating_ep("10.0.1.2")])], "default/web")
    state = compiler.desired()
    assert backends_of(state, CLUSTER_IP, 80) == {("10.0.1.1", 8080)}
    states = {(b.address, b.state) for b in state.backends.values()}
    assert states == {("10.0.1.1", BackendState.ACTIVE), ("10.0.1.2", BackendState.TERMINATING)}


# internalTrafficPolicy


def test_should_respect_internal_traffic_policy_local_pod_to_pod(compiler: ServiceCompiler) -> None:
    """iTP=Local: the ClusterIP reaches only this node's endpoints."""
    compiler.update(service(internal_traffic_policy="Local"),
                    [eps_slice([ep("10.0.1.1"), ep("10.0.2.1", "node-b")])], "default/web")
    assert backends_of(compiler.desired(), CLUSTER_IP, 80) == {("10.0.1.1", 8080)}


def test_internal_traffic_policy_local_does_not_fall_back_to_remote_endpoints(
    compiler: ServiceCompiler,
) -> None:
    """iTP=Local on a node without local endpoints: count 0, connections are refused."""
    compiler.update(service(internal_traffic_policy="Local"), [eps_slice([ep("10.0.2.1", "node-b")])],
                    "default/web")
    assert front(compiler.desired(), CLUSTER_IP, 80).count == 0


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("Cluster", {("10.0.1.1", 8080), ("10.0.2.1", 8080)}), ("Local", {("10.0.1.1", 8080)})],
)
def test_should_fallback_to_terminating_endpoints_when_there_are_no_ready_endpoints_with_itp(
    compiler: ServiceCompiler, policy: str, expected: set[tuple[str, int]],
) -> None:
    """No ready endpoint: ClusterIP uses serving terminating ones (only local ones for iTP=Local)."""
    slices = [eps_slice([terminating_ep("10.0.1.1"), terminating_ep("10.0.2.1", "node-b"),
                         ep("10.0.3.1", "node-b", ready=False)])]
    compiler.update(service(internal_traffic_policy=policy), slices, "default/web")
    assert backends_of(compiler.desired(), CLUSTER_IP, 80) == expected


def test_internal_traffic_policy_local_with_nodeport_uses_two_scopes(compiler: ServiceCompiler) -> None:
    """iTP=Local, eTP=Cluster: external scope all endpoints, internal scope the local ones."""
    compiler.update(nodeport_service(internal_traffic_policy="Local"),
                    [eps_slice([ep("10.0.1.1"), ep("10.0.2.1", "node-b")])], "default/web")
    state = compiler.desired()
    assert backends_of(state, NODE_IP, 30080) == {("10.0.1.1", 8080), ("10.0.2.1", 8080)}
    assert backends_of(state, NODE_IP, 30080, scope=LbScope.INT) == {("10.0.1.1", 8080)}
    assert not front(state, NODE_IP, 30080).flags & SvcFlag.LOCAL_ONLY_EXT
    assert backends_of(state, CLUSTER_IP, 80) == {("10.0.1.1", 8080)}


# Endpoint readiness


@pytest.mark.parametrize(
    ("conditions", "used"),
    [
        (EndpointConditions(ready=True), True),
        (EndpointConditions(), True),  # unknown readiness is ready
        (EndpointConditions(ready=False), False),
        (EndpointConditions(ready=False, serving=False, terminating=True), False),
        (EndpointConditions(ready=False, serving=True, terminating=True), True),
        (EndpointConditions(ready=False, serving=True, terminating=False), False),
    ],
)
def test_endpoint_conditions(compiler: ServiceCompiler, conditions: EndpointConditions, used: bool) -> None:
    """kube-proxy's reading of ready, serving and terminating (the only endpoint of the service)."""
    endpoint = Endpoint(("10.0.1.1",), conditions, node_name=NODE)
    compiler.update(service(), [eps_slice([endpoint])], "default/web")
    assert front(compiler.desired(), CLUSTER_IP, 80).count == int(used)


def test_should_not_be_able_to_connect_to_terminating_and_unready_endpoints_if_publish_not_ready_false(
    compiler: ServiceCompiler,
) -> None:
    """Terminating and not serving, not ready: neither ClusterIP nor NodePort has a backend."""
    dying = ep("10.0.1.1", ready=False, serving=False, terminating=True)
    compiler.update(nodeport_service(), [eps_slice([dying])], "default/web")
    state = compiler.desired()
    assert front(state, CLUSTER_IP, 80).count == 0
    assert front(state, NODE_IP, 30080).count == 0
    assert not state.backends


def test_should_be_able_to_connect_to_terminating_and_unready_endpoints_if_publish_not_ready_true(
    compiler: ServiceCompiler,
) -> None:
    """With publishNotReadyAddresses the controller writes ready=true: the slice is honoured."""
    published = ep("10.0.1.1", ready=True, serving=False, terminating=True)
    compiler.update(service(publish_not_ready_addresses=True), [eps_slice([published])], "default/web")
    assert backends_of(compiler.desired(), CLUSTER_IP, 80) == {("10.0.1.1", 8080)}


# LoadBalancer and source ranges


def test_load_balancer_ingress_ips_and_source_ranges(compiler: ServiceCompiler) -> None:
    """LB ingress IPs are frontends; loadBalancerSourceRanges restrict them (IPv4 ranges, canonical)."""
    svc = service(type="LoadBalancer", ports=[ServicePort(80, name="http", node_port=30080)],
                  ingress=["198.51.100.1"],
                  load_balancer_source_ranges=("10.1.2.3/8", "192.0.2.0/24", "fd00::/8"))
    compiler.update(svc, [eps_slice([ep("10.0.1.1")])], "default/web")
    state = compiler.desired()
    frontend = front(state, "198.51.100.1", 80)
    assert frontend.flags == SvcFlag.LOADBALANCER | SvcFlag.SOURCE_RANGE | SvcFlag.MAGLEV
    index = frontend.rev_nat_index
    assert set(state.src_range) == {SourceRangeKey(index, c) for c in ("10.0.0.0/8", "192.0.2.0/24")}
    assert not front(state, NODE_IP, 30080).flags & SvcFlag.SOURCE_RANGE
    delta = compiler.update(service(type="LoadBalancer", ports=svc.spec.ports, ingress=["198.51.100.1"]),
                            [eps_slice([ep("10.0.1.1")])], "default/web")
    assert set(delta.src_range.deletes) == set(state.src_range)


def test_load_balancer_without_node_ports_has_no_nodeport_frontends(compiler: ServiceCompiler) -> None:
    """allocateLoadBalancerNodePorts=false leaves nodePort unset: ClusterIP and LB frontends only."""
    compiler.update(service(type="LoadBalancer", ingress=["198.51.100.1"]), [eps_slice([ep("10.0.1.1")])],
                    "default/web")
    assert {k.address for k in compiler.desired().services} == {CLUSTER_IP, "198.51.100.1"}


def test_frontend_reached_two_ways_gets_both_kinds(compiler: ServiceCompiler) -> None:
    """An address that is both an externalIP and an LB ingress IP is one frontend with both flags."""
    svc = service(type="LoadBalancer", external_ips=("198.51.100.1",), ingress=["198.51.100.1"],
                  load_balancer_source_ranges=("10.0.0.0/8",))
    compiler.update(svc, [eps_slice([ep("10.0.1.1")])], "default/web")
    flags = front(compiler.desired(), "198.51.100.1", 80).flags
    assert flags & SvcFlag.EXTERNAL_IP
    assert flags & SvcFlag.LOADBALANCER
    assert flags & SvcFlag.SOURCE_RANGE


@pytest.mark.parametrize(
    ("ranges", "allowed"),
    [
        (("fd00::/8",), None),  # kube-proxy: no range of the family -> no firewall -> every IPv4 client
        (("fd00::/8", "::/0"), None),
        (("0.0.0.0/0", "10.0.0.0/8"), None),  # a zero CIDR means any source
        ((" 10.0.0.0/8 ", "fd00::/8"), ("10.0.0.0/8",)),  # padding the API accepts is trimmed
    ],
    ids=["ipv6-only", "ipv6-zero", "ipv4-zero", "padded"],
)
def test_source_ranges_follow_kube_proxy_family_filtering(
    compiler: ServiceCompiler, ranges: tuple[str, ...], allowed: tuple[str, ...] | None
) -> None:
    """Ranges of the other family are dropped; none left, or a zero CIDR, restricts nothing."""
    svc = service(type="LoadBalancer", ingress=["198.51.100.1"], load_balancer_source_ranges=ranges)
    compiler.update(svc, [eps_slice([ep("10.0.1.1")])], "default/web")
    state = compiler.desired()
    frontend = front(state, "198.51.100.1", 80)
    assert bool(frontend.flags & SvcFlag.SOURCE_RANGE) == (allowed is not None)
    assert {k.cidr for k in state.src_range} == set(allowed or ())


# Maglev


def test_maglev_is_the_default_for_external_frontends_only(compiler: ServiceCompiler) -> None:
    """NodePort frontends get a Maglev table of backend ids; the ClusterIP selects at random."""
    compiler.update(nodeport_service(), [eps_slice([ep("10.0.1.1"), ep("10.0.1.2")])], "default/web")
    state = compiler.desired()
    table = state.maglev[front(state, NODE_IP, 30080).rev_nat_index]
    assert len(table) == DEFAULT_TABLE_SIZE
    assert set(table) == set(state.backends)
    assert not front(state, CLUSTER_IP, 80).flags & SvcFlag.MAGLEV
    assert front(state, CLUSTER_IP, 80).rev_nat_index not in state.maglev


@pytest.mark.parametrize(
    ("annotation", "default", "cluster_ip", "nodeport"),
    [
        ("maglev", "random", True, True),
        ("random", "maglev", False, False),
        (None, "random", False, False),
        ("bogus", "maglev", False, True),
    ],
)
def test_lb_algorithm_annotation(annotation: str | None, default: str, cluster_ip: bool,
                                 nodeport: bool) -> None:
    """velvet.io/lb-algorithm chooses per service; without it (or with a bad value) the defaults apply."""
    compiler = ServiceCompiler(NODE, [NODE_IP], default_external_algorithm=default)
    annotations = {ALGORITHM_ANNOTATION: annotation} if annotation else None
    compiler.update(nodeport_service(annotations=annotations), [eps_slice([ep("10.0.1.1")])], "default/web")
    state = compiler.desired()
    assert bool(front(state, CLUSTER_IP, 80).flags & SvcFlag.MAGLEV) == cluster_ip
    assert bool(front(state, NODE_IP, 30080).flags & SvcFlag.MAGLEV) == nodeport
    assert (front(state, NODE_IP, 30080).rev_nat_index in state.maglev) == nodeport


def test_unknown_default_algorithm_is_refused() -> None:
    """A typo in the agent's configuration fails at start, not silently."""
    with pytest.raises(ValueError, match="algorithm"):
        ServiceCompiler(NODE, [], default_external_algorithm="round-robin")


def test_maglev_table_follows_backend_changes(compiler: ServiceCompiler) -> None:
    """Adding a backend rewrites the table; an unrelated change (affinity) does not."""
    slices = [eps_slice([ep("10.0.1.1"), ep("10.0.1.2")])]
    compiler.update(nodeport_service(), slices, "default/web")
    sticky = compiler.update(nodeport_service(session_affinity="ClientIP"), slices, "default/web")
    assert len(sticky.maglev) == 0
    grown = compiler.update(nodeport_service(session_affinity="ClientIP"),
                            [eps_slice([ep("10.0.1.1"), ep("10.0.1.2"), ep("10.0.1.3")])], "default/web")
    assert len(grown.maglev.upserts) == 2  # the node address and the wildcard
    table = next(iter(grown.maglev.upserts.values()))
    assert len(set(table)) == 3


# Conntrack


def test_should_be_able_to_preserve_udp_traffic_when_server_pod_cycles(compiler: ServiceCompiler) -> None:
    """A replaced backend is reported stale for every frontend that could reach it (ClusterIP, NodePort)."""
    svc = service(type="NodePort", ports=[ServicePort(53, "UDP", name="dns", node_port=30053)])
    port = [EndpointPort(5353, "UDP", name="dns")]
    compiler.update(svc, [eps_slice([ep("10.0.1.1")], ports=port)], "default/web")
    old_id = next(iter(compiler.desired().backends))
    delta = compiler.update(svc, [eps_slice([ep("10.0.1.2")], ports=port)], "default/web")
    assert {(s.frontend_address, s.frontend_port) for s in delta.stale} == {
        (CLUSTER_IP, 53), (NODE_IP, 30053), (NODEPORT_WILDCARD, 30053)}
    assert {(s.backend_id, s.backend_address, s.backend_port, s.proto) for s in delta.stale} == {
        (old_id, "10.0.1.1", 5353, UDP)}
    assert delta.backends.deletes == [old_id]


def test_serving_terminating_backend_is_not_stale(compiler: ServiceCompiler) -> None:
    """A pod that starts terminating but still serves keeps its flows; only non-serving ones are stale."""
    compiler.update(service(), [eps_slice([ep("10.0.1.1"), ep("10.0.1.2")])], "default/web")
    draining = [eps_slice([ep("10.0.1.1"), terminating_ep("10.0.1.2")])]
    delta = compiler.update(service(), draining, "default/web")
    assert delta.stale == ()
    assert [v.state for v in delta.backends.upserts.values()] == [BackendState.TERMINATING]
    gone = compiler.update(service(), [eps_slice([ep("10.0.1.1")])], "default/web")
    assert [s.backend_address for s in gone.stale] == ["10.0.1.2"]


# Ids


def test_backend_and_rev_nat_ids_are_stable_across_updates(compiler: ServiceCompiler) -> None:
    """An unchanged backend keeps its id and slot; the frontend keeps its rev-NAT index."""
    compiler.update(service(), [eps_slice([ep("10.0.1.1"), ep("10.0.1.2")])], "default/web")
    before = compiler.desired()
    delta = compiler.update(service(), [eps_slice([ep("10.0.1.1"), ep("10.0.1.2"), ep("10.0.1.3")])],
                            "default/web")
    after = compiler.desired()
    assert all(after.services[k] == v for k, v in before.services.items() if k.backend_slot)
    assert front(after, CLUSTER_IP, 80).rev_nat_index == front(before, CLUSTER_IP, 80).rev_nat_index
    assert set(delta.services.upserts) == {ServiceKey(CLUSTER_IP, 80, s, TCP) for s in (0, 3)}
    assert len(delta.backends.upserts) == 1
    assert not delta.backends.deletes


def test_removing_a_backend_rewrites_one_slot(compiler: ServiceCompiler) -> None:
    """The last backend moves into the freed slot: one slot rewritten, one deleted, then the count."""
    ips = [f"10.0.1.{i}" for i in range(1, 6)]
    compiler.update(service(), [eps_slice([ep(ip) for ip in ips])], "default/web")
    delta = compiler.update(service(), [eps_slice([ep(ip) for ip in ips if ip != "10.0.1.2"])], "default/web")
    assert set(delta.services.upserts) == {ServiceKey(CLUSTER_IP, 80, s, TCP) for s in (0, 2)}
    assert delta.services.deletes == [ServiceKey(CLUSTER_IP, 80, 5, TCP)]


def test_ids_are_not_reused_until_the_id_space_wraps() -> None:
    """A released id comes back only after every other id has been handed out."""
    ids: IdAllocator[str] = IdAllocator("test", 3)
    assert [ids.acquire(k) for k in "abc"] == [1, 2, 3]
    with pytest.raises(MapFull):
        ids.acquire("d")
    assert ids.acquire("a") == 1
    assert ids.refs("a") == 2
    assert not ids.release("a")
    assert ids.release("b")
    assert ids.release("a")
    assert ids.acquire("d") == 1
    assert ids.acquire("e") == 2


def test_shared_backend_survives_the_deletion_of_one_service(compiler: ServiceCompiler) -> None:
    """Two services with the same backend share one lb4_backends entry, freed with the last user."""
    compiler.update(service("a", cluster_ip="10.96.0.1"), [eps_slice([ep("10.0.1.1")], svc="a")], "default/a")
    compiler.update(service("b", cluster_ip="10.96.0.2"), [eps_slice([ep("10.0.1.1")], svc="b")], "default/b")
    assert len(compiler.desired().backends) == 1
    assert len(compiler.delete("default/a").backends) == 0
    assert len(compiler.delete("default/b").backends.deletes) == 1


def test_backend_is_terminating_only_when_every_service_sees_it_terminating(
    compiler: ServiceCompiler,
) -> None:
    """One service with the backend ready keeps it ACTIVE."""
    compiler.update(service("a", cluster_ip="10.96.0.1"), [eps_slice([terminating_ep("10.0.1.1")], svc="a")],
                    "default/a")
    compiler.update(service("b", cluster_ip="10.96.0.2"), [eps_slice([ep("10.0.1.1")], svc="b")], "default/b")
    assert [b.state for b in compiler.desired().backends.values()] == [BackendState.ACTIVE]
    delta = compiler.delete("default/b")
    assert [b.state for b in delta.backends.upserts.values()] == [BackendState.TERMINATING]


def test_restore_keeps_ids_across_an_agent_restart(compiler: ServiceCompiler) -> None:
    """A new compiler restored from the pinned maps reproduces them exactly: resync is empty."""
    slices = [eps_slice([ep("10.0.1.1"), ep("10.0.1.2"), ep("10.0.2.1", "node-b")])]
    compiler.update(service("x", cluster_ip="10.96.0.9"), [eps_slice([ep("10.0.1.9")], svc="x")], "default/x")
    compiler.update(nodeport_service(external_traffic_policy="Local"), slices, "default/web")
    compiler.delete("default/x")  # leaves holes in the id spaces
    pinned = compiler.desired()
    restarted = ServiceCompiler(NODE, [NODE_IP])
    restarted.restore(pinned)
    restarted.update(nodeport_service(external_traffic_policy="Local"), slices, "default/web")
    delta = restarted.resync(pinned)
    assert len(delta) == 0
    assert delta.stale == ()
    assert restarted.desired() == pinned


def test_resync_after_restart_removes_what_went_away_and_frees_its_ids(compiler: ServiceCompiler) -> None:
    """A service deleted while the agent was down: its entries are deleted, its backends reported stale."""
    compiler.update(service("gone", cluster_ip="10.96.0.9"), [eps_slice([ep("10.0.1.9")], svc="gone")],
                    "default/gone")
    compiler.update(service(), [eps_slice([ep("10.0.1.1")])], "default/web")
    pinned = compiler.desired()
    gone_index = front(pinned, "10.96.0.9", 80).rev_nat_index
    restarted = ServiceCompiler(NODE, [NODE_IP])
    restarted.restore(pinned)
    restarted.update(service(), [eps_slice([ep("10.0.1.1")])], "default/web")
    delta = restarted.resync(pinned)
    assert {k.address for k in delta.services.deletes} == {"10.96.0.9"}
    assert delta.revnat.deletes == [gone_index]
    assert len(delta.backends.deletes) == 1
    assert [s.backend_address for s in delta.stale] == ["10.0.1.9"]
    assert not delta.services.upserts
    assert restarted.resync(restarted.desired()).batches() == []


def test_resync_repairs_drift(compiler: ServiceCompiler) -> None:
    """Entries changed or removed behind the agent's back are rewritten; foreign ones are deleted."""
    compiler.update(service(), [eps_slice([ep("10.0.1.1"), ep("10.0.1.2")])], "default/web")
    desired = compiler.desired()
    services = dict(desired.services)
    del services[ServiceKey(CLUSTER_IP, 80, 2, TCP)]
    services[ServiceKey(CLUSTER_IP, 80, 0, TCP)] = ServiceValue(count=7)
    services[ServiceKey("10.96.9.9", 80, 0, TCP)] = ServiceValue()
    delta = compiler.resync(LbState(services, desired.backends, desired.revnat))
    assert set(delta.services.upserts) == {ServiceKey(CLUSTER_IP, 80, s, TCP) for s in (0, 2)}
    assert delta.services.deletes == [ServiceKey("10.96.9.9", 80, 0, TCP)]
    assert delta.stale == ()


def test_restore_needs_an_empty_compiler(compiler: ServiceCompiler) -> None:
    """Restoring after updates would mix two id spaces."""
    compiler.update(service(), [], "default/web")
    with pytest.raises(ValueError, match="before the first update"):
        compiler.restore(LbState())


def test_update_refuses_a_service_under_another_key(compiler: ServiceCompiler) -> None:
    """The key names the service; a mismatch is a caller bug."""
    with pytest.raises(ValueError, match="given for key"):
        compiler.update(service(), [], "default/other")


def small(**capacity: int) -> ServiceCompiler:
    """A compiler whose maps hold only as many entries as given (the others as the datapath's)."""
    return ServiceCompiler(NODE, [NODE_IP], capacity={**LB_CAPACITY, **{LbMap[k.upper()]: v
                                                                         for k, v in capacity.items()}})


def many_ports(n: int, first: int = 1000) -> tuple[ServicePort, ...]:
    """n service ports first..first+n-1 (names p<port>)."""
    return tuple(ServicePort(first + i, name=f"p{first + i}") for i in range(n))


def test_rev_nat_exhaustion_is_a_problem_until_room_frees() -> None:
    """Test that after a service took every rev-NAT id, the next one is reported and programmed later."""
    compiler = small(revnat=8)
    big = compiler.update(service("big", ports=many_ports(8), cluster_ip="10.96.0.1"), [], "default/big")
    assert len(big.revnat.upserts) == 8
    before = compiler.desired()
    delta = compiler.update(service(), [eps_slice([ep("10.0.1.1")])], "default/web")
    assert len(delta) == 0
    reason = "not programmed: map lb4_revnat is full: 9 entries wanted, capacity 8"
    assert compiler.problems() == {"default/web": reason}
    assert delta.unprogrammed == (("default/web", reason),)
    assert compiler.desired() == before  # the programmed service kept every id
    assert compiler.retry() == {}
    maps: dict[str, dict[object, object]] = {}
    apply(maps, compiler.delete("default/big"))
    assert compiler.problems() == {"default/web": reason}
    retried = compiler.retry()
    assert list(retried) == ["default/web"]
    apply(maps, retried["default/web"])
    assert not compiler.problems()
    assert backends_of(compiler.desired(), CLUSTER_IP, 80) == {("10.0.1.1", 8080)}
    assert maps["lb4_services"] == dict(compiler.desired().services)


def test_backend_capacity_is_all_or_nothing_per_service() -> None:
    """Test that a service whose backends do not all fit gets none, and others keep theirs."""
    compiler = small(backends=3)
    two = [ep("10.0.1.1"), ep("10.0.1.2")]
    compiler.update(service("a", cluster_ip="10.96.0.1"), [eps_slice(two, svc="a")], "default/a")
    before = compiler.desired()
    four = [ep(f"10.0.2.{i}") for i in range(1, 5)]
    delta = compiler.update(service("b", cluster_ip="10.96.0.2"), [eps_slice(four, svc="b")], "default/b")
    assert len(delta) == 0
    reason = "not programmed: map lb4_backends is full: 6 entries wanted, capacity 3"
    assert compiler.problems() == {"default/b": reason}
    assert compiler.desired() == before
    compiler.update(service("b", cluster_ip="10.96.0.2"), [eps_slice(four[:1], svc="b")], "default/b")
    assert not compiler.problems()
    assert backends_of(compiler.desired(), "10.96.0.2", 80) == {("10.0.2.1", 8080)}


def test_a_change_that_does_not_fit_keeps_the_previous_version() -> None:
    """Test that a grown service that overflows lb4_services keeps its programmed version, then recovers."""
    compiler = small(services=6)
    five = [ep(f"10.0.1.{i}") for i in range(1, 6)]
    compiler.update(service(), [eps_slice(five)], "default/web")  # frontend + 5 slots = 6 entries
    before = compiler.desired()
    swapped = compiler.update(service(), [eps_slice([*five[:4], ep("10.0.1.9")])], "default/web")
    assert not compiler.problems()  # same slots, new backend: no new key
    assert len(swapped.services.upserts) == 1
    programmed = compiler.desired()
    assert programmed != before
    grown = compiler.update(service(), [eps_slice([*five, ep("10.0.1.9")])], "default/web")
    assert len(grown) == 0
    assert compiler.problems() == {
        "default/web": "change not programmed, the previous version stays: "
                       "map lb4_services is full: 7 entries wanted, capacity 6"}
    assert compiler.desired() == programmed
    compiler.delete("default/web")
    assert not compiler.problems()
    assert compiler.desired() == LbState()


def test_a_service_that_does_not_fit_gives_back_what_it_took() -> None:
    """Test that ids and backend references taken by a compile that then overflowed are released."""
    compiler = small(services=8, revnat=4)
    shared = [ep("10.0.1.1"), ep("10.0.1.2")]
    compiler.update(service("a", cluster_ip="10.96.0.1"), [eps_slice(shared, svc="a")], "default/a")
    before = compiler.desired()
    nodeport = [ServicePort(80, name="http", node_port=30080)]
    svc = service("b", cluster_ip="10.96.0.2", type="NodePort", ports=nodeport)  # 3 frontends, 12 entries
    compiler.update(svc, [eps_slice([*shared, ep("10.0.1.3")], svc="b")], "default/b")
    assert "lb4_services is full" in compiler.problems()["default/b"]
    assert compiler.desired() == before
    compiler.update(service("c", cluster_ip="10.96.0.3", ports=many_ports(3)), [], "default/c")
    assert list(compiler.problems()) == ["default/b"]  # b's three rev-NAT ids came back
    compiler.delete("default/a")
    compiler.delete("default/c")
    assert compiler.desired() == LbState()  # and no backend reference stayed behind
    assert compiler.retry() == {}  # b needs more entries than lb4_services holds


def test_deleting_a_service_that_did_not_fit_clears_its_problem() -> None:
    """Test that a deleted service is no longer reported."""
    compiler = small(revnat=1)
    compiler.update(service("a", cluster_ip="10.96.0.1"), [], "default/a")
    compiler.update(service("b", cluster_ip="10.96.0.2"), [], "default/b")
    assert list(compiler.problems()) == ["default/b"]
    compiler.delete("default/b")
    assert not compiler.problems()
    assert compiler.retry() == {}


def test_entries_a_delta_deletes_still_count_until_it_is_applied() -> None:
    """Test that a frontend handed over in the same delta needs room next to the entries it replaces."""
    compiler = small(services=3)
    shared = ("203.0.113.7",)
    compiler.update(service("a", cluster_ip="10.96.0.1", external_ips=shared), [], "default/a")
    compiler.update(service("b", cluster_ip="10.96.0.2", external_ips=shared), [], "default/b")
    assert not compiler.problems()  # a: 2 frontends, b: 1 (its external IP waits for a)
    delta = compiler.delete("default/a")
    assert "lb4_services is full" in compiler.problems()["default/b"]  # a's entries go after b's upserts
    maps: dict[str, dict[object, object]] = {}
    apply(maps, delta)
    retried = compiler.retry()
    assert list(retried) == ["default/b"]
    assert front(compiler.desired(), "203.0.113.7", 80).count == 0


def test_new_node_addresses_keep_a_change_that_did_not_fit() -> None:
    """Test that recompiling for new node addresses starts from the pending change, not the old version."""
    compiler = small(services=8)
    compiler.update(nodeport_service(), [eps_slice([ep("10.0.1.1")])], "default/web")  # 3 frontends x 2
    compiler.update(nodeport_service(), [eps_slice([ep("10.0.1.1"), ep("10.0.1.2")])], "default/web")
    assert list(compiler.problems()) == ["default/web"]
    compiler.set_node_ips([NODE_IP, "192.168.1.11"])  # the old version would fit (8), the pending one not
    assert list(compiler.problems()) == ["default/web"]
    assert backends_of(compiler.desired(), CLUSTER_IP, 80) == {("10.0.1.1", 8080)}


def test_lb_capacity_is_what_the_datapath_maps_hold() -> None:
    """Test that the compiler's map capacities are the max_entries of datapath/bpf/lib/maps.h."""
    header = Path(__file__).resolve().parents[2] / "src/velvet/datapath/bpf/lib/maps.h"
    defines = dict(re.findall(r"#define (LB4_\w+)_MAX (.+)", header.read_text()))
    declared = {m: math.prod(int(f) for f in defines[f"LB4_{m.name}"].strip("()").split("*")) for m in LbMap}
    assert declared == LB_CAPACITY


# Frontend conflicts


def test_frontend_claimed_by_two_services_goes_to_the_first_then_to_the_waiter(
    compiler: ServiceCompiler,
) -> None:
    """A duplicate externalIP:port never mixes two services; the second one takes over when freed."""
    shared = ("203.0.113.7",)
    compiler.update(service("a", cluster_ip="10.96.0.1", external_ips=shared),
                    [eps_slice([ep("10.0.1.1")], svc="a")], "default/a")
    compiler.update(service("b", cluster_ip="10.96.0.2", external_ips=shared),
                    [eps_slice([ep("10.0.1.2")], svc="b")], "default/b")
    assert backends_of(compiler.desired(), "203.0.113.7", 80) == {("10.0.1.1", 8080)}
    delta = compiler.delete("default/a")
    state = compiler.desired()
    assert backends_of(state, "203.0.113.7", 80) == {("10.0.1.2", 8080)}
    assert ServiceKey("203.0.113.7", 80, 0, TCP) in delta.services.upserts
    assert ServiceKey("203.0.113.7", 80, 0, TCP) not in delta.services.deletes
    maps: dict[str, dict[object, object]] = {}
    apply(maps, delta)
    assert maps["lb4_services"][ServiceKey("203.0.113.7", 80, 0, TCP)] == front(state, "203.0.113.7", 80)


# Scale


def _many(n: int, endpoints: int = 4) -> list[tuple[Service, list[EndpointSlice]]]:
    """n ClusterIP services with `endpoints` endpoints each."""
    found = []
    for i in range(n):
        name = f"s{i}"
        svc = service(name, cluster_ip=f"10.96.{i // 256}.{i % 256}")
        ips = [f"10.{1 + j}.{i // 256}.{i % 256}" for j in range(endpoints)]
        found.append((svc, [eps_slice([ep(ip) for ip in ips], svc=name)]))
    return found


def test_updating_one_service_at_10k_services_touches_only_its_entries() -> None:
    """O(1) in the number of services: the delta names only the changed service's keys."""
    compiler = ServiceCompiler(NODE, [NODE_IP])
    services = _many(10_000)
    for svc, slices in services:
        compiler.update(svc, slices, svc.metadata.key)
    svc, slices = services[4321]
    grown = [eps_slice([*slices[0].endpoints, ep("10.9.9.9")], svc=svc.metadata.name)]
    delta = compiler.update(svc, grown, svc.metadata.key)
    assert {k.address for k in delta.services.upserts} == {svc.spec.cluster_ip}
    assert len(delta) == 3  # the new backend, its slot, the frontend's count
    assert len(compiler.update(svc, grown, svc.metadata.key)) == 0
    gone = compiler.delete(svc.metadata.key)
    assert len(gone) == 6 + 1 + 5  # frontend and 5 slots, 1 rev-NAT entry, 5 backends
    assert len(compiler.desired().services) == 9_999 * 5


def test_stable_order_moves_the_fewest_slots() -> None:
    """Survivors keep their slot, newcomers fill holes first, leftovers compact from the tail."""
    a, b, c, d, e = ((f"10.0.0.{i}", 80, TCP) for i in range(1, 6))
    assert stable_order([], [c, a, b]) == [a, b, c]
    assert stable_order([a, b, c, d], [a, c, d, e]) == [a, e, c, d]
    assert stable_order([a, b, c, d], [a, d]) == [a, d]
    assert stable_order([a, b, c, d], [b]) == [b]
    assert stable_order([a, b], [a, b, c, d]) == [a, b, c, d]


def test_a_compiled_clusterip_service_keeps_two_containers_of_its_own(compiler: ServiceCompiler) -> None:
    count = 50
    for i in range(count):
        svc = service(f"s{i}", cluster_ip=f"10.96.1.{i + 1}")
        compiler.update(svc, [eps_slice([ep(f"10.244.0.{i % 5 + 2}")], svc=f"s{i}")], f"default/s{i}")
    records = list(compiler._compiled.values())
    assert len(records) == count
    containers = {id(value) for r in records for name in r.__slots__
                  if isinstance(value := getattr(r, name), dict | set | frozenset | MappingProxyType)}
    # each its own frontends and slot orders; all share three: no entries (src_range, maglev, tables),
    # no frontend waited for nor backend terminating, and their equal entry counts
    assert len(containers) == 2 * count + 3
