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
_DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*")
_INTERFACE = re.compile(r"[^/:\s]{1,15}")
DEFAULT_API_SERVER_PORT = "6443"
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
    uplink: str | None = None
    api_server_host: str | None = None
    api_server_port: str | None = None
    image: str | None = None
    namespace: str = DEFAULT_NAMESPACE

    def check(self) -> None:
        """Raise InstallOptionError naming the first option whose value is not acceptable."""
        if self.routing is not None and self.routing not in ROUTING_MODES:
            raise InstallOptionError(f"--routing {self.routing!r}: expected native or tunnel")
        if self.pod_cidr_pool is not None:
            _check_pool(self.pod_cidr_pool)
        if self.uplink is not None and (not _INTERFACE.fullmatch(self.uplink) or self.uplink in (".", "..")):
            raise InstallOptionError(f"--uplink {self.uplink!r}: not an interface name (1-15 characters, "
                                     "no '/', ':' or blanks)")
        if self.api_server_host is not None and not _is_host(self.api_server_host):
            raise InstallOptionError(f"--api-server-host {self.api_server_host!r}: expected an IP address or "
                                     "a DNS name")
        if self.api_server_port is not None:
            if self.api_server_host is None:
                raise InstallOptionError("--api-server-port needs --api-server-host")
            port = self.api_server_port
            if not (re.fullmatch(r"[0-9]{1,5}", port) and 1 <= int(port) <= 65535):
                raise InstallOptionError(f"--api-server-port {port!r}: expected a port, 1-65535")
        if self.image is not None and not _IMAGE.fullmatch(self.image):
            raise InstallOptionError(f"--image {self.image!r}: not an image reference "
                                     "([registry/]name[:tag][@sha256:digest])")
        if not _NAMESPACE.fullmatch(self.namespace):
            raise InstallOptionError(f"--namespace {self.namespace!r}: not a namespace name (1-63 characters "
                                     "of [a-z0-9-], starting and ending with a letter or digit)")


def _check_pool(text: str) -> None:
    """Refuse a pod CIDR pool that is not an IPv4 network with its prefix length."""
    try:
        pool = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InstallOptionError(f"--pod-cidr-pool {text!r}: {exc}") from None
    if pool.version != 4 or "/" not in text:
        raise InstallOptionError(f"--pod-cidr-pool {text!r}: expected an IPv4 CIDR such as 10.244.0.0/16")


def _is_host(text: str) -> bool:
    """Whether `text` is an IP address or a DNS name (RFC 1123)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return len(text) <= 253 and _DNS_NAME.fullmatch(text) is not None
    return True


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
    if options.uplink is not None:
        config["uplink"] = options.uplink
    if options.api_server_host is not None:
        config["api-server-host"] = options.api_server_host
        config["api-server-port"] = options.api_server_port or DEFAULT_API_SERVER_PORT
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


class _Dumper(yaml.SafeDumper):
    """YAML as the manifests are written: multi-line strings (the containers' scripts) as literal blocks,
    and a value used twice (the probes' command) written out twice rather than as an alias."""

    def ignore_aliases(self, data: Any) -> bool:
        """Never emit anchors and aliases."""
        return True


def _string(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    """A string node; a literal block (|) when it spans lines."""
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


_Dumper.add_representer(str, _string)


def to_yaml(objects: list[Manifest]) -> str:
    """The objects as one multi-document YAML stream, for `kubectl apply -f -`."""
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def rbac_rules(objects: list[Manifest]) -> set[tuple[str, str, str]]:
    """(API group, resource, verb) for every verb the agent's ClusterRole grants."""
    role = _find(objects, "ClusterRole", DAEMON_SET)
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}
