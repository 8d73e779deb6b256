"""The agent's Kubernetes manifests with install options applied (`velvet install --render`).

The manifests are the files of `manifests/` in this package, listed by its kustomization.yaml; the
repository's deploy/kubernetes is a kustomize base over the same directory, so `kubectl kustomize
deploy/kubernetes` and a render with the default options give the same objects. Needs PyYAML only.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from velvet.errors import VelvetError

DEFAULT_NAMESPACE = "kube-system"
CONFIG_MAP = "velvet-config"
DAEMON_SET = "velvet"
ROUTING_MODES = ("native", "tunnel")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(rf"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?{_PATH_PART}(?:/{_PATH_PART})*"
                    r"(?::\w[\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?")
"""An image reference as the container runtimes accept it: [registry[:port]/]path[:tag][@digest]."""

Manifest = dict[str, Any]


class InstallOptionError(VelvetError):
    """An install option has a value the manifests cannot take (names the option and the value)."""


@dataclass(frozen=True)
class InstallOptions:
    """What `velvet install --render` may change; the defaults render the manifests as they are."""

    routing: str | None = None
    pod_cidr_pool: str | None = None
    policy_audit_mode: bool = False
    image: str | None = None
    namespace: str = DEFAULT_NAMESPACE

    def check(self) -> None:
        """Raise InstallOptionError naming the first option whose value is not acceptable."""
        if self.routing is not None and self.routing not in ROUTING_MODES:
            raise InstallOptionError(f"--routing {self.routing!r}: expected native or tunnel")
        if self.pod_cidr_pool is not None:
            try:
                pool = ipaddress.ip_network(self.pod_cidr_pool, strict=True)
            except ValueError as exc:
                raise InstallOptionError(f"--pod-cidr-pool {self.pod_cidr_pool!r}: {exc}") from None
            if pool.version != 4 or "/" not in self.pod_cidr_pool:
                raise InstallOptionError(f"--pod-cidr-pool {self.pod_cidr_pool!r}: expected an IPv4 CIDR "
                                         "such as 10.244.0.0/16")
        if self.image is not None and not _IMAGE.fullmatch(self.image):
            raise InstallOptionError(f"--image {self.image!r}: not an image reference "
                                     "([registry/]name[:tag][@sha256:digest])")
        if not _NAMESPACE.fullmatch(self.namespace):
            raise InstallOptionError(f"--namespace {self.namespace!r}: not a namespace name (1-63 characters "
                                     "of [a-z0-9-], starting and ending with a letter or digit)")


def load_manifests() -> list[Manifest]:
    """Every object of the package's manifests, in the order its kustomization.yaml lists the files."""
    base = resources.files("velvet.install").joinpath("manifests")
    kustomization = yaml.safe_load(base.joinpath("kustomization.yaml").read_text())
    objects: list[Manifest] = []
    for name in kustomization["resources"]:
        objects += [doc for doc in yaml.safe_load_all(base.joinpath(name).read_text()) if doc]
    return objects


def _find(objects: list[Manifest], kind: str, name: str) -> Manifest:
    """The object of `kind` named `name` (the manifests always have it)."""
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def render(options: InstallOptions) -> list[Manifest]:
    """The manifests with `options` applied (checked first: a bad value changes nothing)."""
    options.check()
    objects = copy.deepcopy(load_manifests())
    config = _find(objects, "ConfigMap", CONFIG_MAP)["data"]
    if options.routing is not None:
        config["routing"] = options.routing
    if options.pod_cidr_pool is not None:
        config["pod-cidr-pool"] = options.pod_cidr_pool
    if options.policy_audit_mode:
        config["policy-audit-mode"] = "true"
    if options.image is not None:
        pod = _find(objects, "DaemonSet", DAEMON_SET)["spec"]["template"]["spec"]
        for container in (*pod.get("initContainers", ()), *pod["containers"]):
            container["image"] = options.image
    if options.namespace != DEFAULT_NAMESPACE:
        _move_to(objects, options.namespace)
    return objects


def _move_to(objects: list[Manifest], namespace: str) -> None:
    """Put the namespaced objects (and the binding's subject) in `namespace`, created first.

    The agent's pod is privileged, so the namespace is labelled for the privileged Pod Security level.
    """
    for obj in objects:
        if "namespace" in obj["metadata"]:
            obj["metadata"]["namespace"] = namespace
        for subject in obj.get("subjects", ()):
            subject["namespace"] = namespace
    objects.insert(0, {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": namespace, "labels": {"app.kubernetes.io/part-of": "velvet",
                                      "pod-security.kubernetes.io/enforce": "privileged"}}})


def to_yaml(objects: list[Manifest]) -> str:
    """The objects as one multi-document YAML stream, for `kubectl apply -f -`."""
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)


def rbac_rules(objects: list[Manifest]) -> set[tuple[str, str, str]]:
    """(API group, resource, verb) for every verb the agent's ClusterRole grants."""
    role = _find(objects, "ClusterRole", DAEMON_SET)
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}
