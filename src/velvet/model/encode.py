"""Model → the JSON-shaped dict `kubectl get -o json` prints (empty optional fields left out)."""

from __future__ import annotations

from typing import Any

from velvet.model.meta import LabelSelector, ObjectMeta
from velvet.model.namespace import Namespace
from velvet.model.pod import Container, Pod, Probe
from velvet.model.policy import NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicyRule
from velvet.model.service import Endpoint, EndpointSlice, Service

Json = dict[str, Any]


def encode_meta(meta: ObjectMeta) -> Json:
    """metadata with server-set fields (uid, resourceVersion as a string, timestamps) when present."""
    out: Json = {"name": meta.name}
    if meta.namespace:
        out["namespace"] = meta.namespace
    if meta.uid:
        out["uid"] = meta.uid
    if meta.resource_version:
        out["resourceVersion"] = str(meta.resource_version)
    if meta.creation_timestamp:
        out["creationTimestamp"] = meta.creation_timestamp
    if meta.deletion_timestamp is not None:
        out["deletionTimestamp"] = meta.deletion_timestamp
    if meta.labels:
        out["labels"] = dict(meta.labels)
    if meta.annotations:
        out["annotations"] = dict(meta.annotations)
    return out


def encode_selector(selector: LabelSelector) -> Json:
    """A metav1.LabelSelector; {} selects everything."""
    out: Json = {}
    if selector.match_labels:
        out["matchLabels"] = dict(selector.match_labels)
    if selector.match_expressions:
        out["matchExpressions"] = [
            {"key": r.key, "operator": r.operator, **({"values": list(r.values)} if r.values else {})}
            for r in selector.match_expressions
        ]
    return out


def encode_namespace(ns: Namespace) -> Json:
    """A v1 Namespace."""
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": encode_meta(ns.metadata),
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": ns.phase}}


def encode_pod(pod: Pod) -> Json:
    """A v1 Pod with the status the node runtime reported (podIPs/hostIPs derived from podIP/hostIP)."""
    spec: Json = {"containers": [_encode_container(c) for c in pod.spec.containers],
                  "terminationGracePeriodSeconds": pod.spec.termination_grace_period_seconds}
    if pod.spec.node_name:
        spec["nodeName"] = pod.spec.node_name
    if pod.spec.host_network:
        spec["hostNetwork"] = True
    st = pod.status
    status: Json = {"phase": st.phase}
    if st.conditions:
        status["conditions"] = [{"type": c.type, "status": c.status} for c in st.conditions]
    if st.host_ip:
        status["hostIP"] = st.host_ip
        status["hostIPs"] = [{"ip": st.host_ip}]
    if st.pod_ip:
        status["podIP"] = st.pod_ip
        status["podIPs"] = [{"ip": st.pod_ip}]
    if st.start_time:
        status["startTime"] = st.start_time
    return {"apiVersion": "v1", "kind": "Pod", "metadata": encode_meta(pod.metadata), "spec": spec,
            "status": status}


def _encode_container(c: Container) -> Json:
    out: Json = {"name": c.name, "image": c.image}
    if c.command:
        out["command"] = list(c.command)
    if c.args:
        out["args"] = list(c.args)
    if c.env:
        out["env"] = [{"name": k, "value": v} for k, v in c.env.items()]
    if c.ports:
        out["ports"] = [{"containerPort": p.container_port, "protocol": p.protocol,
                         **({"name": p.name} if p.name else {})} for p in c.ports]
    if c.readiness_probe is not None:
        out["readinessProbe"] = _encode_probe(c.readiness_probe)
    return out


def _encode_probe(p: Probe) -> Json:
    out: Json = {"periodSeconds": p.period_seconds, "timeoutSeconds": p.timeout_seconds,
                 "successThreshold": p.success_threshold, "failureThreshold": p.failure_threshold}
    if p.initial_delay_seconds:
        out["initialDelaySeconds"] = p.initial_delay_seconds
    if p.tcp_socket_port is not None:
        out["tcpSocket"] = {"port": p.tcp_socket_port}
    if p.exec_command is not None:
        out["exec"] = {"command": list(p.exec_command)}
    return out


