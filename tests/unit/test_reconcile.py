"""Map diffs and the safe order of load-balancer map operations."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from velvet.control.services import ServiceCompiler
from velvet.datapath.delta import DeleteBatch, LbDelta, MapPlan, UpsertBatch, lb_delta, merge_plans, plan
from velvet.datapath.structs import LbScope, SvcFlag
from velvet.datapath.tables import BackendValue, LbMap, LbState, RevNatValue, ServiceKey, ServiceValue
from velvet.model.meta import ObjectMeta
from velvet.model.service import (
    SERVICE_NAME_LABEL,
    Endpoint,
    EndpointConditions,
    EndpointPort,
    EndpointSlice,
    Service,
    ServicePort,
    ServiceSpec,
)

Maps = dict[LbMap, dict[Any, Any]]
small_maps = st.dictionaries(st.integers(0, 20), st.integers(0, 3), max_size=15)


def apply_plan(current: dict[int, int], change: MapPlan[int, int]) -> dict[int, int]:
    """A copy of `current` with the plan applied (deleting an absent key is a no-op, as for the agent)."""
    result = dict(current)
    result.update(change.upserts)
    for key in change.deletes:
        result.pop(key, None)
    return result


def test_plan_lists_new_and_changed_values_and_removed_keys() -> None:
    """Unchanged entries cost nothing."""
    change = plan({1: "a", 2: "b", 3: "c"}, {1: "a", 2: "B", 4: "d"})
    assert change.upserts == {2: "B", 4: "d"}
    assert change.deletes == [3]
    assert len(change) == 3
    assert len(plan({1: "a"}, {1: "a"})) == 0


@given(small_maps, small_maps)
def test_applying_a_plan_yields_the_desired_contents(current: dict[int, int],
                                                     desired: dict[int, int]) -> None:
    """plan(current, desired) applied to current is desired."""
    assert apply_plan(current, plan(current, desired)) == desired


@given(small_maps, small_maps, small_maps)
def test_merged_plans_are_the_same_as_applying_one_after_the_other(
    start: dict[int, int], middle: dict[int, int], end: dict[int, int],
) -> None:
    """Merging successive plans loses nothing and keeps the later operation on each key."""
    first, second = plan(start, middle), plan(middle, end)
    merged = merge_plans([first, second])
    assert apply_plan(start, merged) == apply_plan(apply_plan(start, first), second) == end


def test_lb_delta_is_the_difference_of_every_map() -> None:
    """lb_delta diffs the five maps independently."""
    current = LbState(backends={1: BackendValue("10.0.0.1", 80, 6)}, revnat={1: RevNatValue("10.96.0.1", 80)})
    desired = LbState(backends={2: BackendValue("10.0.0.2", 80, 6)}, revnat={1: RevNatValue("10.96.0.1", 80)})
    delta = lb_delta(current, desired)
    assert delta.backends.upserts == {2: BackendValue("10.0.0.2", 80, 6)}
    assert delta.backends.deletes == [1]
    assert len(delta) == 2
    assert [type(b) for b in delta.batches()] == [UpsertBatch, DeleteBatch]


def test_batches_write_what_frontends_point_to_first_and_delete_it_last() -> None:
    """Backends, rev-NAT, Maglev, source ranges, slots, frontends (internal scope first); deletes reversed."""
    def key(slot: int, scope: int = LbScope.EXT, port: int = 80) -> ServiceKey:
        return ServiceKey("10.96.0.1", port, slot, 6, scope)

    delta = LbDelta(
        services=MapPlan(
            {key(0): ServiceValue(count=1), key(1): ServiceValue(backend_id=7),
             key(0, LbScope.INT): ServiceValue()},
            [key(2), key(0, LbScope.INT, 81), key(0, LbScope.EXT, 81), key(1, LbScope.EXT, 81)],
        ),
        backends=MapPlan({7: BackendValue("10.0.0.7", 80, 6)}, [5]),
        revnat=MapPlan({1: RevNatValue("10.96.0.1", 80)}, [2]),
        maglev=MapPlan({1: (7,) * 1021}, [2]),
    )
    order = [(b.map, type(b).__name__, list(b.entries) if isinstance(b, UpsertBatch) else list(b.keys))
             for b in delta.batches()]
    assert order == [
        (LbMap.BACKENDS, "UpsertBatch", [7]),
        (LbMap.REVNAT, "UpsertBatch", [1]),
        (LbMap.MAGLEV, "UpsertBatch", [1]),
        (LbMap.SERVICES, "UpsertBatch", [key(1)]),
        (LbMap.SERVICES, "UpsertBatch", [key(0, LbScope.INT), key(0)]),
        (LbMap.SERVICES, "DeleteBatch", [key(0, LbScope.EXT, 81), key(0, LbScope.INT, 81)]),
        (LbMap.SERVICES, "DeleteBatch", [key(2), key(1, LbScope.EXT, 81)]),
        (LbMap.MAGLEV, "DeleteBatch", [2]),
        (LbMap.REVNAT, "DeleteBatch", [2]),
        (LbMap.BACKENDS, "DeleteBatch", [5]),
    ]


# A lookup racing with the agent must never see a dangling reference: checked after every batch.


def check_consistent(maps: Maps) -> None:
    """Every frontend's slots, backends, rev-NAT entry, internal scope and Maglev table exist."""
    services, backends = maps[LbMap.SERVICES], maps[LbMap.BACKENDS]
    for key, value in services.items():
        if key.backend_slot:
            assert value.backend_id in backends, key
            continue
        assert value.rev_nat_index in maps[LbMap.REVNAT], key
        for slot in range(1, value.count + 1):
            assert ServiceKey(key.address, key.dport, slot, key.proto, key.scope) in services, (key, slot)
        if value.flags & SvcFlag.TWO_SCOPES and key.scope == LbScope.EXT:
            assert ServiceKey(key.address, key.dport, 0, key.proto, LbScope.INT) in services, key
        if value.flags & SvcFlag.MAGLEV and value.count and key.scope == LbScope.EXT:
            table = maps[LbMap.MAGLEV][value.rev_nat_index]
            assert set(table) <= set(backends), key


