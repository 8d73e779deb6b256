"""A deliberately naive NetworkPolicy evaluator, written from the Kubernetes API documentation.

It shares no code with the compiler (not even `LabelSelector.matches` or `Pod.named_port`) and
evaluates one connection at a time, straight from the text of
https://kubernetes.io/docs/concepts/services-networking/network-policies/ :

- a pod is isolated for ingress (egress) iff some NetworkPolicy in its namespace selects it and has
  "Ingress" ("Egress") in policyTypes; a non-isolated direction allows everything;
- an isolated direction allows a connection iff at least one rule of one selecting policy allows it
  (policies are additive); a connection needs the source's egress AND the destination's ingress;
- a rule allows a connection iff its peer list is empty or one peer matches the other end, and its
  port list is empty or one port matches;
- peer: ipBlock = the other end's IP is in cidr and in no except; podSelector alone = pods of the
  policy's namespace; namespaceSelector alone = all pods of the selected namespaces; both = AND;
- port: protocol (TCP when omitted) equal, and port omitted, or equal, or within port..endPort, or a
  name resolved on the destination pod's containerPorts by name and protocol (no pod: no match).

An end is a Pod or, for traffic from/to outside the cluster, an IP string.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from velvet.model import (
    NAME_LABEL,
    Container,
    ContainerPort,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    NetworkPolicyRule,
    NetworkPolicySpec,
    ObjectMeta,
    Pod,
    PodSpec,
    PodStatus,
)

End = Pod | str


def allowed(
    policies: Iterable[NetworkPolicy],
    namespaces: Iterable[Namespace],
    src: End,
    dst: End,
    port: int,
    proto: str,
) -> bool:
    """Whether a new connection from `src` to `dst`:`port`/`proto` is allowed."""
    policies = list(policies)
    ns_labels = {ns.metadata.name: ns.metadata.labels for ns in namespaces}
    egress_ok = _direction_allows(policies, ns_labels, "Egress", src, dst, dst, port, proto)
    ingress_ok = _direction_allows(policies, ns_labels, "Ingress", dst, src, dst, port, proto)
    return egress_ok and ingress_ok


def _direction_allows(
    policies: list[NetworkPolicy],
    ns_labels: Mapping[str, Mapping[str, str]],
    policy_type: str,
    local: End,
    remote: End,
    destination: End,
    port: int,
    proto: str,
) -> bool:
    """The verdict of `local`'s policies for `policy_type` on traffic with `remote`."""
    if isinstance(local, str):
        return True  # outside the cluster: no NetworkPolicy applies
    selecting = [
        p for p in policies
        if p.metadata.namespace == local.metadata.namespace
        and _selector_matches(p.spec.pod_selector, local.metadata.labels)
        and policy_type in p.spec.policy_types
    ]
    if not selecting:
        return True
    for policy in selecting:
        rules = policy.spec.ingress if policy_type == "Ingress" else policy.spec.egress
        for rule in rules:
            peer_ok = not rule.peers or any(
                _peer_matches(peer, policy.metadata.namespace, ns_labels, remote) for peer in rule.peers
            )
            port_ok = not rule.ports or any(_port_matches(p, destination, port, proto) for p in rule.ports)
            if peer_ok and port_ok:
                return True
    return False


def _peer_matches(
    peer: NetworkPolicyPeer, policy_ns: str, ns_labels: Mapping[str, Mapping[str, str]], other: End
) -> bool:
    """Whether one from/to entry matches the other end of the connection."""
    if peer.ip_block is not None:
        address = other if isinstance(other, str) else other.status.pod_ip
        if address is None:
            return False
        ip = ipaddress.ip_address(address)
        in_cidr = ip in ipaddress.ip_network(peer.ip_block.cidr, strict=False)
        return in_cidr and not any(ip in ipaddress.ip_network(e, strict=False) for e in peer.ip_block.except_)
    if isinstance(other, str):
        return False
    if peer.pod_selector is None and peer.namespace_selector is None:
        return False
    if peer.namespace_selector is None:
        ns_ok = other.metadata.namespace == policy_ns
    else:
        ns_ok = _selector_matches(peer.namespace_selector, ns_labels.get(other.metadata.namespace, {}))
    pod_ok = peer.pod_selector is None or _selector_matches(peer.pod_selector, other.metadata.labels)
    return ns_ok and pod_ok


def _port_matches(spec: NetworkPolicyPort, destination: End, port: int, proto: str) -> bool:
    """Whether one ports entry matches the destination port and protocol."""
    if spec.protocol != proto:
        return False
    if spec.port is None:
        return True
    if isinstance(spec.port, int):
        last = spec.end_port if spec.end_port is not None else spec.port
        return spec.port <= port <= last
    if isinstance(destination, str):
        return False
    return any(
        cp.name == spec.port and cp.protocol == proto and cp.container_port == port
        for container in destination.spec.containers
        for cp in container.ports
    )


def _selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics: every matchLabels pair and every matchExpressions requirement."""
    for key, value in selector.match_labels.items():
        if labels.get(key) != value:
            return False
    for req in selector.match_expressions:
        if req.operator == "In":
            ok = req.key in labels and labels[req.key] in req.values
        elif req.operator == "NotIn":
            ok = req.key not in labels or labels[req.key] not in req.values
        elif req.operator == "Exists":
            ok = req.key in labels
        elif req.operator == "DoesNotExist":
            ok = req.key not in labels
        else:
            raise ValueError(req.operator)
        if not ok:
            return False
    return True


# Model builders shared by the policy tests (construction only, no evaluation).


def make_namespace(name: str, **labels: str) -> Namespace:
    """A namespace with its API-server-set name label plus `labels`."""
    return Namespace(ObjectMeta(name=name, labels={NAME_LABEL: name, **labels}))


def make_pod(
    namespace: str,
    name: str,
    ip: str | None,
    labels: Mapping[str, str] | None = None,
    ports: Iterable[tuple[str | None, int, str]] = (),
    host_network: bool = False,
) -> Pod:
    """A running pod with one container declaring `ports` as (name, number, protocol)."""
    declared = tuple(ContainerPort(number, port_name, proto) for port_name, number, proto in ports)
    container = Container(name="main", ports=declared)
    return Pod(
        ObjectMeta(name=name, namespace=namespace, labels=dict(labels or {})),
        PodSpec(containers=(container,), host_network=host_network),
        PodStatus(phase="Running", pod_ip=ip),
    )


def make_policy(
    namespace: str,
    name: str,
    pod_selector: LabelSelector | None = None,
    ingress: Iterable[NetworkPolicyRule] | None = None,
    egress: Iterable[NetworkPolicyRule] | None = None,
    policy_types: Iterable[str] | None = None,
) -> NetworkPolicy:
    """A policy; policyTypes defaulted as the API server does (Ingress, plus Egress if egress rules)."""
    egress_rules = tuple(egress or ())
    if policy_types is None:
        policy_types = ("Ingress", "Egress") if egress_rules else ("Ingress",)
    spec = NetworkPolicySpec(
        pod_selector=pod_selector or LabelSelector(),
        ingress=tuple(ingress or ()),
        egress=egress_rules,
        policy_types=tuple(policy_types),
    )
    return NetworkPolicy(ObjectMeta(name=name, namespace=namespace), spec)


def sel(**labels: str) -> LabelSelector:
    """A matchLabels selector."""
    return LabelSelector(match_labels=labels)
