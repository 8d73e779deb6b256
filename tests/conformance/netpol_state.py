"""The model's changing state in the sandbox: pods with their servers, labels, and the step actions.

Actions (one key each in a step's `actions`): create_policy / update_policy (a NetworkPolicy manifest,
'$(ns/pod)' and '$(ns/pod)/N' strings replaced by that pod's IP or masked network), delete_policy
({namespace, name} or a manifest), delete_all_policies (true), and for namespaces ({namespace,
labels|keys}) and pods ({namespace, pod} or {pod: ns/pod}, with labels|keys) add_ (merge),
remove_ (drop these keys), set_ (replace all) and reset_ (back to the model) *_labels.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import netpol_model
from netpol_cases import Action, CaseFileError, Model, resolve_placeholders
from netpol_cluster import Cluster

Servers = tuple[tuple[int, str], ...]


class ModelState:
    """The namespaces and pods of the model as they currently are in the sandbox."""

    def __init__(self, cluster: Cluster, model: Model) -> None:
        """Track `model` in `cluster` (nothing is created yet)."""
        self.cluster = cluster
        self.model = model
        self.order = model.pod_order
        self.nodes = cluster.placement(self.order)
        self.servers: Servers | None = None
        self.pod_ips: dict[str, str] = {}
        self.ns_labels = {ns: dict(labels) for ns, labels in model.namespaces.items()}
        self.pod_labels = {pod: dict(labels) for pod, labels in model.pods.items()}

    def setup(self) -> None:
        """Create the namespaces."""
        namespaces = [netpol_model.namespace_manifest(ns, labels) for ns, labels in self.ns_labels.items()]
        self.cluster.apply(namespaces, "<model namespaces>")

    def _remove_pods(self) -> None:
        """Delete the model's pods that exist (also those a previous run left) and wait until gone."""
        existing = {f"{p['metadata']['namespace']}/{p['metadata']['name']}"
                    for p in self.cluster.objects("pods")}
        pods = [p for p in self.order if p in existing]
        if pods:
            self.cluster.delete([netpol_model.pod_stub(p) for p in pods], "<model pods>", grace=1)
            self.cluster.wait_pods(pods, present=False)

    def build(self, servers: Servers) -> dict[str, str]:
        """(Re-)create every pod with these servers, and the Services; returns the ready pods' IPs."""
        self.servers = None
        self._remove_pods()
        pods = [netpol_model.pod_manifest(p, self.pod_labels[p], servers, self.nodes[p]) for p in self.order]
        services = [netpol_model.service_manifest(p, servers) for p in self.order]
        self.cluster.apply(pods + services, "<model pods and services>")
        self.pod_ips = self.cluster.wait_pods(self.order, present=True)
        self.servers = servers
        return self.pod_ips

    def _policy(self, manifest: Any) -> dict[str, Any]:
        """The policy manifest with its pod IP placeholders resolved."""
        if not isinstance(manifest, Mapping) or not isinstance(manifest.get("metadata"), Mapping):
            raise CaseFileError("a policy action needs a NetworkPolicy manifest with metadata")
        resolved: dict[str, Any] = resolve_placeholders(copy.deepcopy(dict(manifest)), self.pod_ips)
        return resolved

    def _pod_key(self, value: Mapping[str, Any]) -> str:
        """"ns/pod" of a pod label action ({pod: ns/pod} or {namespace, pod|name})."""
        pod = str(value.get("pod") or value.get("name") or "")
        key = pod if "/" in pod else f"{value.get('namespace', '')}/{pod}"
        if key not in self.pod_labels:
            raise CaseFileError(f"unknown pod {key!r}")
        return key

    def _relabel(self, labels: dict[str, str], kind: str, value: Mapping[str, Any],
                 base: Mapping[str, str]) -> None:
        """Change `labels` in place as a *_labels action of this kind says (reset: back to `base`)."""
        change = {str(k): str(v) for k, v in (value.get("labels") or {}).items()}
        if kind.startswith("add_"):
            labels.update(change)
        elif kind.startswith("remove_"):
            for key in list(change) + [str(k) for k in value.get("keys") or ()]:
                labels.pop(key, None)
        elif kind.startswith("set_"):
            labels.clear()
            labels.update(change)
        else:
            labels.clear()
            labels.update(base)

    def act(self, action: Action) -> None:
        """Apply one step action to the sandbox."""
        kind, value = action.kind, action.value
        if kind in ("create_policy", "update_policy"):
            policy = self._policy(value)
            self.cluster.apply([policy], f"<{kind} {policy['metadata'].get('name')}>")
        elif kind == "delete_policy":
            ref = value if isinstance(value, Mapping) else {}
            meta = ref.get("metadata") or ref
            if not meta.get("name") or not meta.get("namespace"):
                raise CaseFileError("delete_policy needs a namespace and a name")
            self.cluster.delete([{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                  "metadata": {"name": meta["name"], "namespace": meta["namespace"]}}],
                                "<delete_policy>")
        elif kind == "delete_all_policies":
            if value:
                self.delete_policies()
        elif not isinstance(value, Mapping):
            raise CaseFileError(f"{kind} needs a mapping")
        elif kind.endswith("_namespace_labels"):
            ns = str(value.get("namespace", ""))
            if ns not in self.ns_labels:
                raise CaseFileError(f"unknown namespace {ns!r}")
            self._relabel(self.ns_labels[ns], kind, value, self.model.namespaces[ns])
            self.cluster.apply([netpol_model.namespace_manifest(ns, self.ns_labels[ns])], f"<{kind}>")
        else:
            pod = self._pod_key(value)
            self._relabel(self.pod_labels[pod], kind, value, self.model.pods[pod])
            assert self.servers is not None
            manifest = netpol_model.pod_manifest(pod, self.pod_labels[pod], self.servers, self.nodes[pod])
            self.cluster.apply([manifest], f"<{kind}>")

    def delete_policies(self) -> None:
        """Delete every NetworkPolicy in the model's namespaces."""
        policies = [p for p in self.cluster.objects("networkpolicies")
                    if p["metadata"]["namespace"] in self.ns_labels]
        if policies:
            self.cluster.delete([{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                  "metadata": {"name": p["metadata"]["name"],
                                               "namespace": p["metadata"]["namespace"]}} for p in policies],
                                "<delete all policies>")

    def reset(self) -> None:
        """Back to the model: no policy, the model's namespace and pod labels."""
        self.delete_policies()
        changed_ns = [ns for ns, labels in self.ns_labels.items() if labels != self.model.namespaces[ns]]
        changed_pods = [p for p, labels in self.pod_labels.items() if labels != self.model.pods[p]]
        for ns in changed_ns:
            self.ns_labels[ns] = dict(self.model.namespaces[ns])
        for pod in changed_pods:
            self.pod_labels[pod] = dict(self.model.pods[pod])
        manifests = [netpol_model.namespace_manifest(ns, self.ns_labels[ns]) for ns in changed_ns]
        if changed_pods and self.servers is not None:
            manifests += [netpol_model.pod_manifest(p, self.pod_labels[p], self.servers, self.nodes[p])
                          for p in changed_pods]
        if manifests:
            self.cluster.apply(manifests, "<reset labels>")

