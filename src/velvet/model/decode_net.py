"""Strict decoding of discovery.k8s.io/v1 EndpointSlices and networking.k8s.io/v1 NetworkPolicies."""

from __future__ import annotations

import ipaddress

from velvet.model.decode_meta import decode_meta, decode_selector
from velvet.model.meta import LabelSelector
from velvet.model.policy import (
    IPBlock,
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    NetworkPolicyRule,
    NetworkPolicySpec,
)
from velvet.model.service import Endpoint, EndpointConditions, EndpointPort, EndpointSlice, ObjectReference
from velvet.model.validate import (
    PROTOCOLS,
    Node,
    Obj,
    check_cidr,
    check_dns1123_label,
    check_dns1123_subdomain,
    check_int_or_port_name,
    check_ipv4,
    check_port_number,
)

MAX_SLICE_ENDPOINTS = 1000
MAX_SLICE_PORTS = 20000  # kube-apiserver since 1.21 (kubernetes#99795); the controller never splits ports
POLICY_TYPES = ("Ingress", "Egress")


def decode_endpoint_slice(root: Obj, *, trusted: bool) -> EndpointSlice:
    """An EndpointSlice as a user or an external controller writes it; only IPv4 address slices."""
    meta = decode_meta(root.req("metadata"), namespaced=True, trusted=trusted,
                       check_name=check_dns1123_subdomain)
    address_type = root.req("addressType").one_of(("IPv4",))
    endpoints_node, ports_node = root.opt("endpoints"), root.opt("ports")
    endpoints = tuple(_decode_endpoint(e) for e in endpoints_node.items()) if endpoints_node else ()
    if len(endpoints) > MAX_SLICE_ENDPOINTS:
        root.req("endpoints").fail(f"Too many: {len(endpoints)}: must have at most {MAX_SLICE_ENDPOINTS}")
    ports = _decode_slice_ports(ports_node) if ports_node else ()
    return EndpointSlice(metadata=meta, endpoints=endpoints, ports=ports, address_type=address_type)


def _decode_endpoint(node: Node) -> Endpoint:
    fields = node.obj(known=("addresses", "conditions", "nodeName", "hostname", "targetRef"),
                      ignored=("zone", "hints", "deprecatedTopology"))
    addresses_node = fields.req("addresses")
    addresses = tuple(check_ipv4(a) for a in addresses_node.items())
    if not 1 <= len(addresses) <= 100:
        addresses_node.fail("Invalid value: must contain between 1 and 100 addresses")
    conditions_node = fields.opt("conditions")
    conditions = EndpointConditions()
    if conditions_node is not None:
        cond = conditions_node.obj(known=("ready", "serving", "terminating"))
        ready, serving, terminating = cond.opt("ready"), cond.opt("serving"), cond.opt("terminating")
        conditions = EndpointConditions(
            ready=ready.as_bool() if ready else None,
            serving=serving.as_bool() if serving else None,
            terminating=terminating.as_bool() if terminating else None,
        )
    node_name, hostname, ref = fields.opt("nodeName"), fields.opt("hostname"), fields.opt("targetRef")
    return Endpoint(
        addresses=addresses,
        conditions=conditions,
        node_name=check_dns1123_subdomain(node_name) if node_name else None,
        hostname=check_dns1123_label(hostname) if hostname else None,
        target_ref=_decode_ref(ref) if ref else None,
    )


def _decode_ref(node: Node) -> ObjectReference:
    fields = node.obj(known=("kind", "name", "namespace", "uid"),
                      ignored=("apiVersion", "resourceVersion", "fieldPath"))
    namespace, uid = fields.opt("namespace"), fields.opt("uid")
    return ObjectReference(
        kind=fields.req("kind").as_str(),
        name=fields.req("name").as_str(),
        namespace=namespace.as_str() if namespace else "",
        uid=uid.as_str() if uid else "",
    )


def _decode_slice_ports(node: Node) -> tuple[EndpointPort, ...]:
    items = node.items()
    if len(items) > MAX_SLICE_PORTS:
        node.fail(f"Too many: {len(items)}: must have at most {MAX_SLICE_PORTS} items")
    ports: list[EndpointPort] = []
    names: set[str] = set()
    for item in items:
        fields = item.obj(known=("name", "port", "protocol"), ignored=("appProtocol",))
        name_node, port, protocol = fields.opt("name"), fields.opt("port"), fields.opt("protocol")
        name = check_dns1123_label(name_node) if name_node and name_node.value != "" else ""
        if name in names:
            item.at("name", name).fail(f'Duplicate value: "{name}"')
        names.add(name)
        ports.append(EndpointPort(
            port=check_port_number(port) if port else None,
            protocol=protocol.one_of(PROTOCOLS) if protocol else "TCP",
            name=name,
        ))
    return tuple(ports)


