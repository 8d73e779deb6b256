"""Reachability matrices: compare observed with expected, and draw the difference for people.

Rows are sources and columns destinations, both in the model's pod order; a cell is '.' (connected)
or 'X' (blocked). The diagonal (a pod reaching itself through its own Service) is compared apart:
upstream ignores it, because loopback traffic never leaves the pod and so never meets policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from netpol_cases import ALLOWED, BLOCKED

Pair = tuple[str, str]


@dataclass
class Comparison:
    """Differences between an observed and an expected matrix."""

    off_diagonal: list[Pair] = field(default_factory=list)
    diagonal: list[str] = field(default_factory=list)

    @property
    def matches(self) -> bool:
        """True when every off-diagonal cell is as expected (the diagonal is ignored)."""
        return not self.off_diagonal


def compare(order: Sequence[str], expected: Mapping[str, Sequence[str]],
            observed: Mapping[Pair, bool]) -> Comparison:
    """Every cell whose observation differs from the expectation."""
    result = Comparison()
    for src in order:
        for j, dst in enumerate(order):
            want = expected[src][j] == ALLOWED
            if observed[(src, dst)] == want:
                continue
            if src == dst:
                result.diagonal.append(src)
            else:
                result.off_diagonal.append((src, dst))
    return result


def cell(allowed: bool) -> str:
    """'.' or 'X'."""
    return ALLOWED if allowed else BLOCKED


def render(order: Sequence[str], expected: Mapping[str, Sequence[str]], observed: Mapping[Pair, bool]) -> str:
    """Expected, observed and a comparison grid ('!' differs, '~' differs on the ignored diagonal)."""
    width = max(len(p) for p in order)
    header = " " * (width + 2) + " ".join(f"{d:>{width}}" for d in order)

    def grid(title: str, value: Mapping[Pair, str]) -> list[str]:
        lines = [title, header]
        for src in order:
            lines.append(f"{src:>{width}}: " + " ".join(f"{value[(src, d)]:>{width}}" for d in order))
        return lines

    want = {(s, d): expected[s][j] for s in order for j, d in enumerate(order)}
    got = {pair: cell(ok) for pair, ok in observed.items()}
    diff = {pair: ("." if want[pair] == got[pair] else ("~" if pair[0] == pair[1] else "!")) for pair in want}
    return "\n".join(grid("expected:", want) + grid("observed:", got)
                     + grid("comparison ('!' differs, '~' differs on the ignored diagonal):", diff))
