"""What every CLI command shares: the API client of the current sandbox and printing helpers."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from velvet.api.client import ApiClient
from velvet.api.relay import ErrorSink, Peer, Relay, peers_of
from velvet.errors import AgentUnavailable, NeedsRoot, NotFound, VelvetError
from velvet.paths import AgentPaths, current_sandbox


def require_root(why: str) -> None:
    """Refuse with one line ("velvet must run as root: `why`") unless this process runs as root."""
    if os.geteuid() != 0:
        raise NeedsRoot(why)


def client(sandbox: str | None = None, node: str | None = None) -> ApiClient:
    """A client for the agent of `sandbox` (default: $VELVET_SANDBOX or "default"), or of its registered
    node `node` (`velvet --node NAME`); needs root."""
    socket = AgentPaths(current_sandbox(sandbox)).socket
    require_root(f"the agent's API socket {socket} is root-only")
    first = ApiClient(socket)
    return first if node is None else node_client(first, node)


def cluster_nodes(api: ApiClient) -> list[dict[str, Any]]:
    """The registered nodes (name, internal_ip, pod_cidr, api) as the agent behind `api` knows them."""
    return list(api.get("/v1/query/nodes"))


def node_client(api: ApiClient, node: str) -> ApiClient:
    """The client of registered node `node`'s agent, found through the agent behind `api`."""
    nodes = cluster_nodes(api)
    for entry in nodes:
        if entry["name"] == node:
            if len(nodes) == 1:  # this agent itself, however the CLI reached it
                return api
            if not entry.get("api"):
                raise AgentUnavailable(f"node {node} advertises no API address")
            return ApiClient(Path(entry["api"]), api.timeout)
    names = ", ".join(entry["name"] for entry in nodes) or "none"
    raise NotFound(f"--node {node}: no such node is registered (nodes: {names})")


def cluster_relay(api: ApiClient, on_error: ErrorSink) -> Relay:
    """A relay over every registered node (and those that join, for a follow); with one node, over `api`
    itself."""
    def discover() -> list[Peer]:
        return peers_of(cluster_nodes(api), api.timeout)
    nodes = cluster_nodes(api)
    if len(nodes) <= 1:
        return Relay([Peer(str(n["name"]), api) for n in nodes] or [Peer("", api)], on_error, discover)
    return Relay(peers_of(nodes, api.timeout), on_error, discover)


def warn_unreachable(node: str, err: VelvetError) -> None:
    """One line on stderr for a node the relay could not reach."""
    print(f"Warning: node {node} did not answer: {err}", file=sys.stderr, flush=True)


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
