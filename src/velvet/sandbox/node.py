"""The sandbox node: a network namespace wired to pods and to an external client, never to the host.

Layout inside `velvet-<sb>-node` (net.ipv4.ip_forward=1 here only; rp_filter off):

- `velvet_host` holds the pod gateway 10.244.0.1/32. It is one end of a veth pair whose other end,
  `velvet_net`, also stays in the node (Cilium's cilium_host/cilium_net shape): this kernel has no
  dummy driver (CONFIG_DUMMY unset). `velvet_host` is NOARP, so an IP packet routed to it is sent at
  once (no neighbour resolution) and its tc egress sees the packet itself; what tc does not redirect
  arrives at `velvet_net` addressed to another MAC and is dropped there, silently, like a dummy
  would. Pods reach the gateway through their own veth: the node answers ARP for any local
  address on any interface (arp_ignore=0, set explicitly), so no proxy_arp is needed.
- Each pod gets `10.244.0.X/32 dev vv<hash8> src 10.244.0.1`; there is no route for the whole pod
  CIDR, so a packet to an unused pod IP gets "unreachable" instead of vanishing.
- `10.96.0.0/16 dev velvet_host src 10.244.0.1`: pods and external clients need no node route for
  services (their packets to a VIP reach the tc programs on the pod veth / uplink before any route
  lookup, and socket LB rewrites connect() in pods). Processes of the node itself are the reason:
  without socket LB (not attached yet, or a raw socket) connect() to a VIP would fail with
  ENETUNREACH at route lookup before a packet exists. With this route the packet is sent through
  `velvet_host`, where a tc egress program can translate it; untranslated, it is dropped,
  so a VIP never leaks anywhere else. The source 10.244.0.1 is reachable from every pod.
- `uplink0` 192.168.77.2/24, a veth to `eth0` 192.168.77.1/24 in `velvet-<sb>-ext`, the external
  client, which routes the pod CIDR, the service CIDR and everything else (its default route: the
  ExternalIPs and LoadBalancer IPs that the node serves are addresses of no interface) via
  192.168.77.2. The node has no default route: nothing leaves the machine.

With several nodes (`underlay`), node k is `velvet-<sb>-node<k>` with pod CIDR 10.244.<k>.0/24 and
`uplink0` 192.168.77.<2+k>, whose peer is a port of the bridge in `velvet-<sb>-lan`; the external
client and etcd hang off the same bridge.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from velvet.sandbox import cgroups, netlink
from velvet.sandbox.linux import set_sysctls
from velvet.sandbox.naming import (
    EXT_UPLINK_IF,
    LAN_BRIDGE_IF,
    NODE_HOST_IF,
    NODE_NET_IF,
    NODE_UPLINK_IF,
    SandboxConfig,
    SandboxNames,
)
from velvet.system.mounts import ensure_pin_dir
from velvet.system.netns import netns_inode

NODE_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
    "net.ipv4.conf.all.arp_ignore": "0",
    "net.ipv4.conf.default.arp_ignore": "0",
}
EXT_SYSCTLS = {"net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0"}


@dataclass(frozen=True)
class Node:
    """A created sandbox node; `create` builds it, `destroy` removes everything of the sandbox."""

    cfg: SandboxConfig

    @property
    def names(self) -> SandboxNames:
        """Names of the sandbox's objects."""
        return self.cfg.names

    @property
    def netns(self) -> str:
        """The node's network namespace name."""
        return self.names.node_netns

    @property
    def netns_path(self) -> Path:
        """The node's network namespace bind mount (for setns and `IPRoute(netns=...)`)."""
        return self.names.netns_path(self.netns)

    @property
    def ext_netns(self) -> str:
        """The external client's network namespace name."""
        return self.names.ext_netns

    @property
    def netns_inode(self) -> int:
        """Inode of the node's network namespace."""
        return netns_inode(self.netns_path)

    @property
    def cgroup(self) -> Path:
        """The node's cgroup directory."""
        return self.names.cgroup_node

    @property
    def cgroup_id(self) -> int:
        """The node cgroup's id (inode)."""
        return cgroups.cgroup_id(self.cgroup)

    @classmethod
    def create(cls, cfg: SandboxConfig | None = None, *, lan: bool = False) -> Node:
        """Create the node or complete a partial one (idempotent). Needs root, netns, cgroup2, veth.

        `lan`: the uplink goes to the underlay bridge (`underlay.create` first) instead of straight to
        the external client, whose side `underlay` wires then.
        """
        cfg = cfg or SandboxConfig()
        names = cfg.names
        for d in (names.state_dir, names.pods_dir, names.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        names.run_dir.chmod(0o700)
        cgroups.create(names.cgroup_node)
        cgroups.create(names.cgroup_shims)
        ensure_pin_dir(names.pin_dir)
        netlink.create_netns(names.node_netns)
        set_sysctls(names.netns_path(names.node_netns), NODE_SYSCTLS)
        if lan:
            _wire_node(cfg, names, names.lan_netns, names.lan_port)
            attach_to_bridge(names.lan_netns, names.lan_port)
            return cls(cfg)
        netlink.create_netns(names.ext_netns)
        set_sysctls(names.netns_path(names.ext_netns), EXT_SYSCTLS)
        _wire_node(cfg, names, names.ext_netns, EXT_UPLINK_IF)
        _wire_ext(cfg, names)
        return cls(cfg)

    @staticmethod
    def exists(cfg: SandboxConfig | None = None) -> bool:
        """Whether the node's network namespace exists."""
        return netlink.netns_exists((cfg or SandboxConfig()).names.node_netns)

    @staticmethod
    def destroy(cfg: SandboxConfig | None = None) -> None:
        """Remove everything of the sandbox, including a partially created or crashed one."""
        from velvet.sandbox import cleanup

        cfg = cfg or SandboxConfig()
        cleanup.remove(cleanup.find_leftovers(cfg.sandbox))


def attach_to_bridge(lan_netns: str, port: str) -> None:
    """Make `port` (in the underlay namespace) a port of its bridge, and up."""
    with netlink.ipr(lan_netns) as ipr:
        bridge = netlink.require_ifindex(ipr, LAN_BRIDGE_IF)
        ipr.link("set", index=netlink.require_ifindex(ipr, port), master=bridge, state="up")


def _wire_node(cfg: SandboxConfig, names: SandboxNames, peer_netns: str, peer: str) -> None:
    """Inside the node: lo, the gateway pair with the service route, and the uplink veth pair to `peer`."""
    with netlink.ipr(names.node_netns) as ipr:
        netlink.set_up(ipr, "lo")
        host = netlink.add_link(ipr, NODE_HOST_IF, "veth", peer={"ifname": NODE_NET_IF})
        netlink.add_address(ipr, host, cfg.pod_gateway, 32)
        ipr.link("set", index=host, arp=False)
        netlink.set_up(ipr, NODE_NET_IF)
        netlink.set_up(ipr, NODE_HOST_IF)
        svc = ipaddress.IPv4Network(cfg.service_cidr)
        netlink.replace_route(
            ipr,
            dst=str(svc.network_address),
            dst_len=svc.prefixlen,
            oif=host,
            scope="link",
            prefsrc=cfg.pod_gateway,
        )
        if not _has_link(peer_netns, peer):
            netlink.delete_link(ipr, NODE_UPLINK_IF)  # a half-built pair from a crash
        up = netlink.add_link(ipr, NODE_UPLINK_IF, "veth", peer={"ifname": peer, "net_ns_fd": peer_netns})
        netlink.add_address(ipr, up, cfg.node_uplink_ip, cfg.uplink_prefix)
        netlink.set_up(ipr, NODE_UPLINK_IF)


def _has_link(netns: str, ifname: str) -> bool:
    """Whether the far end of the uplink exists."""
    with netlink.ipr(netns) as ipr:
        return netlink.ifindex(ipr, ifname) is not None


def _wire_ext(cfg: SandboxConfig, names: SandboxNames) -> None:
    """Inside the external client: lo, eth0, routes to the pod and service CIDRs, a default via the node."""
    with netlink.ipr(names.ext_netns) as ipr:
        netlink.set_up(ipr, "lo")
        eth = netlink.require_ifindex(ipr, EXT_UPLINK_IF)
        netlink.add_address(ipr, eth, cfg.ext_uplink_ip, cfg.uplink_prefix)
        netlink.set_up(ipr, EXT_UPLINK_IF)
        for cidr in (cfg.pod_cidr, cfg.service_cidr):
            net = ipaddress.IPv4Network(cidr)
            netlink.replace_route(
                ipr, dst=str(net.network_address), dst_len=net.prefixlen, gateway=cfg.node_uplink_ip
            )
        netlink.replace_route(ipr, dst="0.0.0.0", dst_len=0, gateway=cfg.node_uplink_ip)
