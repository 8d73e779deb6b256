"""Typed, frozen Kubernetes objects and Velvet's own records; no I/O here."""

from velvet.model.endpoint import EndpointReport
from velvet.model.identity import FIRST_ALLOCATED_IDENTITY, Identity, ReservedIdentity
from velvet.model.meta import LabelSelector, LabelSelectorRequirement, ObjectMeta
from velvet.model.namespace import NAME_LABEL, Namespace
from velvet.model.pod import Container, ContainerPort, Pod, PodCondition, PodSpec, PodStatus, Probe
from velvet.model.policy import (
    IPBlock,
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    NetworkPolicyRule,
    NetworkPolicySpec,
)
from velvet.model.service import (
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    ObjectReference,
    Service,
    ServicePort,
    ServiceSpec,
)
from velvet.model.tracing import VelvetTracingPolicy, VelvetTracingPolicyNamespaced

KubeObject = (Namespace | Pod | Service | EndpointSlice | NetworkPolicy | VelvetTracingPolicy
              | VelvetTracingPolicyNamespaced)

__all__ = [
    "FIRST_ALLOCATED_IDENTITY", "NAME_LABEL", "Container", "ContainerPort", "Endpoint", "EndpointConditions",
    "EndpointPort", "EndpointReport", "EndpointSlice", "IPBlock", "Identity", "KubeObject", "LabelSelector",
    "LabelSelectorRequirement", "Namespace", "NetworkPolicy", "NetworkPolicyPeer", "NetworkPolicyPort",
    "NetworkPolicyRule", "NetworkPolicySpec", "ObjectMeta", "ObjectReference", "Pod", "PodCondition",
    "PodSpec", "PodStatus", "Probe", "ReservedIdentity", "Service", "ServicePort", "ServiceSpec",
    "VelvetTracingPolicy", "VelvetTracingPolicyNamespaced",
]
