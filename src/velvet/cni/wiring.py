"""The veth of a runtime's pod: node end in the agent's network namespace (the node), pod end in CNI_NETNS.

Runs in the agent, which lives in the node's namespace; the pod's namespace is reached through its
path (`/run/netns/cni-…`, `/proc/PID/ns/net`) on a throwaway thread, so the agent never leaves the node.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from velvet.cni.spec import AGENT_REFUSED, UNKNOWN_CONTAINER, CniError
from velvet.errors import DatapathError
from velvet.system.netns import call_in_netns, netns_inode


@dataclass(frozen=True)
class Veth:
    """One wired pod: where each end is, the pod's address and the node's gateway."""

    netns: str
    ifname: str
    host_veth: str
    ip: str
    gateway: str
    mtu: int


@dataclass(frozen=True)
class Wired:
    """What wiring made: the node end's index and MAC, the pod end's MAC, the pod netns inode."""

    host_ifindex: int
    host_mac: str
    pod_mac: str
    netns_inode: int


class Wiring(Protocol):
    """Creates, checks and removes pod veths (netlink here, a fake in unprivileged tests)."""

    def add(self, veth: Veth) -> Wired: ...
    def check(self, veth: Veth) -> list[str]: ...
    def remove(self, host_veth: str) -> None: ...


def _rtnl() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)


@contextmanager
def _pod_ipr(netns: str) -> Iterator[Any]:
    """IPRoute in the pod's namespace; CniError 3 when the namespace is gone."""
    from pyroute2 import IPRoute

    try:
        route = IPRoute(fileno=call_in_netns(netns, _rtnl).detach())
    except (OSError, DatapathError) as exc:
        raise CniError(UNKNOWN_CONTAINER, f"CNI_NETNS {netns}: {exc}") from None
    try:
        yield route
    finally:
        route.close()


def _node_ipr() -> Any:
    """IPRoute in this namespace; pyroute2 (9 MB) is imported on the first CNI request, not by the agent."""
    from pyroute2 import IPRoute

    return IPRoute()


def _index(route: Any, ifname: str) -> int | None:
    found = route.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def _mac(route: Any, index: int) -> str:
    return str(route.link("get", index=index)[0].get_attr("IFLA_ADDRESS"))


class NetlinkWiring:
    """Wiring with pyroute2: the node side in this namespace, the pod side through CNI_NETNS."""

    def add(self, veth: Veth) -> Wired:
        """Create the pair (pod end made in the pod), address, routes, MTU; error if the pod has ifname."""
        with _pod_ipr(veth.netns) as pod:
            if _index(pod, veth.ifname) is not None:
                raise CniError(AGENT_REFUSED, f"CNI_IFNAME {veth.ifname} already exists in {veth.netns}")
            fd = os.open(veth.netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                with _node_ipr() as node:
                    self.remove(veth.host_veth)  # a leftover of a failed ADD of this attachment
                    node.link("add", ifname=veth.host_veth, kind="veth", mtu=veth.mtu,
                              peer={"ifname": veth.ifname, "net_ns_fd": fd, "mtu": veth.mtu})
                    host = _index(node, veth.host_veth)
                    assert host is not None
                    node.link("set", index=host, state="up")
                    node.route("replace", dst=veth.ip, dst_len=32, oif=host, scope="link",
                               prefsrc=veth.gateway)
                    host_mac = _mac(node, host)
            finally:
                os.close(fd)
            lo = _index(pod, "lo")
            if lo is not None:
                pod.link("set", index=lo, state="up")
            eth = _index(pod, veth.ifname)
            assert eth is not None
            pod.addr("add", index=eth, address=veth.ip, prefixlen=32)
            pod.link("set", index=eth, state="up")
            pod.route("replace", dst=veth.gateway, dst_len=32, oif=eth, scope="link")
            pod.route("replace", dst="0.0.0.0", dst_len=0, gateway=veth.gateway, oif=eth)
            return Wired(host, host_mac, _mac(pod, eth), netns_inode(veth.netns))

    def check(self, veth: Veth) -> list[str]:
        """What is missing of `veth`: the node end, the pod end, its address, its default route."""
        problems = []
        with _node_ipr() as node:
            if _index(node, veth.host_veth) is None:
                problems.append(f"the node end {veth.host_veth} of the pod's veth is gone")
        with _pod_ipr(veth.netns) as pod:
            eth = _index(pod, veth.ifname)
            if eth is None:
                return [*problems, f"{veth.ifname} is gone from {veth.netns}"]
            if not any(a.get_attr("IFA_ADDRESS") == veth.ip for a in pod.get_addr(index=eth)):
                problems.append(f"{veth.ifname} in {veth.netns} lost its address {veth.ip}")
            if not any(r.get_attr("RTA_GATEWAY") == veth.gateway for r in pod.get_routes(oif=eth)):
                problems.append(f"{veth.netns} lost its default route via {veth.gateway}")
        return problems

    def remove(self, host_veth: str) -> None:
        """Delete the pair by its node end (no-op when gone: the pod's namespace may have taken it)."""
        from pyroute2.netlink.exceptions import NetlinkError

        with _node_ipr() as node:
            index = _index(node, host_veth)
            if index is None:
                return
            try:
                node.link("del", index=index)
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:
                    raise
