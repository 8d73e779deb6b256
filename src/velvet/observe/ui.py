"""The agent's loopback HTTP endpoint: Prometheus /metrics and the service map (GET /ui/).

The service map is a static page (observe/web/index.html, vanilla JS drawing SVG) that polls two JSON
routes: /ui/api/graph (namespaces, pods, services and external peers as nodes; flows of the flow
store aggregated into edges by source, destination and verdict) and /ui/api/flows?node=ID (the
recent flows of one node). Both read the store's records and build one Flow per group of records
that draw alike, not one per record.

The agent runs in its node's network namespace; the listener can be opened in another one (the
host's, where the user's browser and Prometheus are), always on a loopback address. Any local user
can connect to it, so it runs within `velvet.api.limits.UI_LIMITS`, and it answers the service map
only to requests naming it (Host: its own address or localhost, with its port), so that a web page
whose name resolves to 127.0.0.1 (DNS rebinding) cannot read the flows; /metrics answers any Host.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from ipaddress import ip_address
from typing import Any

import numpy as np
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry
from yarl import URL

from velvet.api.limits import UI_LIMITS
from velvet.api.listener import refusal, serve
from velvet.observe.codes import RESERVED_IDENTITY_NAMES, EventType, ObsPoint, Verdict
from velvet.observe.decode import take
from velvet.observe.enrich import NamedRef
from velvet.observe.flow import Endpoint, Flow
from velvet.observe.format import compact
from velvet.observe.metrics import metrics_app
from velvet.observe.store import FlowStore
from velvet.system.netns import in_netns

log = logging.getLogger("velvet.observe.ui")
Json = dict[str, Any]

NODE_FLOWS_LIMIT = 50
_VERDICT_CLASS: dict[int, str] = {Verdict.FORWARDED: "forwarded", Verdict.DROPPED: "dropped",
                                  Verdict.AUDIT: "audit", Verdict.TRANSLATED: "translated"}
_SOCK_POINTS = frozenset({ObsPoint.SOCK_CONNECT, ObsPoint.SOCK_SENDMSG})
_PEERS = ("src_ep", "dst_ep", "saddr", "daddr", "service", "flags")
"""Record columns that decide a flow's nodes (endpoints, addresses, service and its side)."""
_DRAWING = (*_PEERS, "type", "obs_point", "verdict", "dport", "proto")
"""Record columns that decide everything `flow_edges` and `_port_text` read."""


# --- the graph -------------------------------------------------------------------------------------

def endpoint_node(ep: Endpoint, ip: str) -> Json:
    """The map node of one side of a flow: its pod, else its reserved identity, else its IP."""
    if ep.pod_name:
        return {"id": f"pod:{ep.namespace}/{ep.pod_name}", "kind": "pod", "namespace": ep.namespace,
                "name": ep.pod_name}
    if ep.identity in RESERVED_IDENTITY_NAMES:
        name = RESERVED_IDENTITY_NAMES[ep.identity]
        return {"id": f"identity:{name}", "kind": "external", "namespace": "", "name": name}
    return {"id": f"ip:{ip or 'unknown'}", "kind": "external", "namespace": "", "name": ip or "unknown"}


def service_node(ref: NamedRef) -> Json:
    """The map node of a Service."""
    return {"id": f"svc:{ref.namespace}/{ref.name}", "kind": "service", "namespace": ref.namespace,
            "name": ref.name}


@dataclass
class _Edge:
    source: str
    target: str
    verdict: str
    count: int = 0
    last_ns: int = 0

    def to_json(self, ports: set[str]) -> Json:
        return {"id": f"{self.source}>{self.target}>{self.verdict}", "source": self.source,
                "target": self.target, "verdict": self.verdict, "count": self.count,
                "last_ns": self.last_ns, "ports": sorted(ports)[:8]}


def _port_text(flow: Flow) -> str:
    proto = {6: "TCP", 17: "UDP", 1: "ICMP"}.get(flow.proto, str(flow.proto))
    return f"{flow.dst_port}/{proto}" if flow.dst_port else proto


def _map_verdict(flow: Flow) -> str | None:
    """The verdict class a flow draws, or None when another event of the same packet tells it."""
    if flow.is_reply:
        return None
    if flow.type == EventType.POLICY_VERDICT:
        return "audit" if flow.verdict == Verdict.AUDIT else None
    leaving = flow.type == EventType.TRACE and flow.obs_point == ObsPoint.FROM_ENDPOINT
    if leaving and flow.destination.pod_name:
        return None  # leaving the source pod says little: its arrival or drop at the destination pod tells
    return _VERDICT_CLASS.get(flow.verdict, "forwarded")


