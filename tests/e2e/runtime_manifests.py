"""Manifests the container-runtime tests share: the Service they reach, the Pod a runtime owns, and a
policy that cuts its egress."""

from __future__ import annotations

from velvet.connectivity.manifests import TCP_PORT


def server_service(namespace: str) -> str:
    """Service `server` on port 80 in `namespace`, selecting app=server's echo port."""
    return f"""---
apiVersion: v1
kind: Service
metadata: {{name: server, namespace: {namespace}}}
spec:
  selector: {{app: server}}
  ports: [{{port: 80, targetPort: {TCP_PORT}}}]
"""


def runtime_pod(namespace: str, name: str, uid: str | None = None) -> str:
    """Pod `name` (labels app=NAME) that a container runtime runs: the sandbox's kubelet leaves it alone."""
    uid_line = f"\n  uid: {uid}" if uid else ""
    return f"""---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}{uid_line}
  labels: {{app: {name}}}
  annotations: {{velvet.io/runtime: cni}}
spec:
  containers: [{{name: c, image: busybox}}]
"""


def deny_egress(namespace: str, app: str) -> str:
    """NetworkPolicy `<app>-no-egress` isolating app=APP's egress with no rule: everything out is denied."""
    return f"""---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: {app}-no-egress, namespace: {namespace}}}
spec:
  podSelector: {{matchLabels: {{app: {app}}}}}
  policyTypes: [Egress]
"""
