"""Test that no client of a listener (the API socket, loopback /metrics + service map) takes the agent down.

Servers run in this process on 127.0.0.1 with real sockets; the flood of half-open requests comes
from a child process that drops to `nobody` when the tests run as root.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from background_loop import BackgroundLoop, agent_log
from prometheus_client import CollectorRegistry

from velvet.api.client import ApiClient
from velvet.api.limits import ACCEPT_PAUSE_SECONDS, UI_LIMITS, ListenerLimits
from velvet.api.listener import refusal, serve
from velvet.api.server import build_app, serve_unix
from velvet.observe.store import FlowStore
from velvet.observe.ui import http_app, serve_http

HALFOPEN = Path(__file__).with_name("halfopen.py")
BUSY = refusal("text/plain", b"busy\n")
WAIT_SECONDS = 60.0


def _sockets() -> int:
    """Sockets this process holds open."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


def _listener() -> tuple[socket.socket, int]:
    sock = socket.create_server(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


def _hello_app() -> Any:
    from aiohttp import web

    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    return app


async def _eventually(check: Callable[[], bool]) -> None:
    """Wait until `check()` holds (a liveness wait, not a speed requirement)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def _get(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), WAIT_SECONDS)
    writer.close()
    return answer


def test_connections_over_the_cap_get_a_503_line_and_are_closed() -> None:
    """Test that a listener holds max_connections and answers the next one 503 and closes it."""

    async def scenario() -> None:
        sock, port = _listener()
        runner = await serve(_hello_app(), sock, ListenerLimits(max_connections=3, idle_seconds=60), BUSY)
        server = runner.server
        assert server is not None
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        for _, writer in held:
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        await _eventually(lambda: len(server.connections) == 3)
        answer = await _get(port)
        assert answer == b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n" \
                         b"Content-Length: 5\r\nConnection: close\r\n\r\nbusy\n"
        assert len(server.connections) == 3
        held.pop()[1].close()
        await _eventually(lambda: len(server.connections) == 2)
        assert (await _get(port)).endswith(b"\r\n\r\nhello")
        for _, writer in held:
            writer.close()
        await runner.cleanup()

    asyncio.run(scenario())


def test_a_half_open_request_is_closed_after_idle_seconds_even_if_it_trickles() -> None:
    """Test the header deadline: a request that never completes is closed, however slowly it dribbles."""

    async def scenario() -> None:
        sock, port = _listener()
        runner = await serve(_hello_app(), sock, ListenerLimits(max_connections=8, idle_seconds=0.5), BUSY)
        silent_reader, silent = await asyncio.open_connection("127.0.0.1", port)
        silent.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        dribble_reader, dribble = await asyncio.open_connection("127.0.0.1", port)

        async def trickle() -> None:
            for byte in b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"x" * 4000:
                dribble.write(bytes([byte]))
                await asyncio.sleep(0.05)

        trickling = asyncio.create_task(trickle())
        assert await asyncio.wait_for(silent_reader.read(), WAIT_SECONDS) == b""
        assert await asyncio.wait_for(dribble_reader.read(), WAIT_SECONDS) == b""
        assert not trickling.done()  # closed while it was still sending
        trickling.cancel()
        assert (await _get(port)).endswith(b"hello")
        await runner.cleanup()

    asyncio.run(scenario())


def test_a_flood_of_half_open_requests_leaves_the_agent_answering(tmp_path: Path) -> None:
    """Test 1,100 half-open requests from an unprivileged user against the service map listener.

    The API still answers meanwhile, this process's sockets stay within the listener's cap, the
    listener closes the stalled requests while their sender still holds them, /metrics answers
    again, and the log stays a few lines.
    """
    loop = BackgroundLoop()
    directory = Path(tempfile.mkdtemp(prefix="vapi", dir="/tmp"))
    api = ApiClient(directory / "api.sock", timeout=30)
    sock, port = _listener()
    app = http_app(CollectorRegistry(), FlowStore(capacity=16), lambda: {})
    peak = [0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.005):
            peak[0] = max(peak[0], _sockets())

    with agent_log() as log:
        api_runner = loop.run(serve_unix(build_app(Healthy()), api.socket_path))  # type: ignore[arg-type]
        ui_runner = loop.run(serve_http(app, sock))
        server = ui_runner.server
        assert server is not None
        baseline = _sockets()
        sampler = threading.Thread(target=sample)
        sampler.start()
        attacker = subprocess.Popen([sys.executable, str(HALFOPEN), "127.0.0.1", str(port), "1100"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert attacker.stdout is not None
            assert attacker.stdin is not None
            opened = json.loads(attacker.stdout.readline())
            assert opened["uid"] != 0
            assert opened["open"] + opened["failed"] == 1100
            assert api.get("/v1/health") == {"ok": True}
            loop.run(_eventually(lambda: not server.connections))  # the stalled requests are closed
            loop.run(_eventually(lambda: _sockets() == baseline))
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
                assert resp.status == 200
        finally:
            attacker.communicate(timeout=WAIT_SECONDS)
            sampling.set()
            sampler.join()
            loop.run(ui_runner.cleanup())
            loop.run(api_runner.cleanup())
            loop.close()
            shutil.rmtree(directory)
    # beside the cap: one connection being refused, and the health request's two ends (this process
    # holds both the API client and its server); without the cap the peak would near 1,100
    assert peak[0] <= baseline + UI_LIMITS.max_connections + 3, (baseline, peak[0])
    text = log.getvalue()
    assert "Traceback" not in text
    assert len(text.splitlines()) <= 4, text
    assert len(text) < 2048


class Healthy:
    """An agent that only answers health."""

    async def health(self) -> Any:
        return {"ok": True}


EMFILE_SERVER = """
import asyncio, json, logging, os, resource, socket
from aiohttp import web
from velvet.api.limits import ListenerLimits
from velvet.api.listener import refusal, serve
from velvet.logs import setup_logging

async def hello(_):
    return web.Response(text="hello")

async def main():
    setup_logging()
    app = web.Application()
    app.router.add_get("/", hello)
    sock = socket.create_server(("127.0.0.1", 0))
    runner = await serve(app, sock, ListenerLimits(max_connections=1000, idle_seconds=60),
                         refusal("text/plain", b"busy"))
    site = next(iter(runner.sites))
    spare = 3  # descriptors left for connections
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) - 1 + spare,
                                                resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    print(sock.getsockname()[1], flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_reader(0, stop.set)
    await stop.wait()
    print(json.dumps({"accept_failures": site.accept_failures}), flush=True)
    await runner.cleanup()
    logging.shutdown()

asyncio.run(main())
"""


def test_accept_out_of_descriptors_pauses_and_logs_one_line(tmp_path: Path) -> None:
    """Test a listener in a process out of file descriptors (EMFILE): no spin, no traceback, recovery.

    The server process may open only 3 more descriptors; 12 clients connect. accept() fails with
    EMFILE while they hold their connections; each failure pauses the listener ACCEPT_PAUSE_SECONDS
    (counted, not timed: failures <= pauses that fit in the time spent), the log says it once with a
    repeat count, and once the clients leave a new request is answered.
    """
    errors = tmp_path / "server.log"
    with errors.open("w") as err:
        server = subprocess.Popen([sys.executable, "-c", EMFILE_SERVER], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert server.stdout is not None
        assert server.stdin is not None
        port = int(server.stdout.readline())
        started = time.monotonic()
        clients = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(12)]
        for client in clients:
            client.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        deadline = time.monotonic() + WAIT_SECONDS
        while "cannot accept connections: Too many open files" not in errors.read_text():
            assert time.monotonic() < deadline, errors.read_text()
            time.sleep(0.05)
        time.sleep(3 * ACCEPT_PAUSE_SECONDS)  # several pauses happen while the clients hold on
        for client in clients:
            client.close()
        spent = time.monotonic() - started
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as probe:
                probe.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                answer = b"".join(iter(lambda: probe.recv(65536), b""))
            if answer.endswith(b"hello"):
                break
            assert time.monotonic() < deadline, answer
            time.sleep(0.05)
        server.stdin.write("stop\n")
        server.stdin.flush()
        failures = json.loads(server.stdout.readline())["accept_failures"]
        server.wait(timeout=WAIT_SECONDS)
    finally:
        server.kill()
        server.wait()
    log = errors.read_text()
    assert "Traceback" not in log, log
    assert 1 <= failures <= spent / ACCEPT_PAUSE_SECONDS + 2
    lines = [line for line in log.splitlines() if "cannot accept connections" in line]
    assert 1 <= len(lines) <= 2, log
    if failures > 1:
        assert f"(repeated {failures - 1} more times in" in lines[-1]


def test_malformed_requests_are_logged_in_one_line_not_a_traceback_each() -> None:
    """Test that 50 requests with an oversized header cost the log one line and a repeat count."""

    async def scenario() -> list[bytes]:
        sock, port = _listener()
        runner = await serve(_hello_app(), sock, ListenerLimits(max_connections=8, idle_seconds=5), BUSY)
        answers = []
        for _ in range(50):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"x" * 9000 + b"\r\n\r\n")
            answers.append(await asyncio.wait_for(reader.read(), WAIT_SECONDS))
            writer.close()
        await runner.cleanup()
        return answers

    with agent_log() as log:
        answers = asyncio.run(scenario())
    assert {a.split(b" ", 2)[1] for a in answers} == {b"400"}
    text = log.getvalue()
    assert "Traceback" not in text
    lines = text.splitlines()
    assert len(lines) == 2, text
    assert "Error handling request from 127.0.0.1: HTTP" in lines[0]
    assert "(repeated 49 more times in" in lines[1]