def flow_edges(flow: Flow) -> list[tuple[Json, Json, str]]:
    """(from node, to node, verdict class) that one flow contributes (none for replies).

    A socket-LB translation draws caller -> service -> backend as "translated"; a packet draws
    source -> destination with its final verdict (arrival at a local pod, a drop, an audit verdict;
    a service translated per packet adds the translated pair); a refused service (no backend) is a
    dropped edge to the service.
    """
    verdict = _map_verdict(flow)
    if verdict is None:
        return []
    src = endpoint_node(flow.source, flow.src_ip)
    dst = endpoint_node(flow.destination, flow.dst_ip)
    service = flow.destination_service
    if flow.obs_point in _SOCK_POINTS:
        if service is None:
            return [(src, dst, verdict)]
        svc = service_node(service)
        if verdict == "dropped":
            return [(src, svc, verdict)]
        return [(src, svc, "translated"), (svc, dst, "translated")]
    edges = [(src, dst, verdict)]
    if service is not None:
        svc = service_node(service)
        edges += [(src, svc, "translated"), (svc, dst, "translated")]
    return edges


def build_graph(store: FlowStore) -> Json:
    """Nodes (pods, services, external peers, and the namespaces holding them) and edges by verdict."""
    nodes: dict[str, Json] = {}
    edges: dict[tuple[str, str, str], _Edge] = {}
    ports: dict[tuple[str, str, str], set[str]] = {}
    groups = store.groups(store.records(), _DRAWING)
    for flow, count, last_ns in zip(groups.flows, groups.counts, groups.last_ns, strict=True):
        for src, dst, verdict in flow_edges(flow):
            nodes.setdefault(src["id"], src)
            nodes.setdefault(dst["id"], dst)
            key = (src["id"], dst["id"], verdict)
            edge = edges.get(key)
            if edge is None:
                edge = edges[key] = _Edge(*key)
                ports[key] = set()
            edge.count += count
            edge.last_ns = max(edge.last_ns, last_ns)
            ports[key].add(_port_text(flow))
    namespaces = sorted({n["namespace"] for n in nodes.values() if n["namespace"]})
    ns_nodes = [{"id": f"ns:{ns}", "kind": "namespace", "namespace": ns, "name": ns} for ns in namespaces]
    return {
        "nodes": ns_nodes + sorted(nodes.values(), key=lambda n: n["id"]),
        "edges": [e.to_json(ports[k]) for k, e in sorted(edges.items())],
    }


def node_matches(node_id: str) -> Callable[[Flow], bool]:
    """A predicate: the flow touches the node (a pod, service, namespace, identity or IP node)."""
    kind, _, name = node_id.partition(":")
    namespace, _, short = name.partition("/")
    if kind == "pod":
        return lambda f: any(ep.namespace == namespace and ep.pod_name == short
                             for ep in (f.source, f.destination))
    if kind == "svc":
        ref = NamedRef(namespace, short)
        return lambda f: ref in (f.source_service, f.destination_service)
    if kind == "ns":
        return lambda f: name in (f.source.namespace, f.destination.namespace)
    if kind == "identity":
        wanted = {v: k for k, v in RESERVED_IDENTITY_NAMES.items()}.get(name)
        return lambda f: wanted is not None and wanted in (f.source.identity, f.destination.identity) \
            and not (f.source.pod_name if f.source.identity == wanted else f.destination.pod_name)
    if kind == "ip":
        return lambda f: name in (f.src_ip, f.dst_ip)
    raise ValueError(f"unknown node {node_id!r} (pod:, svc:, ns:, identity: or ip:)")


def node_flows(store: FlowStore, node_id: str, limit: int = NODE_FLOWS_LIMIT) -> list[Json]:
    """The newest `limit` flows of a node, newest first, as compact lines with their verdict."""
    match = node_matches(node_id)
    records = store.records()
    groups = store.groups(records, _PEERS)
    touches = np.array([match(flow) for flow in groups.flows], np.bool_)
    picked = store.flows(take(records, touches[groups.inverse])[-limit:])
    out = []
    for flow in reversed(picked):
        data = flow.to_hubble_json()
        out.append({"time": data["time"], "verdict": data["verdict"], "text": compact(data)})
    return out


