"""Test the real policy datapath against the reference evaluator, on random worlds (differential).

Hypothesis draws namespaces (labels), pods (labels, IPs, named container ports) and NetworkPolicies
(podSelector / namespaceSelector with matchLabels and every matchExpressions operator, both in one
peer, ipBlock with excepts over pod IPs, numbered / named / endPort ports, ingress and egress rules,
every policyTypes combination). The real `PolicyCompiler` compiles them; its tables are written as
the agent writes them (the difference from what the maps hold, through `TableMaps` and the agent's
codecs) into the maps of a loaded lxc.bpf.o (lxc_endpoints, ipcache, ipcache_cidr, policy); then,
for every ordered pair of ends (pods, and addresses outside the cluster) and a few ports and
protocols, a new connection's first packet runs through `lxc_from_pod` (egress, at the source pod's
veth) and `lxc_to_pod` (ingress, at the destination's) with BPF_PROG_TEST_RUN.
The connection passes iff neither program drops it; that must equal the verdict of the reference
evaluator written from the Kubernetes documentation (tests/unit/netpol_reference.py).

Every probe uses its own source port, so each is a new connection for conntrack. Pods with the same
labels in the same namespace share an identity; the generator gives such a pod either the ports of the
first pod of its identity or ports of its own, so a named egress port must resolve on each destination
pod, not on its identity. A pod's traffic to itself is left out: it loops back inside the pod and never
reaches its veth.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from fixtures_datapath import LO_IFINDEX, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, Loaded, loaded
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netpol_reference import allowed, make_namespace, make_pod, make_policy, sel
from packets import tcp, udp

from velvet.control.identity import IdentityAllocator
from velvet.control.policy import CompiledPolicy, PolicyCompiler
from velvet.datapath.delta import plan
from velvet.datapath.tables import EP_POLICY_EGRESS, EP_POLICY_INGRESS, EndpointEntry
from velvet.model import (
    NAME_LABEL,
    IPBlock,
    LabelSelector,
    LabelSelectorRequirement,
    Namespace,
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    NetworkPolicyRule,
    Pod,
)

pytestmark = [pytest.mark.privileged]

FROM, TO = "lxc_from_pod", "lxc_to_pod"
TABLES = ("lxc_endpoints", "ipcache", "ipcache_cidr", "policy")
HOST_IP = "10.244.0.1"
NAMESPACES = ("ns0", "ns1", "ns2")
POD_LABELS: dict[str, tuple[str, ...]] = {"app": ("a", "b", "c"), "tier": ("fe", "be")}
NS_LABELS: dict[str, tuple[str, ...]] = {"team": ("red", "blue"), NAME_LABEL: NAMESPACES}
NAMED_PORTS = {
    "http": (("http", 80, "TCP"), ("http", 8080, "TCP")),
    "dns": (("dns", 53, "UDP"), ("dns", 53, "TCP")),
    "metrics": (("metrics", 9090, "TCP"),),
}
PORT_NAMES = (*NAMED_PORTS, "nope")
PORT_NUMBERS = (53, 80, 81, 8080, 9090)
PROBES = ((80, "TCP"), (8080, "TCP"), (9090, "TCP"), (53, "UDP"), (81, "UDP"))
POD_IPS = tuple(f"10.244.{a}.{10 + i}" for a in (0, 1) for i in range(8))
EXTERNAL_IPS = ("192.168.7.7", "10.245.0.9")
ADDRESS_POOL = POD_IPS + EXTERNAL_IPS

End = Pod | str
World = tuple[list[Namespace], list[Pod], list[NetworkPolicy]]


# --- random worlds ---------------------------------------------------------------------------------

def _labels(keys: Mapping[str, tuple[str, ...]]) -> st.SearchStrategy[dict[str, str]]:
    """Random label maps over a small key/value space."""
    return st.fixed_dictionaries({}, optional={k: st.sampled_from(v) for k, v in keys.items()})


def _selector(keys: Mapping[str, tuple[str, ...]]) -> st.SearchStrategy[LabelSelector]:
    """Random selectors: matchLabels plus matchExpressions with every operator."""
    requirement = st.sampled_from(sorted(keys)).flatmap(
        lambda k: st.one_of(
            st.builds(LabelSelectorRequirement, st.just(k), st.sampled_from(["In", "NotIn"]),
                      st.lists(st.sampled_from(keys[k]), min_size=1, max_size=2, unique=True).map(tuple)),
            st.builds(LabelSelectorRequirement, st.just(k), st.sampled_from(["Exists", "DoesNotExist"])),
        ))
    return st.builds(LabelSelector, _labels(keys), st.lists(requirement, max_size=2).map(tuple))


@st.composite
def _ip_block(draw: st.DrawFn) -> IPBlock:
    """A block around a pod or outside address, with up to two excepts inside it (often one pod /32)."""
    lengths = (0, 8, 16, 23, 24, 28, 32)
    length = draw(st.sampled_from(lengths))
    cidr = ipaddress.IPv4Network(f"{draw(st.sampled_from(ADDRESS_POOL))}/{length}", strict=False)
    inside = [a for a in ADDRESS_POOL if ipaddress.IPv4Address(a) in cidr]
    longer = [n for n in lengths if n > length] or [32]
    excepts = draw(st.lists(st.tuples(st.sampled_from(inside), st.sampled_from(longer)), max_size=2))
    return IPBlock(str(cidr), tuple(str(ipaddress.IPv4Network(f"{a}/{n}", strict=False)) for a, n in excepts))


_PEER = st.one_of(
    st.builds(NetworkPolicyPeer, pod_selector=_selector(POD_LABELS)),
    st.builds(NetworkPolicyPeer, namespace_selector=_selector(NS_LABELS)),
    st.builds(NetworkPolicyPeer, pod_selector=_selector(POD_LABELS), namespace_selector=_selector(NS_LABELS)),
    st.builds(NetworkPolicyPeer, ip_block=_ip_block()),
)


@st.composite
def _port(draw: st.DrawFn) -> NetworkPolicyPort:
    """A port: omitted, numbered, a port..endPort range, or named."""
    protocol = draw(st.sampled_from(["TCP", "TCP", "UDP", "SCTP"]))
    kind = draw(st.sampled_from(["any", "number", "range", "name"]))
    if kind == "any":
        return NetworkPolicyPort(protocol)
    if kind == "name":
        return NetworkPolicyPort(protocol, draw(st.sampled_from(PORT_NAMES)))
    number = draw(st.sampled_from(PORT_NUMBERS))
    if kind == "number":
        return NetworkPolicyPort(protocol, number)
    width = draw(st.sampled_from([1, 28, 1000, 8000, 65535]))
    return NetworkPolicyPort(protocol, number, min(65535, number + width))


_RULE = st.builds(NetworkPolicyRule, st.lists(_port(), max_size=2).map(tuple),
                  st.lists(_PEER, max_size=2).map(tuple))
_TARGET = st.one_of(st.just(LabelSelector()), st.builds(sel, app=st.sampled_from(POD_LABELS["app"])),
                    _selector(POD_LABELS))


@st.composite
def _policy(draw: st.DrawFn, index: int) -> NetworkPolicy:
    """A random policy in a random namespace (policyTypes omitted or given)."""
    return make_policy(
        draw(st.sampled_from(NAMESPACES)), f"p{index}", draw(_TARGET),
        ingress=draw(st.lists(_RULE, max_size=2)), egress=draw(st.lists(_RULE, max_size=2)),
        policy_types=draw(st.sampled_from([None, ["Ingress"], ["Egress"], ["Ingress", "Egress"]])),
    )


@st.composite
def _world(draw: st.DrawFn) -> World:
    """Namespaces, pods (sharing an identity's ports, or not) and policies."""
    namespaces = [make_namespace(n, **draw(_labels({"team": NS_LABELS["team"]}))) for n in NAMESPACES]
    ips = draw(st.lists(st.sampled_from(POD_IPS), min_size=2, max_size=6, unique=True))
    ports_of: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[str | None, int, str]]] = {}
    pods = []
    for i, ip in enumerate(ips):
        ns, labels = draw(st.sampled_from(NAMESPACES)), draw(_labels(POD_LABELS))
        group = (ns, tuple(sorted(labels.items())))
        ports: list[tuple[str | None, int, str]] = [
            draw(st.sampled_from(v)) for v in NAMED_PORTS.values() if draw(st.booleans())]
        if group in ports_of and draw(st.booleans()):
            ports = ports_of[group]
        ports_of.setdefault(group, ports)
        pods.append(make_pod(ns, f"pod{i}", ip, labels, ports))
    policies = [draw(_policy(i)) for i in range(draw(st.integers(1, 4)))]
    return namespaces, pods, policies


