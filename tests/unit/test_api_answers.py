"""Test that the agent's API answers every request with the right status and one JSON line.

The API runs on a real unix socket in a background event loop; requests come from the CLI's own
client (and a raw HTTP connection for bodies the client would never send).
"""

from __future__ import annotations

import asyncio
import gc
import http.client
import json
import logging
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from background_loop import BackgroundLoop

import velvet.api.server as server
from velvet.agent.config import AgentConfig
from velvet.agent.handlers import AgentHandlers
from velvet.agent.node import Agent
from velvet.api.client import ApiClient
from velvet.api.limits import API_MAX_BODY
from velvet.cli.main import main
from velvet.datapath.fake import FakeDatapath
from velvet.errors import AgentUnavailable, ApiError
from velvet.model import Service
from velvet.sources.backend import Unconfirmed
from velvet.sources.local import LocalStore

NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"


@contextmanager
def served(agent: server.AgentApi) -> Iterator[tuple[Path, BackgroundLoop]]:
    """The API of `agent` on a unix socket in a fresh directory; yields the socket path and the loop."""
    directory = Path(tempfile.mkdtemp(prefix="vapi", dir="/tmp"))
    path = directory / "api.sock"
    loop = BackgroundLoop()
    runner = loop.run(server.serve_unix(server.build_app(agent), path))
    try:
        yield path, loop
    finally:
        loop.run(runner.cleanup())
        loop.close()
        shutil.rmtree(directory)


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=30)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self._path))


