"""Test the conformance runner's pure parts (case file, placeholders, matrices, drops, skips) and the prober.

No privileges: the prober runs against echo servers on this namespace's loopback.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cases_file import CASES_FILE
from netpol_cases import CaseFileError, load, resolve_placeholders
from netpol_cluster import ClusterError, round_robin
from netpol_flows import Drop, drop_followers, involving, parse_drop, seconds_late, unexplained
from netpol_matrix import compare, render
from netpol_model import pod_manifest
from netpol_runner import Unsupported, unsupported_protocols
from run_netpol import placement, run

from velvet.observe import format as fmt
from velvet.observe.codes import DropReason, EventType, ObsPoint, TcpFlag, Verdict
from velvet.observe.flow import Endpoint, Flow, rfc3339_ns
from velvet.paths import AgentPaths
from velvet.sandbox import probe

MINI = """
model:
  namespaces: {x: {labels: {kubernetes.io/metadata.name: x}}}
  pods: {x/a: {labels: {pod: a}}, x/b: {labels: {pod: b}}}
  pod_order: [x/a, x/b]
cases:
- id: 7
  name: mini
  servers: {ports: [80, 81], protocols: [TCP, UDP]}
  steps:
  - actions: [{add_pod_labels: {pod: x/b, labels: {x: y}}}]
    probes: [{port: 81, protocol: UDP, expected_rows: {x/a: "X .", x/b: ". X"}}]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cases.yaml"
    path.write_text(text)
    return path


def test_loads_a_small_file_in_the_shared_format(tmp_path: Path) -> None:
    """Test that a file of the shared format loads: model, servers in model order, steps and matrices."""
    data = load(_write(tmp_path, MINI))
    (case,) = data.cases
    assert data.model.pod_order == ("x/a", "x/b")
    assert case.servers == ((80, "TCP"), (80, "UDP"), (81, "TCP"), (81, "UDP"))
    (step,) = case.steps
    assert step.actions[0].kind == "add_pod_labels"
    assert step.probes[0].expected == {"x/a": ("X", "."), "x/b": (".", "X")}


def test_loads_the_shared_file() -> None:
    """Test that the shared case file loads with its 24 cases over the 9-pod model."""
    data = load(CASES_FILE)
    assert len(data.model.pod_order) == 9
    assert len(data.cases) == 24


@pytest.mark.parametrize(("old", "new", "message"), [
    ('x/b: ". X"', 'x/b: ". Y"', "expected_rows.x/b: want 2 cells of '.' or 'X'"),
    ("{add_pod_labels:", "{frobnicate:", "unknown action 'frobnicate'"),
    ("protocol: UDP,", "protocol: ICMP,", "protocol: want one of TCP, UDP, SCTP"),
    ("pod_order: [x/a, x/b]", "pod_order: [x/a]", "model.pod_order: must list every pod"),
])
def test_malformed_files_fail_with_where(tmp_path: Path, old: str, new: str, message: str) -> None:
    """Test that a malformed file fails on load, naming the place."""
    with pytest.raises(CaseFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(_write(tmp_path, MINI.replace(old, new)))


def test_placeholders_become_pod_addresses_and_networks() -> None:
    """Test that '$(ns/pod)' is the pod IP and '$(ns/pod)/N' its masked /N, anywhere in a manifest."""
    ips = {"x/b": "10.244.0.11"}
    spec = {"egress": [{"to": [{"ipBlock": {"cidr": "$(x/b)/4", "except": ["$(x/b)/32", "$(x/b)"]}}]}]}
    assert resolve_placeholders(spec, ips) == {
        "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/4", "except": ["10.244.0.11/32", "10.244.0.11"]}}]}]}
    with pytest.raises(CaseFileError, match="unknown pod"):
        resolve_placeholders("$(z/q)/8", ips)


def test_pods_go_round_robin_over_the_nodes_and_are_pinned_by_node_name() -> None:
    """Test that on three nodes the model's pods go round-robin in its order, each pod manifest naming
    its node; on one node no pod names a node."""
    pods = load(CASES_FILE).model.pod_order
    nodes = round_robin(pods, ["velvet-node", "velvet-node-1", "velvet-node-2"])
    assert placement(nodes) == ("velvet-node: x/a, y/a, z/a; velvet-node-1: x/b, y/b, z/b; "
                                "velvet-node-2: x/c, y/c, z/c")
    assert pod_manifest("y/b", {}, [(80, "TCP")], nodes["y/b"])["spec"]["nodeName"] == "velvet-node-1"
    single = round_robin(pods, ["velvet-node"])
    assert "nodeName" not in pod_manifest("y/b", {}, [(80, "TCP")], single["y/b"])["spec"]


