"""What every CLI command shares: the API client of the current sandbox and printing helpers."""

from __future__ import annotations

import json
import os
from typing import Any

from velvet.api.client import ApiClient
from velvet.errors import NeedsRoot
from velvet.paths import AgentPaths, current_sandbox


def require_root(why: str) -> None:
    """Refuse with one line ("velvet must run as root: `why`") unless this process runs as root."""
    if os.geteuid() != 0:
        raise NeedsRoot(why)


def client(sandbox: str | None = None) -> ApiClient:
    """A client for the agent of `sandbox` (default: $VELVET_SANDBOX or "default"); needs root."""
    socket = AgentPaths(current_sandbox(sandbox)).socket
    require_root(f"the agent's API socket {socket} is root-only")
    return ApiClient(socket)


def print_json(data: Any) -> None:
    """Pretty JSON on stdout."""
    print(json.dumps(data, indent=2, default=str))


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A kubectl/cilium-style table: columns padded with three spaces, no borders."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(str(c))) for w, c in zip(widths, row, strict=False)]
    lines = ["   ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["   ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in rows]
    return "\n".join(lines)
