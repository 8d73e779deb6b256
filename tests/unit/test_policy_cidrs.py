"""Tests of the policy compiler's prefix helpers: ipBlock parsing, containment index, set difference."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from velvet.control.cidrs import PrefixIndex, exclude, parse_block, prefix_key
from velvet.model import IPBlock

# Small prefixes inside 10.0.0.0/24, so address sets can be compared exhaustively.
_NET = st.builds(
    lambda address, length: ipaddress.IPv4Network(f"10.0.0.{address}/{length}", strict=False),
    st.integers(0, 255), st.integers(24, 32),
)


def _addresses(nets: list[ipaddress.IPv4Network]) -> set[int]:
    """Every address covered by `nets`, as integers."""
    return {int(a) for n in nets for a in (n.network_address + i for i in range(n.num_addresses))}


@settings(max_examples=300, deadline=None)
@given(cidr=_NET, excepts=st.lists(_NET, max_size=6))
def test_exclude_is_exact_disjoint_and_aligned(
    cidr: ipaddress.IPv4Network, excepts: list[ipaddress.IPv4Network]
) -> None:
    """Test that cidr minus excepts is covered exactly once by aligned prefixes, ascending."""
    pieces = exclude(cidr, excepts)
    assert _addresses(pieces) == _addresses([cidr]) - _addresses(excepts)
    assert sum(p.num_addresses for p in pieces) == len(_addresses(pieces))
    assert pieces == sorted(pieces)


def test_exclude_thousands_of_holes_from_everything() -> None:
    """Test that 0.0.0.0/0 minus 5,000 /24s, plus those holes, tiles the address space exactly."""
    holes = [ipaddress.IPv4Network(f"{i % 250 + 1}.{i // 250}.{i % 7}.0/24") for i in range(5000)]
    pieces = exclude(ipaddress.IPv4Network("0.0.0.0/0"), holes)
    assert len(pieces) <= 32 * (len(holes) + 1)
    tiles = sorted((int(n.network_address), int(n.broadcast_address)) for n in [*pieces, *holes])
    assert tiles[0][0] == 0
    assert tiles[-1][1] == 2**32 - 1
    assert all(later[0] == earlier[1] + 1 for earlier, later in zip(tiles, tiles[1:], strict=False))


@settings(max_examples=300, deadline=None)
@given(prefixes=st.lists(_NET, max_size=12), cidr=_NET, excepts=st.lists(_NET, max_size=3))
def test_prefix_index_selects_exactly_the_prefixes_inside_the_block(
    prefixes: list[ipaddress.IPv4Network], cidr: ipaddress.IPv4Network, excepts: list[ipaddress.IPv4Network]
) -> None:
    """Test that `inside` equals the naive rule: inside the cidr and inside no except."""
    values = {str(p): i for i, p in enumerate(dict.fromkeys(prefixes))}
    block = parse_block(IPBlock(str(cidr), tuple(map(str, excepts))))
    assert block is not None
    found = sorted(PrefixIndex(values).inside(block))
    want = sorted(i for p, i in values.items() if ipaddress.IPv4Network(p).subnet_of(cidr)
                  and not any(ipaddress.IPv4Network(p).subnet_of(e) for e in excepts))
    assert found == want


def test_parse_block_keeps_ipv4_and_drops_ipv6() -> None:
    """Test that a v6 block parses to None and v6 excepts of a v4 block are ignored."""
    assert parse_block(IPBlock("fd00::/8")) is None
    block = parse_block(IPBlock("10.1.2.3/8", ("10.9.0.0/16", "fd00::/64")))
    assert block is not None
    assert block.cidr == ipaddress.IPv4Network("10.0.0.0/8")
    assert block.excepts == (ipaddress.IPv4Network("10.9.0.0/16"),)
    assert block.contains(int(ipaddress.IPv4Address("10.1.0.1")))
    assert not block.contains(int(ipaddress.IPv4Address("10.9.0.1")))
    assert not block.contains(int(ipaddress.IPv4Address("11.0.0.1")))


def test_prefix_key_orders_by_address_then_length() -> None:
    """Test the sort key of canonical prefix texts."""
    assert prefix_key("10.0.0.0/8") == (10 << 24, 8)
    assert sorted(["10.0.0.0/16", "9.0.0.0/8", "10.0.0.0/8"], key=prefix_key) == [
        "9.0.0.0/8", "10.0.0.0/8", "10.0.0.0/16"]
