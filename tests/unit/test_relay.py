"""Test the cluster's one view: `velvet observe` merges every node's flows by time, `--node-name` filters,
a node that does not answer is one line on stderr, and `velvet --node NAME` talks to one node.

The agents are real (on the in-memory datapath) and serve their API on real unix sockets; node 0
answers the nodes query with every node's socket, as its etcd registry would.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Generator, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from test_api_answers import served

from bench.flow_events import events
from velvet.agent.config import AgentConfig
from velvet.agent.handlers import AgentHandlers
from velvet.agent.node import Agent
from velvet.api import relay
from velvet.api.client import ApiClient
from velvet.api.relay import Peer, Relay
from velvet.cli.main import main
from velvet.datapath.fake import FakeDatapath
from velvet.errors import AgentUnavailable, VelvetError
from velvet.model.node import NodeRecord

NAMES = ("velvet-node", "velvet-node-1", "velvet-node-2")
PER_NODE = 4


class ClusterHandlers(AgentHandlers):
    """Node 0's handlers: the nodes query answers the whole cluster (as etcd's registry would)."""

    cluster: list[dict[str, Any]] = []

    async def query(self, what: str, params: Mapping[str, str]) -> Any:
        if what == "nodes":
            return self.cluster
        return await super().query(what, params)


def _agent(tmp_path: Path, k: int) -> Agent:
    """Node k's agent with PER_NODE flows at times k, k+3, k+6, ... ns (the nodes' flows interleave)."""
    agent = Agent(AgentConfig(sandbox="unit", node_name=NAMES[k], state_dir=tmp_path / f"node{k}"),
                  FakeDatapath())
    agent.start()
    agent.flows.decoder.clock_offset_ns = 0
    agent.flows.ingest(events(*({"ts_ns": k + 3 * i, "dport": 1000 + k} for i in range(PER_NODE))))
    return agent


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Three served agents; the CLI talks to node 0 ($VELVET_API_SOCKET). Yields every node's socket."""
    agents = [_agent(tmp_path, k) for k in range(3)]
    handlers = [ClusterHandlers(agents[0]), *(AgentHandlers(a) for a in agents[1:])]
    with ExitStack() as stack:
        paths = [stack.enter_context(served(h))[0] for h in handlers]
        ClusterHandlers.cluster = [{"name": NAMES[k], "internal_ip": f"192.168.77.{2 + k}",
                                    "pod_cidr": f"10.244.{k}.0/24", "api": str(paths[k])} for k in range(3)]
        monkeypatch.setenv("VELVET_API_SOCKET", str(paths[0]))
        yield paths
    for h in handlers:
        h.close()
    ClusterHandlers.cluster = []


