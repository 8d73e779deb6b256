"""Routes to the other nodes' pod CIDRs: `podCIDR via nodeIP` (native routing) or `podCIDR dev
velvet_vxlan` (tunnel mode) for every other registered node, and none for a node gone.

The controller works on a `RouteTable` (the node namespace's main table through netlink in the agent,
a dict in unit tests): it reads the routes it owns, which carry Velvet's route protocol number, and
changes only the difference, so a restarted agent adopts its predecessor's routes and drops those of
nodes that left meanwhile.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from typing import Protocol

from velvet.model.node import NodeRecord

log = logging.getLogger("velvet.routes")


class RouteTable(Protocol):
    """The routes Velvet owns in one node's routing table: pod CIDR -> next hop (a node's IP, or a
    device's name)."""

    def owned(self) -> Mapping[str, str]:
        """Every route of Velvet's protocol, as pod CIDR -> next hop."""
        ...

    def replace(self, cidr: str, gateway: str) -> None:
        """Route `cidr` via `gateway` (an IP), or through the device it names (created or replaced)."""
        ...

    def delete(self, cidr: str) -> None:
        """Remove Velvet's route to `cidr` (absent is fine)."""
        ...


class NodeRouteController:
    """Keeps the routes to the other nodes' pod CIDRs in line with the registered nodes."""

    def __init__(self, table: RouteTable, own_name: str, own_pod_cidr: str,
                 device: str | None = None) -> None:
        """Routes in `table`; through `device` (tunnel mode) instead of via the nodes' IPs when given."""
        self.table = table
        self.device = device
        self.own_name = own_name
        self.own_pod_cidr = ipaddress.IPv4Network(own_pod_cidr)
        self._refused: set[tuple[str, str]] = set()

    def desired(self, nodes: Iterable[NodeRecord]) -> dict[str, str]:
        """The routes the nodes ask for: every other node's pod CIDR via its InternalIP (or the device).

        A node whose pod CIDR overlaps this node's would take this node's pods' traffic: it is left
        out, with one log line naming it.
        """
        routes: dict[str, str] = {}
        for node in nodes:
            if node.name == self.own_name:
                continue
            cidr = ipaddress.IPv4Network(node.pod_cidr, strict=False)
            if cidr.overlaps(self.own_pod_cidr):
                if (node.name, node.pod_cidr) not in self._refused:
                    log.error("node %s: pod CIDR %s overlaps this node's %s; no route to it", node.name,
                              node.pod_cidr, self.own_pod_cidr)
                    self._refused.add((node.name, node.pod_cidr))
                continue
            routes[str(cidr)] = self.device or node.internal_ip
        return routes

    def reconcile(self, nodes: Iterable[NodeRecord]) -> tuple[list[str], list[str]]:
        """Bring the table to the nodes' routes; (CIDRs routed anew or re-pointed, CIDRs removed)."""
        want = self.desired(nodes)
        have = self.table.owned()
        removed = sorted(set(have) - set(want))
        for cidr in removed:
            self.table.delete(cidr)
        changed = sorted(cidr for cidr, gateway in want.items() if have.get(cidr) != gateway)
        for cidr in changed:
            self.table.replace(cidr, want[cidr])
        if removed or changed:
            log.info("routes to other nodes: %s added or changed, %s removed", changed or "none",
                     removed or "none")
        return changed, removed
