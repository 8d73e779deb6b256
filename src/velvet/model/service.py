"""v1 Service and discovery.k8s.io/v1 EndpointSlice."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from velvet.model.meta import ObjectMeta

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SERVICE_PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
HEADLESS_LABEL = "service.kubernetes.io/headless"
DEFAULT_AFFINITY_TIMEOUT = 10800


@dataclass(frozen=True, slots=True)
class ServicePort:
    """A service port; target_port is a number, a container port name, or None (= port)."""

    port: int
    protocol: str = "TCP"
    name: str | None = None
    target_port: int | str | None = None
    node_port: int | None = None


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """Service spec fields kube-proxy and Velvet act on."""

    type: str = "ClusterIP"
    selector: Mapping[str, str] | None = None
    ports: tuple[ServicePort, ...] = ()
    cluster_ip: str | None = None  # "None" for headless services
    external_ips: tuple[str, ...] = ()
    session_affinity: str = "None"
    affinity_timeout_seconds: int = DEFAULT_AFFINITY_TIMEOUT
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    publish_not_ready_addresses: bool = False
    load_balancer_source_ranges: tuple[str, ...] = ()
    external_name: str | None = None
    health_check_node_port: int | None = None


@dataclass(frozen=True, slots=True)
class Service:
    """A service and the load-balancer ingress IPs in its status."""

    metadata: ObjectMeta
    spec: ServiceSpec
    load_balancer_ingress: tuple[str, ...] = ()

    @property
    def headless(self) -> bool:
        """clusterIP: None."""
        return self.spec.cluster_ip == "None"


@dataclass(frozen=True, slots=True)
class EndpointConditions:
    """EndpointSlice conditions; None means unknown (ready treated as true, as the API documents)."""

    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None


@dataclass(frozen=True, slots=True)
class ObjectReference:
    """targetRef of an endpoint."""

    kind: str
    name: str
    namespace: str = ""
    uid: str = ""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint of a slice."""

    addresses: tuple[str, ...]
    conditions: EndpointConditions = EndpointConditions()
    node_name: str | None = None
    hostname: str | None = None
    target_ref: ObjectReference | None = None


@dataclass(frozen=True, slots=True)
class EndpointPort:
    """A port of a slice: the resolved number for every endpoint of the slice."""

    port: int | None
    protocol: str = "TCP"
    name: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    """A slice; the owning service is named by the kubernetes.io/service-name label."""

    metadata: ObjectMeta
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[EndpointPort, ...] = ()
    address_type: str = "IPv4"

    @property
    def service_name(self) -> str | None:
        """The name of the service this slice belongs to."""
        return self.metadata.labels.get(SERVICE_NAME_LABEL)

