"""The service map in real headless Chromium, driven over the DevTools protocol while traffic runs.

Checks that the drawn nodes and edges (SVG elements with data- attributes) match the flows
`velvet observe` reports, that the map updates live, that clicking a node lists its flows, and
saves a screenshot (also copied to build/ui-screenshot.png for humans).
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from harness import REPO, Sandbox, echo_pod, namespace, sandbox

pytestmark = pytest.mark.privileged
WAIT_SECONDS = 30.0
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1200,800", "--remote-debugging-port=0"]
PODS = ("server", "client", "intruder")
MANIFEST = namespace("shop") + "".join(echo_pod("shop", n, {"app": n}) for n in PODS) + """
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-allow-client, namespace: shop}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
"""
DRAWN = """JSON.stringify({
  nodes: [...document.querySelectorAll('#map [data-node]')].map(e => e.dataset.node),
  edges: [...document.querySelectorAll('#map path[data-edge]')].map(e => [e.dataset.source, e.dataset.target,
                                                                         e.dataset.verdict]),
})"""


class Traffic:
    """Queries in a background thread until stopped: an allowed service call and a denied one."""

    def __init__(self, sb: Sandbox, vip: str, server: str) -> None:
        self._stop = threading.Event()
        self._calls = [("shop/client", f"tcp://{vip}:80"), ("shop/intruder", f"tcp://{server}:8080")]
        self._thread = threading.Thread(target=self._run, args=(sb,), daemon=True)

    def _run(self, sb: Sandbox) -> None:
        while not self._stop.is_set():
            for pod, url in self._calls:
                sb.query(pod, url, timeout=0.5)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


class Cdp:
    """A minimal Chrome DevTools protocol client over one page's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        await self.ws.send_json({"id": self._id, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=30)
            if msg.get("id") == self._id:
                assert "error" not in msg, msg
                result: dict[str, Any] = msg["result"]
                return result

    async def eval(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def wait(self, expression: str) -> Any:
        """Poll until `expression` is truthy (at most WAIT_SECONDS); returns its value."""
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            value = await self.eval(expression)
            if value:
                return value
            await asyncio.sleep(0.2)
        raise AssertionError(f"page never satisfied {expression}")


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[int]:
    """A headless Chromium with remote debugging on loopback; yields its DevTools port."""
    binary = shutil.which("chromium")
    assert binary, "chromium is not installed: run `make deps` (scripts/setup.sh installs it)"
    profile = tmp_path / "profile"
    proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            assert proc.poll() is None, "chromium exited at start"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        yield int(port_file.read_text().split()[0])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _page(session: aiohttp.ClientSession, port: int) -> aiohttp.ClientWebSocketResponse:
    async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
        targets = await resp.json()
    page = next(t for t in targets if t["type"] == "page")
    return await session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024)


def observed_edges(sb: Sandbox) -> set[tuple[str, str, str]]:
    """(source, target, verdict) the flows of `velvet observe` stand for, computed here independently."""
    out = sb.velvet("observe", "--last", "4095", "-o", "json").stdout
    edges = set()
    for flow in map(json.loads, out.splitlines()):
        src, dst = flow["source"], flow["destination"]
        if flow["is_reply"] or not src.get("pod_name") or not dst.get("pod_name"):
            continue
        a, b = f"pod:{src['namespace']}/{src['pod_name']}", f"pod:{dst['namespace']}/{dst['pod_name']}"
        if flow["Type"] == "SOCK":
            svc = flow["destination_service"]
            edges |= {(a, f"svc:{svc['namespace']}/{svc['name']}", "translated"),
                      (f"svc:{svc['namespace']}/{svc['name']}", b, "translated")}
        elif flow["event_type"]["type"] == 1:
            edges.add((a, b, "dropped"))
        elif flow.get("trace_observation_point") == "TO_ENDPOINT":
            edges.add((a, b, flow["verdict"].lower()))
    return edges


def edge(source: str, target: str, verdict: str) -> str:
    """JS: whether the edge is drawn."""
    return f"!!document.querySelector('#map path[data-edge=\"{source}>{target}>{verdict}\"]')"


ROWS = "[...document.querySelectorAll('#flows .flow')].map(r => [r.dataset.verdict, r.textContent])"
CLICK_INTRUDER = """document.querySelector('#map [data-node="pod:shop/intruder"] .shape')
                    .dispatchEvent(new MouseEvent('click', {bubbles: true}))"""


async def _drive(sb: Sandbox, url: str, port: int, more_traffic: Callable[[], object]) -> bytes:
    """Load the map, check what it draws, make new traffic, click a node; returns a PNG screenshot."""
    client, intruder, server, web = "pod:shop/client", "pod:shop/intruder", "pod:shop/server", "svc:shop/web"
    async with aiohttp.ClientSession() as session, await _page(session, port) as ws:
        cdp = Cdp(ws)
        await cdp.call("Page.enable")
        await cdp.call("Page.navigate", url=url)
        await cdp.wait(f"{edge(intruder, server, 'dropped')} && {edge(client, web, 'translated')} "
                       "&& Number(document.body.dataset.updates) >= 2")
        drawn = json.loads(await cdp.eval(DRAWN))
        edges = {tuple(e) for e in drawn["edges"]}
        observed = observed_edges(sb)
        assert {(client, web, "translated"), (web, server, "translated"), (client, server, "forwarded"),
                (intruder, server, "dropped")} <= edges
        assert edges <= observed, f"drawn but never observed: {edges - observed}"
        assert set(drawn["nodes"]) == {"ns:shop"} | {n for e in edges for n in e[:2]}
        assert not await cdp.eval(edge(client, intruder, "forwarded"))
        more_traffic()  # a new pair: the map shows it without a reload
        await cdp.wait(edge(client, intruder, "forwarded"))

        await cdp.eval(CLICK_INTRUDER)
        await cdp.wait(f"document.getElementById('panel').dataset.node === '{intruder}' "
                       "&& document.querySelectorAll('#flows .flow').length > 0")
        rows = await cdp.eval(ROWS)
        assert all("shop/intruder" in text for _, text in rows), rows
        assert any(v == "DROPPED" and "shop/server:8080" in t and "Policy denied" in t for v, t in rows), rows
        assert await cdp.eval("document.querySelector('#map .node.selected').dataset.node") == intruder
        png = await cdp.call("Page.captureScreenshot", format="png")
        return base64.b64decode(png["data"])


def test_service_map_draws_live_flows_and_lists_a_nodes_flows(chromium: int, tmp_path: Path) -> None:
    with sandbox("map") as sb:
        sb.apply(MANIFEST)
        ips = sb.wait_ready(["shop/server", "shop/client", "shop/intruder"])
        vip = next(s for s in sb.json("get", "svc", "-n", "shop")["items"])["spec"]["clusterIP"]
        url = sb.velvet("ui").stdout.strip()
        assert url.startswith("http://127.0.0.1:")
        assert url.endswith("/ui/")
        with Traffic(sb, vip, ips["shop/server"]):
            png = asyncio.run(_drive(sb, url, chromium,
                                     lambda: sb.query("shop/client", f"tcp://{ips['shop/intruder']}:8080")))
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    shot = tmp_path / "service-map.png"
    shot.write_bytes(png)
    (REPO / "build").mkdir(exist_ok=True)
    shutil.copy(shot, REPO / "build" / "ui-screenshot.png")
