"""The objects `velvet connectivity test` deploys: its namespaces, echo pods, services and policies."""

from __future__ import annotations

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


def _pod(key: str, app: str) -> str:
    namespace, name = key.split("/")
    return f"""---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  labels: {{app: {app}}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: echo
    command: ["python3", "-m", "velvet.sandbox.echo"]
    args: ["--tcp", "{TCP_PORT}", "--udp", "{UDP_PORT}"]
    ports:
    - {{name: tcp-echo, containerPort: {TCP_PORT}, protocol: TCP}}
    - {{name: udp-echo, containerPort: {UDP_PORT}, protocol: UDP}}
    readinessProbe:
      tcpSocket: {{port: {TCP_PORT}}}
      periodSeconds: 1
"""


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
    namespaces = f"""---
apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
  labels: {{app.kubernetes.io/part-of: velvet-connectivity}}
---
apiVersion: v1
kind: Namespace
metadata:
  name: {AUDIT_NAMESPACE}
  labels: {{app.kubernetes.io/part-of: velvet-connectivity}}
  annotations: {{velvet.io/policy-audit-mode: "true"}}
"""
    apps = {CLIENT: "client", OTHER: "other", ECHO_A: "echo", ECHO_B: "echo", DENY_TARGET: "deny-target",
            EGRESS_CLIENT: "egress-client", AUDIT_TARGET: "audit-target"}
    pods = "".join(_pod(key, app) for key, app in apps.items())
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
