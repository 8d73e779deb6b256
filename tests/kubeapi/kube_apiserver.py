"""A stand-in Kubernetes API server: what Velvet calls, answered as kube-apiserver answers it.

No kube-apiserver can be installed on these machines, so the Kubernetes source is tested against this
one (aiohttp, on its own thread and event loop, as a separate server would be). It keeps one revision
counter for every object, as etcd does, and the history of changes since the last compaction, and
serves:

- GET on a collection: a list (`<Kind>List`, `metadata.resourceVersion`; items without apiVersion and
  kind for built-in resources, as the API leaves them out, with them for custom resources), in pages
  with `limit` and `continue` (every page consistent at the first page's revision; a token whose
  revision was compacted is HTTP 410 Expired);
- GET with `watch=true`: chunked JSON lines `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR,
  "object": ...}` from `resourceVersion` (unset: the current objects as ADDED first); a revision older
  than the last compaction is an ERROR event carrying a 410 Expired Status, as the watch cache sends;
  an object leaving the selector is DELETED; bookmarks only when `allowWatchBookmarks=true`;
- the field selectors `metadata.name`, `metadata.namespace`, `spec.nodeName` and equality and set label
  selectors;
- GET, POST (409 AlreadyExists), PUT (409 Conflict on a stale resourceVersion), DELETE on one object;
- faults for tests: `compact()`, `cut_watches()`, `delay`, `refuse_lists`, `stop()` / `start()` on the
  same port.

Every request is recorded as (verb, group, resource), the verbs of RBAC (get, list, watch, create,
update, delete), so a test can check a ClusterRole against what the code calls.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from velvet.system.netns import enter_netns

Json = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    """A resource the stand-in serves."""

    kind: str
    group: str
    version: str
    plural: str
    namespaced: bool
    custom: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


KINDS = [
    Kind("Namespace", "", "v1", "namespaces", False),
    Kind("Pod", "", "v1", "pods", True),
    Kind("Service", "", "v1", "services", True),
    Kind("Node", "", "v1", "nodes", False),
    Kind("EndpointSlice", "discovery.k8s.io", "v1", "endpointslices", True),
    Kind("NetworkPolicy", "networking.k8s.io", "v1", "networkpolicies", True),
    Kind("VelvetIdentity", "velvet.io", "v1alpha1", "velvetidentities", False, custom=True),
    Kind("VelvetEndpoint", "velvet.io", "v1alpha1", "velvetendpoints", True, custom=True),
    Kind("VelvetTracingPolicy", "velvet.io", "v1alpha1", "velvettracingpolicies", False, custom=True),
    Kind("VelvetTracingPolicyNamespaced", "velvet.io", "v1alpha1", "velvettracingpoliciesnamespaced", True,
         custom=True),
]
BY_PATH = {(k.group, k.version, k.plural): k for k in KINDS}


def status(code: int, reason: str, message: str, details: Json | None = None) -> Json:
    """A v1 Status, as the API answers a failure."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": details or {}, "code": code}


@dataclass
class Event:
    """One change at one revision: the object after it (before it for DELETED)."""

    revision: int
    type: str
    kind: Kind
    obj: Json
    before: Json | None = None


@dataclass
class State:
    """Objects, the revision, and the history since the last compaction (survives stop/start)."""

    revision: int = 1
    objects: dict[tuple[str, str, str], Json] = field(default_factory=dict)  # (plural, ns, name)
    history: list[Event] = field(default_factory=list)
    compacted: int = 1
    base: dict[tuple[str, str, str], Json] = field(default_factory=dict)  # objects at `compacted`


def _key(kind: Kind, obj: Json) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return kind.plural, meta.get("namespace", "") if kind.namespaced else "", meta["name"]


def _labels_match(selector: str, labels: dict[str, str]) -> bool:
    """Equality (=, ==, !=), set (in, notin) and existence (key, !key) requirements, comma-separated."""
    parts, depth, cur = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    for part in (p.strip() for p in parts if p.strip()):
        if " notin " in part or " in " in part:
            key, op, rest = part.partition(" notin " if " notin " in part else " in ")
            values = {v.strip() for v in rest.strip().strip("()").split(",")}
            has = labels.get(key.strip()) in values
            if has != (op.strip() == "in"):
                return False
        elif "!=" in part:
            key, _, value = part.partition("!=")
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in part:
            key, _, value = part.replace("==", "=").partition("=")
            if labels.get(key.strip()) != value.strip():
                return False
        elif part.startswith("!"):
            if part[1:] in labels:
                return False
        elif part not in labels:
            return False
    return True


