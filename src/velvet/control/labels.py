"""Security-relevant labels of an endpoint, the input of identity allocation.

An endpoint's identity labels are, with their source prefix:

- `k8s:<key>=<value>` for every pod label the filter keeps;
- `k8s:io.cilium.k8s.namespace.labels.<key>=<value>` for every label of the pod's namespace;
- `k8s:io.kubernetes.pod.namespace=<namespace>`.

Pod labels and namespace labels therefore never collide, and a pod cannot claim another namespace:
pod labels whose key is one of the two namespace keys are dropped. Selectors are evaluated against
identities, so `pod_labels_of` / `namespace_labels_of` / `namespace_of` recover the parts.

The filter drops pod labels that only add cardinality (one identity per ReplicaSet, per StatefulSet
replica, per Job run ...). Unlike Cilium's default we keep every other `kubernetes.io` / `k8s.io`
pod label: a NetworkPolicy selecting on one of those must keep working. Namespace labels are never
filtered: there are few namespaces and namespaceSelectors (kubernetes.io/metadata.name!) need them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType

K8S_SOURCE = "k8s:"
RESERVED_SOURCE = "reserved:"
CIDR_SOURCE = "cidr:"
POD_NAMESPACE_KEY = "io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."

_POD_NAMESPACE_LABEL = K8S_SOURCE + POD_NAMESPACE_KEY
_NAMESPACE_LABEL_PREFIX = K8S_SOURCE + NAMESPACE_LABELS_PREFIX

DEFAULT_EXCLUDED_LABELS: tuple[str, ...] = (
    r"pod-template-hash",
    r"pod-template-generation",
    r"controller-revision-hash",
    r"controller-uid",
    r"job-name",
    r"batch\.kubernetes\.io/.*",
    r"statefulset\.kubernetes\.io/pod-name",
    r"apps\.kubernetes\.io/pod-index",
    r"annotation\..*",
    r"etcd_node",
)
"""Regexes (matched against the whole pod label key) of labels left out of identities."""


class LabelFilter:
    """Decides which pod label keys are security-relevant; decisions are cached per key."""

    def __init__(self, excluded: Iterable[str] = DEFAULT_EXCLUDED_LABELS) -> None:
        self.patterns: tuple[str, ...] = tuple(excluded)
        self._regex = re.compile("|".join(f"(?:{p})" for p in self.patterns)) if self.patterns else None
        self._cache: dict[str, bool] = {}

    def relevant(self, key: str) -> bool:
        """Whether the pod label `key` takes part in the identity."""
        decision = self._cache.get(key)
        if decision is None:
            excluded = key == POD_NAMESPACE_KEY or key.startswith(NAMESPACE_LABELS_PREFIX)
            excluded = excluded or (self._regex is not None and self._regex.fullmatch(key) is not None)
            decision = self._cache[key] = not excluded
        return decision


DEFAULT_LABEL_FILTER = LabelFilter()


def endpoint_labels(
    pod_labels: Mapping[str, str],
    namespace: str,
    namespace_labels: Mapping[str, str],
    label_filter: LabelFilter = DEFAULT_LABEL_FILTER,
) -> Mapping[str, str]:
    """The identity labels of a pod in `namespace` (read-only, keys sorted)."""
    labels = {K8S_SOURCE + k: v for k, v in pod_labels.items() if label_filter.relevant(k)}
    labels.update((_NAMESPACE_LABEL_PREFIX + k, v) for k, v in namespace_labels.items())
    labels[_POD_NAMESPACE_LABEL] = namespace
    return MappingProxyType(dict(sorted(labels.items())))


def reserved_labels(name: str) -> Mapping[str, str]:
    """The label set of a reserved identity, e.g. {"reserved:host": ""}."""
    return MappingProxyType({RESERVED_SOURCE + name: ""})


def cidr_labels(prefix: str) -> Mapping[str, str]:
    """The label set of a local CIDR identity, e.g. {"cidr:10.0.0.0/8": ""}."""
    return MappingProxyType({CIDR_SOURCE + prefix: ""})


def namespace_of(identity_labels: Mapping[str, str]) -> str | None:
    """The namespace of a pod identity; None for reserved and CIDR identities."""
    return identity_labels.get(_POD_NAMESPACE_LABEL)


def pod_labels_of(identity_labels: Mapping[str, str]) -> dict[str, str]:
    """The (filtered) pod labels an identity stands for."""
    return {
        k[len(K8S_SOURCE):]: v
        for k, v in identity_labels.items()
        if k.startswith(K8S_SOURCE)
        and k != _POD_NAMESPACE_LABEL
        and not k.startswith(_NAMESPACE_LABEL_PREFIX)
    }


def namespace_labels_of(identity_labels: Mapping[str, str]) -> dict[str, str]:
    """The labels of the namespace of a pod identity."""
    return {
        k[len(_NAMESPACE_LABEL_PREFIX):]: v
        for k, v in identity_labels.items()
        if k.startswith(_NAMESPACE_LABEL_PREFIX)
    }