def observe_json(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, Any]]:
    """The flows `velvet observe -o json ARGV` prints (exit code 0 asserted)."""
    assert main(["observe", "-o", "json", *argv]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_observe_merges_every_node_by_time(cluster: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Test that `observe --last 5` shows the 5 newest flows of all nodes, oldest first, with their node."""
    flows = observe_json(capsys, "--last", "5")
    assert [f["time"][-4:] for f in flows] == ["007Z", "008Z", "009Z", "010Z", "011Z"]
    assert [f["node_name"] for f in flows] == [NAMES[1], NAMES[2], NAMES[0], NAMES[1], NAMES[2]]
    assert all(f["l4"]["TCP"]["destination_port"] == 1000 + NAMES.index(f["node_name"]) for f in flows)
    everything = observe_json(capsys, "--last", "100")
    assert len(everything) == 3 * PER_NODE
    assert [f["time"] for f in everything] == sorted(f["time"] for f in everything)


def test_node_name_filters_like_hubble(cluster: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Test --node-name: one node, several (ORed), a pattern, and --not."""
    one = observe_json(capsys, "--last", "100", "--node-name", NAMES[1])
    assert [f["node_name"] for f in one] == [NAMES[1]] * PER_NODE
    two = observe_json(capsys, "--last", "100", "--node-name", NAMES[1], "--node-name", NAMES[2])
    assert {f["node_name"] for f in two} == {NAMES[1], NAMES[2]}
    assert len(two) == 2 * PER_NODE
    assert len(observe_json(capsys, "--last", "100", "--node-name", "velvet-node-*")) == 2 * PER_NODE
    others = observe_json(capsys, "--last", "100", "--not", "--node-name", NAMES[0])
    assert {f["node_name"] for f in others} == {NAMES[1], NAMES[2]}
    assert main(["observe", "--node-name", "Bad Name!"]) == 1
    assert "invalid node name pattern" in capsys.readouterr().err


def test_print_node_name_in_compact_and_table(cluster: list[Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Test that --print-node-name puts " [node]" after the time (compact) and a NODE column (table)."""
    assert main(["observe", "--last", "3", "--print-node-name"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("]: ")[0].rsplit("[", 1)[1] for line in lines] == [NAMES[0], NAMES[1], NAMES[2]]
    assert main(["observe", "--last", "1", "-o", "table", "--print-node-name"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:2] == ["TIMESTAMP", "NODE"]
    assert NAMES[2] in row.split()


def test_an_unreachable_node_is_one_line_and_the_others_are_shown(
        cluster: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Test that a node whose agent does not answer is named once on stderr; the others' flows still print."""
    ClusterHandlers.cluster[2]["api"] = str(cluster[2].parent / "gone.sock")
    assert main(["observe", "--last", "100", "-o", "json"]) == 0
    out = capsys.readouterr()
    assert {json.loads(line)["node_name"] for line in out.out.splitlines()} == {NAMES[0], NAMES[1]}
    [line] = out.err.splitlines()
    assert line.startswith(f"Warning: node {NAMES[2]} did not answer: no Velvet agent answers on ")


def test_node_option_runs_the_command_on_that_node(cluster: list[Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Test `velvet --node NAME status|observe`, and one line with exit code 1 for an unknown name."""
    assert main(["--node", NAMES[2], "status", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["agent"]["node"] == NAMES[2]
    assert {f["node_name"] for f in observe_json(capsys, "--last", "100")} == set(NAMES)
    assert main(["--node", NAMES[1], "observe", "--last", "100", "-o", "json"]) == 0
    assert {json.loads(line)["node_name"] for line in capsys.readouterr().out.splitlines()} == {NAMES[1]}
    assert main(["--node", "nosuch", "service", "list"]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == (f"Error: --node nosuch: no such node is registered (nodes: {', '.join(NAMES)})\n")


def test_one_node_answers_as_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Test that a one-node agent (file store) is asked directly, however the CLI reached it."""
    handlers = AgentHandlers(_agent(tmp_path, 0))
    with served(handlers) as (path, _):
        monkeypatch.setenv("VELVET_API_SOCKET", str(path))
        flows = observe_json(capsys, "--last", "2")
        assert main(["--node", NAMES[0], "status", "-o", "json"]) == 0
    handlers.close()
    assert [f["node_name"] for f in flows] == [NAMES[0]] * 2
    assert json.loads(capsys.readouterr().out)["agent"]["node"] == NAMES[0]


class ScriptedApi(ApiClient):
    """An API client whose flow stream yields `items`, waiting for `gate` before the items after `hold`."""

    def __init__(self, items: list[dict[str, Any]], hold: int = 0, gate: threading.Event | None = None,
                 fail: VelvetError | None = None) -> None:
        super().__init__(Path("/nonexistent"))
        self.items, self.hold, self.gate, self.fail = items, hold, gate, fail

    def get(self, path: str, **query: Any) -> Any:
        if self.fail:
            raise self.fail
        return self.items

    def stream(self, path: str, **query: Any) -> Generator[Any, None, None]:
        if self.fail:
            raise self.fail
        for i, item in enumerate(self.items):
            if i == self.hold and self.gate is not None and not self.gate.wait(10):
                raise AssertionError("the relay did not read the other node while this one was quiet")
            yield item


def test_follow_reads_every_node_concurrently() -> None:
    """Test that a quiet node does not hold back another node's flows (a sequential relay would hang)."""
    seen = threading.Event()
    quiet = ScriptedApi([{"time": "1", "node_name": "a"}, {"time": "3", "node_name": "a"}], hold=1, gate=seen)
    busy = ScriptedApi([{"time": "2", "node_name": "b"}])
    errors: list[str] = []
    got = []
    for item in Relay([Peer("a", quiet), Peer("b", busy)], lambda n, e: errors.append(n)).stream("/s", {}):
        got.append(item["node_name"] + item["time"])
        if item["node_name"] == "b":
            seen.set()
    assert got[-1] == "a3"
    assert sorted(got) == ["a1", "a3", "b2"]
    assert errors == []


def test_follow_takes_in_a_node_that_joins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that a follow starts following a node that registered after it began (Hubble Relay's peers)."""
    monkeypatch.setattr(relay, "DISCOVER_SECONDS", 0.05)
    seen = threading.Event()
    quiet = ScriptedApi([{"time": "1", "node_name": "a"}, {"time": "3", "node_name": "a"}], hold=1, gate=seen)
    joined = Peer("b", ScriptedApi([{"time": "2", "node_name": "b"}]))
    asked: list[int] = []

    def discover() -> list[Peer]:
        asked.append(len(asked))
        return [Peer("a", quiet)] + ([joined] if len(asked) > 1 else [])

    got = []
    for item in Relay([Peer("a", quiet)], lambda n, e: None, discover).stream("/s", {}):
        got.append(item["node_name"] + item["time"])
        if item["node_name"] == "b":
            seen.set()
    assert got == ["a1", "b2", "a3"]
    assert len(asked) >= 2


def test_follow_names_a_failing_node_and_raises_when_none_answers() -> None:
    """Test that a node whose stream fails is reported once while the others stream; all failing raises."""
    down = AgentUnavailable("no Velvet agent answers")
    errors: list[tuple[str, str]] = []
    relay = Relay([Peer("a", ScriptedApi([], fail=down)), Peer("b", ScriptedApi([{"time": "1"}])),
                   Peer("c", None)], lambda n, e: errors.append((n, str(e))))
    assert list(relay.stream("/s", {})) == [{"time": "1"}]
    assert sorted(errors) == [("a", "no Velvet agent answers"), ("c", "node c advertises no API address")]
    with pytest.raises(AgentUnavailable, match="no Velvet agent answers"):
        list(Relay([Peer("a", ScriptedApi([], fail=down))], lambda n, e: None).stream("/s", {}))
    with pytest.raises(AgentUnavailable):
        Relay([Peer("a", ScriptedApi([], fail=down))], lambda n, e: None).query("/q", {}, None)


def test_query_keeps_the_newest_overall() -> None:
    """Test that --last N is the N newest of all nodes, not N per node, in time order."""
    a = ScriptedApi([{"time": f"2026-01-01T00:00:0{s}.000000001Z"} for s in (1, 3)])
    b = ScriptedApi([{"time": f"2026-01-01T00:00:0{s}.000000000Z"} for s in (2, 4)])
    merged = Relay([Peer("a", a), Peer("b", b)], lambda n, e: None).query("/q", {}, 3)
    assert [m["time"][17:19] for m in merged] == ["02", "03", "04"]


def test_a_node_record_advertises_its_api_address(tmp_path: Path) -> None:
    """Test that the agent registers its socket in its node record, which round-trips (old ones have none)."""
    agent = Agent(AgentConfig(sandbox="unit", node_dir="node2", node_name=NAMES[2], state_dir=tmp_path),
                  FakeDatapath())
    record = agent.own_node()
    assert record.api == str(agent.paths.socket)
    assert record.api.endswith("/unit/node2/agent.sock")
    assert NodeRecord.decode(record.encode(), "k") == record
    old = b'{"name": "n", "internalIP": "192.168.77.2", "podCIDR": "10.244.0.0/24"}'
    assert NodeRecord.decode(old, "k").api == ""
    agent.close()
