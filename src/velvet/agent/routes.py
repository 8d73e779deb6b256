"""The node namespace's main routing table through netlink: the kernel side of `NodeRouteController`.

A route's next hop is a gateway (native routing: another node's IP) or a device (tunnel mode: the
VXLAN device). Velvet's routes carry route protocol 198 (`ip route show proto 198`), so they are told
apart from everything else in the table and adopted after a restart. The agent runs inside its node's network
namespace; nothing here touches any other namespace.

The three requests are rtnetlink messages built and read here with `struct` rather than through
pyroute2: the agent reads its routes every second, and pyroute2 parsed every route of the table into
objects each time (a node's table has one route per local pod: 250 routes, ~5 MB of short-lived
objects and ~8 ms a second, scattered over the allocator's arenas), and importing it cost 9 MB. The
dump asks the kernel for protocol 198 of the main table only (strict checking, Linux 4.20).
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import socket
import struct
from collections.abc import Iterator, Mapping

from velvet.errors import DatapathError

VELVET_ROUTE_PROTO = 198
MAIN_TABLE = 254

_SOL_NETLINK = 270
_NETLINK_GET_STRICT_CHK = 12
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_RTM_NEWROUTE, _RTM_DELROUTE, _RTM_GETROUTE = 24, 25, 26
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_REPLACE, _NLM_F_CREATE, _NLM_F_DUMP = 0x1, 0x4, 0x100, 0x400, 0x300
_RTA_DST, _RTA_OIF, _RTA_GATEWAY, _RTA_TABLE = 1, 4, 5, 15
_RT_SCOPE_UNIVERSE, _RT_SCOPE_NOWHERE = 0, 255
_RTN_UNICAST = 1
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTATTR = struct.Struct("=HH")  # len, type
_ERRNO = struct.Struct("=i")
_sequence = itertools.count(1)


def _attr(kind: int, payload: bytes) -> bytes:
    """One route attribute, padded to 4 bytes."""
    size = _RTATTR.size + len(payload)
    return _RTATTR.pack(size, kind) + payload + b"\0" * (-size % 4)


def _attrs(data: bytes, offset: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each attribute in data[offset:end]."""
    while offset + _RTATTR.size <= end:
        size, kind = _RTATTR.unpack_from(data, offset)
        if size < _RTATTR.size:
            return
        yield kind, data[offset + _RTATTR.size:offset + size]
        offset += (size + 3) & ~3