# --- the datapath side -----------------------------------------------------------------------------

def tables(compiled: CompiledPolicy) -> dict[str, dict[Any, Any]]:
    """The policy maps' desired contents, assembled as the agent does (every endpoint on LO_IFINDEX)."""
    endpoints: dict[Any, Any] = {}
    policy: dict[Any, Any] = {}
    for ep in compiled.endpoints.values():
        assert ep.ip is not None
        flags = ((EP_POLICY_INGRESS if ep.ingress_isolated else 0)
                 | (EP_POLICY_EGRESS if ep.egress_isolated else 0))
        endpoints[ep.ip] = EndpointEntry(LO_IFINDEX, ep.identity, ep.ep_id, flags)
        policy.update(ep.entries)
    return {"lxc_endpoints": endpoints, "ipcache": dict(compiled.ipcache),
            "ipcache_cidr": dict(compiled.cidr_identities), "policy": policy}


def load_world(lxc: Loaded, world: World) -> None:
    """Compile the world and turn the maps' contents into the result as the agent does; forget conntrack."""
    namespaces, pods, policies = world
    compiler = PolicyCompiler(IdentityAllocator())
    compiler.sync(namespaces, pods, policies, host_ips=[HOST_IP])
    compiled = compiler.compile({p.metadata.key: i + 1 for i, p in enumerate(pods)})
    lxc.map("ct4").clear()
    for table, records in tables(compiled).items():
        change = plan(lxc.tables.read(table), records)
        lxc.tables.write(table, change.upserts, change.deletes)