# --- HTTP ------------------------------------------------------------------------------------------

def _page() -> bytes:
    return files("velvet.observe").joinpath("web", "index.html").read_bytes()


ANY_HOST_PATHS = frozenset({"/metrics"})
"""Paths answered whatever the Host header: Prometheus scrapes by IP or by any name it was given."""


def host_allowed(host: str, listener: tuple[str, int]) -> bool:
    """Whether a Host header names `listener` (ip, port): its own address or localhost, its port."""
    try:
        url = URL(f"http://{host}/")
        name, port = url.host, url.port
    except ValueError:
        return False
    return port == listener[1] and name is not None and name.rstrip(".").lower() in (listener[0], "localhost")


def _address(sockname: tuple[str, int]) -> str:
    host, port = sockname
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@web.middleware
async def _own_host_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """403 in one line for a request whose Host is not this listener (except ANY_HOST_PATHS)."""
    if request.path in ANY_HOST_PATHS:
        return await handler(request)
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    host = request.headers.get("Host", "")
    if sockname is None or not host_allowed(host, sockname[:2]):
        own = _address(sockname[:2]) if sockname else "its own address"
        return web.Response(status=403, text=f"403 Forbidden: Host {host!r} is not this listener; the "
                            f"service map answers Host {own} or localhost (/metrics answers any Host)\n")
    return await handler(request)


def http_app(registry: CollectorRegistry, store: FlowStore, stats: Callable[[], Json]) -> web.Application:
    """/metrics, the service map page and its JSON API over the flows of `store`."""
    app = metrics_app(registry)
    app.middlewares.append(_own_host_only)
    page = _page()

    async def index(_: web.Request) -> web.StreamResponse:
        return web.Response(body=page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    async def to_ui(_: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/ui/")

    async def graph(_: web.Request) -> web.StreamResponse:
        return web.json_response({**build_graph(store), "stats": stats()})

    async def node(request: web.Request) -> web.StreamResponse:
        node_id = request.query.get("node", "")
        try:
            return web.json_response({"node": node_id, "flows": node_flows(store, node_id)})
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)

    app.router.add_get("/", to_ui)
    app.router.add_get("/ui", to_ui)
    app.router.add_get("/ui/", index)
    app.router.add_get("/ui/api/graph", graph)
    app.router.add_get("/ui/api/flows", node)
    return app


def _loopback_host(host: str) -> str:
    """The host of a listen address, refused unless it is a loopback address."""
    host = host.strip("[]") or "127.0.0.1"
    if host == "localhost":
        return "127.0.0.1"
    try:
        loopback = ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the metrics/UI address must be on loopback, not {host!r}")
    return host


def _same_netns(path: str) -> bool:
    return os.stat(path).st_ino == os.stat("/proc/thread-self/ns/net").st_ino


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or port == 0:
                raise
            log.warning("port %d on %s is in use; listening on a free port instead", port, host)
            sock.bind((host, 0))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def loopback_listener(address: str, netns: str | None = None) -> socket.socket:
    """A listening TCP socket on `address` ("127.0.0.1:9962"), opened in network namespace `netns`.

    A socket stays in the namespace it was made in, so an agent inside a node namespace can serve
    the host's loopback. Falls back to a free port when the port is taken (the caller reports the
    real one). Needs CAP_SYS_ADMIN when `netns` is not the caller's namespace.
    """
    host, _, port_text = address.rpartition(":")
    host = _loopback_host(host)
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"invalid port in metrics/UI address {address!r}")
    if netns is None or _same_netns(netns):
        return _bind(host, int(port_text))
    with in_netns(netns):
        return _bind(host, int(port_text))


def listen_address(sock: socket.socket) -> str:
    """"host:port" a listener is bound to ("[::1]:port" for IPv6)."""
    return _address(sock.getsockname()[:2])


async def serve_http(app: web.Application, sock: socket.socket) -> web.AppRunner:
    """Serve `app` on an already listening socket within UI_LIMITS; `await runner.cleanup()` stops it."""
    busy = b"503: too many connections to this listener; retry in a few seconds\n"
    return await serve(app, sock, UI_LIMITS, refusal("text/plain; charset=utf-8", busy))
