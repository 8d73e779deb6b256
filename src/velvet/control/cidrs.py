"""IPv4 prefixes for the policy compiler: ipBlocks parsed once, prefix sets indexed for containment.

Policy prefixes either nest or are disjoint, so the prefixes inside a CIDR are one contiguous run of
a list sorted by (address, length): `PrefixIndex.inside` finds a block's prefixes with two binary
searches per cidr or except, and `exclude` computes "cidr minus excepts" from sorted intervals.
Both cost O(log n) plus the size of their answer, so compiling n ipBlocks is O(n log n), not O(n^2).
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from velvet.model import IPBlock

Interval = tuple[int, int]  # first and last address of a prefix, as integers


@dataclass(frozen=True)
class Block:
    """An IPv4 ipBlock: its cidr and excepts as networks."""

    cidr: ipaddress.IPv4Network
    excepts: tuple[ipaddress.IPv4Network, ...]

    def contains(self, address: int) -> bool:
        """Whether the address (an integer) is in the cidr and in no except."""
        return _inside(address, self.cidr) and not any(_inside(address, e) for e in self.excepts)


def parse_block(block: IPBlock) -> Block | None:
    """An ipBlock's cidr and IPv4 excepts; None for an IPv6 block (it never matches IPv4 traffic)."""
    cidr = ipaddress.ip_network(block.cidr, strict=False)
    if not isinstance(cidr, ipaddress.IPv4Network):
        return None
    excepts = (ipaddress.ip_network(e, strict=False) for e in block.except_)
    return Block(cidr, tuple(e for e in excepts if isinstance(e, ipaddress.IPv4Network)))


def exclude(
    cidr: ipaddress.IPv4Network, excepts: Iterable[ipaddress.IPv4Network]
) -> list[ipaddress.IPv4Network]:
    """The fewest aligned prefixes covering exactly `cidr` minus every except, ascending."""
    low, high = _interval(cidr)
    holes = sorted((max(a, low), min(b, high)) for a, b in map(_interval, excepts) if a <= high and b >= low)
    pieces: list[ipaddress.IPv4Network] = []
    cursor = low
    for start, end in holes:
        if start > cursor:
            pieces.extend(_summarize(cursor, start - 1))
        cursor = max(cursor, end + 1)
    if cursor <= high:
        pieces.extend(_summarize(cursor, high))
    return pieces


@functools.lru_cache(maxsize=1 << 16)
def prefix_key(prefix: str) -> tuple[int, int]:
    """(network address as an integer, length) of a canonical prefix text such as "10.0.0.0/8"."""
    address, _, length = prefix.partition("/")
    return int.from_bytes(socket.inet_aton(address), "big"), int(length)


class PrefixIndex:
    """A fixed set of canonical prefixes with a value each, answering "which lie inside this block?"."""

    def __init__(self, prefixes: Mapping[str, int]) -> None:
        ordered = sorted((prefix_key(p), value) for p, value in prefixes.items())
        self._keys = [key for key, _ in ordered]
        self._values = [value for _, value in ordered]

    def inside(self, block: Block) -> Iterator[int]:
        """The values of every prefix inside the block's cidr and inside none of its excepts."""
        start, end = self._run(block.cidr)
        holes = sorted(self._run(e) for e in block.excepts)
        for hole_start, hole_end in holes:
            if hole_start > start:
                yield from self._values[start:min(hole_start, end)]
            start = max(start, hole_end)
        if start < end:
            yield from self._values[start:end]

    def _run(self, net: ipaddress.IPv4Network) -> tuple[int, int]:
        """The index range of the prefixes inside `net` (shorter ones at its address sort before it)."""
        low, high = _interval(net)
        start = bisect.bisect_left(self._keys, (low, net.prefixlen))
        return start, bisect.bisect_right(self._keys, (high, 32), start)


def _interval(net: ipaddress.IPv4Network) -> Interval:
    """First and last address of a network, as integers."""
    return int(net.network_address), int(net.broadcast_address)


def _inside(address: int, net: ipaddress.IPv4Network) -> bool:
    """Whether the address (an integer) is in `net`."""
    low, high = _interval(net)
    return low <= address <= high


def _summarize(first: int, last: int) -> Iterator[ipaddress.IPv4Network]:
    """The aligned prefixes covering first..last (inclusive)."""
    return ipaddress.summarize_address_range(ipaddress.IPv4Address(first), ipaddress.IPv4Address(last))
