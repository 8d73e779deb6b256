"""Test the reference evaluator on hand-checked cases, then the compiler against it (differential).

The differential test draws random namespaces, pods (labels, IPs, named container ports) and
policies (selectors with every operator, ipBlocks with excepts over pod IPs, numbered / named /
ranged ports, both directions, every policyTypes combination) and checks, for every ordered pod pair
(including a pod with itself) and for traffic to and from IPs outside the cluster, that
`PolicyCompiler` + `policy_lookup.trace` give the reference evaluator's verdict.

Pods with the same labels in the same namespace share one identity; the generator gives such a pod
either the ports of the first pod of its identity or ports of its own, so a named egress port must
resolve on each destination pod, not on its identity.
"""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netpol_reference import allowed, make_namespace, make_pod, make_policy, sel

from velvet.control.identity import IdentityAllocator
from velvet.control.policy import PolicyCompiler
from velvet.control.policy_lookup import trace
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

HOST_IP = "10.0.255.1"
NAMESPACES = ("ns0", "ns1")
POD_LABELS: dict[str, tuple[str, ...]] = {"app": ("a", "b", "c"), "tier": ("fe", "be")}
NS_LABELS: dict[str, tuple[str, ...]] = {"team": ("red", "blue"), NAME_LABEL: NAMESPACES}
NAMED_PORTS = {
    "http": (("http", 80, "TCP"), ("http", 8080, "TCP")),
    "dns": (("dns", 53, "UDP"), ("dns", 53, "TCP")),
    "metrics": (("metrics", 9090, "TCP"),),
    "assoc": (("assoc", 80, "SCTP"),),
}
PORT_NAMES = (*NAMED_PORTS, "nope")
PORT_NUMBERS = (53, 80, 81, 1500, 8080, 9090)
PROBES = ((80, "TCP"), (8080, "TCP"), (53, "UDP"), (53, "TCP"), (9090, "TCP"), (81, "TCP"), (1500, "TCP"),
          (80, "SCTP"), (80, "UDP"), (65535, "TCP"))
EXTERNAL_IPS = ("192.168.7.7", "10.1.200.9", "8.8.8.8", "10.0.0.99")
ADDRESS_POOL = tuple(f"10.{a}.{b}.{c}" for a in (0, 1) for b in (0, 1) for c in range(10, 16)) + EXTERNAL_IPS


# --- the reference evaluator on hand-checked cases ---------------------------------------------

NS = [make_namespace("x", team="red"), make_namespace("y", team="blue")]
XA = make_pod("x", "a", "10.0.0.1", {"app": "a"}, [("http", 80, "TCP")])
XB = make_pod("x", "b", "10.0.0.2", {"app": "b"})
YA = make_pod("y", "a", "10.0.1.1", {"app": "a"})


def test_reference_no_policy_allows_everything() -> None:
    """Test that without policies every connection is allowed."""
    assert allowed([], NS, XB, XA, 80, "TCP")
    assert allowed([], NS, XA, "8.8.8.8", 443, "UDP")


def test_reference_pod_selector_peer_is_policy_namespace() -> None:
    """Test that a podSelector-only peer selects pods of the policy's namespace only."""
    same_namespace = NetworkPolicyRule(peers=(NetworkPolicyPeer(sel()),))
    policy = make_policy("x", "p", sel(app="a"), ingress=[same_namespace])
    assert allowed([policy], NS, XB, XA, 80, "TCP")
    assert not allowed([policy], NS, YA, XA, 80, "TCP")
    assert not allowed([policy], NS, "8.8.8.8", XA, 80, "TCP")


def test_reference_named_port_resolves_on_destination() -> None:
    """Test that a named port matches the destination pod's number only, and never an external IP."""
    rule = NetworkPolicyRule(ports=(NetworkPolicyPort("TCP", "http"),))
    policy = make_policy("x", "p", sel(app="b"), egress=[rule], policy_types=["Egress"])
    assert allowed([policy], NS, XB, XA, 80, "TCP")
    assert not allowed([policy], NS, XB, XA, 81, "TCP")
    assert not allowed([policy], NS, XB, "8.8.8.8", 80, "TCP")


def test_reference_ip_block_except_and_end_port() -> None:
    """Test ipBlock except carving and port..endPort ranges."""
    block = NetworkPolicyPeer(ip_block=IPBlock("10.0.0.0/16", ("10.0.1.0/24",)))
    rule = NetworkPolicyRule(ports=(NetworkPolicyPort("TCP", 1000, 2000),), peers=(block,))
    policy = make_policy("x", "p", sel(app="b"), egress=[rule], policy_types=["Egress"])
    assert allowed([policy], NS, XB, XA, 1500, "TCP")
    assert not allowed([policy], NS, XB, XA, 2001, "TCP")
    assert not allowed([policy], NS, XB, YA, 1500, "TCP")


# --- random worlds ------------------------------------------------------------------------------

def _labels(keys: dict[str, tuple[str, ...]]) -> st.SearchStrategy[dict[str, str]]:
    """Random label maps over a small key/value space."""
    return st.fixed_dictionaries({}, optional={k: st.sampled_from(v) for k, v in keys.items()})


def _selector(keys: dict[str, tuple[str, ...]]) -> st.SearchStrategy[LabelSelector]:
    """Random selectors: matchLabels plus matchExpressions with every operator."""
    key = st.sampled_from(sorted(keys))
    requirement = key.flatmap(
        lambda k: st.one_of(
            st.builds(LabelSelectorRequirement, st.just(k), st.sampled_from(["In", "NotIn"]),
                      st.lists(st.sampled_from(keys[k]), min_size=1, max_size=2, unique=True).map(tuple)),
            st.builds(LabelSelectorRequirement, st.just(k), st.sampled_from(["Exists", "DoesNotExist"])),
        )
    )
    return st.builds(
        LabelSelector, _labels(keys), st.lists(requirement, max_size=2).map(tuple)
    )


