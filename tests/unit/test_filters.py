"""Test Hubble-style filters: spec building (either/from/to sides, --not) and matching on Flows."""

from __future__ import annotations

import json

import pytest

from bench.flow_events import make_flow
from velvet.observe.codes import EventType, ObsPoint, Verdict
from velvet.observe.enrich import NamedRef
from velvet.observe.filters import (
    FILTER_FLAGS,
    FilterArg,
    FilterSpec,
    FlowFilter,
    FlowQuery,
    build_spec,
    compile_spec,
    parse_time,
)
from velvet.observe.flow import Endpoint, Flow

A_TO_B = make_flow(node_name="velvet-node")
B_TO_A = make_flow(node_name="velvet-node", src_ip="10.0.0.2", dst_ip="10.0.0.1", src_port=80,
                   dst_port=41234, source=A_TO_B.destination, destination=A_TO_B.source)
OTHER = make_flow(node_name="velvet-node", src_ip="192.168.1.5", dst_ip="10.0.0.9", src_port=5353,
                  dst_port=53, proto=17, tcp_flags=0,
                  source=Endpoint(2, labels=("reserved:world",)),
                  destination=Endpoint(300, "kube-system", "coredns-1", ("k8s:k8s-app=kube-dns",)),
                  destination_service=NamedRef("kube-system", "kube-dns"))
DROP = make_flow(type=EventType.DROP, verdict=Verdict.DROPPED, drop_reason=133, node_name="velvet-node-1")
VERDICT = make_flow(type=EventType.POLICY_VERDICT, node_name="velvet-node-1")
FROM_EP = make_flow(obs_point=ObsPoint.FROM_ENDPOINT, node_name="velvet-node-12")
ALL = [A_TO_B, B_TO_A, OTHER, DROP, VERDICT, FROM_EP]


def shown(*args: tuple[str, str] | tuple[str, str, bool]) -> list[Flow]:
    """The flows of ALL that `velvet observe` with these (flag, value[, negated]) would show."""
    predicate = compile_spec(build_spec(FilterArg(*a) for a in args))
    return [f for f in ALL if predicate(f)]


def test_no_filter_shows_everything() -> None:
    """Test that an empty spec matches every flow."""
    assert shown() == ALL


@pytest.mark.parametrize(("flag", "value", "expected"), [
    ("ip", "10.0.0.1", [A_TO_B, B_TO_A, DROP, VERDICT, FROM_EP]),
    ("from-ip", "10.0.0.1", [A_TO_B, DROP, VERDICT, FROM_EP]),
    ("to-ip", "10.0.0.1", [B_TO_A]),
    ("ip", "192.168.0.0/16", [OTHER]),
    ("to-ip", "10.0.0.8/29", [OTHER]),
    ("pod", "x/a", [A_TO_B, B_TO_A, DROP, VERDICT, FROM_EP]),
    ("from-pod", "x/a", [A_TO_B, DROP, VERDICT, FROM_EP]),
    ("to-pod", "x/a", [B_TO_A]),
    ("to-pod", "coredns", [OTHER]),
    ("to-pod", "kube-system/", [OTHER]),
    ("from-pod", "y/a", []),
    ("namespace", "kube-system", [OTHER]),
    ("from-namespace", "kube-system", []),
    ("to-namespace", "kube-system", [OTHER]),
    ("label", "k8s-app=kube-dns", [OTHER]),
    ("from-label", "app=b", [B_TO_A]),
    ("to-label", "k8s:app=b,tier=web", [A_TO_B, DROP, VERDICT, FROM_EP]),
    ("to-label", "app in (b, c)", [A_TO_B, DROP, VERDICT, FROM_EP]),
    ("to-label", "app notin (b)", [B_TO_A, OTHER]),
    ("to-label", "app!=b", [B_TO_A, OTHER]),
    ("to-label", "!app", [OTHER]),
    ("from-label", "reserved:world", [OTHER]),
    ("label", "other:app=b", []),
    ("identity", "300", [OTHER]),
    ("from-identity", "world", [OTHER]),
    ("to-identity", "256", [B_TO_A]),
    ("port", "53", [OTHER]),
    ("from-port", "80", [B_TO_A]),
    ("to-port", "80", [A_TO_B, DROP, VERDICT, FROM_EP]),
    ("service", "kube-system/kube-dns", [OTHER]),
    ("to-service", "kube-dns", [OTHER]),
    ("from-service", "kube-dns", []),
    ("protocol", "udp", [OTHER]),
    ("protocol", "TCP", [A_TO_B, B_TO_A, DROP, VERDICT, FROM_EP]),
    ("verdict", "dropped", [DROP]),
    ("type", "drop", [DROP]),
    ("type", "policy-verdict", [VERDICT]),
    ("type", "trace:from-endpoint", [FROM_EP]),
    ("type", "trace", [A_TO_B, B_TO_A, OTHER, FROM_EP]),
    ("node-name", "velvet-node-1", [DROP, VERDICT]),
    ("node-name", "velvet-node", [A_TO_B, B_TO_A, OTHER]),
    ("node-name", "velvet-node-1*", [DROP, VERDICT, FROM_EP]),
    ("node-name", "velvet-node-?", [DROP, VERDICT]),
])
def test_each_filter(flag: str, value: str, expected: list[Flow]) -> None:
    """Test one filter flag against the sample flows."""
    assert shown((flag, value)) == expected


def test_every_flag_is_covered() -> None:
    """Test that the parametrised cases above exercise every flag the CLI registers."""
    covered = {"ip", "from-ip", "to-ip", "pod", "from-pod", "to-pod", "namespace", "from-namespace",
               "to-namespace", "label", "from-label", "to-label", "identity", "from-identity", "to-identity",
               "port", "from-port", "to-port", "service", "from-service", "to-service", "protocol", "verdict",
               "type", "node-name"}
    assert set(FILTER_FLAGS) == covered


