"""Strict decoding of v1 Services with the API server's defaulting and validation rules."""

from __future__ import annotations

from types import MappingProxyType

from velvet.model.decode_meta import decode_meta
from velvet.model.service import DEFAULT_AFFINITY_TIMEOUT, Service, ServicePort, ServiceSpec
from velvet.model.validate import (
    DEFAULT_NODE_PORT_RANGE,
    PROTOCOLS,
    Node,
    Obj,
    check_cidr,
    check_dns1035_label,
    check_dns1123_label,
    check_dns1123_subdomain,
    check_int_or_port_name,
    check_ipv4,
    check_labels,
    check_port_number,
    quote,
)

TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
SPEC_FIELDS = (
    "type", "selector", "ports", "clusterIP", "clusterIPs", "externalIPs", "sessionAffinity",
    "sessionAffinityConfig", "externalTrafficPolicy", "internalTrafficPolicy", "publishNotReadyAddresses",
    "loadBalancerSourceRanges", "externalName", "healthCheckNodePort", "ipFamilies", "ipFamilyPolicy",
)
# Known Service fields with no effect on a single-stack node agent without a cloud controller.
IGNORED_SPEC = ("allocateLoadBalancerNodePorts", "loadBalancerClass", "loadBalancerIP", "trafficDistribution")
_SPEC, _IGNORED_SPEC = frozenset(SPEC_FIELDS), frozenset(IGNORED_SPEC)  # what Node.obj takes as it is
_PORT = frozenset(("name", "port", "protocol", "targetPort", "nodePort"))
_IGNORED_PORT = frozenset(("appProtocol",))


def decode_service(root: Obj, *, trusted: bool) -> Service:
    """A v1 Service; status.loadBalancer.ingress[].ip is kept (there is no cloud controller to set it)."""
    meta = decode_meta(root.req("metadata"), namespaced=True, trusted=trusted, check_name=check_dns1035_label)
    spec_node = root.opt("spec")
    if spec_node is None:
        spec_node = root.node.at("spec", {})
    spec = _decode_spec(spec_node)
    status = root.opt("status")
    return Service(metadata=meta, spec=spec, load_balancer_ingress=_decode_status(status) if status else ())


def _decode_spec(node: Node) -> ServiceSpec:
    fields = node.obj(known=_SPEC, ignored=_IGNORED_SPEC)
    type_node = fields.opt("type")
    svc_type = type_node.one_of(TYPES) if type_node else "ClusterIP"
    external = svc_type in ("NodePort", "LoadBalancer")
    cluster_ip = _decode_cluster_ip(fields, svc_type)
    ports_node = fields.opt("ports")
    ports = _decode_ports(ports_node, node_ports=external) if ports_node else ()
    if not ports and svc_type != "ExternalName" and cluster_ip != "None":
        node.at("ports", None).fail("Required value")
    external_name = None
    name_node = fields.opt("externalName")
    if svc_type == "ExternalName":
        if name_node is None or name_node.value == "":
            node.at("externalName", None).fail("Required value: required when type is ExternalName")
        external_name = check_dns1123_subdomain(name_node)
    selector_node = fields.opt("selector")
    external_ips_node = fields.opt("externalIPs")
    external_ips = tuple(check_ipv4(ip) for ip in external_ips_node.items()) if external_ips_node else ()
    affinity, timeout = _decode_affinity(fields)
    return ServiceSpec(
        type=svc_type,
        selector=MappingProxyType(check_labels(selector_node)) if selector_node else None,
        ports=ports,
        cluster_ip=cluster_ip,
        external_ips=external_ips,
        session_affinity=affinity,
        affinity_timeout_seconds=timeout,
        external_traffic_policy=_decode_etp(fields, external or bool(external_ips)),
        internal_traffic_policy=_policy(fields.opt("internalTrafficPolicy")),
        publish_not_ready_addresses=_bool(fields.opt("publishNotReadyAddresses")),
        load_balancer_source_ranges=_decode_source_ranges(fields.opt("loadBalancerSourceRanges"), svc_type),
        external_name=external_name,
        health_check_node_port=_decode_hc_node_port(fields, svc_type),
    )


def _decode_cluster_ip(fields: Obj, svc_type: str) -> str | None:
    ip_node, ips_node = fields.opt("clusterIP"), fields.opt("clusterIPs")
    ips = ips_node.items() if ips_node else []
    if len(ips) > 1:
        ips[1].fail("Forbidden: dual-stack services are not supported")
    if ips and ips[0].as_str():
        if ip_node is None or ip_node.value == "":
            ip_node = ips[0]
        elif ips[0].value != ip_node.as_str():
            ips[0].fail("Invalid value: must match `clusterIP`")
    for family in _families(fields):
        if family.value != "IPv4":
            family.one_of(("IPv4",))
    policy = fields.opt("ipFamilyPolicy")
    if policy is not None:
        policy.one_of(("SingleStack", "PreferDualStack"))
    if ip_node is None or ip_node.as_str() == "":
        return None
    if svc_type == "ExternalName":
        ip_node.fail("Forbidden: may not be set for ExternalName services")
    if ip_node.value == "None":
        if svc_type != "ClusterIP":
            ip_node.fail(f'Invalid value: "None": may not be set to "None" for {svc_type} services')
        return "None"
    return check_ipv4(ip_node)