def test_drops_are_followed_on_every_node() -> None:
    """Test that on three nodes one `observe --follow` per node is aimed at that node's agent socket."""
    followers = drop_followers("npx", 3, "2026-01-01T00:00:00+00:00")
    sockets = [env["VELVET_API_SOCKET"] for _, env in followers]
    assert sockets == [str(AgentPaths("npx", d).socket) for d in ("", "node1", "node2")]
    assert all(argv[argv.index("observe"):][:4] == ["observe", "--follow", "--type", "drop"]
               for argv, _ in followers)


def test_too_many_nodes_is_one_clear_error_before_any_sandbox(tmp_path: Path) -> None:
    """Test that --nodes beyond the sandbox's limit fails naming the limit, before bringing anything up."""
    with pytest.raises(CaseFileError, match=r"--nodes 9: a sandbox has 1 to 8 nodes"):
        run(CASES_FILE, nodes=9, say=lambda line: None)


def test_matrix_comparison_sets_the_diagonal_apart() -> None:
    """Test that off-diagonal differences fail and diagonal ones are only reported."""
    order = ("x/a", "x/b")
    expected = {"x/a": ("X", "."), "x/b": ("X", ".")}
    observed = {("x/a", "x/a"): True, ("x/a", "x/b"): True, ("x/b", "x/a"): True, ("x/b", "x/b"): True}
    result = compare(order, expected, observed)
    assert result.off_diagonal == [("x/b", "x/a")]
    assert result.diagonal == ["x/a"]
    assert not result.matches
    assert "x/b:   !   ." in render(order, expected, observed)


@pytest.mark.parametrize("probes", ["    probes: []\n", ""])
def test_a_case_whose_steps_have_no_probes_fails_to_load(tmp_path: Path, probes: str) -> None:
    """Test that a case whose step probes nothing (empty or missing probes) is refused, naming the case."""
    text = re.sub(r"    probes: .*\n", probes, MINI)
    assert text != MINI
    with pytest.raises(CaseFileError, match=r"^case 7\.steps\[0\]\.probes: a step needs at least one probe"):
        load(_write(tmp_path, text))


SEEN_NS = 1_732_706_553_123_456_789  # when the datapath saw the flows of `_observed`
SEEN = rfc3339_ns(SEEN_NS)


def _observed(**overrides: Any) -> str:
    """A flow as `velvet observe -o json` prints it (the product's own encoder): by default x/a -> y/b
    TCP 80, dropped at y/b for POLICY_DENIED."""
    base: dict[str, Any] = {
        "time_ns": SEEN_NS, "type": EventType.DROP, "obs_point": ObsPoint.TO_ENDPOINT,
        "verdict": Verdict.DROPPED, "drop_reason": DropReason.POLICY_DENIED, "proto": 6,
        "tcp_flags": TcpFlag.SYN, "src_ip": "10.244.0.2", "dst_ip": "10.244.0.5", "src_port": 41234,
        "dst_port": 80, "source": Endpoint(256, "x", "a"), "destination": Endpoint(257, "y", "b"),
    }
    return fmt.json_line(Flow(**{**base, **overrides}).to_hubble_json())


def test_drops_are_read_from_observe_json_lines() -> None:
    """Test that an observe line gives the pods (or addresses), port, protocol, Hubble drop reason and
    the addresses."""
    ips = ("10.244.0.2", "10.244.0.5", SEEN)
    assert parse_drop(_observed()) == Drop("x/a", "y/b", 80, "TCP", "POLICY_DENIED", *ips)
    assert parse_drop(_observed(proto=17, tcp_flags=0, dst_port=81)) == Drop("x/a", "y/b", 81, "UDP",
                                                                             "POLICY_DENIED", *ips)
    # a peer that is no pod is named by its address: never a cell of the matrix
    assert parse_drop(_observed(destination=Endpoint(2))) == Drop("x/a", "10.244.0.5", 80, "TCP",
                                                                  "POLICY_DENIED", *ips)
    assert parse_drop(_observed(proto=1, tcp_flags=0)) is None  # no port: no cell


def test_a_drop_says_how_long_it_took_to_reach_the_log() -> None:
    """Test that a drop's lateness is the time since the datapath saw it, to the nanosecond's precision
    that a float keeps, and 0 when the flow has no time."""
    drop = parse_drop(_observed())
    assert drop is not None
    assert seconds_late(drop, SEEN_NS / 1e9 + 2.5) == pytest.approx(2.5, abs=1e-5)
    assert seconds_late(Drop("x/a", "y/b", 80, "TCP", "POLICY_DENIED"), 1e9) == 0.0