def _messages(data: bytes) -> Iterator[tuple[int, bytes, int]]:
    """(type, the whole message, offset of its payload) of each netlink message in one datagram."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        size, kind = _NLMSGHDR.unpack_from(data, offset)[:2]
        if size < _NLMSGHDR.size:
            return
        yield kind, data[offset:offset + size], _NLMSGHDR.size
        offset += (size + 3) & ~3


def _request(kind: int, flags: int, rtmsg: bytes, attrs: bytes = b"") -> tuple[socket.socket, int]:
    """Send one rtnetlink request on a new socket (strict checking on); the socket and the sequence."""
    seq = next(_sequence) & 0xFFFFFFFF
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    try:
        sock.setsockopt(_SOL_NETLINK, _NETLINK_GET_STRICT_CHK, 1)
        body = rtmsg + attrs
        sock.sendto(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, _NLM_F_REQUEST | flags, seq, 0) + body,
                    (0, 0))
    except OSError:
        sock.close()
        raise
    return sock, seq


def _rtmsg(dst_len: int, scope: int, kind: int) -> bytes:
    return _RTMSG.pack(socket.AF_INET, dst_len, 0, 0, MAIN_TABLE, VELVET_ROUTE_PROTO, scope, kind, 0)


class NetlinkRoutes:
    """Velvet's routes in the main table of the caller's network namespace."""

    def owned(self) -> Mapping[str, str]:
        """Every IPv4 route of Velvet's protocol in the main table, as CIDR -> gateway or device name."""
        try:
            sock, seq = _request(_RTM_GETROUTE, _NLM_F_DUMP, _rtmsg(0, 0, 0))
        except OSError as err:
            raise DatapathError(f"route dump: {err}") from None
        found: dict[str, str] = {}
        names: dict[int, str] | None = None
        with sock:
            while True:
                data = sock.recv(65536)
                for kind, message, at in _messages(data):
                    if kind == _NLMSG_DONE:
                        return found
                    if kind == _NLMSG_ERROR:
                        code = -_ERRNO.unpack_from(message, at)[0]
                        raise DatapathError(f"route dump: {os.strerror(code)}")
                    if kind != _RTM_NEWROUTE or _NLMSGHDR.unpack_from(message)[3] != seq:
                        continue
                    family, dst_len, _, _, table, proto = _RTMSG.unpack_from(message, at)[:6]
                    attrs = dict(_attrs(message, at + _RTMSG.size, len(message)))
                    if _RTA_TABLE in attrs:
                        table = struct.unpack("=I", attrs[_RTA_TABLE])[0]
                    if family != socket.AF_INET or table != MAIN_TABLE or proto != VELVET_ROUTE_PROTO:
                        continue  # a kernel without strict checking dumps everything
                    dst = socket.inet_ntoa(attrs.get(_RTA_DST, b"\0\0\0\0"))
                    if _RTA_GATEWAY in attrs:
                        hop = socket.inet_ntoa(attrs[_RTA_GATEWAY])
                    else:
                        if names is None:
                            names = dict(socket.if_nameindex())
                        oif = struct.unpack("=I", attrs[_RTA_OIF])[0] if _RTA_OIF in attrs else 0
                        hop = names.get(oif, "")
                    found[f"{dst}/{dst_len}"] = hop

    def replace(self, cidr: str, gateway: str) -> None:
        """`ip route replace CIDR via GATEWAY proto 198`, or `dev GATEWAY` when it names a device."""
        dst, length = cidr.split("/")
        try:
            hop = _attr(_RTA_GATEWAY, socket.inet_aton(str(ipaddress.IPv4Address(gateway))))
        except ValueError:
            try:
                hop = _attr(_RTA_OIF, struct.pack("=I", socket.if_nametoindex(gateway)))
            except OSError:
                raise DatapathError(f"route replace {cidr}: no device {gateway}") from None
        self._call("replace", cidr, _RTM_NEWROUTE, _NLM_F_CREATE | _NLM_F_REPLACE,
                   _rtmsg(int(length), _RT_SCOPE_UNIVERSE, _RTN_UNICAST),
                   _attr(_RTA_DST, socket.inet_aton(dst)) + hop)

    def delete(self, cidr: str) -> None:
        """`ip route del CIDR proto 198`; an absent route is fine."""
        dst, length = cidr.split("/")
        self._call("del", cidr, _RTM_DELROUTE, 0, _rtmsg(int(length), _RT_SCOPE_NOWHERE, 0),
                   _attr(_RTA_DST, socket.inet_aton(dst)))

    @staticmethod
    def _call(command: str, cidr: str, kind: int, flags: int, rtmsg: bytes, attrs: bytes) -> None:
        """Send one change and wait for the kernel's answer (DatapathError on a refusal)."""
        try:
            sock, seq = _request(kind, flags | _NLM_F_ACK, rtmsg, attrs)
            with sock:
                while True:
                    for answer, message, at in _messages(sock.recv(65536)):
                        if answer == _NLMSG_ERROR and _NLMSGHDR.unpack_from(message)[3] == seq:
                            code = -_ERRNO.unpack_from(message, at)[0]
                            if code == 0 or (command == "del" and code == errno.ESRCH):
                                return
                            raise DatapathError(f"route {command} {cidr}: {os.strerror(code)}")
        except OSError as err:
            raise DatapathError(f"route {command} {cidr}: {err}") from None