def apply_checked(maps: Maps, delta: LbDelta) -> None:
    """Apply the delta one entry at a time, in batch order, checking consistency after each entry."""
    for batch in delta.batches():
        target = maps[batch.map]
        if isinstance(batch, UpsertBatch):
            for key, value in batch.entries.items():
                target[key] = value
                check_consistent(maps)
        else:
            for key in batch.keys:
                del target[key]  # the compiler never deletes what it has not written
                check_consistent(maps)


endpoint_states = st.sampled_from([
    EndpointConditions(True, True, False),
    EndpointConditions(False, False, False),
    EndpointConditions(False, True, True),
    EndpointConditions(False, False, True),
])
versions = st.fixed_dictionaries({
    "endpoints": st.dictionaries(st.integers(1, 6), st.tuples(endpoint_states, st.sampled_from(["a", "b"])),
                                 max_size=6),
    "type": st.sampled_from(["ClusterIP", "NodePort"]),
    "etp": st.sampled_from(["Cluster", "Local"]),
    "itp": st.sampled_from(["Cluster", "Local"]),
    "affinity": st.sampled_from(["None", "ClientIP"]),
    "port": st.sampled_from([8080, 9090]),
    "deleted": st.booleans(),
})


def _objects(version: dict[str, Any]) -> tuple[Service, list[EndpointSlice]]:
    """The service "web" and its slice for one generated version."""
    spec = ServiceSpec(type=version["type"], cluster_ip="10.96.0.1",
                       ports=(ServicePort(80, "UDP", name="p", node_port=30080),),
                       external_traffic_policy=version["etp"], internal_traffic_policy=version["itp"],
                       session_affinity=version["affinity"])
    endpoints = tuple(Endpoint((f"10.0.0.{i}",), cond, node_name=node)
                      for i, (cond, node) in sorted(version["endpoints"].items()))
    meta = ObjectMeta("web-x", "ns", labels=MappingProxyType({SERVICE_NAME_LABEL: "web"}))
    slice_ = EndpointSlice(meta, endpoints, (EndpointPort(version["port"], "UDP", name="p"),))
    return Service(ObjectMeta("web", "ns"), spec), [slice_]


@given(st.lists(versions, min_size=1, max_size=8))
@settings(max_examples=80, deadline=None)
def test_no_lookup_ever_sees_a_dangling_reference(history: list[dict[str, Any]]) -> None:
    """Through any sequence of service and endpoint changes, every batch leaves the maps consistent."""
    compiler = ServiceCompiler("a", ["192.168.0.1"])
    maps: Maps = {m: {} for m in LbMap}
    for version in history:
        service, slices = _objects(version)
        deleted = version["deleted"]
        delta = compiler.delete("ns/web") if deleted else compiler.update(service, slices, "ns/web")
        apply_checked(maps, delta)
        desired = compiler.desired()
        assert maps[LbMap.SERVICES] == desired.services
        assert maps[LbMap.BACKENDS] == desired.backends
        assert maps[LbMap.MAGLEV] == desired.maglev
        assert maps[LbMap.REVNAT] == desired.revnat