def test_a_cells_other_drops_include_those_from_its_source_address_that_name_no_pod() -> None:
    """Test that what else the flow log shows of a cell includes the drops from the source pod's address
    whose flow names no pod (enrichment did not know it), from the pod to other peers, and back."""
    unnamed = parse_drop(_observed(source=Endpoint(256, "x")))
    assert unnamed == Drop("10.244.0.2", "y/b", 80, "TCP", "POLICY_DENIED", "10.244.0.2", "10.244.0.5", SEEN)
    to_service = Drop("x/a", "10.96.0.10", 80, "TCP", "NO_SERVICE_BACKEND", "10.244.0.2", "10.96.0.10")
    back = Drop("y/b", "x/a", 41234, "TCP", "POLICY_DENIED", "10.244.0.5", "10.244.0.2")
    elsewhere = Drop("z/c", "y/b", 80, "TCP", "POLICY_DENIED", "10.244.0.9", "10.244.0.5")
    drops = [unnamed, to_service, back, elsewhere]
    assert involving(drops, "x/a", "y/b", "10.244.0.2") == [unnamed, to_service, back]
    assert involving(drops, "x/a", "y/b") == [to_service, back]


def test_a_blocked_cell_needs_a_policy_denied_drop_of_that_pair_port_and_protocol() -> None:
    """Test that only a POLICY_DENIED drop of the same pair, port and protocol explains a blocked cell."""
    cell = ("x/a", "y/b", 80, "TCP")
    assert unexplained([Drop(*cell, "POLICY_DENIED")], [cell]) == {}
    others = [Drop("x/a", "y/b", 81, "TCP", "POLICY_DENIED"), Drop("y/b", "x/a", 80, "TCP", "POLICY_DENIED"),
              Drop("x/a", "y/b", 80, "UDP", "POLICY_DENIED"), Drop(*cell, "CT_MAP_INSERTION_FAILED")]
    assert unexplained(others, [cell]) == {cell: ["CT_MAP_INSERTION_FAILED"]}
    assert unexplained([], [cell]) == {cell: []}


@pytest.mark.parametrize("detail", ["no /proc/net/sctp (CONFIG_IP_SCTP unset)", "anything at all", ""])
def test_sctp_is_skipped_when_status_reports_its_kernel_feature_missing(detail: str) -> None:
    """Test that the SCTP skip follows the feature's ok flag from `velvet status`, whatever its wording."""
    features = [{"name": "BTF", "ok": True, "detail": "x"}, {"name": "SCTP", "ok": False, "detail": detail}]
    assert unsupported_protocols(features) == {"SCTP": Unsupported("SCTP", detail)}
    assert unsupported_protocols([{"name": "SCTP", "ok": True, "detail": "present"}]) == {}


def test_a_status_without_the_sctp_feature_is_an_error() -> None:
    """Test that the runner refuses to guess when `velvet status` does not report SCTP."""
    with pytest.raises(ClusterError, match="reports no SCTP kernel feature"):
        unsupported_protocols([{"name": "BTF", "ok": True, "detail": "x"}])
    with pytest.raises(ClusterError, match="reports no SCTP kernel feature"):
        unsupported_protocols([{"name": "SCTP", "detail": "no ok flag"}])


@pytest.fixture
def echo_ports() -> Iterator[tuple[int, int]]:
    """A TCP and a UDP echo server on 127.0.0.1 (free ports), stopped after the test."""
    with socket.socket() as a, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        tcp, udp = a.getsockname()[1], b.getsockname()[1]
    code = f"from velvet.sandbox.echo import serve; serve({tcp}, {udp}, 'hostname', '127.0.0.1')"
    server = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not probe.probe(f"tcp://127.0.0.1:{tcp}", 0.1)["ok"] and time.monotonic() < deadline:
            time.sleep(0.05)
        yield tcp, udp
    finally:
        server.kill()
        server.wait()


def test_prober_reports_each_target(echo_ports: tuple[int, int]) -> None:
    """Test that the prober connects TCP and UDP echo servers and reports a closed port and a bad target."""
    tcp, udp = echo_ports
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    targets = [f"tcp://127.0.0.1:{tcp}", f"udp://127.0.0.1:{udp}", f"tcp://127.0.0.1:{closed}", "http://x:1"]
    results = probe.probe_all(targets, 0.5)
    assert [r["target"] for r in results] == targets
    assert [r["ok"] for r in results] == [True, True, False, False]
    assert results[0]["reply"].split()[1].startswith("127.0.0.1:")
    assert "refused" in results[2]["error"].lower()
    assert "want tcp://IP:PORT" in results[3]["error"]
