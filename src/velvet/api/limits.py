"""Limits every listener of the agent applies, so that no client can take the agent down (plain data).

A listener (the root-only API socket, the loopback /metrics + service map) holds at most
`max_connections` connections: beyond that a connection gets a one-line 503 and is closed. A
connection that does not complete a request within `idle_seconds` (a half-open request, or an idle
keep-alive) is closed by aiohttp's own `keepalive_timeout`, which in aiohttp >= 3.14.5 also runs before
the first request. Request lines and headers are bounded by aiohttp's parser limits.
`velvet.api.listener` enforces them.
"""

from __future__ import annotations

from dataclasses import dataclass

API_MAX_BODY = 32 * 1024 * 1024
"""Largest API request body. One apply sends every document in one request; kube-apiserver takes
3 MiB per object, so this holds ten maximal objects or ~150k ordinary Services (the benchmark's
largest apply, 50k Services, is 10 MiB)."""
API_BODY_SECONDS = 60.0
"""Time a client has to send an API request body once its headers arrived."""
ACCEPT_PAUSE_SECONDS = 0.5
"""How long a listener stops accepting after accept() failed for lack of resources."""


@dataclass(frozen=True)
class ListenerLimits:
    """How many connections a listener holds and how long and large their requests may be."""

    max_connections: int
    idle_seconds: float
    """Deadline for a request to arrive, from accept or from the end of the previous request."""
    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 64


API_LIMITS = ListenerLimits(max_connections=256, idle_seconds=30.0)
"""Root-only clients: the CLI (one connection per call, `observe --follow` streams) and the kubelet."""
UI_LIMITS = ListenerLimits(max_connections=64, idle_seconds=5.0)
"""Any local user can connect: a browser polls the service map every second, Prometheus scrapes."""
