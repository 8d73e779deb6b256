"""A sandbox driven through the `velvet` CLI exactly as a user types it, for end-to-end tests.

The driver is `velvet.cli.runner.SandboxCli` and the pod YAML comes from `velvet.connectivity.manifests`
(the demo, the conformance runner and the benchmarks use them too); this module adds what only pytest needs.
Each sandbox has its own name, so tests never meet a user's sandbox or each other's, and `sandbox()`
runs `velvet sandbox down` for it whatever happened.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from velvet.api.objects import is_ready
from velvet.cli.runner import SandboxCli as Sandbox
from velvet.cli.runner import unique_name
from velvet.connectivity.manifests import echo_pod, namespace

__all__ = ["EXAMPLES", "REPO", "Event", "Sandbox", "echo_pod", "events", "eventually_events", "is_ready",
           "namespace", "sandbox", "unique_name"]
Event = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
# Kept for older callers: privileged tests carry this marker, and fail (tests/conftest.py) without root.


@contextmanager
def sandbox(prefix: str = "e", *up_args: str) -> Iterator[Sandbox]:
    """A fresh sandbox that is brought up and always torn down."""
    sb = Sandbox(unique_name(prefix))
    try:
        sb.up(*up_args)
        yield sb
    finally:
        sb.down()


def events(sb: Sandbox, *args: str) -> list[Event]:
    """`velvet events ARGS -o json`, one event per line."""
    out = sb.velvet("events", "--last", "5000", *args, "-o", "json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def eventually_events(sb: Sandbox, args: tuple[str, ...],
                      found: Callable[[list[Event]], list[Event]]) -> list[Event]:
    """Ask `velvet events ARGS` until `found` picks something (the agent reads the ring within
    milliseconds); what it picked, empty after 15 s."""
    deadline = time.monotonic() + 15
    while True:
        picked = found(events(sb, *args))
        if picked or time.monotonic() > deadline:
            return picked
        time.sleep(0.2)
