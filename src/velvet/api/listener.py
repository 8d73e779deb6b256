"""Serve an aiohttp application on a listening socket within `ListenerLimits`.

The site accepts in its own loop (not asyncio's server, which logs a traceback for every failed
accept): beyond `max_connections` a connection gets a one-line 503 and is closed; when accept()
fails for lack of resources (EMFILE, ENFILE, ...) it pauses instead of spinning and says so in one
line (the log's repeat limiter collapses the rest). aiohttp enforces the timeouts and header sizes,
and cancels a handler whose client went away (a stream stops following at once, not at its next
write); handlers shield work that must finish anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from velvet.api.limits import ACCEPT_PAUSE_SECONDS, ListenerLimits

log = logging.getLogger("velvet.listen")
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_PEER_GAVE_UP = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.ENOPROTOOPT,
                           errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH, errno.EOPNOTSUPP,
                           errno.ENETUNREACH})
"""accept(2) errors about one pending connection: retry at once (Linux passes network errors on)."""


class _ClientFaultsInOneLine(logging.Filter):
    """aiohttp logs a malformed request with a traceback; it is the client's fault: one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            args = record.args if isinstance(record.args, tuple) else ()
            record.msg = f"{record.msg}: HTTP %s %.200s"  # the same template each time: repeats collapse
            record.args = (*args, exc.code, exc.message)
            record.exc_info = None
            record.exc_text = None
            if record.levelno > logging.WARNING:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_server_log = logging.getLogger("velvet.listen.http")
_server_log.addFilter(_ClientFaultsInOneLine())


def refusal(content_type: str, body: bytes) -> bytes:
    """The whole HTTP answer a connection over the limit gets before it is closed."""
    return (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class BoundedSite(web.BaseSite):
    """Serves an already listening socket, holding at most `max_connections` connections at a time.

    Accepts in its own loop (not asyncio's server, which logs a traceback per failed accept), so
    it can refuse beyond the limit and pause when the process is out of file descriptors.
    """

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, max_connections: int,
                 refused_answer: bytes) -> None:
        """Serve `sock` (listening, non-blocking); a connection over the limit gets `refused_answer`."""
        super().__init__(runner)
        self._sock = sock
        self._max = max_connections
        self._refused_answer = refused_answer
        self._task: asyncio.Task[None] | None = None
        self.refused = 0
        self.accept_failures = 0

    @property
    def name(self) -> str:
        """Where the site listens, as a URL-ish string."""
        address = self._sock.getsockname()
        if self._sock.family == socket.AF_UNIX:
            return f"http://unix:{address}:"
        host, port = address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def start(self) -> None:
        """Start accepting."""
        await super().start()
        self._task = asyncio.create_task(self._accept_loop(), name=f"accept {self.name}")

    async def stop(self) -> None:
        """Stop accepting and close the listening socket (open connections are the runner's)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sock.close()
        await super().stop()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as exc:
                if exc.errno in _PEER_GAVE_UP:
                    continue
                if exc.errno not in _OUT_OF_RESOURCES:
                    log.error("%s: stopped accepting connections: %s", self.name, exc)
                    return
                self.accept_failures += 1
                log.warning("%s: cannot accept connections: %s (%d open); pausing %.1f s", self.name,
                            exc.strerror, len(server.connections), ACCEPT_PAUSE_SECONDS)
                await asyncio.sleep(ACCEPT_PAUSE_SECONDS)
                continue
            if len(server.connections) >= self._max:
                self._refuse(conn)
                continue
            try:
                await loop.connect_accepted_socket(server, conn)
            except OSError as exc:
                conn.close()
                log.warning("%s: dropped a connection: %s", self.name, exc)

    def _refuse(self, conn: socket.socket) -> None:
        """Answer 503 in one write (the fresh socket's buffer is empty) and close."""
        self.refused += 1
        log.warning("%s: refused a connection: %d connections open, the limit", self.name, self._max)
        with contextlib.suppress(OSError):
            conn.send(self._refused_answer)
        conn.close()


def server_options(limits: ListenerLimits) -> dict[str, Any]:
    """Keyword arguments of aiohttp's AppRunner that enforce `limits` (all but the connection cap)."""
    return {"keepalive_timeout": limits.idle_seconds, "max_line_size": limits.max_line_size,
            "max_field_size": limits.max_field_size, "max_headers": limits.max_headers,
            "logger": _server_log, "access_log": None, "handler_cancellation": True}


async def serve(app: web.Application, sock: socket.socket, limits: ListenerLimits,
                refused_answer: bytes) -> web.AppRunner:
    """Serve `app` on listening socket `sock` within `limits`; `await runner.cleanup()` stops it."""
    sock.setblocking(False)
    runner = web.AppRunner(app, **server_options(limits))
    await runner.setup()
    await BoundedSite(runner, sock, limits.max_connections, refused_answer).start()
    return runner
