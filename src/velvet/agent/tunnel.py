"""Tunnel mode's VXLAN device in the node's network namespace, through netlink.

`velvet_vxlan` is a VXLAN device in external (collect_md) mode on UDP 8472 (Cilium's port): it has no
VNI or remote of its own; the overlay programs give every packet both through the tunnel key (VNI =
the source's identity). It is NOARP, so the node's routes through it (`podCIDR dev velvet_vxlan`)
send without neighbour resolution, and 50 bytes below the uplink's MTU, the room VXLAN over IPv4
takes. A restarted agent adopts the device; one of another shape is replaced. Needs CAP_NET_ADMIN
in the node's namespace, and nothing here touches any other namespace.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from velvet.errors import DatapathError

TUNNEL_DEVICE = "velvet_vxlan"
VXLAN_PORT = 8472
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
DEFAULT_MTU = 1500
_IFF_NOARP = 0x80


class TunnelDevice(Protocol):
    """The device tunnel mode sends through."""

    name: str

    def ensure(self) -> int:
        """Create or adopt the device, up; return its ifindex."""
        ...


class NetlinkVxlan:
    """The node's VXLAN device in external mode, made or adopted through netlink."""

    def __init__(self, uplink: str | None, name: str = TUNNEL_DEVICE, port: int = VXLAN_PORT) -> None:
        self.name = name
        self.uplink = uplink
        self.port = port

    def ensure(self) -> int:
        """Create (or adopt) the device in external mode on `port`, NOARP, MTU fitted to the uplink, up."""
        # pyroute2 refuses to open a socket on a thread whose asyncio loop runs (the agent starts there)
        with ThreadPoolExecutor(1, thread_name_prefix="velvet-netlink") as pool:
            return pool.submit(self._ensure).result()

    def _ensure(self) -> int:
        from pyroute2 import IPRoute  # on first use: only tunnel mode has the device, and pyroute2 is 9 MB
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            with IPRoute() as ipr:
                found = ipr.link_lookup(ifname=self.name)
                if found and not self._fits(ipr.get_links(found[0])[0]):
                    ipr.link("del", index=found[0])
                    found = []
                if not found:
                    ipr.link("add", ifname=self.name, kind="vxlan", vxlan_collect_metadata=1,
                             vxlan_port=self.port, vxlan_learning=0)
                index = int(ipr.link_lookup(ifname=self.name)[0])
                ipr.link("set", index=index, flags=_IFF_NOARP, change=_IFF_NOARP, mtu=self._mtu(ipr),
                         state="up")
        except NetlinkError as err:
            raise DatapathError(f"VXLAN device {self.name}: {err}") from None
        return index

    def _fits(self, link: Any) -> bool:
        """Whether an existing link is a VXLAN device in external mode on our port."""
        info = link.get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
            return False
        data = info.get_attr("IFLA_INFO_DATA")
        return bool(data is not None and data.get_attr("IFLA_VXLAN_COLLECT_METADATA")
                    and data.get_attr("IFLA_VXLAN_PORT") == self.port)

    def _mtu(self, ipr: Any) -> int:
        """The uplink's MTU less VXLAN's overhead."""
        found = ipr.link_lookup(ifname=self.uplink) if self.uplink else []
        mtu = int(ipr.get_links(found[0])[0].get_attr("IFLA_MTU")) if found else DEFAULT_MTU
        return mtu - VXLAN_OVERHEAD
