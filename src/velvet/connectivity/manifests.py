"""The objects `velvet connectivity test` deploys: its namespaces, echo pods, services and policies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

NAMESPACE = "velvet-connectivity"
AUDIT_NAMESPACE = "velvet-connectivity-audit"
TCP_PORT = 8080
UDP_PORT = 8081
SERVICE_PORT = 80

CLIENT = f"{NAMESPACE}/client"
OTHER = f"{NAMESPACE}/other"
ECHO_A = f"{NAMESPACE}/echo-a"
ECHO_B = f"{NAMESPACE}/echo-b"
DENY_TARGET = f"{NAMESPACE}/deny-target"
EGRESS_CLIENT = f"{NAMESPACE}/egress-client"
AUDIT_TARGET = f"{AUDIT_NAMESPACE}/audit-target"
PODS = (CLIENT, OTHER, ECHO_A, ECHO_B, DENY_TARGET, EGRESS_CLIENT, AUDIT_TARGET)

SERVICE = "echo"
AFFINITY_SERVICE = "echo-affinity"
NODEPORT_SERVICE = "echo-nodeport"


def _split(key: str) -> tuple[str, str]:
    """("namespace", "name") of "namespace/name"."""
    namespace, _, name = key.partition("/")
    return namespace, name


def _document(obj: Mapping[str, Any]) -> str:
    """One YAML document, `---` first, so that documents concatenate into one manifest."""
    return "---\n" + yaml.safe_dump(obj, sort_keys=False)


def echo_pod(namespace: str, name: str, labels: Mapping[str, str] | None = None, *, tcp: int = TCP_PORT,
             udp: int = UDP_PORT, grace: int = 2) -> str:
    """YAML of a pod running the echo server (TCP and UDP), ready once its TCP port accepts."""
    container = {
        "name": "echo",
        "command": ["python3", "-m", "velvet.sandbox.echo"],
        "args": ["--tcp", str(tcp), "--udp", str(udp)],
        "ports": [{"name": "tcp-echo", "containerPort": tcp, "protocol": "TCP"},
                  {"name": "udp-echo", "containerPort": udp, "protocol": "UDP"}],
        "readinessProbe": {"tcpSocket": {"port": tcp}, "periodSeconds": 1},
    }
    return _document({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {"app": name})},
        "spec": {"terminationGracePeriodSeconds": grace, "containers": [container]},
    })


def namespace(name: str, labels: Mapping[str, str] | None = None,
              annotations: Mapping[str, str] | None = None) -> str:
    """YAML of a namespace."""
    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = dict(annotations)
    return _document({"apiVersion": "v1", "kind": "Namespace", "metadata": metadata})


def _service(name: str, extra: str = "") -> str:
    return f"""---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {NAMESPACE}
spec:
  selector: {{app: echo}}{extra}
  ports:
  - {{name: tcp, port: {SERVICE_PORT}, targetPort: tcp-echo, protocol: TCP}}
  - {{name: udp, port: {SERVICE_PORT}, targetPort: udp-echo, protocol: UDP}}
"""


def deployment() -> str:
    """Namespaces (the audit one annotated for per-namespace audit mode), pods and services."""
    part_of = {"app.kubernetes.io/part-of": "velvet-connectivity"}
    namespaces = (namespace(NAMESPACE, part_of)
                  + namespace(AUDIT_NAMESPACE, part_of, {"velvet.io/policy-audit-mode": "true"}))
    apps = {CLIENT: "client", OTHER: "other", ECHO_A: "echo", ECHO_B: "echo", DENY_TARGET: "deny-target",
            EGRESS_CLIENT: "egress-client", AUDIT_TARGET: "audit-target"}
    pods = "".join(echo_pod(*_split(key), {"app": app}, grace=0) for key, app in apps.items())
    services = (_service(SERVICE) + _service(AFFINITY_SERVICE, "\n  sessionAffinity: ClientIP")
                + _service(NODEPORT_SERVICE, "\n  type: NodePort"))
    return namespaces + pods + services


def default_deny_policies() -> str:
    """deny-target: isolated for ingress by a rule-less policy; a second one allows app=client on TCP."""
    return f"""---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-ingress
  namespace: {NAMESPACE}
spec:
  podSelector: {{matchLabels: {{app: deny-target}}}}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-client
  namespace: {NAMESPACE}
spec:
  podSelector: {{matchLabels: {{app: deny-target}}}}
  policyTypes: [Ingress]
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: client}}}}}}]
    ports: [{{protocol: TCP, port: {TCP_PORT}}}]
"""


def egress_cidr_policy(allowed_ip: str) -> str:
    """egress-client may only reach `allowed_ip`/32 on TCP (an ipBlock: a CIDR identity, not labels)."""
    return f"""---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: egress-to-cidr
  namespace: {NAMESPACE}
spec:
  podSelector: {{matchLabels: {{app: egress-client}}}}
  policyTypes: [Egress]
  egress:
  - to: [{{ipBlock: {{cidr: {allowed_ip}/32}}}}]
    ports: [{{protocol: TCP, port: {TCP_PORT}}}]
"""


def audit_policy() -> str:
    """audit-target: isolated for ingress with nothing allowed, in the audit-mode namespace."""
    return f"""---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: audit-deny-ingress
  namespace: {AUDIT_NAMESPACE}
spec:
  podSelector: {{matchLabels: {{app: audit-target}}}}
  policyTypes: [Ingress]
"""