FIELDS: dict[str, Callable[[Json], str]] = {
    "metadata.name": lambda o: str(o["metadata"].get("name", "")),
    "metadata.namespace": lambda o: str(o["metadata"].get("namespace", "")),
    "spec.nodeName": lambda o: str((o.get("spec") or {}).get("nodeName", "")),
}


class Selector:
    """A request's field and label selectors; `BadSelector` for a field the API does not index."""

    def __init__(self, namespace: str, fields: str, labels: str) -> None:
        self.namespace = namespace
        self.fields: list[tuple[str, bool, str]] = []
        for part in filter(None, fields.split(",")):
            negate = "!=" in part
            name, _, value = part.replace("==", "=").partition("!=" if negate else "=")
            if name not in FIELDS:
                raise Failure(status(400, "BadRequest", f"field label not supported: {name}"))
            self.fields.append((name, negate, value))
        self.labels = labels

    def __call__(self, obj: Json | None) -> bool:
        if obj is None:
            return False
        if self.namespace and obj["metadata"].get("namespace") != self.namespace:
            return False
        if any((FIELDS[name](obj) == value) == negate for name, negate, value in self.fields):
            return False
        return _labels_match(self.labels, obj["metadata"].get("labels") or {})


class KubeApiServer:
    """The stand-in: `start()` it, point a kubeconfig at `url`, drive it from the test's thread."""

    def __init__(self, host: str = "127.0.0.1", netns: str | None = None, port: int = 0) -> None:
        """Listen on `host`:`port` (0: chosen at the first start), inside network namespace `netns` if
        given."""
        self.host = host
        self.netns = netns
        self.port = port
        self.state = State()
        self.requests: list[tuple[str, str, str]] = []
        self.delay = 0.0  # seconds before every answer (a slow API server)
        self.refuse_lists: Json | None = None  # a Status every list is answered with (etcd in trouble)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._watchers: set[asyncio.Queue[Event | None]] = set()
        self._changed: asyncio.Condition | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Serve (on the port of a previous life, if any) until `stop()`."""
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="kube-apiserver", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the stand-in API server did not start")

    def _serve(self, ready: threading.Event) -> None:
        if self.netns is not None:  # this thread only; its listening socket stays in that namespace
            enter_netns(self.netns)
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        app = web.Application()
        app.router.add_route("*", "/api/{version}/{rest:.*}", self._handle)
        app.router.add_route("*", "/apis/{group}/{version}/{rest:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        loop.run_until_complete(self._runner.setup())
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock)
        loop.run_until_complete(site.start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def stop(self) -> None:
        """Close every connection and stop listening; the state stays for `start()`."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self.cut_watches()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the server's loop (watchers are woken there), or here when it is stopped."""
        if self._loop is None:
            return fn()
        async def run() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # -- the test's hands --------------------------------------------------------------------------

    def put(self, obj: Json) -> Json:
        """Create or update `obj` as kubectl would (server fields stamped); the stored form."""
        return self._call(lambda: self._write(obj))  # type: ignore[no-any-return]

    def remove(self, kind: str, namespace: str, name: str) -> None:
        """Delete one object."""
        self._call(lambda: self._remove(self._kind(kind), namespace, name))

    def get(self, kind: str, namespace: str, name: str) -> Json | None:
        """The stored object, or None."""
        k = self._kind(kind)
        return self.state.objects.get((k.plural, namespace if k.namespaced else "", name))

    def items(self, plural: str) -> list[Json]:
        """Copies of the stored objects of a resource, read on the server's loop (safe from any thread)."""
        return self._call(lambda: [copy.deepcopy(o) for k, o in sorted(self.state.objects.items())  # type: ignore[no-any-return]
                                   if k[0] == plural])

    def bookmark(self) -> None:
        """Send every watcher that asked for bookmarks one at the current revision."""
        self._call(lambda: self._broadcast(Event(self.state.revision, "BOOKMARK", KINDS[0], {})))

    def compact(self) -> None:
        """Forget the history: a watch or continue token from an older revision gets 410 Gone."""
        def run() -> None:
            s = self.state
            s.base, s.compacted, s.history = copy.deepcopy(s.objects), s.revision, []
        self._call(run)

    def cut_watches(self) -> None:
        """End every open watch stream abruptly (no final chunk), as a broken connection does."""
        self._call(lambda: self._broadcast(None))

    def count(self, verb: str, resource: str) -> int:
        """How many requests of `verb` on `resource` were made."""
        return sum(1 for v, _, r in self.requests if (v, r) == (verb, resource))

    # -- state -------------------------------------------------------------------------------------

    @staticmethod
    def _kind(name: str) -> Kind:
        return next(k for k in KINDS if name in (k.kind, k.plural))

    def _write(self, obj: Json, *, expect_new: bool = False, check_rv: bool = False) -> Json:
        kind = self._kind(obj["kind"])
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if kind.namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        key = _key(kind, obj)
        before = self.state.objects.get(key)
        if before is not None and expect_new:
            resource = f"{kind.plural}.{kind.group}" if kind.group else kind.plural
            raise _fail(409, "AlreadyExists", f'{resource} "{meta["name"]}" already exists', kind,
                        meta["name"])
        if before is not None and check_rv and meta.get("resourceVersion") not in (
                None, before["metadata"]["resourceVersion"]):
            raise _fail(409, "Conflict", f'Operation cannot be fulfilled on {kind.plural} "{meta["name"]}": '
                        "the object has been modified; please apply your changes to the latest version "
                        "and try again", kind, meta["name"])
        self.state.revision += 1
        meta["resourceVersion"] = str(self.state.revision)
        meta["uid"] = before["metadata"]["uid"] if before else str(uuid.uuid4())
        meta["creationTimestamp"] = (before["metadata"]["creationTimestamp"] if before else
                                     datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        self.state.objects[key] = obj
        event = Event(self.state.revision, "MODIFIED" if before else "ADDED", kind, obj, before)
        self.state.history.append(event)
        self._broadcast(event)
        return obj

    def _remove(self, kind: Kind, namespace: str, name: str) -> Json:
        key = (kind.plural, namespace if kind.namespaced else "", name)
        before = self.state.objects.pop(key, None)
        if before is None:
            raise _fail(404, "NotFound", f'{kind.plural} "{name}" not found', kind, name)
        self.state.revision += 1
        gone = copy.deepcopy(before)
        gone["metadata"]["resourceVersion"] = str(self.state.revision)
        event = Event(self.state.revision, "DELETED", kind, gone, before)
        self.state.history.append(event)
        self._broadcast(event)
        return gone

    def _at(self, revision: int) -> dict[tuple[str, str, str], Json]:
        """The objects as they were at `revision` (not older than the last compaction)."""
        objects = dict(self.state.base)
        for e in self.state.history:
            if e.revision > revision:
                break
            key = _key(e.kind, e.obj)
            if e.type == "DELETED":
                objects.pop(key, None)
            else:
                objects[key] = e.obj
        return objects

    def _broadcast(self, event: Event | None) -> None:
        for queue in list(self._watchers):
            queue.put_nowait(event)

    # -- HTTP --------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        parts = request.match_info["rest"].strip("/").split("/")
        namespace = ""
        if parts[0] == "namespaces" and len(parts) >= 3:
            namespace, parts = parts[1], parts[2:]
        group = request.match_info.get("group", "")
        kind = BY_PATH.get((group, request.match_info["version"], parts[0]))
        if kind is None or len(parts) > 2:
            return _json(status(404, "NotFound", "the server could not find the requested resource"), 404)
        name = parts[1] if len(parts) == 2 else ""
        watching = request.query.get("watch") in ("true", "1")
        verb = {"GET": "get" if name else ("watch" if watching else "list"), "POST": "create",
                "PUT": "update", "DELETE": "delete"}.get(request.method, request.method.lower())
        self.requests.append((verb, kind.group, kind.plural))
        try:
            if verb == "get":
                obj = self.state.objects.get((kind.plural, namespace, name))
                if obj is None:
                    raise _fail(404, "NotFound", f'{kind.plural} "{name}" not found', kind, name)
                return _json(obj)
            if verb == "list":
                if self.refuse_lists is not None:
                    raise Failure(self.refuse_lists)
                return self._list(kind, request, namespace)
            if verb == "watch":
                return await self._watch(kind, request, namespace)
            if verb in ("create", "update"):
                body = await request.json()
                if not isinstance(body, dict) or body.get("kind") != kind.kind:
                    raise _fail(400, "BadRequest", f"the body is not a {kind.kind}", kind, name)
                if namespace and kind.namespaced:
                    body.setdefault("metadata", {})["namespace"] = namespace
                if verb == "update" and self.get(kind.kind, namespace, name) is None:
                    raise _fail(404, "NotFound", f'{kind.plural} "{name}" not found', kind, name)
                stored = self._write(body, expect_new=verb == "create", check_rv=verb == "update")
                return _json(stored, 201 if verb == "create" else 200)
            if verb == "delete":
                return _json(self._remove(kind, namespace, name))
        except Failure as failure:
            return _json(failure.body, failure.body["code"])
        return _json(status(405, "MethodNotAllowed", f"{request.method} is not supported"), 405)

    def _list(self, kind: Kind, request: web.Request, namespace: str) -> web.Response:
        select = Selector(namespace, request.query.get("fieldSelector", ""),
                          request.query.get("labelSelector", ""))
        limit = int(request.query.get("limit") or 0)
        token = request.query.get("continue", "")
        revision, start = self.state.revision, ""
        if token:
            decoded = json.loads(base64.b64decode(token))
            revision, start = int(decoded["rv"]), decoded["start"]
            if revision < self.state.compacted:
                raise _fail(410, "Expired", "The provided continue parameter is too old to display a "
                            "consistent list result. You can start a new list without the continue "
                            "parameter.", kind, "")
        objects = self._at(revision) if revision != self.state.revision else self.state.objects
        keys = sorted(k for k, o in objects.items() if k[0] == kind.plural and select(o)
                      and f"{k[1]}/{k[2]}" > start)
        page = keys[:limit] if limit else keys
        meta: Json = {"resourceVersion": str(revision)}
        if limit and len(keys) > limit:
            last = page[-1]
            meta["continue"] = base64.b64encode(json.dumps(
                {"rv": revision, "start": f"{last[1]}/{last[2]}"}).encode()).decode()
            meta["remainingItemCount"] = len(keys) - limit
        items = []
        for k in page:
            item = copy.deepcopy(objects[k])
            if not kind.custom:  # a built-in list's items carry no apiVersion and kind
                item.pop("apiVersion", None)
                item.pop("kind", None)
            items.append(item)
        return _json({"kind": f"{kind.kind}List", "apiVersion": kind.api_version, "metadata": meta,
                      "items": items})

    async def _watch(self, kind: Kind, request: web.Request, namespace: str) -> web.StreamResponse:
        select = Selector(namespace, request.query.get("fieldSelector", ""),
                          request.query.get("labelSelector", ""))
        bookmarks = request.query.get("allowWatchBookmarks") == "true"
        rv = request.query.get("resourceVersion", "")
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._watchers.add(queue)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)

        async def send(type_: str, obj: Json) -> None:
            await response.write(json.dumps({"type": type_, "object": obj}).encode() + b"\n")

        try:
            if rv and int(rv) < self.state.compacted:
                await send("ERROR", status(410, "Expired", f"too old resource version: {rv} "
                                           f"({self.state.compacted})"))
                return response
            upto = self.state.revision  # replayed below; later events come through the queue
            if rv in ("", "0"):
                for obj in [o for k, o in sorted(self.state.objects.items()) if k[0] == kind.plural]:
                    if select(obj):
                        await send("ADDED", obj)
            else:
                for event in [e for e in self.state.history if int(rv) < e.revision <= upto]:
                    if event.kind == kind:
                        await self._send_event(send, event, select)
            timeout = float(request.query.get("timeoutSeconds") or 1800)
            while True:
                try:
                    got = await asyncio.wait_for(queue.get(), timeout)
                except TimeoutError:
                    break
                if got is None:  # cut: drop the connection without the final chunk
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                event = got
                if event.revision <= upto and event.type != "BOOKMARK":
                    continue
                if event.type == "BOOKMARK":
                    if bookmarks:
                        await send("BOOKMARK", {"kind": kind.kind, "apiVersion": kind.api_version,
                                                "metadata": {"resourceVersion": str(event.revision)}})
                elif event.kind == kind:
                    await self._send_event(send, event, select)
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watchers.discard(queue)
        return response

    @staticmethod
    async def _send_event(send: Callable[[str, Json], Any], event: Event, select: Selector) -> None:
        """An event as this watcher sees it: entering the selector is ADDED, leaving it DELETED."""
        now, before = select(event.obj) and event.type != "DELETED", select(event.before)
        if event.type == "DELETED":
            if before:
                await send("DELETED", event.obj)
        elif now and not before:
            await send("ADDED", event.obj)
        elif now:
            await send("MODIFIED", event.obj)
        elif before:
            await send("DELETED", event.obj)


class Failure(Exception):
    """An answer with a v1 Status."""

    def __init__(self, body: Json) -> None:
        super().__init__(body["message"])
        self.body = body


def _fail(code: int, reason: str, message: str, kind: Kind, name: str) -> Failure:
    return Failure(status(code, reason, message, {"name": name, "group": kind.group, "kind": kind.plural}))


def _json(body: Json, code: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body), status=code, content_type="application/json")


def kubeconfig(url: str) -> str:
    """A kubeconfig (YAML is a superset of this JSON) for the stand-in at `url`."""
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "standin",
        "clusters": [{"name": "standin", "cluster": {"server": url}}],
        "users": [{"name": "velvet", "user": {"token": "standin-token"}}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "velvet"}}]})
