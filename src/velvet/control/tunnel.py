"""Tunnel endpoints: the node an address lives on, as the ipcache names it for tunnel mode.

An ipcache entry of an address on another node carries that node's InternalIP (`RemoteIdentity`);
lxc_from_pod and overlay_to_tunnel encapsulate packets to it towards that IP when the node runs in
tunnel mode, and native routing ignores it. Other nodes' own IPs carry none: packets to a node's
address travel the underlay as they are, so replies to a node (NodePort SNAT) arrive at its uplink.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from velvet.datapath.tables import RemoteIdentity
from velvet.model.identity import ReservedIdentity
from velvet.model.node import NodeRecord


def tunnel_endpoint(node_name: str | None, own_node: str, node_ips: Mapping[str, str]) -> str | None:
    """The underlay IP packets to a pod on `node_name` (its spec.nodeName) are tunnelled to: that node's
    InternalIP; None for this node's pods, a pod not scheduled, or a node not registered (yet)."""
    if not node_name or node_name == own_node:
        return None
    return node_ips.get(node_name)


def with_tunnel_endpoints(ipcache: Mapping[str, int], placement: Mapping[str, str],
                          nodes: Iterable[NodeRecord], own_node: str, *,
                          pod_cidrs: bool) -> dict[str, int | RemoteIdentity]:
    """The ipcache with every remote pod's tunnel endpoint (`placement`: pod IP -> its node's name);
    with `pod_cidrs` (tunnel mode) also each other node's pod CIDR as WORLD with that node as endpoint,
    so a pod this node does not know yet is still reached through its node."""
    node_ips = {n.name: n.internal_ip for n in nodes}
    entries: dict[str, int | RemoteIdentity] = {}
    if pod_cidrs:
        for node in nodes:
            if node.name != own_node:
                cidr = str(ipaddress.IPv4Network(node.pod_cidr, strict=False))
                entries[cidr] = RemoteIdentity(int(ReservedIdentity.WORLD), node.internal_ip)
    entries.update(ipcache)
    for ip, node_name in placement.items():
        key = f"{ip}/32"
        endpoint = tunnel_endpoint(node_name, own_node, node_ips)
        identity = entries.get(key)
        if endpoint is not None and isinstance(identity, int):
            entries[key] = RemoteIdentity(identity, endpoint)
    return entries
