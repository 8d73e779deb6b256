"""The agent's local API: JSON over HTTP on a root-only unix socket, for the CLI and the kubelet.

Every error is one JSON line {"error": "..."} with its status: 400 for a malformed request (not
JSON or not an object, checked here; a wrong shape or a refused value, where the agent decodes
documents and reports), 404 for a missing object or route, 405 for a wrong method, 413 for a body
over `API_MAX_BODY`, 500 for a fault of the agent (logged with its traceback). `AgentApi` methods
are coroutines, so the agent runs heavy work off the event loop while /v1/health keeps answering;
large bodies are decoded off the loop too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Mapping
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler

from velvet.api.limits import API_BODY_SECONDS, API_LIMITS, API_MAX_BODY
from velvet.api.listener import refusal, serve
from velvet.errors import BadRequest, InvalidManifest, NotFound, VelvetError

Json = Any
log = logging.getLogger("velvet.api")

DECODE_IN_THREAD_BYTES = 1024 * 1024
"""Bodies at least this large are decoded in a worker thread, so that the loop keeps answering."""
_REASON_STATUS = {"NotFound": 404, "Forbidden": 403, "AlreadyExists": 409, "Conflict": 409}
"""HTTP status of a Kubernetes status reason, which a store error carries as `reason`."""


class AgentApi(Protocol):
    """What the API needs from the agent; every method returns JSON-able data (streams: items)."""

    async def health(self) -> Json: ...
    async def status(self) -> Json: ...
    async def apply(self, documents: list[Mapping[str, str]]) -> Json: ...
    async def delete(self, documents: list[Mapping[str, str]], grace_seconds: int | None) -> Json: ...
    async def get_objects(self, kind: str, namespace: str | None, name: str | None) -> Json: ...
    async def list_node_pods(self) -> Json: ...
    async def add_endpoint(self, namespace: str, name: str, report: Mapping[str, Any]) -> Json: ...
    async def report_pod(self, namespace: str, name: str, report: Mapping[str, Any]) -> Json: ...
    async def pod_gone(self, namespace: str, name: str) -> Json: ...
    async def cni(self, request: Mapping[str, Any]) -> Json: ...
    async def query(self, what: str, params: Mapping[str, str]) -> Json: ...
    def stream(self, what: str, params: Mapping[str, str]) -> AsyncIterator[Json]: ...


# --- errors ----------------------------------------------------------------------------------------

def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own refusals (no route, wrong method, body too large) as one JSON line."""
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return _error(405, f"method {request.method} is not allowed on {request.path} (allowed: {allowed})",
                      {"Allow": exc.headers["Allow"]})
    if isinstance(exc, web.HTTPNotFound):
        return _error(404, f"no API route {request.method} {request.path}")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return _error(413, f"request body too large: the agent's API takes at most {API_MAX_BODY} bytes "
                           f"({API_MAX_BODY / 2**20:g} MiB) per request; send fewer documents at a time")
    return _error(exc.status, exc.text or exc.reason)


def _status_of(exc: VelvetError | ValueError) -> int:
    """400 for what the request got wrong, 404 for what does not exist, 500 for the agent's faults.

    The store's refusals (sources.local.StoreError, which this layer does not import) carry the
    Kubernetes status reason the API server would answer with.
    """
    if isinstance(exc, BadRequest | InvalidManifest | ValueError):
        return 400
    if isinstance(exc, NotFound):
        return 404
    return _REASON_STATUS.get(str(getattr(exc, "reason", "")), 500)


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as one JSON line with its status; an unexpected one is logged with its traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_error(request, exc)
    except (VelvetError, ValueError) as exc:
        status = _status_of(exc)
        if status >= 500:  # the text: a log record kept by a handler must not hold the failed call's state
            log.error("API request %s %s failed: %s", request.method, request.path, str(exc))
        return _error(status, str(exc))
    except Exception as exc:  # a bug: logged with its traceback, answered in one line
        log.exception("API request %s %s failed", request.method, request.path)
        return _error(500, f"internal error in the agent: {exc!r} (its log has the traceback)")


# --- request bodies --------------------------------------------------------------------------------

