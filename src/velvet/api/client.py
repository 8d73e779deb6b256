"""A small synchronous client for the agent's local API (HTTP over its unix socket)."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from velvet.api.limits import API_MAX_BODY
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


def _first_line(data: bytes) -> str:
    lines = data.decode(errors="replace").strip().splitlines()
    return lines[0] if lines else "(empty)"


def _error_line(method: str, path: str, status: int, data: bytes) -> str:
    """The agent's {"error": ...} message, or what it answered instead, named by status."""
    try:
        decoded = json.loads(data)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict) and isinstance(decoded.get("error"), str):
        return str(decoded["error"])
    return f"the agent answered {method} {path} with HTTP {status}: {_first_line(data)}"


def _lines(resp: http.client.HTTPResponse, path: str) -> Iterator[bytes]:
    """The non-empty lines of a streamed answer; a broken connection is one ApiError."""
    try:
        for line in resp:
            if line.strip():
                yield line
    except (OSError, http.client.HTTPException) as exc:
        raise ApiError(f"the agent broke off the stream {path}: {exc}") from exc


class ApiClient:
    """Calls the agent; raises AgentUnavailable when nobody listens, ApiError on an error answer."""

    def __init__(self, socket_path: Path, timeout: float | None = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _open(self, method: str, path: str, body: Any, query: dict[str, Any] | None,
              timeout: float | None) -> tuple[_UnixConnection, http.client.HTTPResponse]:
        if query:
            path = f"{path}?{urlencode({k: v for k, v in query.items() if v is not None}, doseq=True)}"
        payload = json.dumps(body).encode() if body is not None else None
        if payload is not None and len(payload) > API_MAX_BODY:
            raise ApiError(f"{method} {path}: the request is {len(payload)} bytes; the agent's API takes at "
                           f"most {API_MAX_BODY} bytes ({API_MAX_BODY / 2**20:g} MiB): send fewer documents")
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn = _UnixConnection(self.socket_path, timeout)
        try:
            conn.request(method, path, body=payload, headers=headers)
            return conn, conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            conn.close()
            raise AgentUnavailable(_start_hint(self.socket_path)) from exc
        except PermissionError as exc:
            conn.close()
            raise AgentUnavailable(f"permission denied on {self.socket_path}: the API is root-only") from exc
        except TimeoutError as exc:
            conn.close()
            raise AgentUnavailable(f"the agent on {self.socket_path} did not answer {method} {path} "
                                   f"within {timeout or 0:g} s") from exc
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise ApiError(f"the agent broke off {method} {path}: {exc}") from exc

    def call(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None) -> Any:
        """One request; returns the decoded JSON answer."""
        conn, resp = self._open(method, path, body, query, self.timeout)
        try:
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ApiError(f"the agent broke off its answer to {method} {path}: {exc}") from exc
        finally:
            conn.close()
        if resp.status >= 400:
            raise ApiError(_error_line(method, path, resp.status, data))
        try:
            return json.loads(data) if data else None
        except ValueError:
            raise ApiError(f"the agent answered {method} {path} with HTTP {resp.status} and no JSON: "
                           f"{_first_line(data)}") from None

    def get(self, path: str, **query: Any) -> Any:
        """GET path with query parameters."""
        return self.call("GET", path, query=query)

    def post(self, path: str, body: Any = None) -> Any:
        """POST a JSON body."""
        return self.call("POST", path, body=body)

    def put(self, path: str, body: Any = None) -> Any:
        """PUT a JSON body."""
        return self.call("PUT", path, body=body)

    def stream(self, path: str, **query: Any) -> Generator[Any, None, None]:
        """GET newline-delimited JSON; yields objects until the agent ends the stream or close() does."""
        conn, resp = self._open("GET", path, None, query, None)
        try:
            if resp.status >= 400:
                raise ApiError(_error_line("GET", path, resp.status, resp.read()))
            for line in _lines(resp, path):
                try:
                    yield json.loads(line)
                except ValueError:
                    raise ApiError(f"the agent's stream {path} sent a line that is not JSON: "
                                   f"{_first_line(line)}") from None
        finally:
            conn.close()

    def healthy(self) -> bool:
        """Whether an agent answers its health check."""
        return self._health(lambda health: bool(health.get("ok")))

    def started(self) -> bool:
        """Whether an agent answers its health check and has started all of it (no longer "starting")."""
        return self._health(lambda health: bool(health.get("ok")) and not health.get("starting"))

    def _health(self, judge: Callable[[dict[str, Any]], bool]) -> bool:
        """`judge` of the agent's health answer; False when no agent answers."""
        try:
            return judge(self.get("/v1/health"))
        except (AgentUnavailable, ApiError, OSError):
            return False
