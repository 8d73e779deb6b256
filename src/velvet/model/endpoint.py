"""A local pod's endpoint: what the node runtime reports when it wires a pod (the CNI ADD), and the
record the agent keeps of it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EndpointReport:
    """A wired pod: its IPv4 address, the host side of its veth, its network namespace and cgroup, the MACs of
    its interface and of the veth's host side."""

    ip: str
    ifname: str
    ifindex: int
    netns_inode: int = 0  # 0: not reported
    cgroup_id: int = 0  # 0: not reported
    mac: str = ""  # "": not reported (host routing then asks the FIB)
    host_mac: str = ""


@dataclass(frozen=True, slots=True)
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
    mac: str = ""
    host_mac: str = ""

    @property
    def key(self) -> str:
        """namespace/name of the pod."""
        return f"{self.namespace}/{self.name}"
