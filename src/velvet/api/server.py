"""The agent's local API: JSON over HTTP on a root-only unix socket, for the CLI and the kubelet."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from velvet.errors import InvalidManifest, VelvetError

Json = Any
log = logging.getLogger("velvet.api")


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
    async def query(self, what: str, params: Mapping[str, str]) -> Json: ...
    def stream(self, what: str, params: Mapping[str, str]) -> AsyncIterator[Json]: ...


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _ok(data: Json) -> web.Response:
    return web.json_response(data, dumps=lambda obj: json.dumps(obj, default=str))


def _errors(handler: Handler) -> Handler:
    """Turn Velvet errors into one-line JSON errors (400 for bad input, 500 otherwise)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except InvalidManifest as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except (KeyError, ValueError) as exc:
            return web.json_response({"error": str(exc).strip("'\"")}, status=404)
        except VelvetError as exc:
            return web.json_response({"error": str(exc)}, status=500)
        except Exception as exc:  # a bug: logged with its traceback, answered in one line
            log.exception("API request %s %s failed", request.method, request.path)
            return web.json_response({"error": f"internal error in the agent: {exc!r}"}, status=500)

    return wrapped


async def _batched(items: AsyncIterator[Json], most: int = 1024) -> AsyncIterator[list[Json]]:
    """Whatever `items` has ready, in lists: one socket write per burst instead of one per item."""
    queue: asyncio.Queue[Json] = asyncio.Queue(most)
    done = object()

    async def pump() -> None:
        try:
            async for item in items:
                await queue.put(item)
        finally:
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
                return
            yield chunk
    finally:
        task.cancel()


def build_app(agent: AgentApi) -> web.Application:
    """Routes of the local API."""
    routes = web.RouteTableDef()

    @routes.get("/v1/health")
    @_errors
    async def health(_: web.Request) -> web.StreamResponse:
        return _ok(await agent.health())

    @routes.get("/v1/status")
    @_errors
    async def status(_: web.Request) -> web.StreamResponse:
        return _ok(await agent.status())

    @routes.post("/v1/apply")
    @_errors
    async def apply(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        return _ok(await agent.apply(body["documents"]))

    @routes.post("/v1/delete")
    @_errors
    async def delete(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        return _ok(await agent.delete(body["documents"], body.get("grace_seconds")))

    @routes.get("/v1/objects/{kind}")
    @_errors
    async def get_objects(request: web.Request) -> web.StreamResponse:
        q = request.query
        return _ok(await agent.get_objects(request.match_info["kind"], q.get("namespace"), q.get("name")))

    @routes.get("/v1/node/pods")
    @_errors
    async def node_pods(_: web.Request) -> web.StreamResponse:
        return _ok(await agent.list_node_pods())

    @routes.put("/v1/node/endpoints/{namespace}/{name}")
    @_errors
    async def add_endpoint(request: web.Request) -> web.StreamResponse:
        m = request.match_info
        return _ok(await agent.add_endpoint(m["namespace"], m["name"], await request.json()))

    @routes.put("/v1/node/pods/{namespace}/{name}")
    @_errors
    async def report_pod(request: web.Request) -> web.StreamResponse:
        m = request.match_info
        return _ok(await agent.report_pod(m["namespace"], m["name"], await request.json()))

    @routes.delete("/v1/node/pods/{namespace}/{name}")
    @_errors
    async def pod_gone(request: web.Request) -> web.StreamResponse:
        m = request.match_info
        return _ok(await agent.pod_gone(m["namespace"], m["name"]))

    @routes.get("/v1/query/{what}")
    @_errors
    async def query(request: web.Request) -> web.StreamResponse:
        return _ok(await agent.query(request.match_info["what"], request.query))

    @routes.get("/v1/stream/{what}")
    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        try:
            async for chunk in _batched(agent.stream(request.match_info["what"], request.query)):
                await resp.write(b"".join(json.dumps(item, default=str).encode() + b"\n" for item in chunk))
        except (ConnectionResetError, VelvetError):
            pass
        return resp

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes(routes)
    return app


def _prepare_socket_dir(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    path.unlink(missing_ok=True)


async def serve_unix(app: web.Application, path: Path) -> web.AppRunner:
    """Serve `app` on a unix socket that only root can use (mode 0600, directory 0700)."""
    _prepare_socket_dir(path)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    old_umask = os.umask(0o177)
    try:
        site = web.UnixSite(runner, str(path))
        await site.start()
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return runner
