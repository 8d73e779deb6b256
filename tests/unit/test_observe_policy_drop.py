"""Test that a policy drop nothing allowed names the policies isolating the endpoint that dropped it."""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

from bench.flow_events import events
from velvet.observe import enrich
from velvet.observe.codes import DropReason, EventFlag, EventType, ObsPoint, Verdict
from velvet.observe.decode import FlowDecoder
from velvet.observe.enrich import DictResolver, EndpointInfo, NamedRef

ISOLATED_IN = (NamedRef("empire", "empire-only"),)
ISOLATED_OUT = (NamedRef("empire", "no-egress"),)


def _resolver() -> DictResolver:
    r = DictResolver()
    r.set_endpoint("10.244.0.13", EndpointInfo("empire", "xwing", (), 4, 258, (), ISOLATED_OUT))
    r.set_endpoint("10.244.0.11", EndpointInfo("empire", "deathstar-2", (), 2, 256, ISOLATED_IN, ()))
    r.set_policies(7, ["empire/allow-empire"])
    return r


def _drop(obs: int, **extra: int) -> dict[str, object]:
    return {"saddr": "10.244.0.13", "daddr": "10.244.0.11", "dport": 80, "proto": 6, "type": EventType.DROP,
            "verdict": Verdict.DROPPED, "drop_reason": DropReason.POLICY_DENIED, "obs_point": obs, **extra}


def test_ingress_drop_names_the_destinations_isolating_policies() -> None:
    """Test that an ingress policy drop says which policy isolated the destination pod."""
    flow = FlowDecoder(_resolver(), clock_offset_ns=0).decode(events(_drop(ObsPoint.TO_ENDPOINT)))[0]
    assert flow.policies == ISOLATED_IN
    assert flow.to_hubble_json()["ingress_denied_by"] == [{"name": "empire-only", "namespace": "empire"}]


def test_egress_drop_names_the_sources_isolating_policies() -> None:
    """Test that an egress policy drop says which policy isolated the source pod."""
    flow = FlowDecoder(_resolver(), clock_offset_ns=0).decode(events(_drop(ObsPoint.FROM_ENDPOINT)))[0]
    assert flow.policies == ISOLATED_OUT
    assert flow.to_hubble_json()["egress_denied_by"] == [{"name": "no-egress", "namespace": "empire"}]


def test_reply_drop_is_attributed_to_the_connections_direction() -> None:
    """Test that a dropped reply seen leaving the server counts as ingress of the connection's server."""
    reply = _drop(ObsPoint.FROM_ENDPOINT, flags=EventFlag.REPLY)
    reply.update(saddr="10.244.0.11", daddr="10.244.0.13")
    flow = FlowDecoder(_resolver(), clock_offset_ns=0).decode(events(reply))[0]
    assert flow.policies == ISOLATED_IN


def test_drop_with_a_policy_id_and_unknown_endpoints_keep_their_names() -> None:
    """Test that a drop carrying a policy id names that id's policies, and an unknown endpoint names none."""
    decoder = FlowDecoder(_resolver(), clock_offset_ns=0)
    named = decoder.decode(events(_drop(ObsPoint.TO_ENDPOINT, policy_id=7)))
    assert named[0].policies == (NamedRef("empire", "allow-empire"),)
    stranger = _drop(ObsPoint.TO_ENDPOINT)
    stranger.update(daddr="10.244.0.99")
    assert FlowDecoder(_resolver(), clock_offset_ns=0).decode(events(stranger))[0].policies == ()


def test_a_drop_enriched_while_the_pods_are_synced_names_both_pods() -> None:
    """Test that a policy drop enriched between any two bytecodes of `sync_pods` (the event loop enriches
    while the state worker syncs the pods of a new policy) by a decoder that has not cached its pods yet
    names both pods, and that a decoder enriching all along names the new policy once the sync is done:
    no table is ever seen emptied before its refill, no name is cached from a table about to be replaced."""
    resolver = _resolver()
    batch = events(_drop(ObsPoint.TO_ENDPOINT))
    cached = FlowDecoder(resolver, clock_offset_ns=0)
    cached.enrich(batch)
    xwing = EndpointInfo("empire", "xwing", (), 4, 258, (), ISOLATED_OUT)
    isolated = (NamedRef("empire", "deny-all"),)
    deathstar = EndpointInfo("empire", "deathstar-2", (), 2, 256, isolated, ())
    named: list[tuple[str, str]] = []

    def step(frame: FrameType, event: str, arg: object) -> Any:
        if event == "opcode":
            flow = FlowDecoder(resolver, clock_offset_ns=0).decode(batch)[0]
            named.append((flow.source.pod_name, flow.destination.pod_name))
            cached.enrich(batch)
        return step

    def enter(frame: FrameType, event: str, arg: object) -> Any:
        if frame.f_code.co_filename != enrich.__file__:
            return None
        frame.f_trace_opcodes = True
        return step

    sys.settrace(enter)
    try:
        resolver.sync_pods({"10.244.0.13": xwing, "10.244.0.11": deathstar}, {}, {}, {})
    finally:
        sys.settrace(None)
    assert len(named) > 10
    assert set(named) == {("xwing", "deathstar-2")}
    assert cached.decode(batch)[0].policies == isolated
