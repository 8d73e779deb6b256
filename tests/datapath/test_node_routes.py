"""Real-kernel tests of the agent's routes to other nodes (`agent/routes.py`) in a namespace made here.

The namespace holds an uplink with its address, a second device, and one route per local pod of another
protocol, as a node's table does; every check compares with what `ip route` shows.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from velvet.agent.routes import NetlinkRoutes
from velvet.errors import DatapathError
from velvet.system.netns import call_in_netns

pytestmark = [pytest.mark.privileged]
T = TypeVar("T")
POD_ROUTES = 250


def ip(netns: str, *args: str) -> str:
    """`ip -n NETNS ARGS`, its output."""
    return subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def node() -> Iterator[str]:
    """A namespace with uplink0 (192.168.77.2/24), dev1 and 250 pod routes (proto boot, scope link)."""
    name = f"velvet-rtest-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ip(name, "link", "add", "uplink0", "type", "veth", "peer", "name", "dev1")
        ip(name, "link", "set", "uplink0", "up")
        ip(name, "link", "set", "dev1", "up")
        ip(name, "addr", "add", "192.168.77.2/24", "dev", "uplink0")
        batch = "".join(f"route add 10.244.0.{i}/32 dev uplink0 scope link\n"
                        for i in range(1, POD_ROUTES + 1))
        subprocess.run(["ip", "-n", name, "-batch", "-"], input=batch, check=True, text=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def shown(netns: str) -> dict[str, dict[str, str]]:
    """Protocol-198 routes of the main table as `ip -j route` shows them: dst -> gateway, dev, scope, type."""
    routes = json.loads(ip(netns, "-j", "-d", "route", "show", "table", "main", "proto", "198"))
    return {r["dst"]: {k: r.get(k, "") for k in ("gateway", "dev", "scope", "type")} for r in routes}


def inside(netns: str, fn: Callable[[NetlinkRoutes], T]) -> T:
    """Call `fn` with NetlinkRoutes on a thread in the namespace."""
    return call_in_netns(netns, lambda: fn(NetlinkRoutes()))


def test_routes_via_a_node_or_a_device_are_made_read_back_and_removed_as_ip_shows_them(node: str) -> None:
    """Test that the routes made are those `ip route` shows (scope global, unicast), that `owned` reports
    exactly them among the pods' 250 other routes, that a replace re-points one, and that a delete
    removes one, twice without error."""
    inside(node, lambda r: r.replace("10.244.1.0/24", "192.168.77.3"))
    inside(node, lambda r: r.replace("10.244.2.0/24", "dev1"))
    assert shown(node) == {
        "10.244.1.0/24": {"gateway": "192.168.77.3", "dev": "uplink0", "scope": "global", "type": "unicast"},
        "10.244.2.0/24": {"gateway": "", "dev": "dev1", "scope": "global", "type": "unicast"}}
    owned = inside(node, lambda r: dict(r.owned()))
    assert owned == {"10.244.1.0/24": "192.168.77.3", "10.244.2.0/24": "dev1"}
    inside(node, lambda r: r.replace("10.244.1.0/24", "192.168.77.4"))
    assert shown(node)["10.244.1.0/24"]["gateway"] == "192.168.77.4"
    inside(node, lambda r: r.delete("10.244.1.0/24"))
    inside(node, lambda r: r.delete("10.244.1.0/24"))
    assert inside(node, lambda r: dict(r.owned())) == {"10.244.2.0/24": "dev1"} == {
        dst: route["dev"] for dst, route in shown(node).items()}
    assert len(ip(node, "route", "show", "table", "main").splitlines()) == POD_ROUTES + 2  # the others stay


def test_a_route_of_another_protocol_is_neither_reported_nor_deleted(node: str) -> None:
    """Test that a route someone else made to a node's pod CIDR stays untouched and unreported."""
    ip(node, "route", "add", "10.244.5.0/24", "via", "192.168.77.9", "proto", "static")
    assert inside(node, lambda r: dict(r.owned())) == {}
    inside(node, lambda r: r.delete("10.244.5.0/24"))
    assert "10.244.5.0/24 via 192.168.77.9" in ip(node, "route", "show", "proto", "static")


def test_a_refused_route_is_one_datapath_error_naming_it_and_changes_nothing(node: str) -> None:
    """Test that an unreachable gateway and a missing device each raise one DatapathError naming the route."""
    with pytest.raises(DatapathError, match=r"^route replace 10.244.3.0/24: Network is unreachable$"):
        inside(node, lambda r: r.replace("10.244.3.0/24", "10.1.1.1"))
    with pytest.raises(DatapathError, match=r"^route replace 10.244.3.0/24: no device nodev$"):
        inside(node, lambda r: r.replace("10.244.3.0/24", "nodev"))
    assert shown(node) == {}


def test_reading_the_routes_loads_no_pyroute2(node: str) -> None:
    """Test that the agent's route reads and writes run without importing pyroute2 (9 MB)."""
    code = ("import sys; from velvet.agent.routes import NetlinkRoutes as R; r = R(); "
            "r.replace('10.244.1.0/24', '192.168.77.3'); r.owned(); r.delete('10.244.1.0/24'); "
            "print('pyroute2' in sys.modules)")
    out = subprocess.run(["ip", "netns", "exec", node, sys.executable, "-c", code], check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "False"