def _ip(end: End) -> str:
    """The address of an end."""
    if isinstance(end, str):
        return end
    assert end.status.pod_ip is not None
    return end.status.pod_ip


def passes(lxc: Loaded, program: str, frame: bytes) -> bool:
    """Whether the program lets the frame through (a drop is TC_ACT_SHOT)."""
    verdict = lxc.run(program, frame).retval
    assert verdict in (TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT), f"{program} returned {verdict}"
    return verdict != TC_ACT_SHOT


def datapath_verdict(lxc: Loaded, src: End, dst: End, port: int, proto: str, sport: int) -> tuple[bool, bool]:
    """(egress at the source's veth, ingress at the destination's) for a new connection's first packet.

    An end outside the cluster has no veth: its side passes.
    """
    build = tcp if proto == "TCP" else udp
    frame = build(_ip(src), _ip(dst), sport, port)
    egress = isinstance(src, str) or passes(lxc, FROM, frame)
    ingress = isinstance(dst, str) or passes(lxc, TO, frame)
    return egress, ingress


def pairs(pods: list[Pod]) -> Iterator[tuple[End, End]]:
    """Every ordered pair of distinct ends with at least one pod."""
    ends: list[End] = [*pods, *EXTERNAL_IPS]
    for src, dst in itertools.permutations(ends, 2):
        if isinstance(src, Pod) or isinstance(dst, Pod):
            yield src, dst


def _word(passed: bool) -> str:
    """'passes' or 'drops'."""
    return "passes" if passed else "drops"


def _name(end: End) -> str:
    """A pod's key and IP, or the address."""
    return end if isinstance(end, str) else f"{end.metadata.key}({end.status.pod_ip})"


def test_datapath_verdicts_equal_the_reference() -> None:
    """Test that lxc_from_pod + lxc_to_pod, with maps from the compiler, decide as the reference does."""
    sports = itertools.count()
    with loaded("lxc") as lxc:

        @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(world=_world())
        def check(world: World) -> None:
            namespaces, pods, policies = world
            load_world(lxc, world)
            wrong = []
            for src, dst in pairs(pods):
                for port, proto in PROBES:
                    want = allowed(policies, namespaces, src, dst, port, proto)
                    sport = 1024 + next(sports) % 60000
                    egress, ingress = datapath_verdict(lxc, src, dst, port, proto, sport)
                    if (egress and ingress) != want:
                        wrong.append(f"{_name(src)} -> {_name(dst)} {port}/{proto}: reference "
                                     f"{'allows' if want else 'denies'}, datapath egress "
                                     f"{_word(egress)}, ingress {_word(ingress)}")
            lxc.events()
            assert not wrong, "\n".join(wrong[:10])

        check()
