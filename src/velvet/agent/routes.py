"""The node namespace's main routing table through netlink: the kernel side of `NodeRouteController`.

A route's next hop is a gateway (native routing: another node's IP) or a device (tunnel mode: the
VXLAN device). Velvet's routes carry route protocol 198 (`ip route show proto 198`), so they are told
apart from everything else in the table and adopted after a restart. The agent runs inside its node's network
namespace; nothing here touches any other namespace.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Mapping

from velvet.errors import DatapathError

VELVET_ROUTE_PROTO = 198
MAIN_TABLE = 254


class NetlinkRoutes:
    """Velvet's routes in the main table of the caller's network namespace."""

    def owned(self) -> Mapping[str, str]:
        """Every IPv4 route of Velvet's protocol in the main table, as CIDR -> gateway or device name."""
        from pyroute2 import IPRoute  # on first use: a single node never routes, and pyroute2 is 9 MB

        with IPRoute() as ipr:
            routes = ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE)
        names = {index: name for index, name in socket.if_nameindex()}
        found = {}
        for route in routes:
            if route["proto"] != VELVET_ROUTE_PROTO:
                continue
            gateway = route.get_attr("RTA_GATEWAY")
            hop = str(gateway) if gateway else names.get(route.get_attr("RTA_OIF"), "")
            found[f"{route.get_attr('RTA_DST')}/{route['dst_len']}"] = hop
        return found

    def replace(self, cidr: str, gateway: str) -> None:
        """`ip route replace CIDR via GATEWAY proto 198`, or `dev GATEWAY` when it names a device."""
        dst, length = cidr.split("/")
        try:
            hop: dict[str, object] = {"gateway": str(ipaddress.IPv4Address(gateway))}
        except ValueError:
            try:
                hop = {"oif": socket.if_nametoindex(gateway)}
            except OSError:
                raise DatapathError(f"route replace {cidr}: no device {gateway}") from None
        self._call("replace", cidr, dst=dst, dst_len=int(length), proto=VELVET_ROUTE_PROTO, **hop)

    def delete(self, cidr: str) -> None:
        """`ip route del CIDR proto 198`; an absent route is fine."""
        dst, length = cidr.split("/")
        self._call("del", cidr, dst=dst, dst_len=int(length), proto=VELVET_ROUTE_PROTO)

    @staticmethod
    def _call(command: str, cidr: str, **attrs: object) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            with IPRoute() as ipr:
                ipr.route(command, table=MAIN_TABLE, **attrs)
        except NetlinkError as err:
            if command == "del" and err.code == errno.ESRCH:
                return
            raise DatapathError(f"route {command} {cidr}: {err}") from None
