"""Test that the validators' fast paths accept exactly what the checks they stand in front of accept."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from velvet.errors import InvalidManifest
from velvet.model.validate import Node, Where, check_ipv4

OCTETS = ("0", "9", "10", "99", "199", "249", "255", "256", "300", "00", "01", "1a", "-1", "\u0661", "")


def _read_by_ipaddress(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _accepted(text: str) -> bool:
    try:
        check_ipv4(Node(text, "spec.clusterIP", Where("s.yaml", 1)))
    except InvalidManifest:
        return False
    return True


def test_an_ipv4_address_is_accepted_exactly_when_ipaddress_reads_it() -> None:
    """Test that every dotted four of these octets (leading zeros, out of range, non-ASCII digits, empty)
    is taken or refused as IPv4Address takes or refuses it."""
    for octets in itertools.product(OCTETS, repeat=4):
        text = ".".join(octets)
        assert _accepted(text) == _read_by_ipaddress(text), text


@pytest.mark.parametrize("text", ["1.2.3", "1.2.3.4.5", "1.2.3.4\n", "1.2.3.4/32", " 1.2.3.4", "1..2.3"])
def test_other_shapes_of_ipv4_address_are_refused(text: str) -> None:
    """Test that too few or many octets, a trailing newline, a prefix or a space are refused."""
    assert not _accepted(text)
