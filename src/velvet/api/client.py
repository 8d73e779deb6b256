"""A small synchronous client for the agent's local API (HTTP over its unix socket)."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from velvet.errors import AgentUnavailable, ApiError


class _UnixConnection(http.client.HTTPConnection):
    """HTTPConnection that dials a unix socket instead of TCP."""

    def __init__(self, path: Path, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self._path))
        self.sock = sock


def _start_hint(path: Path) -> str:
    return (
        f"no Velvet agent answers on {path}: start one with `velvet sandbox up` "
        "(or `velvet agent` on a node), or set VELVET_SANDBOX / VELVET_API_SOCKET"
    )


class ApiClient:
    """Calls the agent; raises AgentUnavailable when nobody listens, ApiError on an error answer."""

    def __init__(self, socket_path: Path, timeout: float | None = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _open(self, method: str, path: str, body: Any, query: dict[str, Any] | None,
              timeout: float | None) -> tuple[_UnixConnection, http.client.HTTPResponse]:
        if query:
            path = f"{path}?{urlencode({k: v for k, v in query.items() if v is not None}, doseq=True)}"
        conn = _UnixConnection(self.socket_path, timeout)
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        try:
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            conn.close()
            raise AgentUnavailable(_start_hint(self.socket_path)) from exc
        except PermissionError as exc:
            conn.close()
            raise AgentUnavailable(f"permission denied on {self.socket_path}: the API is root-only") from exc
        return conn, resp

    def call(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        """One request; returns the decoded JSON answer."""
        conn, resp = self._open(method, path, body, query, self.timeout)
        try:
            data = resp.read()
        finally:
            conn.close()
        try:
            decoded = json.loads(data) if data else None
        except ValueError:
            first = data.decode(errors="replace").strip().splitlines()[:1]
            raise ApiError(f"the agent answered {method} {path} with HTTP {resp.status} and no JSON: "
                           f"{first[0] if first else '(empty)'}") from None
        if resp.status >= 400:
            message = decoded.get("error") if isinstance(decoded, dict) else decoded
            raise ApiError(str(message))
        return decoded

    def get(self, path: str, **query: Any) -> Any:
        """GET path with query parameters."""
        return self.call("GET", path, query=query)

    def post(self, path: str, body: Any = None) -> Any:
        """POST a JSON body."""
        return self.call("POST", path, body=body)

    def put(self, path: str, body: Any = None) -> Any:
        """PUT a JSON body."""
        return self.call("PUT", path, body=body)

    def stream(self, path: str, **query: Any) -> Iterator[Any]:
        """GET an endpoint answering newline-delimited JSON; yields objects until the agent closes."""
        conn, resp = self._open("GET", path, None, query, None)
        try:
            if resp.status >= 400:
                raise ApiError(resp.read().decode(errors="replace"))
            for line in resp:
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()

    def healthy(self) -> bool:
        """Whether an agent answers its health check."""
        try:
            return bool(self.get("/v1/health").get("ok"))
        except (AgentUnavailable, ApiError, OSError):
            return False
