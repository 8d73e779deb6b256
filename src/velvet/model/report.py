"""What the node runtime reports to the agent, besides pod status: the wiring of a pod (CNI ADD)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EndpointReport:
    """A wired pod: its IPv4 address, the host side of its veth, its network namespace and cgroup."""

    ip: str
    ifname: str
    ifindex: int
    netns_inode: int = 0  # 0: not reported
    cgroup_id: int = 0  # 0: not reported