def encode_service(svc: Service) -> Json:
    """A v1 Service as the API server shows it after defaulting and allocation."""
    s = svc.spec
    spec: Json = {"type": s.type, "sessionAffinity": s.session_affinity}
    if s.type != "ExternalName":
        spec["internalTrafficPolicy"] = s.internal_traffic_policy
    if s.cluster_ip is not None:
        spec.update(clusterIP=s.cluster_ip, clusterIPs=[s.cluster_ip], ipFamilies=["IPv4"],
                    ipFamilyPolicy="SingleStack")
    if s.selector is not None:
        spec["selector"] = dict(s.selector)
    if s.ports:
        spec["ports"] = [_encode_service_port(p.name, p.protocol, p.port, p.target_port, p.node_port)
                         for p in s.ports]
    if s.type in ("NodePort", "LoadBalancer") or s.external_ips:
        spec["externalTrafficPolicy"] = s.external_traffic_policy
    if s.external_ips:
        spec["externalIPs"] = list(s.external_ips)
    if s.session_affinity == "ClientIP":
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": s.affinity_timeout_seconds}}
    if s.publish_not_ready_addresses:
        spec["publishNotReadyAddresses"] = True
    if s.load_balancer_source_ranges:
        spec["loadBalancerSourceRanges"] = list(s.load_balancer_source_ranges)
    if s.external_name is not None:
        spec["externalName"] = s.external_name
    if s.health_check_node_port is not None:
        spec["healthCheckNodePort"] = s.health_check_node_port
    lb: Json = {"ingress": [{"ip": ip} for ip in svc.load_balancer_ingress]}
    if not svc.load_balancer_ingress:
        lb = {}
    return {"apiVersion": "v1", "kind": "Service", "metadata": encode_meta(svc.metadata), "spec": spec,
            "status": {"loadBalancer": lb}}


def _encode_service_port(name: str | None, protocol: str, port: int, target: int | str | None,
                         node_port: int | None) -> Json:
    out: Json = {"port": port, "protocol": protocol, "targetPort": port if target is None else target}
    if name:
        out["name"] = name
    if node_port is not None:
        out["nodePort"] = node_port
    return out


def encode_endpoint_slice(eps: EndpointSlice) -> Json:
    """A discovery.k8s.io/v1 EndpointSlice."""
    ports: list[Json] = []
    for p in eps.ports:
        port: Json = {"protocol": p.protocol, "port": p.port}
        if p.name is not None:
            port["name"] = p.name
        ports.append(port)
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": encode_meta(eps.metadata), "addressType": eps.address_type,
            "endpoints": [_encode_endpoint(e) for e in eps.endpoints], "ports": ports}


def _encode_endpoint(e: Endpoint) -> Json:
    conditions = {k: v for k, v in (("ready", e.conditions.ready), ("serving", e.conditions.serving),
                                    ("terminating", e.conditions.terminating)) if v is not None}
    out: Json = {"addresses": list(e.addresses), "conditions": conditions}
    if e.node_name:
        out["nodeName"] = e.node_name
    if e.hostname:
        out["hostname"] = e.hostname
    if e.target_ref is not None:
        ref = e.target_ref
        out["targetRef"] = {"kind": ref.kind, "name": ref.name,
                            **({"namespace": ref.namespace} if ref.namespace else {}),
                            **({"uid": ref.uid} if ref.uid else {})}
    return out


def encode_network_policy(policy: NetworkPolicy) -> Json:
    """A networking.k8s.io/v1 NetworkPolicy with defaulted policyTypes."""
    s = policy.spec
    spec: Json = {"podSelector": encode_selector(s.pod_selector), "policyTypes": list(s.policy_types)}
    if s.ingress:
        spec["ingress"] = [_encode_rule(r, "from") for r in s.ingress]
    if s.egress:
        spec["egress"] = [_encode_rule(r, "to") for r in s.egress]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": encode_meta(policy.metadata), "spec": spec}


def _encode_rule(rule: NetworkPolicyRule, peers_key: str) -> Json:
    out: Json = {}
    if rule.ports:
        out["ports"] = [_encode_policy_port(p) for p in rule.ports]
    if rule.peers:
        out[peers_key] = [_encode_peer(p) for p in rule.peers]
    return out


def _encode_policy_port(port: NetworkPolicyPort) -> Json:
    out: Json = {"protocol": port.protocol}
    if port.port is not None:
        out["port"] = port.port
    if port.end_port is not None:
        out["endPort"] = port.end_port
    return out


def _encode_peer(peer: NetworkPolicyPeer) -> Json:
    out: Json = {}
    if peer.pod_selector is not None:
        out["podSelector"] = encode_selector(peer.pod_selector)
    if peer.namespace_selector is not None:
        out["namespaceSelector"] = encode_selector(peer.namespace_selector)
    if peer.ip_block is not None:
        block: Json = {"cidr": peer.ip_block.cidr}
        if peer.ip_block.except_:
            block["except"] = list(peer.ip_block.except_)
        out["ipBlock"] = block
    return out
