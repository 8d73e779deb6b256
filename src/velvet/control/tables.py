"""Records the control plane writes into datapath tables that no compiler module owns."""

from __future__ import annotations

from dataclasses import dataclass

EP_POLICY_INGRESS = 1
EP_POLICY_EGRESS = 2
EP_POLICY_AUDIT = 4


@dataclass(frozen=True)
class EndpointEntry:
    """lxc_endpoints value: how the datapath finds a local pod by its IP."""

    ifindex: int
    identity: int
    ep_id: int
    flags: int
