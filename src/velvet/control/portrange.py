"""Port ranges as aligned power-of-two prefixes, the shape an LPM trie keyed by port can hold.

A prefix `(port, length)` stands for every port whose first `length` bits (of 16) equal those of
`port`; length 16 is the single port, length 0 every port.
"""

from __future__ import annotations

PORT_BITS = 16
MAX_PORT = (1 << PORT_BITS) - 1


def mask_port(port: int, length: int) -> int:
    """`port` with every bit after the first `length` bits cleared."""
    return port & ~((1 << (PORT_BITS - length)) - 1) & MAX_PORT


def prefix_covers(prefix_port: int, length: int, port: int) -> bool:
    """Whether the prefix `(prefix_port, length)` contains `port`."""
    return mask_port(port, length) == prefix_port


def split_port_range(start: int, end: int) -> tuple[tuple[int, int], ...]:
    """The minimal set of aligned prefixes whose union is exactly `start..end` (inclusive), ascending.

    Greedy from the low end: at each step take the largest block that is aligned at the current
    port and does not run past `end`; this is the classic minimal decomposition (at most 30 prefixes
    for 16-bit ports).
    """
    if not 0 <= start <= end <= MAX_PORT:
        raise ValueError(f"invalid port range {start}-{end}")
    prefixes: list[tuple[int, int]] = []
    port = start
    while port <= end:
        size_bits = (port & -port).bit_length() - 1 if port else PORT_BITS
        while port + (1 << size_bits) - 1 > end:
            size_bits -= 1
        prefixes.append((port, PORT_BITS - size_bits))
        port += 1 << size_bits
    return tuple(prefixes)