def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    names = {int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _decode(raw: bytes) -> Json:
    try:
        return json.loads(raw)
    except RecursionError:
        raise BadRequest("request body is not usable JSON: nested too deeply") from None
    except ValueError as exc:
        raise BadRequest(f"request body is not JSON: {exc}") from None


async def _body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; 413 beyond API_MAX_BODY, 408 when it does not arrive in time."""
    size = request.content_length
    if size is not None and size > API_MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(API_MAX_BODY, size)
    try:
        async with asyncio.timeout(API_BODY_SECONDS):
            raw = await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            text=f"request body not received within {API_BODY_SECONDS:.0f} s") from None
    body = await asyncio.to_thread(_decode, raw) if len(raw) >= DECODE_IN_THREAD_BYTES else _decode(raw)
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, not {_json_type(body)}")
    return body


def _documents(body: Mapping[str, Any]) -> Any:
    """body["documents"] as sent: the agent checks its shape (agent/manifests.py) and names what is wrong."""
    return body.get("documents")


def _grace(body: Mapping[str, Any]) -> int | None:
    """body["grace_seconds"] of a delete: an integer of 0 or more, or null / absent."""
    grace = body.get("grace_seconds")
    if grace is not None and (_json_type(grace) != "integer" or grace < 0):
        raise BadRequest(f"request body: grace_seconds must be an integer of 0 or more or null, "
                         f"not {json.dumps(grace)}")
    return grace


# --- routes ----------------------------------------------------------------------------------------

def _report_orphan(task: asyncio.Future[Json]) -> None:
    """Log the failure of agent work whose client went away (nobody else will see it)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("agent work failed after its client went away: %s", task.exception())


async def _ok(answer: Awaitable[Json]) -> web.Response:
    """The agent's answer as JSON; its work finishes even if the client goes away meanwhile."""
    work = asyncio.ensure_future(answer)
    try:
        data = await asyncio.shield(work)
    except asyncio.CancelledError:
        work.add_done_callback(_report_orphan)
        raise
    except BaseException:
        # the task holds the exception and its traceback this frame, which holds the task: a cycle that
        # would keep a failed call's state (a 9,000-object apply: ~50 MB) until a full collection
        del work
        raise
    return web.json_response(data, dumps=_dumps)


def _dumps(obj: Json) -> str:
    return json.dumps(obj, default=str)


def _ndjson(item: Json) -> bytes:
    return json.dumps(item, default=str).encode() + b"\n"


async def _batched(items: AsyncIterator[Json], most: int = 1024) -> AsyncGenerator[list[Json], None]:
    """Whatever `items` has ready, in lists: one socket write per burst instead of one per item."""
    queue: asyncio.Queue[Json] = asyncio.Queue(most)
    done = object()
    failed: list[Exception] = []

    async def pump() -> None:
        try:
            async for item in items:
                await queue.put(item)
        except Exception as exc:  # handed to the reader, which raises it
            failed.append(exc)
        await queue.put(done)

    task = asyncio.create_task(pump())
    try:
        while True:
            chunk = [await queue.get()]
            while not queue.empty() and len(chunk) < most:
                chunk.append(queue.get_nowait())
            if chunk[-1] is done:
                if chunk[:-1]:
                    yield chunk[:-1]
                if failed:
                    raise failed[0]
                return
            yield chunk
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()  # the agent's generator unsubscribes its follower now, not at garbage collection


def build_app(agent: AgentApi) -> web.Application:
    """Routes of the local API."""
    routes = web.RouteTableDef()

    @routes.get("/v1/health")
    async def health(request: web.Request) -> web.StreamResponse:
        answer = await agent.health()
        starting = "ready" in request.query and answer.get("starting", False)  # readiness: not while starting
        return web.json_response(answer, status=503 if starting else 200, dumps=_dumps)

    @routes.get("/v1/status")
    async def status(_: web.Request) -> web.StreamResponse:
        return await _ok(agent.status())

    @routes.post("/v1/apply")
    async def apply(request: web.Request) -> web.StreamResponse:
        return await _ok(agent.apply(_documents(await _body(request))))

    @routes.post("/v1/delete")
    async def delete(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        return await _ok(agent.delete(_documents(body), _grace(body)))

    @routes.get("/v1/objects/{kind}")
    async def get_objects(request: web.Request) -> web.StreamResponse:
        q = request.query
        return await _ok(agent.get_objects(request.match_info["kind"], q.get("namespace"), q.get("name")))

    @routes.get("/v1/node/pods")
    async def node_pods(_: web.Request) -> web.StreamResponse:
        return await _ok(agent.list_node_pods())

    @routes.put("/v1/node/endpoints/{namespace}/{name}")
    async def add_endpoint(request: web.Request) -> web.StreamResponse:
        m, report = request.match_info, await _body(request)
        return await _ok(agent.add_endpoint(m["namespace"], m["name"], report))

    @routes.put("/v1/node/pods/{namespace}/{name}")
    async def report_pod(request: web.Request) -> web.StreamResponse:
        m, report = request.match_info, await _body(request)
        return await _ok(agent.report_pod(m["namespace"], m["name"], report))

    @routes.delete("/v1/node/pods/{namespace}/{name}")
    async def pod_gone(request: web.Request) -> web.StreamResponse:
        m = request.match_info
        return await _ok(agent.pod_gone(m["namespace"], m["name"]))

    @routes.post("/v1/cni")
    async def cni(request: web.Request) -> web.StreamResponse:
        return await _ok(agent.cni(await _body(request)))

    @routes.get("/v1/query/{what}")
    async def query(request: web.Request) -> web.StreamResponse:
        return await _ok(agent.query(request.match_info["what"], request.query))

    @routes.get("/v1/stream/{what}")
    async def stream(request: web.Request) -> web.StreamResponse:
        what = request.match_info["what"]
        items = agent.stream(what, request.query)  # a bad stream or filter fails here, as a JSON error
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        try:
            async with contextlib.aclosing(_batched(items)) as chunks:
                async for chunk in chunks:
                    await resp.write(b"".join(_ndjson(item) for item in chunk))
        except ConnectionResetError:
            pass  # the client went away
        except VelvetError as exc:
            log.warning("stream %s ended: %s", what, exc)
        except Exception:  # headers are sent: the stream ends, the log keeps the traceback
            log.exception("stream %s failed", what)
        return resp

    app = web.Application(client_max_size=API_MAX_BODY, middlewares=[_json_errors])
    app.add_routes(routes)
    return app


def _unix_listener(path: Path) -> socket.socket:
    """A listening unix socket at `path` that only root can use (mode 0600, directory 0700)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    return sock


async def serve_unix(app: web.Application, path: Path) -> web.AppRunner:
    """Serve `app` on a root-only unix socket within API_LIMITS; `await runner.cleanup()` stops it."""
    busy = json.dumps({"error": f"the agent serves {API_LIMITS.max_connections} API connections "
                                "already; retry in a moment"}).encode()
    return await serve(app, _unix_listener(path), API_LIMITS, refusal("application/json", busy))