@st.composite
def _ip_block(draw: st.DrawFn) -> IPBlock:
    """A block around a pod-like or external address, with up to two excepts inside it."""
    lengths = (0, 8, 15, 16, 24, 28, 30, 32)
    length = draw(st.sampled_from(lengths))
    cidr = ipaddress.IPv4Network(f"{draw(st.sampled_from(ADDRESS_POOL))}/{length}", strict=False)
    inside = [a for a in ADDRESS_POOL if ipaddress.IPv4Address(a) in cidr]
    excepts = draw(st.lists(
        st.tuples(st.sampled_from(inside), st.sampled_from([n for n in lengths if n > length] or [32])),
        max_size=2,
    ))
    return IPBlock(str(cidr), tuple(str(ipaddress.IPv4Network(f"{a}/{n}", strict=False)) for a, n in excepts))


_TARGET = st.one_of(st.just(LabelSelector()), st.builds(sel, app=st.sampled_from(POD_LABELS["app"])),
                    _selector(POD_LABELS))
_PEER = st.one_of(
    st.builds(NetworkPolicyPeer, pod_selector=_selector(POD_LABELS)),
    st.builds(NetworkPolicyPeer, namespace_selector=_selector(NS_LABELS)),
    st.builds(NetworkPolicyPeer, pod_selector=_selector(POD_LABELS), namespace_selector=_selector(NS_LABELS)),
    st.builds(NetworkPolicyPeer, ip_block=_ip_block()),
)


@st.composite
def _port(draw: st.DrawFn) -> NetworkPolicyPort:
    """A port: omitted, numbered (optionally a range) or named."""
    protocol = draw(st.sampled_from(["TCP", "TCP", "UDP", "SCTP"]))
    kind = draw(st.sampled_from(["any", "number", "range", "name"]))
    if kind == "any":
        return NetworkPolicyPort(protocol)
    if kind == "name":
        return NetworkPolicyPort(protocol, draw(st.sampled_from(PORT_NAMES)))
    number = draw(st.sampled_from(PORT_NUMBERS))
    if kind == "number":
        return NetworkPolicyPort(protocol, number)
    width = draw(st.sampled_from([0, 1, 28, 100, 1000, 65535]))
    return NetworkPolicyPort(protocol, number, min(65535, number + width))


_RULE = st.builds(
    NetworkPolicyRule, st.lists(_port(), max_size=2).map(tuple), st.lists(_PEER, max_size=2).map(tuple)
)


@st.composite
def _policy(draw: st.DrawFn, index: int) -> NetworkPolicy:
    """A random policy in a random namespace."""
    types = draw(st.sampled_from([None, ["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
    return make_policy(
        draw(st.sampled_from(NAMESPACES)),
        f"p{index}",
        draw(_TARGET),
        ingress=draw(st.lists(_RULE, max_size=2)),
        egress=draw(st.lists(_RULE, max_size=2)),
        policy_types=types,
    )


@st.composite
def _world(draw: st.DrawFn) -> tuple[list[Namespace], list[Pod], list[NetworkPolicy]]:
    """Namespaces, pods (sharing an identity's ports, or not) and policies."""
    namespaces = [make_namespace(n, **draw(_labels({"team": ("red", "blue")}))) for n in NAMESPACES]
    count = draw(st.integers(2, 6))
    ports_of: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[str | None, int, str]]] = {}
    pods = []
    for i in range(count):
        ns = draw(st.sampled_from(NAMESPACES))
        labels = draw(_labels(POD_LABELS))
        group = (ns, tuple(sorted(labels.items())))
        ports: list[tuple[str | None, int, str]] = [
            draw(st.sampled_from(v)) for v in NAMED_PORTS.values() if draw(st.booleans())]
        if group in ports_of and draw(st.booleans()):
            ports = ports_of[group]
        ports_of.setdefault(group, ports)
        ip = f"10.{draw(st.integers(0, 1))}.{draw(st.integers(0, 1))}.{10 + i}"
        pods.append(make_pod(ns, f"pod{i}", ip, labels, ports))
    policies = [draw(_policy(i)) for i in range(draw(st.integers(1, 5)))]
    return namespaces, pods, policies


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=_world())
def test_compiler_matches_reference(world: tuple[list[Namespace], list[Pod], list[NetworkPolicy]]) -> None:
    """Test that compiler + datapath lookup agree with the reference on every pair, port and protocol."""
    namespaces, pods, policies = world
    compiler = PolicyCompiler(IdentityAllocator())
    compiler.sync(namespaces, pods, policies, host_ips=[HOST_IP])
    compiled = compiler.compile({p.metadata.key: i + 1 for i, p in enumerate(pods)})
    ends: list[Pod | str] = [*pods, *EXTERNAL_IPS]
    for src in ends:
        for dst in ends:
            if isinstance(src, str) and isinstance(dst, str):
                continue
            for port, proto in PROBES:
                want = allowed(policies, namespaces, src, dst, port, proto)
                got = trace(compiled, src, dst, port, proto)
                assert got.allowed == want, (
                    f"{_name(src)} -> {_name(dst)} {port}/{proto}: reference {want}, compiler {got}"
                )


def _name(end: Pod | str) -> str:
    """A pod's key and IP, or the IP."""
    return end if isinstance(end, str) else f"{end.metadata.key}({end.status.pod_ip})"
