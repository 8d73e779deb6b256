"""The upstream NetworkPolicy model as manifests: namespaces, pods with one server container per
(port, protocol), and one ClusterIP Service per pod (names as in kubernetes test/e2e/network/netpol).

TCP and UDP servers are Velvet's echo server (`python3 -m velvet.sandbox.echo --tcp|--udp P`, one
process per container). This kernel has no SCTP, so an SCTP container declares its port (named ports
still resolve, as upstream needs) but runs `sleep infinity`; SCTP probes are skipped anyway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

PodKey = str  # "ns/pod"


def container_name(port: int, protocol: str) -> str:
    """cont-<port>-<proto>, as upstream names the server containers."""
    return f"cont-{port}-{protocol.lower()}"


def port_name(port: int, protocol: str) -> str:
    """serve-<port>-<proto>, the container port name named-port policies refer to."""
    return f"serve-{port}-{protocol.lower()}"


def service_name(pod: PodKey) -> str:
    """s-<ns>-<pod>, the Service in front of one pod."""
    ns, _, name = pod.partition("/")
    return f"s-{ns}-{name}"


def _container(port: int, protocol: str) -> dict[str, Any]:
    command = (["python3", "-m", "velvet.sandbox.echo", f"--{protocol.lower()}", str(port)]
               if protocol in ("TCP", "UDP") else ["sleep", "infinity"])
    return {
        "name": container_name(port, protocol),
        "command": command,
        "ports": [{"name": port_name(port, protocol), "containerPort": port, "protocol": protocol}],
    }


def namespace_manifest(name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """A Namespace with exactly these labels."""
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels)}}


def pod_manifest(pod: PodKey, labels: Mapping[str, str], servers: Sequence[tuple[int, str]],
                 node: str = "") -> dict[str, Any]:
    """A pod with one server container per (port, protocol), pinned to `node` by spec.nodeName when
    given; ready once its first TCP server accepts."""
    ns, _, name = pod.partition("/")
    containers = [_container(port, proto) for port, proto in servers]
    tcp = [port for port, proto in servers if proto == "TCP"]
    if tcp:
        containers[0]["readinessProbe"] = {"tcpSocket": {"port": tcp[0]}, "periodSeconds": 1}
    spec: dict[str, Any] = {"terminationGracePeriodSeconds": 1, "containers": containers}
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": dict(labels)},
        "spec": spec,
    }


def pod_stub(pod: PodKey) -> dict[str, Any]:
    """A valid manifest that names the pod, for deleting it whatever it runs."""
    return pod_manifest(pod, {}, [(80, "TCP")])


def service_manifest(pod: PodKey, servers: Sequence[tuple[int, str]]) -> dict[str, Any]:
    """s-<ns>-<pod>: selector {pod: <pod>}, one port per server (targetPort = port)."""
    ns, _, name = pod.partition("/")
    ports = [{"name": f"service-port-{proto.lower()}-{port}", "port": port, "protocol": proto}
             for port, proto in servers]
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": service_name(pod), "namespace": ns},
        "spec": {"type": "ClusterIP", "selector": {"pod": name}, "ports": ports},
    }


def dump(manifests: Sequence[Mapping[str, Any]]) -> str:
    """Manifests as one multi-document YAML text."""
    return yaml.safe_dump_all([dict(m) for m in manifests], sort_keys=False)
