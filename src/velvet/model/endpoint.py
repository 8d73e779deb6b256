"""A local pod's endpoint: what the node runtime reported when it wired the pod (the CNI ADD)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EndpointRecord:
    """What the node runtime reported when it wired a pod (the CNI ADD of the sandbox)."""

    namespace: str
    name: str
    ep_id: int
    ip: str
    ifname: str
    ifindex: int
    netns_inode: int = 0
    cgroup_id: int = 0

    @property
    def key(self) -> str:
        """namespace/name of the pod."""
        return f"{self.namespace}/{self.name}"
