"""Test that the service map answers only requests naming its listener (DNS rebinding), /metrics any."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from velvet.observe.store import FlowStore
from velvet.observe.ui import host_allowed, http_app


def _statuses(requests: list[tuple[str, str]]) -> list[tuple[int, str]]:
    """(status, body) of GET path with Host header (HOST/PORT replaced by the test server's)."""

    async def scenario() -> list[tuple[int, str]]:
        app = http_app(CollectorRegistry(), FlowStore(capacity=16), lambda: {})
        async with TestClient(TestServer(app, host="127.0.0.1")) as http:
            port = http.server.port
            out = []
            for path, host in requests:
                resp = await http.get(path, headers={"Host": host.replace("PORT", str(port))},
                                      allow_redirects=False)
                out.append((resp.status, (await resp.text()).replace(str(port), "PORT")))
            return out

    return asyncio.run(scenario())


@pytest.mark.parametrize("host", ["127.0.0.1:PORT", "localhost:PORT", "LOCALHOST:PORT", "localhost.:PORT"])
def test_the_map_answers_its_own_address_and_localhost(host: str) -> None:
    """Test that the page and both JSON routes answer a Host naming this listener."""
    answers = _statuses([(path, host) for path in ("/ui/", "/ui/api/graph", "/ui/api/flows?node=ns:x")])
    assert [status for status, _ in answers] == [200, 200, 200]


@pytest.mark.parametrize("host", ["evil.example:PORT", "127.0.0.1.nip.io:PORT", "127.0.0.1:1",
                                  "localhost", "127.0.0.1@evil.example:PORT", "[::1]:PORT", "", "a b"])
def test_a_foreign_host_gets_403_in_one_line(host: str) -> None:
    """Test that a rebound name, another port, or garbage is refused on the page, its API and redirects."""
    answers = _statuses([(path, host) for path in ("/ui/", "/ui/api/graph", "/ui/api/flows?node=ns:x", "/")])
    for status, text in answers:
        assert status == 403
        assert text.count("\n") == 1
        assert text.startswith("403 Forbidden: Host ")
        assert "service map answers Host 127.0.0.1:PORT or localhost" in text


def test_metrics_answer_any_host() -> None:
    """Test that Prometheus may scrape /metrics by IP or by any name it was configured with."""
    answers = _statuses([("/metrics", "evil.example:PORT"), ("/metrics", "10.0.0.5:9962")])
    assert [status for status, _ in answers] == [200, 200]


def test_host_allowed_on_an_ipv6_listener() -> None:
    """Test the [::1] form of the listener's own address."""
    assert host_allowed("[::1]:9962", ("::1", 9962))
    assert host_allowed("localhost:9962", ("::1", 9962))
    assert not host_allowed("127.0.0.1:9962", ("::1", 9962))
    assert not host_allowed("[::1]", ("::1", 9962))