def test_values_of_one_flag_are_ored_flags_anded() -> None:
    """Test OR within a flag and AND across flags."""
    assert shown(("verdict", "DROPPED"), ("verdict", "FORWARDED"), ("protocol", "udp")) == [OTHER]
    assert shown(("from-port", "80"), ("from-port", "5353")) == [B_TO_A, OTHER]


def test_either_side_flags_pair_by_side() -> None:
    """Test Hubble's left/right pairing: --pod with --ip means both on the same side."""
    spec = build_spec([FilterArg("pod", "x/a"), FilterArg("ip", "10.0.0.1")])
    assert spec.allow == (FlowFilter(source_pod=("x/a",), source_ip=("10.0.0.1",)),
                          FlowFilter(destination_pod=("x/a",), destination_ip=("10.0.0.1",)))
    assert shown(("pod", "x/a"), ("ip", "10.0.0.2")) == []


def test_directional_only_spec_has_one_filter() -> None:
    """Test that from-/to- flags alone give one FlowFilter (left == right)."""
    spec = build_spec([FilterArg("from-pod", "x/a"), FilterArg("verdict", "forwarded")])
    assert spec.allow == (FlowFilter(source_pod=("x/a",), verdict=("FORWARDED",)),)


@pytest.mark.parametrize(("args", "expected"), [
    ((("verdict", "DROPPED", True),), [A_TO_B, B_TO_A, OTHER, VERDICT, FROM_EP]),
    ((("pod", "x/a", True),), [OTHER]),
    ((("from-pod", "x/a", True),), [B_TO_A, OTHER]),
    ((("protocol", "tcp"), ("to-port", "80", True)), [B_TO_A]),
    ((("type", "trace", True), ("type", "drop", True)), [VERDICT]),
    ((("to-label", "app=b", True),), [B_TO_A, OTHER]),
    ((("ip", "192.168.0.0/16", True),), [A_TO_B, B_TO_A, DROP, VERDICT, FROM_EP]),
    ((("service", "kube-dns", True),), [A_TO_B, B_TO_A, DROP, VERDICT, FROM_EP]),
    ((("identity", "world", True),), [A_TO_B, B_TO_A, DROP, VERDICT, FROM_EP]),
    ((("namespace", "x", True),), [OTHER]),
    ((("node-name", "velvet-node-1*", True),), [A_TO_B, B_TO_A, OTHER]),
])
def test_not_negates_the_next_filter(args: tuple[tuple[str, str] | tuple[str, str, bool], ...],
                                     expected: list[Flow]) -> None:
    """Test --not: negated flags build the denylist, the rest the allowlist."""
    assert shown(*args) == expected


def test_negated_flags_and_together_like_hubble() -> None:
    """Test that two negated flags deny only flows matching both (one denylist tracker)."""
    assert shown(("from-pod", "x/a", True), ("verdict", "DROPPED", True)) == [A_TO_B, B_TO_A, OTHER, VERDICT,
                                                                              FROM_EP]


@pytest.mark.parametrize(("flag", "value"), [
    ("ip", "10.0.0.300"), ("port", "70000"), ("port", "http"), ("protocol", "sctp"), ("verdict", "maybe"),
    ("type", "l7"), ("type", "trace:nowhere"), ("identity", "nobody"), ("label", "a=b=c"), ("pod", ""),
    ("bogus", "x"),
])
def test_invalid_values_are_refused(flag: str, value: str) -> None:
    """Test that bad filter values fail at spec building with a ValueError."""
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        build_spec([FilterArg(flag, value)])


def test_spec_round_trips_through_json_and_params() -> None:
    """Test FilterSpec / FlowQuery serialisation as the CLI sends them."""
    spec = build_spec([FilterArg("pod", "x/a"), FilterArg("verdict", "DROPPED", True)])
    assert FilterSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    query = FlowQuery(spec=spec, last=5, since_ns=10, until_ns=None)
    params = query.to_params()
    assert set(params) == {"filter", "last", "since"}
    assert FlowQuery.from_params(params) == query
    assert FlowQuery.from_params({}) == FlowQuery()


def test_spec_from_json_validates() -> None:
    """Test that the agent refuses an unknown field or a bad value in a spec."""
    with pytest.raises(ValueError, match="unknown flow filter"):
        FilterSpec.from_json({"allowlist": [{"source_colour": ["red"]}]})
    with pytest.raises(ValueError, match="verdict"):
        FilterSpec.from_json({"denylist": [{"verdict": ["MAYBE"]}]})


def test_parse_time() -> None:
    """Test durations ago and absolute times for --since/--until."""
    now = 10_000 * 10**9
    assert parse_time("90s", now) == now - 90 * 10**9
    assert parse_time("1h30m", now) == now - 5400 * 10**9
    assert parse_time("1970-01-01T00:00:05Z", now) == 5 * 10**9
    with pytest.raises(ValueError, match="invalid time"):
        parse_time("yesterday", now)


@pytest.mark.parametrize(("text", "ns"), [
    ("2026-11-27T12:00:00.123456789Z", 1795780800123456789),
    ("2026-11-27T12:00:00.123456Z", 1795780800123456000),
    ("2026-11-27T13:00:00.5+01:00", 1795780800500000000),
])
def test_rfc3339_times_are_exact_to_the_nanosecond(text: str, ns: int) -> None:
    """Test that --since/--until times keep every digit (a float of seconds would round them)."""
    assert parse_time(text, 0) == ns