def raw(path: Path, method: str, url: str, body: bytes | None = None,
        headers: Mapping[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, Any]:
    """One request as bytes; returns status, headers and the decoded JSON answer."""
    conn = _Unix(path)
    try:
        conn.request(method, url, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    assert b"\n" not in data.rstrip(b"\n"), f"not one line: {data!r}"
    return resp.status, resp.headers, json.loads(data)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentHandlers]:
    """The API handlers of a real agent on the in-memory datapath, with namespace shop."""
    node = Agent(AgentConfig(sandbox="unit", state_dir=tmp_path), FakeDatapath())
    node.start()
    node.apply([{"path": "ns.yaml", "text": NAMESPACE}])
    handlers = AgentHandlers(node)
    yield handlers
    handlers.close()


@pytest.mark.parametrize(("body", "reason"), [
    (b"{not json", "request body is not JSON: "),
    (b"\xff\xfe\x00garbage", "request body is not JSON: "),
    (b"[" * 10_000 + b"]" * 10_000, "nested too deeply"),
    (b"[]", "request body must be a JSON object, not array"),
    (b"{}", "<request>: document 0: documents: must be a list"),
    (b'{"documents": "a.yaml"}', "<request>: document 0: documents: must be a list"),
    (b'{"documents": [{"path": 1, "text": ""}]}', "documents[0]: must be an object with string fields"),
])
def test_malformed_apply_bodies_get_400_with_the_reason(agent: AgentHandlers, body: bytes,
                                                        reason: str) -> None:
    """Test that a body that is not JSON, or JSON of the wrong shape, is a 400 naming what is wrong."""
    with served(agent) as (path, _):
        status, _, answer = raw(path, "POST", "/v1/apply", body, {"Content-Type": "application/json"})
    assert status == 400
    assert reason in answer["error"]


@pytest.mark.parametrize(("url", "report", "reason"), [
    ("/v1/node/endpoints/shop/web", {"ifname": "vv1", "ifindex": 7}, "ip: Required value"),
    ("/v1/node/endpoints/shop/web", {"ip": "10.0.0.9", "ifname": "vv1", "ifindex": "7"}, "ifindex: must be"),
    ("/v1/node/endpoints/shop/web", [], "must be"),
    ("/v1/node/pods/shop/web", {}, "phase: Required value"),
    ("/v1/node/pods/shop/web", {"phase": "Running", "podIP": 10}, "podIP: must be a string"),
])
def test_bad_node_reports_get_400_and_change_nothing(agent: AgentHandlers, url: str, report: Any,
                                                     reason: str) -> None:
    """Test that a kubelet or CNI report the agent refuses is a 400 naming the field, and changes nothing."""
    with served(agent) as (path, _):
        status, _, answer = raw(path, "PUT", url, json.dumps(report).encode())
    assert (status, reason in answer["error"]) == (400, True), answer
    assert list(agent.agent.endpoints) == []


def test_delete_grace_must_be_a_non_negative_integer(agent: AgentHandlers) -> None:
    """Test that grace_seconds of the wrong type or sign is a 400."""
    docs = [{"path": "ns.yaml", "text": NAMESPACE}]
    with served(agent) as (path, _):
        for grace in ("5", -1, 2.5, True):
            body = json.dumps({"documents": docs, "grace_seconds": grace}).encode()
            status, _, answer = raw(path, "POST", "/v1/delete", body)
            assert status == 400
            assert answer == {"error": "request body: grace_seconds must be an integer of 0 or more or null, "
                                       f"not {json.dumps(grace)}"}
    assert agent.agent.store.get("namespaces", None, "shop")


def test_body_over_the_limit_is_413_naming_the_limit_before_it_is_read(agent: AgentHandlers) -> None:
    """Test that a Content-Length over API_MAX_BODY is refused at once with the limit in the message."""
    with served(agent) as (path, _):
        conn = _Unix(path)
        conn.putrequest("POST", "/v1/apply")
        conn.putheader("Content-Length", str(API_MAX_BODY + 1))
        conn.endheaders()  # no body is sent: the answer must not wait for it
        resp = conn.getresponse()
        answer = json.loads(resp.read())
        conn.close()
    assert resp.status == 413
    assert "at most 33554432 bytes (32 MiB) per request" in answer["error"]


def test_chunked_body_over_the_limit_is_413(agent: AgentHandlers, monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that a body without Content-Length is cut off at the limit, also answered as one JSON line."""
    monkeypatch.setattr(server, "API_MAX_BODY", 64 * 1024)
    with served(agent) as (path, _):
        chunks = iter([b" " * 32 * 1024] * 4)
        conn = _Unix(path)
        conn.request("POST", "/v1/apply", body=chunks, encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
        resp = conn.getresponse()
        answer = json.loads(resp.read())
        conn.close()
    assert resp.status == 413
    assert "at most 65536 bytes (0.0625 MiB) per request" in answer["error"]


def test_client_refuses_to_send_a_body_over_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that the CLI names the limit instead of sending a request the agent would refuse."""
    import velvet.api.client as client_module

    monkeypatch.setattr(client_module, "API_MAX_BODY", 1024)
    api = ApiClient(Path("/nonexistent/api.sock"))
    with pytest.raises(ApiError, match=r"the agent's API takes at most 1024 bytes"):
        api.post("/v1/apply", {"documents": [{"path": "a", "text": "x" * 2048}]})


def test_unknown_routes_are_404_and_wrong_methods_405(agent: AgentHandlers) -> None:
    """Test the router's refusals: JSON, one line, the Allow header on 405."""
    with served(agent) as (path, _):
        status, _, answer = raw(path, "GET", "/v1/nope")
        assert (status, answer) == (404, {"error": "no API route GET /v1/nope"})
        status, headers, answer = raw(path, "POST", "/v1/health", b"{}")
        assert status == 405
        assert answer == {"error": "method POST is not allowed on /v1/health (allowed: GET, HEAD)"}
        assert headers["Allow"] == "GET,HEAD"


def test_only_a_missing_object_is_404(agent: AgentHandlers) -> None:
    """Test that missing objects, kinds, pods and queries are 404 while bad parameters are 400."""
    api = ApiClient(Path("/unused"))
    with served(agent) as (path, _):
        api.socket_path = path
        cases = {
            "/v1/objects/pods?namespace=shop&name=nosuch": (404, 'pods "nosuch" not found'),
            "/v1/objects/gizmos": (404, 'the server doesn\'t have a resource type "gizmos"'),
            "/v1/query/nosuch": (404, "unknown query 'nosuch'"),
            "/v1/stream/nosuch": (404, "unknown stream 'nosuch'"),
            "/v1/query/trace?to=shop/b&port=80": (400, "missing query parameter 'from'"),
            "/v1/query/bpf": (400, "missing query parameter 'map'"),
            "/v1/query/flows?last=many": (400, "invalid literal for int() with base 10: 'many'"),
        }
        for url, (want_status, want_text) in cases.items():
            status, _, answer = raw(path, "GET", url)
            assert (status, want_text in answer["error"]) == (want_status, True), (url, answer)
        with pytest.raises(ApiError, match=r'^Error from server \(NotFound\): pods "nosuch" not found$'):
            api.get("/v1/objects/pods", namespace="shop", name="nosuch")


def _services_alive() -> int:
    return sum(1 for obj in gc.get_objects() if isinstance(obj, Service))


def test_a_failed_apply_frees_its_objects_when_answered_without_a_collection(
        agent: AgentHandlers, monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that an apply the store could not confirm (etcd timed out) leaves none of its objects behind.

    The agent runs full collections seldom (every 10 minutes when idle), so a reference cycle through
    the failed call's traceback would hold a 9,000-service apply's objects that long.
    """
    def unconfirmed(*_: object) -> int:
        raise Unconfirmed("etcd did not confirm the change")

    store = agent.agent.store
    assert isinstance(store, LocalStore)
    monkeypatch.setattr(store._backend, "record", unconfirmed)
    text = "".join(f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: shop}}\n"
                   "spec:\n  ports: [{port: 80}]\n" for i in range(50))
    body = json.dumps({"documents": [{"path": "s.yaml", "text": text}]}).encode()
    gc.collect()
    gc.disable()
    try:
        with served(agent) as (path, _):
            before = _services_alive()
            status, _, answer = raw(path, "POST", "/v1/apply", body, {"Content-Type": "application/json"})
            deadline = time.monotonic() + 5  # the server's handler ends just after its answer is sent
            while (left := _services_alive() - before) and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        gc.enable()
    assert (status, answer) == (500, {"error": "Error from server (InternalError): etcd did not confirm "
                                               "the change"})
    assert left == 0
    assert agent.agent.store.find("Service", "shop", "s0") is None


class BuggyAgent:
    """An agent whose handlers fail the way bugs do."""

    async def health(self) -> Any:
        return {"ok": True}

    async def status(self) -> Any:
        raise KeyError("endpoints")

    async def query(self, what: str, params: Mapping[str, str]) -> Any:
        raise ValueError(f"bad value for {what}")


def test_a_keyerror_in_the_agent_is_a_logged_500_not_a_404(caplog: pytest.LogCaptureFixture) -> None:
    """Test that a KeyError from handler code is an internal error with its traceback in the log."""
    with served(BuggyAgent()) as (path, _):  # type: ignore[arg-type]
        status, _, answer = raw(path, "GET", "/v1/status")
        assert status == 500
        assert answer == {"error": "internal error in the agent: KeyError('endpoints') "
                                   "(its log has the traceback)"}
        status, _, answer = raw(path, "GET", "/v1/query/x")
        assert (status, answer) == (400, {"error": "bad value for x"})
    failures = [r for r in caplog.records if r.name == "velvet.api"]
    assert [r.exc_info is not None for r in failures] == [True]


def test_the_cli_prints_an_api_error_as_one_line(agent: AgentHandlers, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Test `velvet get pods nosuch`: one line on stderr, exit code 1."""
    with served(agent) as (path, _):
        monkeypatch.setenv("VELVET_API_SOCKET", str(path))
        code = main(["get", "pods", "nosuch", "-n", "shop"])
    err = capsys.readouterr().err
    assert code == 1
    assert err == 'Error: Error from server (NotFound): pods "nosuch" not found\n'


def _error_page(conn: socket.socket) -> None:
    conn.recv(65536)
    page = b"<html>\n<h1>oops</h1>\n</html>"
    conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: %d\r\n\r\n%s" % (len(page), page))


def test_a_non_json_error_answer_is_one_line() -> None:
    """Test that an error page that is not our JSON (a proxy, a crash) is still one line."""
    with fake_agent_socket(_error_page) as path, pytest.raises(ApiError) as caught:
        next(ApiClient(path).stream("/v1/stream/flows"))
    assert str(caught.value) == "the agent answered GET /v1/stream/flows with HTTP 502: <html>"


@contextmanager
def fake_agent_socket(behave: Callable[[socket.socket], object]) -> Iterator[Path]:
    """A unix socket whose one connection is handled by `behave` (an agent that misbehaves)."""
    directory = Path(tempfile.mkdtemp(prefix="vapi", dir="/tmp"))
    path = directory / "api.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            behave(conn)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield path
    finally:
        thread.join()
        listener.close()
        shutil.rmtree(directory)


def test_an_agent_that_hangs_up_or_stays_silent_is_one_line() -> None:
    """Test the client's one-line errors for a connection closed without an answer, and for silence."""
    with fake_agent_socket(lambda conn: conn.recv(65536)) as path, \
            pytest.raises(ApiError, match=r"^the agent broke off GET /v1/health: Remote end closed"):
        ApiClient(path).get("/v1/health")
    release = threading.Event()
    with fake_agent_socket(lambda conn: release.wait(30)) as path:
        with pytest.raises(AgentUnavailable) as caught:
            ApiClient(path, timeout=0.2).get("/v1/health")
        release.set()
    assert str(caught.value) == f"the agent on {path} did not answer GET /v1/health within 0.2 s"


class SlowAgent:
    """An agent whose apply runs off the loop (awaits) until the test releases it."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release: asyncio.Event | None = None
        self.closed = threading.Event()

    async def health(self) -> Any:
        return {"ok": True}

    async def apply(self, documents: list[Mapping[str, str]]) -> Any:
        self.release = asyncio.Event()
        self.started.set()
        await self.release.wait()
        return {"results": [d["path"] for d in documents], "warnings": []}

    async def stream(self, what: str, params: Mapping[str, str]) -> AsyncIterator[Any]:
        try:
            for i in range(3):
                yield {"n": i}
            await asyncio.Event().wait()  # then nothing more, like a quiet --follow
        finally:
            self.closed.set()


def test_health_answers_while_an_async_apply_is_running() -> None:
    """Test that health answers while an apply is pending, and the apply's answer arrives after."""
    agent = SlowAgent()
    with served(agent) as (path, loop):  # type: ignore[arg-type]
        api = ApiClient(path, timeout=30)
        result: list[Any] = []
        applying = threading.Thread(target=lambda: result.append(api.post(
            "/v1/apply", {"documents": [{"path": "a.yaml", "text": ""}]})))
        applying.start()
        assert agent.started.wait(30)
        assert api.get("/v1/health") == {"ok": True}
        assert result == []  # the apply is still pending
        release = agent.release
        assert release is not None
        loop.loop.call_soon_threadsafe(release.set)
        applying.join(30)
    assert result == [{"results": ["a.yaml"], "warnings": []}]


def test_a_quiet_stream_is_closed_as_soon_as_its_client_leaves() -> None:
    """Test that a stream's generator is closed when the client goes, not at its next item (maybe never)."""
    agent = SlowAgent()
    with served(agent) as (path, _):  # type: ignore[arg-type]
        flows = ApiClient(path).stream("/v1/stream/flows")
        assert [next(flows) for _ in range(3)] == [{"n": 0}, {"n": 1}, {"n": 2}]
        flows.close()  # the CLI's ^C: the connection closes
        assert agent.closed.wait(30)


def test_large_bodies_are_decoded_off_the_event_loop(agent: AgentHandlers,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that a body of DECODE_IN_THREAD_BYTES or more is parsed in a worker thread, not on the loop."""
    threads: list[str] = []
    decode = server._decode

    def recording(raw: bytes) -> Any:
        threads.append(threading.current_thread().name)
        return decode(raw)

    monkeypatch.setattr(server, "_decode", recording)
    comment = "#" + "x" * server.DECODE_IN_THREAD_BYTES + "\n"
    with served(agent) as (path, loop):
        api = ApiClient(path)
        api.post("/v1/apply", {"documents": [{"path": "small.yaml", "text": NAMESPACE}]})
        api.post("/v1/apply", {"documents": [{"path": "big.yaml", "text": comment + NAMESPACE}]})
    assert threads[0] == loop.thread.name
    assert threads[1] != loop.thread.name


def test_a_bad_request_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Test that a 4xx is the client's business: the agent's log stays quiet."""
    caplog.set_level(logging.INFO)
    with served(BuggyAgent()) as (path, _):  # type: ignore[arg-type]
        for _ in range(5):
            raw(path, "GET", "/v1/query/x")
    assert [r for r in caplog.records if r.name.startswith("velvet")] == []