def decode_network_policy(root: Obj, *, trusted: bool) -> NetworkPolicy:
    """A NetworkPolicy; policyTypes default to Ingress, plus Egress when egress rules are given."""
    meta = decode_meta(root.req("metadata"), namespaced=True, trusted=trusted,
                       check_name=check_dns1123_subdomain)
    spec_node = root.opt("spec") or root.node.at("spec", {})
    fields = spec_node.obj(known=("podSelector", "ingress", "egress", "policyTypes"))
    selector_node = fields.opt("podSelector")
    ingress_node, egress_node = fields.opt("ingress"), fields.opt("egress")
    ingress = tuple(_decode_rule(r, "from") for r in ingress_node.items()) if ingress_node else ()
    egress = tuple(_decode_rule(r, "to") for r in egress_node.items()) if egress_node else ()
    types_node = fields.opt("policyTypes")
    if types_node is not None:
        types = tuple(t.one_of(POLICY_TYPES) for t in types_node.items())
        if len(set(types)) != len(types):
            types_node.fail("Duplicate value: each policy type may appear once")
        if not types:
            types_node.fail("Required value: at least one policy type")
    else:
        types = ("Ingress", "Egress") if egress else ("Ingress",)
    spec = NetworkPolicySpec(
        pod_selector=decode_selector(selector_node) if selector_node else LabelSelector(),
        ingress=ingress,
        egress=egress,
        policy_types=types,
    )
    return NetworkPolicy(metadata=meta, spec=spec)


def _decode_rule(node: Node, peers_key: str) -> NetworkPolicyRule:
    fields = node.obj(known=("ports", peers_key))
    ports_node, peers_node = fields.opt("ports"), fields.opt(peers_key)
    return NetworkPolicyRule(
        ports=tuple(_decode_policy_port(p) for p in ports_node.items()) if ports_node else (),
        peers=tuple(_decode_peer(p) for p in peers_node.items()) if peers_node else (),
    )


def _decode_policy_port(node: Node) -> NetworkPolicyPort:
    fields = node.obj(known=("protocol", "port", "endPort"))
    protocol_node, port_node, end_node = fields.opt("protocol"), fields.opt("port"), fields.opt("endPort")
    port = check_int_or_port_name(port_node) if port_node else None
    end_port: int | None = None
    if end_node is not None:
        end_port = end_node.as_int()
        if port is None:
            end_node.fail("Required value: may not be specified when `port` is not specified")
        if isinstance(port, str):
            end_node.fail("Invalid value: may not be specified when `port` is non-numeric")
        assert isinstance(port, int)
        if end_port < port:
            end_node.fail(f"Invalid value: {end_port}: must be greater than or equal to `port`")
        check_port_number(end_node)
    return NetworkPolicyPort(
        protocol=protocol_node.one_of(PROTOCOLS) if protocol_node else "TCP",
        port=port,
        end_port=end_port,
    )


def _decode_peer(node: Node) -> NetworkPolicyPeer:
    fields = node.obj(known=("podSelector", "namespaceSelector", "ipBlock"))
    pods, namespaces = fields.opt("podSelector"), fields.opt("namespaceSelector")
    block = fields.opt("ipBlock")
    if pods is None and namespaces is None and block is None:
        node.fail("Required value: must specify a peer")
    if block is not None and (pods is not None or namespaces is not None):
        node.fail("Forbidden: may not specify more than 1 peer type when ipBlock is set")
    return NetworkPolicyPeer(
        pod_selector=decode_selector(pods) if pods else None,
        namespace_selector=decode_selector(namespaces) if namespaces else None,
        ip_block=_decode_ip_block(block) if block else None,
    )


def _decode_ip_block(node: Node) -> IPBlock:
    fields = node.obj(known=("cidr", "except"))
    cidr_node = fields.req("cidr")
    cidr = ipaddress.ip_network(check_cidr(cidr_node))
    excepts: list[str] = []
    except_node = fields.opt("except")
    for item in except_node.items() if except_node else []:
        carved = ipaddress.ip_network(check_cidr(item))
        if carved.network_address not in cidr or carved.prefixlen <= cidr.prefixlen:
            item.fail(f'Invalid value: "{item.value}": must be a strict subset of `cidr`')
        excepts.append(str(item.value))
    return IPBlock(cidr=str(cidr), except_=tuple(excepts))
