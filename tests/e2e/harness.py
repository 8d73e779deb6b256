"""A sandbox driven through the `velvet` CLI exactly as a user types it, for end-to-end tests.

The driver is `velvet.cli.runner.SandboxCli` and the pod YAML comes from `velvet.connectivity.manifests`
(the demo, the conformance runner and the benchmarks use them too); this module adds what only pytest needs.
Each sandbox has its own name, so tests never meet a user's sandbox or each other's, and `sandbox()`
runs `velvet sandbox down` for it whatever happened.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from velvet.api.objects import is_ready
from velvet.cli.runner import SandboxCli as Sandbox
from velvet.cli.runner import unique_name
from velvet.connectivity.manifests import echo_pod, namespace

__all__ = ["EXAMPLES", "REPO", "Sandbox", "echo_pod", "is_ready", "namespace", "sandbox",
           "unique_name"]

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
