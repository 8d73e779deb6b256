"""pyroute2 helpers: named network namespaces, links, addresses and routes, all idempotent.

Every call names the namespace it works in; nothing here ever touches the caller's namespace, so
the same code runs from the root namespace (CLI, tests) and from inside the node (supervisor).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from velvet.errors import DatapathError, SandboxError
from velvet.system.netns import NETNS_RUN_DIR, call_in_netns


def netns_exists(name: str) -> bool:
    """Whether the named network namespace exists (its bind mount is present)."""
    return (NETNS_RUN_DIR / name).exists()


def list_netns() -> list[str]:
    """Names of all named network namespaces."""
    return sorted(netns.listnetns(str(NETNS_RUN_DIR)))


def create_netns(name: str) -> None:
    """Create the named network namespace unless it exists (kernel: CLONE_NEWNET + bind mount)."""
    if not netns_exists(name):
        try:
            netns.create(name)
        except OSError as exc:
            raise SandboxError(f"cannot create network namespace {name}: {exc}") from exc


def remove_netns(name: str) -> None:
    """Remove the named network namespace if present; its interfaces go when its last user does."""
    if netns_exists(name):
        try:
            netns.remove(name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise SandboxError(f"cannot remove network namespace {name}: {exc}") from exc


def _rtnl_socket() -> socket.socket:
    """A NETLINK_ROUTE socket in the calling thread's network namespace."""
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)


@contextmanager
def ipr(name: str) -> Iterator[Any]:
    """An `IPRoute` bound to the named (existing) network namespace.

    The netlink socket is opened by a thread that setns()-es into the namespace, which is about
    three times faster than pyroute2's `IPRoute(netns=...)` (it forks a helper process).
    """
    try:
        sock = call_in_netns(name, _rtnl_socket)
        route = IPRoute(fileno=sock.detach())
    except (OSError, DatapathError) as exc:
        raise SandboxError(f"cannot open netlink in network namespace {name}: {exc}") from exc
    try:
        yield route
    finally:
        route.close()


def ifindex(route: Any, ifname: str) -> int | None:
    """Index of `ifname`, or None."""
    found = route.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def require_ifindex(route: Any, ifname: str) -> int:
    """Index of `ifname`; raise SandboxError when it is missing."""
    idx = ifindex(route, ifname)
    if idx is None:
        raise SandboxError(f"interface {ifname} is missing")
    return idx


def link_mac(route: Any, idx: int) -> str:
    """The MAC address of interface `idx`."""
    return str(route.link("get", index=idx)[0].get_attr("IFLA_ADDRESS"))


def set_up(route: Any, ifname: str) -> int:
    """Bring `ifname` up; return its index."""
    idx = require_ifindex(route, ifname)
    route.link("set", index=idx, state="up")
    return idx


def add_link(route: Any, ifname: str, kind: str, **attrs: Any) -> int:
    """Create `ifname` of `kind` unless an interface of that name exists; return its index."""
    idx = ifindex(route, ifname)
    if idx is None:
        _ignore_exists(route.link, "add", ifname=ifname, kind=kind, **attrs)
        idx = require_ifindex(route, ifname)
    return idx


def add_address(route: Any, idx: int, address: str, prefixlen: int) -> None:
    """Add `address/prefixlen` to interface `idx` unless present."""
    _ignore_exists(route.addr, "add", index=idx, address=address, prefixlen=prefixlen)


def replace_route(route: Any, **attrs: Any) -> None:
    """Create or replace a route (`ip route replace`)."""
    route.route("replace", **attrs)


def delete_link(route: Any, ifname: str) -> None:
    """Delete `ifname` if present (deleting one end of a veth deletes both)."""
    idx = ifindex(route, ifname)
    if idx is not None:
        try:
            route.link("del", index=idx)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise


def _ignore_exists(call: Any, *args: Any, **kwargs: Any) -> None:
    """Run a netlink request, treating EEXIST as success."""
    try:
        call(*args, **kwargs)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise SandboxError(f"netlink {args[0]} {kwargs}: {exc}") from exc