def _families(fields: Obj) -> list[Node]:
    found = fields.opt("ipFamilies")
    return found.items() if found else []


def _decode_ports(node: Node, *, node_ports: bool) -> tuple[ServicePort, ...]:
    ports: list[ServicePort] = []
    items = node.items()
    names: set[str] = set()
    keys: set[tuple[int, str]] = set()
    for item in items:
        fields = item.obj(known=_PORT, ignored=_IGNORED_PORT)
        name_node = fields.opt("name")
        name = check_dns1123_label(name_node) if name_node and name_node.value != "" else None
        if name is None and len(items) > 1:
            item.at("name", None).fail("Required value: every port needs a name when there are several")
        if name is not None and name in names:
            item.at("name", name).fail(f'Duplicate value: "{name}"')
        if name is not None:
            names.add(name)
        port = check_port_number(fields.req("port"))
        protocol_node = fields.opt("protocol")
        protocol = protocol_node.one_of(PROTOCOLS) if protocol_node else "TCP"
        if (port, protocol) in keys:
            item.fail(f'Duplicate value: {{"port": {port}, "protocol": "{protocol}"}}')
        keys.add((port, protocol))
        target = fields.opt("targetPort")
        target_port = check_int_or_port_name(target) if target and target.value not in (0, "") else port
        ports.append(ServicePort(port=port, protocol=protocol, name=name, target_port=target_port,
                                 node_port=_decode_node_port(fields.opt("nodePort"), node_ports)))
    return tuple(ports)


def _decode_node_port(node: Node | None, allowed: bool) -> int | None:
    if node is None or node.value == 0:
        return None
    if not allowed:
        node.fail("Forbidden: may not be used when `type` is 'ClusterIP'")
    low, high = DEFAULT_NODE_PORT_RANGE
    value = node.as_int()
    if not low <= value <= high:
        node.fail(f"Invalid value: {value}: provided port is not in the valid range. "
                  f"The range of valid ports is {low}-{high}")
    return value


def _decode_affinity(fields: Obj) -> tuple[str, int]:
    affinity_node, config_node = fields.opt("sessionAffinity"), fields.opt("sessionAffinityConfig")
    affinity = affinity_node.one_of(("None", "ClientIP")) if affinity_node else "None"
    if config_node is None:
        return affinity, DEFAULT_AFFINITY_TIMEOUT
    if affinity != "ClientIP":
        config_node.fail("Invalid value: must not be set when session affinity is None")
    client_ip = config_node.obj(known=("clientIP",)).opt("clientIP")
    timeout = client_ip.obj(known=("timeoutSeconds",)).opt("timeoutSeconds") if client_ip else None
    return affinity, timeout.int_in(1, 86400) if timeout else DEFAULT_AFFINITY_TIMEOUT


def _decode_etp(fields: Obj, externally_accessible: bool) -> str:
    found = fields.opt("externalTrafficPolicy")
    if found is not None and not externally_accessible:
        found.fail(f"Invalid value: {quote(found.value)}: may only be set for externally-accessible services")
    return _policy(found)


def _policy(node: Node | None) -> str:
    return node.one_of(("Cluster", "Local")) if node else "Cluster"


def _bool(node: Node | None) -> bool:
    return node.as_bool() if node else False


def _decode_source_ranges(node: Node | None, svc_type: str) -> tuple[str, ...]:
    if node is None:
        return ()
    ranges = tuple(check_cidr(item) for item in node.items())
    if ranges and svc_type != "LoadBalancer":
        node.fail("Forbidden: may only be used when `type` is 'LoadBalancer'")
    return ranges


def _decode_hc_node_port(fields: Obj, svc_type: str) -> int | None:
    found = fields.opt("healthCheckNodePort")
    if found is None or found.value == 0:
        return None
    policy = fields.opt("externalTrafficPolicy")
    if svc_type != "LoadBalancer" or policy is None or policy.value != "Local":
        found.fail("Invalid value: may only be set when `type` is 'LoadBalancer' and "
                   "`externalTrafficPolicy` is 'Local'")
    return check_port_number(found)


def _decode_status(node: Node) -> tuple[str, ...]:
    lb = node.obj(known=("loadBalancer",), ignored=("conditions",)).opt("loadBalancer")
    ingress = lb.obj(known=("ingress",)).opt("ingress") if lb else None
    ips: list[str] = []
    for item in ingress.items() if ingress else []:
        ip = item.obj(known=("ip", "hostname", "ipMode", "ports")).opt("ip")
        if ip is not None:
            ips.append(check_ipv4(ip))
    return tuple(ips)
