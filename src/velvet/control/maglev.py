"""Maglev consistent hashing (Eisenbud et al., NSDI 2016), as Cilium and Katran implement it.

Each backend gets a preference order over the table's positions: a permutation defined by an offset and
a skip, both drawn from a hash of the backend's stable key (its "ip:port/proto", never its map id, so
tables survive an agent restart and id reallocation). Backends then take turns claiming their next free
preferred position until the table is full. Every backend ends up owning M/N positions give or take one,
and adding or removing one backend moves only a small share of positions besides its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

DEFAULT_TABLE_SIZE = 1021


def is_prime(n: int) -> bool:
    """Whether `n` is prime; a Maglev table size must be, so that every skip walks all positions."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    divisor = 3
    while divisor * divisor <= n:
        if n % divisor == 0:
            return False
        divisor += 2
    return True


def offset_skip(key: str, size: int) -> tuple[int, int]:
    """The start position and the stride of `key`'s permutation over a table of `size` positions."""
    digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
    first = int.from_bytes(digest[:8], "little")
    second = int.from_bytes(digest[8:], "little")
    return first % size, second % (size - 1) + 1


def lookup_table(keys: Sequence[str], size: int = DEFAULT_TABLE_SIZE) -> list[int]:
    """The owner of each of `size` positions, as an index into `keys`.

    The result depends on the set of keys and not on their order, so callers may pass them in any
    order. With more keys than positions, only some keys own a position (as in the paper).
    """
    if not keys:
        raise ValueError("a Maglev table needs at least one backend")
    if not is_prime(size):
        raise ValueError(f"a Maglev table size must be prime, not {size}")
    if len(keys) == 1:
        return [0] * size
    ranked = sorted(range(len(keys)), key=keys.__getitem__)
    permutations = [offset_skip(keys[index], size) for index in ranked]
    positions = [offset for offset, _ in permutations]
    skips = [skip for _, skip in permutations]
    table = [-1] * size
    filled = 0
    while True:
        for turn, index in enumerate(ranked):
            position, skip = positions[turn], skips[turn]
            while table[position] >= 0:
                position += skip
                if position >= size:
                    position -= size
            table[position] = index
            position += skip
            positions[turn] = position - size if position >= size else position
            filled += 1
            if filled == size:
                return table
