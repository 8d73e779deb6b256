"""Strict decoding of what the node runtime reports: the kubelet's pod status and the CNI's endpoint.

These reports reach the store and the datapath as surely as manifests do, so they get the same checks;
a bad one raises `InvalidReport(where, field, reason)` and nothing of it is kept.
"""

from __future__ import annotations

import re

from velvet.errors import InvalidManifest, InvalidReport
from velvet.model.decode_pod import decode_pod_status
from velvet.model.endpoint import EndpointReport
from velvet.model.pod import PodStatus
from velvet.model.validate import Node, Where, check_ipv4, quote

IFNAMSIZ = 16  # the kernel's interface name buffer, NUL included
_MAC = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")
IFINDEX_MAX = 2**31 - 1  # an ifindex is a positive C int
NETNS_INODE_MAX = 2**32 - 1  # ns_common.inum is an unsigned int
CGROUP_ID_MAX = 2**64 - 1  # a kernfs node id
_IFNAME_FORBIDDEN = frozenset("/:") | frozenset(chr(c) for c in range(0x21)) | {"\x7f"}


def decode_pod_status_report(report: object, where: str) -> PodStatus:
    """The kubelet's {phase, podIP, hostIP, conditions: [{type, status}], startTime}; phase is required."""
    node = Node(report, "", Where(where, 0))
    try:
        fields = node.obj(known=("phase", "podIP", "hostIP", "conditions", "startTime"))
        fields.req("phase")
        return decode_pod_status(node)
    except InvalidManifest as err:
        raise InvalidReport(where, err.field, err.reason) from None


def decode_endpoint_report(report: object, where: str) -> EndpointReport:
    """The CNI's {ip, ifname, ifindex, netns_inode, cgroup_id, mac, host_mac}; the inode and cgroup id
    default to 0, the MACs to unknown."""
    node = Node(report, "", Where(where, 0))
    try:
        fields = node.obj(known=("ip", "ifname", "ifindex", "netns_inode", "cgroup_id", "mac", "host_mac"))
        netns, cgroup = fields.opt("netns_inode"), fields.opt("cgroup_id")
        mac, host_mac = fields.opt("mac"), fields.opt("host_mac")
        return EndpointReport(
            ip=check_ipv4(fields.req("ip")),
            ifname=check_ifname(fields.req("ifname")),
            ifindex=fields.req("ifindex").int_in(1, IFINDEX_MAX),
            netns_inode=netns.int_in(0, NETNS_INODE_MAX) if netns else 0,
            cgroup_id=cgroup.int_in(0, CGROUP_ID_MAX) if cgroup else 0,
            mac=check_mac(mac) if mac else "",
            host_mac=check_mac(host_mac) if host_mac else "",
        )
    except InvalidManifest as err:
        raise InvalidReport(where, err.field, err.reason) from None


def check_mac(node: Node) -> str:
    """A unicast Ethernet address as six hex pairs with colons ("0a:58:0a:f4:00:05"), lower-cased."""
    value = node.as_str()
    if not _MAC.fullmatch(value) or int(value[:2], 16) & 1 or value == "00:00:00:00:00:00":
        node.fail(f"Invalid value: {quote(value)}: a MAC address must be a unicast one, six hex pairs "
                  "separated by ':'")
    return value.lower()


def check_ifname(node: Node) -> str:
    """An interface name the kernel takes (dev_valid_name): 1-15 bytes, not . or .., no / : or space."""
    value = node.as_str()
    size = len(value.encode())
    if not 0 < size < IFNAMSIZ or value in (".", "..") or any(c in _IFNAME_FORBIDDEN for c in value):
        node.fail(f"Invalid value: {quote(value)}: an interface name must be 1 to {IFNAMSIZ - 1} bytes, not "
                  "'.' or '..', without '/', ':', whitespace or control characters")
    return value

