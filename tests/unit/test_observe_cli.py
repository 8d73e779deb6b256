"""Test `velvet observe` / `velvet monitor` argument handling and printing against a fake API client."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from typing import Any

import pytest

from bench.flow_events import make_flow
from velvet.cli import observe
from velvet.errors import VelvetError
from velvet.observe.codes import EventType, Verdict
from velvet.observe.filters import FilterArg, FlowFilter, FlowQuery, build_spec

FLOW = make_flow().to_hubble_json()
DROP = make_flow(type=EventType.DROP, verdict=Verdict.DROPPED, drop_reason=133).to_hubble_json()
LOST = {"lost_events": {"source": "OBSERVER_EVENTS_QUEUE", "num_events_lost": 4}}


class FakeClient:
    """Records calls; answers get() with `answer` and stream() with `items`."""

    def __init__(self, answer: list[dict[str, Any]], items: list[dict[str, Any]]) -> None:
        self.answer, self.items = answer, items
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def get(self, path: str, **query: Any) -> Any:
        if path == "/v1/query/nodes":  # one node: the relay asks this client itself
            return [{"name": "velvet-node", "api": "/elsewhere.sock"}]
        self.calls.append(("get", path, query))
        return self.answer

    def stream(self, path: str, **query: Any) -> Iterator[Any]:
        self.calls.append(("stream", path, query))
        return iter(self.items)


def parse(*argv: str) -> argparse.Namespace:
    """Parse a `velvet` command line with only the observe and monitor commands registered."""
    parser = argparse.ArgumentParser(prog="velvet")
    parser.add_argument("--sandbox", default=None)
    parser.add_argument("--node", default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    observe.add_observe_parser(sub)
    observe.add_monitor_parser(sub)
    return parser.parse_args(argv)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    """A FakeClient installed as the CLI's API client."""
    client = FakeClient([FLOW, DROP], [FLOW, LOST, DROP])
    monkeypatch.setattr(observe, "client", lambda sandbox=None, node=None: client)
    return client


def test_filters_keep_order_and_not() -> None:
    """Test that --not applies to the next filter only, in command-line order."""
    args = parse("observe", "--pod", "x/a", "--not", "--verdict", "DROPPED", "--to-port", "80", "-t", "trace")
    assert args.filters == [FilterArg("pod", "x/a"), FilterArg("verdict", "DROPPED", True),
                            FilterArg("to-port", "80"), FilterArg("type", "trace")]
    query = observe.query_from_args(args)
    assert query.spec.deny == (FlowFilter(verdict=("DROPPED",)),)
    assert len(query.spec.allow) == 2
    assert parse("observe").filters == []


def test_defaults_follow_hubble() -> None:
    """Test --last 20 by default, none when following or with --since."""
    assert observe.query_from_args(parse("observe")).last == 20
    assert observe.query_from_args(parse("observe", "-f")).last is None
    assert observe.query_from_args(parse("observe", "--last", "3", "-f")).last == 3
    query = observe.query_from_args(parse("observe", "--since", "5m", "--until", "1m"), now_ns=10**12)
    assert (query.last, query.since_ns, query.until_ns) == (None, 10**12 - 300 * 10**9, 10**12 - 60 * 10**9)


def test_dangling_not_and_bad_values_are_errors(fake: FakeClient) -> None:
    """Test that a --not without a filter, or a bad value, is a one-line Velvet error."""
    with pytest.raises(VelvetError, match="--not must be followed"):
        observe.cmd_observe(parse("observe", "--pod", "a", "--not"))
    with pytest.raises(VelvetError, match="unknown verdict"):
        observe.cmd_observe(parse("observe", "--verdict", "maybe"))
    assert fake.calls == []


def test_observe_sends_query_and_prints_compact(fake: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    """Test the history query's parameters and the compact output."""
    assert observe.cmd_observe(parse("observe", "--from-pod", "x/a")) == 0
    method, path, params = fake.calls[0]
    assert (method, path) == ("get", "/v1/query/flows")
    expected = FlowQuery(spec=build_spec([FilterArg("from-pod", "x/a")]), last=20)
    assert FlowQuery.from_params(params) == expected
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert "-> x/b:80 (ID:257) to-endpoint FORWARDED (TCP Flags: SYN)" in lines[0]
    assert lines[1].endswith("DROPPED (TCP Flags: SYN) Policy denied")


def test_observe_follow_json_and_lost(fake: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    """Test --follow -o json: stream endpoint, one JSON per line, lost notices in place as JSON (Hubble's
    jsonpb output: the response with its lost_events), nothing on stderr."""
    assert observe.cmd_observe(parse("observe", "-f", "-o", "json")) == 0
    assert fake.calls[0][:2] == ("stream", "/v1/stream/flows")
    out = capsys.readouterr()
    items = [json.loads(line) for line in out.out.splitlines()]
    assert [i.get("verdict") for i in items] == ["FORWARDED", None, "DROPPED"]
    assert items[1] == LOST
    assert out.err == ""


def test_observe_table(fake: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    """Test -o table with and without --follow."""
    observe.cmd_observe(parse("observe", "-o", "table"))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
    assert len(lines) == 3
    observe.cmd_observe(parse("observe", "-o", "table", "-f"))
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_monitor(fake: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    """Test `velvet monitor -t drop -t trace -j` and the text form."""
    fake.items = [make_flow().to_event_json(), LOST]
    assert observe.cmd_monitor(parse("monitor", "-t", "drop", "-t", "trace", "-j")) == 0
    assert fake.calls[-1] == ("stream", "/v1/stream/events", {"type": "drop,trace"})
    assert [json.loads(line).get("type") for line in capsys.readouterr().out.splitlines()] == ["trace", None]
    observe.cmd_monitor(parse("monitor", "-v"))
    assert fake.calls[-1][2] == {"type": None}
    out = capsys.readouterr()
    assert "-> to-endpoint" in out.out
    assert "EVENTS LOST" not in out.out
    assert "Listening for events" in out.err
    assert "EVENTS LOST: OBSERVER_EVENTS_QUEUE 4" in out.err
