"""The segment the nodes of a multi-node sandbox share: a bridge in `velvet-<sb>-lan`, never on the host.

Every node's `uplink0` (192.168.77.<2+k>/24), the external client's `eth0` (192.168.77.1) and etcd's
`eth0` (192.168.77.250) are veths whose other ends are ports of bridge `br0` in the underlay
namespace, so the nodes reach each other, etcd and the client on one L2 segment, as the machines
of a cluster share a network. The external client routes each node's pod CIDR to that node and the
service CIDR (and everything else) to node 0.
"""

from __future__ import annotations

import ipaddress

from velvet.sandbox import netlink
from velvet.sandbox.linux import set_sysctls
from velvet.sandbox.naming import (
    ETCD_IP,
    EXT_UPLINK_IF,
    LAN_BRIDGE_IF,
    LAN_ETCD_PORT,
    LAN_EXT_PORT,
    SandboxConfig,
    SandboxNames,
    node_config,
)
from velvet.sandbox.node import EXT_SYSCTLS, attach_to_bridge

ETCD_IF = "eth0"


def create(sandbox: str, nodes: int) -> None:
    """Create (or complete) the underlay bridge, the external client and etcd's namespace on it."""
    names = SandboxNames(sandbox)
    netlink.create_netns(names.lan_netns)
    with netlink.ipr(names.lan_netns) as ipr:
        netlink.set_up(ipr, "lo")
        netlink.add_link(ipr, LAN_BRIDGE_IF, "bridge")
        netlink.set_up(ipr, LAN_BRIDGE_IF)
    _host_on_lan(names, names.ext_netns, EXT_UPLINK_IF, LAN_EXT_PORT, SandboxConfig(sandbox).ext_uplink_ip)
    set_sysctls(names.netns_path(names.ext_netns), EXT_SYSCTLS)
    _host_on_lan(names, names.etcd_netns, ETCD_IF, LAN_ETCD_PORT, ETCD_IP)
    for k in range(nodes):
        route_to_node(sandbox, k)
    with netlink.ipr(names.ext_netns) as ipr:
        first = node_config(sandbox, 0)
        svc = ipaddress.IPv4Network(first.service_cidr)
        netlink.replace_route(ipr, dst=str(svc.network_address), dst_len=svc.prefixlen,
                              gateway=first.node_uplink_ip)
        netlink.replace_route(ipr, dst="0.0.0.0", dst_len=0, gateway=first.node_uplink_ip)


def route_to_node(sandbox: str, node: int) -> None:
    """Route node `node`'s pod CIDR from the external client via that node's IP (a node joining)."""
    cfg = node_config(sandbox, node)
    net = ipaddress.IPv4Network(cfg.pod_cidr)
    with netlink.ipr(SandboxNames(sandbox).ext_netns) as ipr:
        netlink.replace_route(ipr, dst=str(net.network_address), dst_len=net.prefixlen,
                              gateway=cfg.node_uplink_ip)


def _host_on_lan(names: SandboxNames, netns: str, ifname: str, port: str, address: str) -> None:
    """Namespace `netns` with `ifname` at `address`/24, a veth whose peer `port` is on the bridge."""
    netlink.create_netns(netns)
    with netlink.ipr(netns) as ipr:
        netlink.set_up(ipr, "lo")
        idx = netlink.add_link(ipr, ifname, "veth", peer={"ifname": port, "net_ns_fd": names.lan_netns})
        netlink.add_address(ipr, idx, address, SandboxConfig(names.sandbox).uplink_prefix)
        netlink.set_up(ipr, ifname)
    attach_to_bridge(names.lan_netns, port)
