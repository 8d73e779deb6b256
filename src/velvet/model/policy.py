"""networking.k8s.io/v1 NetworkPolicy."""

from __future__ import annotations

from dataclasses import dataclass

from velvet.model.meta import LabelSelector, ObjectMeta


@dataclass(frozen=True, slots=True)
class IPBlock:
    """A CIDR and the CIDRs carved out of it."""

    cidr: str
    except_: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NetworkPolicyPeer:
    """A peer: podSelector and/or namespaceSelector (both = AND), or an ipBlock."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True, slots=True)
class NetworkPolicyPort:
    """A port: protocol (default TCP), number or name (None = every port), endPort for ranges."""

    protocol: str = "TCP"
    port: int | str | None = None
    end_port: int | None = None


@dataclass(frozen=True, slots=True)
class NetworkPolicyRule:
    """An ingress rule (peers are its `from`) or egress rule (peers are its `to`)."""

    ports: tuple[NetworkPolicyPort, ...] = ()
    peers: tuple[NetworkPolicyPeer, ...] = ()


@dataclass(frozen=True, slots=True)
class NetworkPolicySpec:
    """Spec with policy_types already defaulted as the API server does."""

    pod_selector: LabelSelector
    ingress: tuple[NetworkPolicyRule, ...] = ()
    egress: tuple[NetworkPolicyRule, ...] = ()
    policy_types: tuple[str, ...] = ("Ingress",)


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    """A NetworkPolicy."""

    metadata: ObjectMeta
    spec: NetworkPolicySpec
