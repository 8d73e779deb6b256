"""What the agent needs of its source of objects, and of its view of the cluster's nodes.

Two sources implement it: the embedded API server (`local.LocalStore`, on files or etcd), which the
agent writes to (`velvet apply`, pod status from the sandbox kubelet, finished deletions), and the
Kubernetes API (`kube_source.KubeSource`), which the agent only reads: there kubectl, the kubelet and
Kubernetes' controllers write, and the write calls answer that they do nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from velvet.model import KubeObject, Pod
from velvet.model.node import NodeRecord
from velvet.model.pod import PodStatus
from velvet.sources.informer import ObjectCache


class AgentSource(ObjectCache, Protocol):
    """The agent's source: the controllers' cache, plus what `velvet` commands and the kubelet call."""

    @property
    def version(self) -> int:
        """The resourceVersion of the newest change taken in."""
        ...

    def get(self, kind: str, namespace: str | None = None, name: str | None = None) -> list[KubeObject]:
        """Objects of `kind` (any kubectl name) in `namespace` (None = "default", "all" = every one)."""
        ...

    def refresh(self) -> None:
        """Take in other writers' changes, publishing them as deltas."""
        ...

    def follow_nodes(self) -> None:
        """Follow the nodes that joined or left (where the source derives EndpointSlices)."""
        ...

    def storage_status(self) -> dict[str, Any]:
        """`velvet status`'s line: kind, endpoint, connected, error, version."""
        ...

    def apply(self, objects: Sequence[KubeObject], *, source: str = "<apply>") -> Sequence[object]:
        """Create or update every object, or none."""
        ...

    def delete(self, targets: Sequence[Any], grace_seconds: int | None = None, *,
               ignore_not_found: bool = False) -> Sequence[object]:
        """Delete the objects named."""
        ...

    def update_pod_status(self, namespace: str, name: str, status: PodStatus) -> bool:
        """Record a pod's status as the node runtime reports it; whether it changed."""
        ...

    def finalize_pod_deletion(self, namespace: str, name: str) -> bool:
        """Forget a terminating pod the node runtime finished; whether it was known."""
        ...

    def expire_terminating(self) -> list[Pod]:
        """Remove pods whose grace period ran out."""
        ...

    def close(self) -> None:
        """Stop following; end every watch."""
        ...


class NodeView(Protocol):
    """The cluster's nodes as the agent routes to them."""

    def nodes(self) -> list[NodeRecord]:
        """Every node that can be routed to."""
        ...

    def wait_listed(self, timeout: float) -> bool:
        """Wait until the nodes were listed once; whether they were within `timeout` seconds."""
        ...
