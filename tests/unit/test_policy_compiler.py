"""Tests of the NetworkPolicy compiler, its datapath twin lookup, and port range splitting."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import pytest
from netpol_reference import allowed, make_namespace, make_pod, make_policy, sel

from velvet.control.cidrs import PrefixIndex
from velvet.control.identity import FIRST_LOCAL_CIDR_IDENTITY, IdentityAllocator
from velvet.control.policy import ALLOW_LOCALHOST, CompiledEndpoint, CompiledPolicy, PolicyCompiler
from velvet.control.policy_lookup import cidr_identity, describe_key, label_identity, lookup, trace
from velvet.control.portrange import MAX_PORT, mask_port, prefix_covers, split_port_range
from velvet.datapath.tables import ANY_IDENTITY, Direction, PolicyKey, PolicyValue
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
    ReservedIdentity,
)
from velvet.model.cluster_endpoint import ClusterEndpoint

HOST_IP = "10.0.255.1"
NAMESPACES = [make_namespace("shop", team="red"), make_namespace("ops", team="blue")]
WEB = make_pod("shop", "web", "10.0.0.1", {"app": "web"}, [("http", 80, "TCP")])
DB = make_pod("shop", "db", "10.0.0.2", {"app": "db"}, [("pg", 5432, "TCP"), ("http", 8080, "TCP")])
WEB2 = make_pod("shop", "web2", "10.0.0.3", {"app": "web", "pod-template-hash": "abc"}, [("http", 80, "TCP")])
MON = make_pod("ops", "mon", "10.0.1.1", {"app": "mon"})
OPS_WEB = make_pod("ops", "web", "10.0.1.2", {"app": "web"}, [("http", 80, "TCP")])
PODS = [WEB, DB, WEB2, MON, OPS_WEB]
EP_IDS = {p.metadata.key: i + 1 for i, p in enumerate(PODS)}


def _compile(
    policies: Iterable[NetworkPolicy], pods: list[Pod] = PODS, allocator: IdentityAllocator | None = None
) -> tuple[CompiledPolicy, PolicyCompiler]:
    """Compile `policies` over the test world, every pod a local endpoint."""
    compiler = PolicyCompiler(allocator or IdentityAllocator())
    compiler.sync(NAMESPACES, pods, policies, host_ips=[HOST_IP])
    return compiler.compile({p.metadata.key: EP_IDS[p.metadata.key] for p in pods}), compiler


def _ok(compiled: CompiledPolicy, src: Pod | str, dst: Pod | str, port: int = 80, proto: str = "TCP") -> bool:
    """Whether the connection is allowed."""
    return trace(compiled, src, dst, port, proto).allowed


def _ingress(name: str, target: LabelSelector, *rules: NetworkPolicyRule) -> NetworkPolicy:
    """An ingress policy in namespace shop."""
    return make_policy("shop", name, target, ingress=rules)


def _egress(name: str, target: LabelSelector, *rules: NetworkPolicyRule) -> NetworkPolicy:
    """An egress-only policy in namespace shop."""
    return make_policy("shop", name, target, egress=rules, policy_types=["Egress"])


def _from(*peers: NetworkPolicyPeer, ports: Iterable[NetworkPolicyPort] = ()) -> NetworkPolicyRule:
    """A rule with these peers and ports."""
    return NetworkPolicyRule(ports=tuple(ports), peers=peers)


def _pods(selector: LabelSelector) -> NetworkPolicyPeer:
    """A podSelector-only peer."""
    return NetworkPolicyPeer(pod_selector=selector)


def _block(cidr: str, *excepts: str) -> NetworkPolicyPeer:
    """An ipBlock peer."""
    return NetworkPolicyPeer(ip_block=IPBlock(cidr, excepts))


# --- isolation and the basic shape ------------------------------------------------------------

def test_no_policy_isolates_nothing() -> None:
    """Test that without policies no endpoint is isolated and the ipcaches hold pods and host."""
    compiled, compiler = _compile([])
    assert all(not ep.ingress_isolated and not ep.egress_isolated and not ep.entries
               for ep in compiled.endpoints.values())
    web = compiler.identity_of("shop/web")
    assert web is not None
    assert compiled.ipcache["10.0.0.1/32"] == web.id
    assert compiled.ipcache["10.0.0.3/32"] == web.id  # pod-template-hash is not identity-relevant
    assert compiled.ipcache[f"{HOST_IP}/32"] == ReservedIdentity.HOST
    assert dict(compiled.cidr_identities) == {"0.0.0.0/0": ReservedIdentity.WORLD}
    assert not compiled.policy_sets
    assert _ok(compiled, "8.8.8.8", WEB)
    assert _ok(compiled, WEB, "8.8.8.8")


def test_default_deny_ingress_keeps_host_allowed() -> None:
    """Test that a policy with no rules isolates, allows nothing, and keeps the allow-localhost entry."""
    compiled, _ = _compile([_ingress("deny", LabelSelector())])
    web = compiled.endpoints[EP_IDS["shop/web"]]
    assert web.ingress_policies == ("shop/deny",)
    assert not web.egress_isolated
    host_key = PolicyKey(web.ep_id, Direction.INGRESS, ReservedIdentity.HOST, 0, 0, 0)
    assert list(web.entries) == [host_key]
    assert host_key.prefix_len == 64
    assert compiled.policy_sets[web.entries[host_key].policy_id] == (ALLOW_LOCALHOST,)
    denied = trace(compiled, DB, WEB, 80)
    assert not denied.allowed
    assert denied.ingress is not None
    assert "nothing allowed it" in denied.ingress.reason
    assert denied.policies == ("shop/deny",)
    assert trace(compiled, HOST_IP, WEB, 8080).policies == (ALLOW_LOCALHOST,)
    assert _ok(compiled, WEB, MON)  # egress not isolated
    assert _ok(compiled, DB, OPS_WEB)  # other namespace untouched


def test_no_rules_with_both_policy_types_isolates_both_directions() -> None:
    """Test that policyTypes [Ingress, Egress] without rules denies both ways (host ingress aside)."""
    policy = make_policy("shop", "lockdown", sel(app="db"), policy_types=["Ingress", "Egress"])
    compiled, _ = _compile([policy])
    db = compiled.endpoints[EP_IDS["shop/db"]]
    assert db.ingress_isolated
    assert db.egress_isolated
    assert all(k.direction is Direction.INGRESS for k in db.entries)
    assert not _ok(compiled, WEB, DB)
    assert not _ok(compiled, DB, WEB)
    assert not _ok(compiled, DB, "8.8.8.8")


def test_policy_types_decide_which_rules_apply() -> None:
    """Test that rules of a direction missing from policyTypes are ignored."""
    egress_only = make_policy("shop", "p", sel(app="web"), ingress=[_from(_pods(sel(app="db")))],
                              egress=[_from(_pods(sel(app="db")))], policy_types=["Egress"])
    compiled, _ = _compile([egress_only])
    web = compiled.endpoints[EP_IDS["shop/web"]]
    assert not web.ingress_isolated
    assert web.egress_policies == ("shop/p",)
    assert _ok(compiled, MON, WEB)
    assert _ok(compiled, WEB, DB)
    assert not _ok(compiled, WEB, MON)


# --- peers --------------------------------------------------------------------------------------

def test_pod_selector_peer_is_the_policy_namespace() -> None:
    """Test that a podSelector-only peer selects matching pods of the policy's namespace only."""
    compiled, compiler = _compile([_ingress("p", sel(app="db"), _from(_pods(sel(app="web"))))])
    web = compiler.identity_of("shop/web")
    assert web is not None
    db = compiled.endpoints[EP_IDS["shop/db"]]
    key = PolicyKey(db.ep_id, Direction.INGRESS, web.id, 0, 0, 0)
    assert compiled.policy_sets[db.entries[key].policy_id] == ("shop/p",)
    assert _ok(compiled, WEB, DB)
    assert _ok(compiled, WEB2, DB)
    assert not _ok(compiled, OPS_WEB, DB)
    assert not _ok(compiled, MON, DB)
    assert not _ok(compiled, "8.8.8.8", DB)


def test_namespace_selector_alone_and_with_pod_selector() -> None:
    """Test namespaceSelector alone (all pods there) and with podSelector (AND)."""
    ops = LabelSelector(match_labels={"team": "blue"})
    only_ns = _ingress("ns", sel(app="db"), _from(NetworkPolicyPeer(namespace_selector=ops)))
    compiled, _ = _compile([only_ns])
    assert _ok(compiled, MON, DB)
    assert _ok(compiled, OPS_WEB, DB)
    assert not _ok(compiled, WEB, DB)
    both = _ingress("both", sel(app="db"), _from(NetworkPolicyPeer(sel(app="web"), ops)))
    compiled, _ = _compile([both])
    assert _ok(compiled, OPS_WEB, DB)
    assert not _ok(compiled, MON, DB)
    assert not _ok(compiled, WEB, DB)


def test_empty_selectors() -> None:
    """Test that podSelector {} means every pod of the namespace and namespaceSelector {} every pod."""
    same_ns = _ingress("same", sel(app="db"), _from(_pods(LabelSelector())))
    compiled, _ = _compile([same_ns])
    assert _ok(compiled, WEB, DB)
    assert not _ok(compiled, MON, DB)
    all_pods = _ingress("all", sel(app="db"), _from(NetworkPolicyPeer(namespace_selector=LabelSelector())))
    compiled, _ = _compile([all_pods])
    assert _ok(compiled, WEB, DB)
    assert _ok(compiled, MON, DB)
    assert not _ok(compiled, "8.8.8.8", DB)


@pytest.mark.parametrize(
    ("operator", "values", "allowed_sources"),
    [
        ("In", ("web", "mon"), {"shop/web", "shop/web2"}),
        ("NotIn", ("web",), {"shop/db"}),
        ("Exists", (), {"shop/web", "shop/web2", "shop/db"}),
        ("DoesNotExist", (), set()),
    ],
)
def test_match_expressions(operator: str, values: tuple[str, ...], allowed_sources: set[str]) -> None:
    """Test every matchExpressions operator on a podSelector peer."""
    selector = LabelSelector(match_expressions=(LabelSelectorRequirement("app", operator, values),))
    compiled, _ = _compile([_ingress("p", sel(app="db"), _from(_pods(selector)))])
    sources = {p.metadata.key for p in PODS if _ok(compiled, p, DB)}
    assert sources == allowed_sources


def test_empty_from_allows_every_peer() -> None:
    """Test that a rule without from allows any peer through an identity-0 entry."""
    compiled, _ = _compile([_ingress("p", sel(app="db"), _from(ports=[NetworkPolicyPort("TCP", 5432)]))])
    db = compiled.endpoints[EP_IDS["shop/db"]]
    assert PolicyKey(db.ep_id, Direction.INGRESS, ANY_IDENTITY, 6, 5432, 16) in db.entries
    assert _ok(compiled, MON, DB, 5432)
    assert _ok(compiled, "8.8.8.8", DB, 5432)
    assert not _ok(compiled, MON, DB, 80)


# --- ipBlock ------------------------------------------------------------------------------------

def test_ip_block_with_except_uses_cidr_identities() -> None:
    """Test that ipBlock cidr/except get CIDR identities and match external IPs and pod IPs."""
    policy = _egress("out", sel(app="web"), _from(_block("10.0.0.0/16", "10.0.0.2/32", "10.0.7.0/24")))
    compiled, _ = _compile([policy])
    assert dict(compiled.cidr_identities) == {
        "0.0.0.0/0": ReservedIdentity.WORLD,
        "10.0.0.0/16": FIRST_LOCAL_CIDR_IDENTITY,
        "10.0.0.2/32": FIRST_LOCAL_CIDR_IDENTITY + 1,
        "10.0.7.0/24": FIRST_LOCAL_CIDR_IDENTITY + 2,
    }
    assert cidr_identity(compiled, "10.0.7.9") == FIRST_LOCAL_CIDR_IDENTITY + 2
    assert label_identity(compiled, "10.0.7.9") == ReservedIdentity.WORLD
    assert _ok(compiled, WEB, "10.0.99.1")
    assert _ok(compiled, WEB, WEB2)
    assert _ok(compiled, WEB, MON)
    assert not _ok(compiled, WEB, DB)
    assert not _ok(compiled, WEB, "10.0.7.9")
    assert not _ok(compiled, WEB, "8.8.8.8")


def test_ip_block_everything() -> None:
    """Test that 0.0.0.0/0 without except selects WORLD and every CIDR identity."""
    policy = _egress("out", sel(app="web"), _from(_block("0.0.0.0/0")), _from(_block("10.0.0.0/8")))
    compiled, _ = _compile([policy])
    web = compiled.endpoints[EP_IDS["shop/web"]]
    assert {k.identity for k in web.entries} == {ReservedIdentity.WORLD, FIRST_LOCAL_CIDR_IDENTITY}
    assert _ok(compiled, WEB, "8.8.8.8")
    assert _ok(compiled, WEB, DB)
    assert _ok(compiled, WEB, HOST_IP)


def test_ip_block_everything_but_except_never_selects_world() -> None:
    """Test that 0.0.0.0/0 with except is compiled to its complement, keeping WORLD unselected."""
    policy = _egress("out", sel(app="web"), _from(_block("0.0.0.0/0", "10.0.0.0/8")))
    compiled, _ = _compile([policy])
    web = compiled.endpoints[EP_IDS["shop/web"]]
    assert ReservedIdentity.WORLD not in {k.identity for k in web.entries}
    assert "128.0.0.0/1" in compiled.cidr_identities
    assert "11.0.0.0/8" in compiled.cidr_identities
    assert _ok(compiled, WEB, "8.8.8.8")
    assert _ok(compiled, WEB, "192.168.1.1")
    assert not _ok(compiled, WEB, "10.9.9.9")
    assert not _ok(compiled, WEB, DB)


def test_ipv6_block_matches_nothing() -> None:
    """Test that an IPv6 block never matches IPv4 traffic and allocates nothing."""
    compiled, _ = _compile([_egress("v6", sel(app="web"), _from(_block("::/0")))])
    assert dict(compiled.cidr_identities) == {"0.0.0.0/0": ReservedIdentity.WORLD}
    assert not _ok(compiled, WEB, "8.8.8.8")


# --- ports --------------------------------------------------------------------------------------

def test_numbered_port_and_protocol() -> None:
    """Test that a numbered port matches only that port and protocol (TCP by default)."""
    compiled, _ = _compile([_ingress("p", sel(app="db"), _from(ports=[NetworkPolicyPort(port=5432)]))])
    key = next(iter(k for k in compiled.endpoints[EP_IDS["shop/db"]].entries if k.identity == ANY_IDENTITY))
    assert (key.proto, key.port, key.port_prefix_len, key.prefix_len) == (6, 5432, 16, 96)
    assert _ok(compiled, WEB, DB, 5432)
    assert not _ok(compiled, WEB, DB, 5432, "UDP")
    assert not _ok(compiled, WEB, DB, 5433)


def test_port_omitted_means_every_port_of_the_protocol() -> None:
    """Test that a ports entry without port allows every port of its protocol only."""
    compiled, _ = _compile([_ingress("p", sel(app="db"), _from(ports=[NetworkPolicyPort("UDP")]))])
    db = compiled.endpoints[EP_IDS["shop/db"]]
    assert PolicyKey(db.ep_id, Direction.INGRESS, ANY_IDENTITY, 17, 0, 0).prefix_len == 80
    assert _ok(compiled, WEB, DB, 53, "UDP")
    assert _ok(compiled, WEB, DB, 65535, "UDP")
    assert not _ok(compiled, WEB, DB, 53, "TCP")


def test_end_port_range_is_split_into_prefixes() -> None:
    """Test that port..endPort becomes aligned prefix entries covering exactly the range."""
    rule = _from(ports=[NetworkPolicyPort("TCP", 1000, 2000)])
    compiled, _ = _compile([_ingress("p", sel(app="db"), rule)])
    keys = sorted((k.port, k.port_prefix_len) for k in compiled.endpoints[EP_IDS["shop/db"]].entries
                  if k.identity == ANY_IDENTITY)
    assert tuple(keys) == split_port_range(1000, 2000)
    assert [p for p in (999, 1000, 1500, 2000, 2001) if _ok(compiled, WEB, DB, p)] == [1000, 1500, 2000]


def test_sctp_is_compiled() -> None:
    """Test that SCTP ports compile to protocol 132 entries (the agent reports kernel support)."""
    compiled, _ = _compile([_ingress("p", sel(app="db"), _from(ports=[NetworkPolicyPort("SCTP", 9000)]))])
    assert {k.proto for k in compiled.endpoints[EP_IDS["shop/db"]].entries} == {0, 132}
    assert _ok(compiled, WEB, DB, 9000, "SCTP")
    assert not _ok(compiled, WEB, DB, 9000, "TCP")


def test_named_ingress_port_resolves_on_the_endpoint() -> None:
    """Test that an ingress named port resolves on each selected pod's own container ports."""
    rule = _from(ports=[NetworkPolicyPort("TCP", "http")])
    compiled, _ = _compile([_ingress("p", LabelSelector(), rule)])
    assert _ok(compiled, MON, WEB, 80)
    assert not _ok(compiled, MON, WEB, 8080)
    assert _ok(compiled, MON, DB, 8080)
    assert not _ok(compiled, MON, DB, 80)


def test_named_port_that_resolves_to_nothing_allows_nothing() -> None:
    """Test that a name the pod lacks, or has for another protocol, allows nothing but still isolates."""
    rule = _from(ports=[NetworkPolicyPort("TCP", "pg"), NetworkPolicyPort("UDP", "http")])
    compiled, _ = _compile([_ingress("p", sel(app="web"), rule)])
    web = compiled.endpoints[EP_IDS["shop/web"]]
    assert web.ingress_isolated
    assert [k.identity for k in web.entries] == [ReservedIdentity.HOST]
    assert not _ok(compiled, DB, WEB, 80)
    assert not _ok(compiled, DB, WEB, 80, "UDP")


def test_named_egress_port_resolves_per_peer_identity() -> None:
    """Test that an egress named port resolves on the destination pods of each selected identity."""
    rule = _from(_pods(LabelSelector()), ports=[NetworkPolicyPort("TCP", "http")])
    compiled, compiler = _compile([_egress("p", sel(app="web"), rule)])
    web, db = compiler.identity_of("shop/web"), compiler.identity_of("shop/db")
    assert web is not None
    assert db is not None
    entries = compiled.endpoints[EP_IDS["shop/web"]].entries
    assert {(k.identity, k.port) for k in entries} == {(web.id, 80), (db.id, 8080)}
    assert _ok(compiled, WEB, DB, 8080)
    assert not _ok(compiled, WEB, DB, 80)
    assert _ok(compiled, WEB, WEB2, 80)
    assert not _ok(compiled, WEB, OPS_WEB, 80)


def test_named_egress_port_to_any_peer_never_matches_outside_the_cluster() -> None:
    """Test that an empty `to` with a named port allows pods defining the name, never external IPs."""
    compiled, _ = _compile([_egress("p", sel(app="web"), _from(ports=[NetworkPolicyPort("TCP", "http")]))])
    assert _ok(compiled, WEB, DB, 8080)
    assert _ok(compiled, WEB, OPS_WEB, 80)
    assert not _ok(compiled, WEB, "8.8.8.8", 80)
    assert not _ok(compiled, WEB, MON, 80)


def test_named_egress_port_to_ip_block_resolves_per_pod_ip() -> None:
    """Test that an ipBlock with a named egress port gets one /32 per pod IP and resolves on that pod."""
    rule = _from(_block("10.0.0.0/24", "10.0.0.3/32"), ports=[NetworkPolicyPort("TCP", "http")])
    compiled, _ = _compile([_egress("p", sel(app="web"), rule)])
    assert {"10.0.0.1/32", "10.0.0.2/32"} <= compiled.cidr_identities.keys()
    assert _ok(compiled, WEB, DB, 8080)
    assert not _ok(compiled, WEB, DB, 80)
    assert not _ok(compiled, WEB, WEB2, 80)  # excepted
    assert not _ok(compiled, WEB, OPS_WEB, 80)  # outside the block
    assert not _ok(compiled, WEB, "10.0.0.99", 80)  # in block, but no pod defines the name there


API_A = make_pod("shop", "api-a", "10.0.0.10", {"app": "api"}, [("http", 80, "TCP")])
API_B = make_pod("shop", "api-b", "10.0.0.11", {"app": "api"}, [("http", 8080, "TCP")])
API_C = make_pod("shop", "api-c", "10.0.0.12", {"app": "api"}, [("grpc", 80, "TCP")])


@pytest.mark.parametrize("peers", [(_pods(sel(app="api")),), ()], ids=["pod-selector", "empty-to"])
def test_named_egress_port_resolves_on_each_pod_of_an_identity(peers: tuple[NetworkPolicyPeer, ...]) -> None:
    """Test that pods sharing an identity but not a port number each accept only their own number."""
    pods = [*PODS, API_A, API_B, API_C]
    compiler = PolicyCompiler(IdentityAllocator())
    rule = _from(*peers, ports=[NetworkPolicyPort("TCP", "http")])
    compiler.sync(NAMESPACES, pods, [_egress("p", sel(app="web"), rule)])
    compiled = compiler.compile({p.metadata.key: i + 1 for i, p in enumerate(pods)})
    api = [compiler.identity_of(f"shop/api-{x}") for x in "abc"]
    assert len({i.id for i in api if i is not None}) == 1
    assert None not in api
    assert {"10.0.0.10/32", "10.0.0.11/32", "10.0.0.12/32"} <= compiled.cidr_identities.keys()
    assert _ok(compiled, WEB, API_A, 80)
    assert not _ok(compiled, WEB, API_A, 8080)
    assert _ok(compiled, WEB, API_B, 8080)
    assert not _ok(compiled, WEB, API_B, 80)
    assert not _ok(compiled, WEB, API_C, 80)
    assert not _ok(compiled, WEB, API_C, 8080)
    assert _ok(compiled, WEB, WEB2, 80) == (not peers)  # web and web2 agree: an identity entry, no /32
    assert "10.0.0.3/32" not in compiled.cidr_identities


# --- policy naming ------------------------------------------------------------------------------

def test_entry_names_every_policy_of_less_specific_entries() -> None:
    """Test the contract example: A allows any port from I, B port 80 from I: port 80 names A and B."""
    from_web = _pods(sel(app="web"))
    a = _ingress("a", sel(app="db"), _from(from_web))
    b = _ingress("b", sel(app="db"), _from(from_web, ports=[NetworkPolicyPort("TCP", 80)]))
    compiled, compiler = _compile([a, b])
    web = compiler.identity_of("shop/web")
    assert web is not None
    db = compiled.endpoints[EP_IDS["shop/db"]]
    sets = compiled.policy_sets
    names = {(k.proto, k.port): sets[v.policy_id] for k, v in db.entries.items() if k.identity == web.id}
    assert names == {(0, 0): ("shop/a",), (6, 80): ("shop/a", "shop/b")}
    assert trace(compiled, WEB, DB, 80).policies == ("shop/a", "shop/b")
    assert trace(compiled, WEB, DB, 81).policies == ("shop/a",)
    assert db.ingress_policies == ("shop/a", "shop/b")


def test_identity_entries_include_any_peer_policies() -> None:
    """Test that an identity-specific entry also names the any-peer policies covering it."""
    a = _ingress("a", sel(app="db"), _from())
    b = _ingress("b", sel(app="db"), _from(_pods(sel(app="web")), ports=[NetworkPolicyPort("TCP", 5432)]))
    compiled, _ = _compile([a, b])
    verdict = trace(compiled, WEB, DB, 5432).ingress
    assert verdict is not None
    assert verdict.policy_names == ("shop/a", "shop/b")
    assert verdict.entry is not None
    assert describe_key(verdict.entry).endswith("TCP/5432")


def test_host_entry_also_names_any_peer_policies() -> None:
    """Test that the allow-localhost entry is merged with an allow-all policy's name."""
    compiled, _ = _compile([_ingress("all", sel(app="db"), _from())])
    assert trace(compiled, HOST_IP, DB, 80).policies == (ALLOW_LOCALHOST, "shop/all")


# --- determinism and incremental use ------------------------------------------------------------

def _policies() -> list[NetworkPolicy]:
    """A mixed set of policies touching most features."""
    return [
        _ingress("deny", LabelSelector()),
        _ingress("db", sel(app="db"), _from(_pods(sel(app="web")), ports=[NetworkPolicyPort("TCP", "pg")])),
        _egress("web", sel(app="web"), _from(_block("10.0.0.0/8", "10.0.1.0/24")),
                _from(ports=[NetworkPolicyPort("UDP", 53), NetworkPolicyPort("TCP", 8000, 9000)])),
        make_policy("ops", "mon", LabelSelector(), ingress=[_from(NetworkPolicyPeer(
            namespace_selector=LabelSelector(match_labels={"team": "red"})))]),
    ]


def test_compilation_is_deterministic() -> None:
    """Test that the same state in another order gives the same result."""
    first, _ = _compile(_policies())
    second, _ = _compile(list(reversed(_policies())), pods=list(reversed(PODS)))
    assert first == second


def test_incremental_compile_matches_full_compile() -> None:
    """Test that recompiling only affected endpoints after a change gives the full result."""
    allocator = IdentityAllocator()
    compiled, compiler = _compile(_policies(), allocator=allocator)
    policies = _policies()[1:]  # delete shop/deny: only shop endpoints change
    compiler.sync(NAMESPACES, PODS, policies, host_ips=[HOST_IP])
    kept = [ep for ep in compiled.endpoints.values() if not ep.pod.startswith("shop/")]
    fresh = [compiler.compile_endpoint(k, EP_IDS[k]) for k in EP_IDS if k.startswith("shop/")]
    incremental = compiler.assemble([*kept, *fresh])
    full, _ = _compile(policies)
    assert incremental.endpoints == full.endpoints
    assert incremental.ipcache == full.ipcache
    assert incremental.cidr_identities == full.cidr_identities
    assert set(incremental.policy_sets.values()) == set(full.policy_sets.values())


def test_sync_releases_identities_and_cidrs() -> None:
    """Test that removed pods, relabelled namespaces and removed ipBlocks give their numbers back."""
    allocator = IdentityAllocator()
    _, compiler = _compile(_policies(), allocator=allocator)
    before = {i.id for i in allocator.all()}
    assert FIRST_LOCAL_CIDR_IDENTITY in before
    mon = compiler.identity_of("ops/mon")
    assert mon is not None
    relabelled = [make_namespace("shop", team="red"), make_namespace("ops", team="green")]
    compiler.sync(relabelled, [WEB, DB, MON], [], host_ips=[HOST_IP])
    new_mon = compiler.identity_of("ops/mon")
    assert new_mon is not None
    assert new_mon.id != mon.id
    assert compiler.identity_of("shop/web2") is None
    remaining = {i.id for i in allocator.all() if i.id >= 256}
    assert remaining == {i.id for p in ("shop/web", "shop/db", "ops/mon") if (i := compiler.identity_of(p))}
    compiler.sync(NAMESPACES, [], [])
    assert [i.id for i in allocator.all()] == [1, 2, 3, 4, 5, 6]


def test_host_network_pods_are_not_endpoints_or_identities() -> None:
    """Test that hostNetwork pods get no identity and no ipcache entry (their IP is the node's)."""
    agent = make_pod("shop", "agent", HOST_IP, {"app": "web"}, host_network=True)
    compiler = PolicyCompiler(IdentityAllocator())
    compiler.sync(NAMESPACES, [*PODS, agent], [], host_ips=[HOST_IP])
    compiled = compiler.compile({k: v for k, v in EP_IDS.items()})
    assert compiler.identity_of("shop/agent") is None
    assert compiled.ipcache[f"{HOST_IP}/32"] == ReservedIdentity.HOST


def _big_world() -> tuple[list[Namespace], list[Pod], list[NetworkPolicy]]:
    """100 pods in 5 namespaces, 100 policies mixing selectors, ipBlocks, named ports and ranges."""
    rng = random.Random(7)
    namespaces = [make_namespace(f"ns{i}", team=rng.choice(["red", "blue"])) for i in range(5)]
    pods = [
        make_pod(f"ns{i % 5}", f"pod{i}", f"10.1.{i // 200}.{i % 200 + 1}",
                 {"app": f"app{rng.randrange(10)}", "tier": rng.choice(["fe", "be"])},
                 [("http", rng.choice([80, 8080]), "TCP"), ("dns", 53, "UDP")])
        for i in range(100)
    ]
    policies = []
    for i in range(100):
        peer = rng.choice([
            _pods(sel(app=f"app{rng.randrange(10)}")),
            NetworkPolicyPeer(namespace_selector=LabelSelector(match_labels={"team": "red"})),
            _block(f"10.1.0.{rng.randrange(256)}/{rng.choice([24, 28, 32])}"),
        ])
        ports = rng.choice([[], [NetworkPolicyPort("TCP", 80)], [NetworkPolicyPort("TCP", "http")],
                            [NetworkPolicyPort("TCP", 1000, 3000)]])
        policies.append(make_policy(f"ns{i % 5}", f"p{i}", sel(tier=rng.choice(["fe", "be"])),
                                    ingress=[_from(peer, ports=ports)], egress=[_from(peer, ports=ports)]))
    return namespaces, pods, policies


def test_hundred_pods_hundred_policies_compile_to_the_reference_verdicts() -> None:
    """Test that 100 pods x 100 policies (over 100k map entries) give the reference's verdicts."""
    namespaces, pods, policies = _big_world()
    compiler = PolicyCompiler(IdentityAllocator())
    compiler.sync(namespaces, pods, policies)
    compiled = compiler.compile({p.metadata.key: i + 1 for i, p in enumerate(pods)})
    assert sum(len(ep.entries) for ep in compiled.endpoints.values()) > 100_000
    rng = random.Random(3)
    for _ in range(300):
        src, dst = rng.choice(pods), rng.choice(pods)
        port = rng.choice([80, 8080, 1500, 53])
        assert _ok(compiled, src, dst, port) == allowed(policies, namespaces, src, dst, port, "TCP")


# --- scale: counted operations, never wall-clock ---------------------------------------------------

def _counting(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    """Count the calls of `owner.name` (one list item per call) without changing what it does."""
    calls: list[int] = []
    original: Callable[..., Any] = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def _block_peers(n: int, seed: int = 5) -> list[NetworkPolicyPeer]:
    """n random ipBlocks outside the pod network: /32s, /24s, and /16s with a /24 carved out."""
    rng = random.Random(seed)
    peers = []
    for i in range(n):
        a, b, c = rng.randrange(11, 200), rng.randrange(256), rng.randrange(256)
        if i % 3 == 0:
            peers.append(_block(f"{a}.{b}.{c}.{rng.randrange(256)}/32"))
        elif i % 3 == 1:
            peers.append(_block(f"{a}.{b}.{c}.0/24"))
        else:
            peers.append(_block(f"{a}.{b}.0.0/16", f"{a}.{b}.{c}.0/24"))
    return peers


def test_thousands_of_ip_blocks_give_the_reference_verdicts() -> None:
    """Test that 600 overlapping ipBlocks with excepts select exactly what the reference says."""
    peers = _block_peers(600)
    policies = [_egress("out", sel(app="web"), _from(*peers, ports=[NetworkPolicyPort("TCP", 443)]))]
    compiled, _ = _compile(policies)
    rng = random.Random(11)
    probes = []
    for peer in rng.sample(peers, 60):
        assert peer.ip_block is not None
        net = peer.ip_block.cidr.split("/")[0].rsplit(".", 1)[0]
        probes += [f"{net}.{rng.randrange(256)}", f"{net}.0", f"{net}.255"]
    probes += [f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.9" for _ in range(60)]
    for ip in probes:
        assert _ok(compiled, WEB, ip, 443) == allowed(policies, NAMESPACES, WEB, ip, 443, "TCP"), ip


def test_a_pod_change_redoes_no_ip_block_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that each ipBlock is selected once per policy change, and a pod change selects none again."""
    selections = _counting(monkeypatch, PrefixIndex, "inside")
    allocator = IdentityAllocator()
    cidr_allocations = _counting(monkeypatch, allocator, "allocate_cidr")
    peers = _block_peers(2000)
    dns = _from(*peers[:1000], ports=[NetworkPolicyPort("UDP", 53)])
    policies = [_egress("out", sel(app="web"), _from(*peers), dns)]
    compiled, compiler = _compile(policies, allocator=allocator)
    assert len(selections) == len({p.ip_block for p in peers})
    assert len(cidr_allocations) == len(compiled.cidr_identities) - 1  # all but WORLD
    selections.clear()
    cidr_allocations.clear()
    newcomer = make_pod("ops", "new", "10.0.1.9", {"app": "new"}, [("http", 80, "TCP")])
    compiler.sync(NAMESPACES, [*PODS, newcomer], policies, host_ips=[HOST_IP])
    again = compiler.compile({**{p.metadata.key: EP_IDS[p.metadata.key] for p in PODS}, "ops/new": 99})
    assert not selections
    assert not cidr_allocations
    fresh = PolicyCompiler(IdentityAllocator())
    fresh.sync(NAMESPACES, [*PODS, newcomer], policies, host_ips=[HOST_IP])
    full = fresh.compile({**{p.metadata.key: EP_IDS[p.metadata.key] for p in PODS}, "ops/new": 99})
    assert again.cidr_identities == full.cidr_identities
    assert _named_entries(again) == _named_entries(full)


def _named_entries(compiled: CompiledPolicy) -> dict[str, dict[PolicyKey, tuple[str, ...]]]:
    """Each endpoint's entries with the names of their policy sets (ids may differ between compilers)."""
    return {ep.pod: {k: compiled.policy_sets[v.policy_id] for k, v in ep.entries.items()}
            for ep in compiled.endpoints.values()}


def _namespace_world(n: int) -> tuple[list[Namespace], list[Pod], list[NetworkPolicy]]:
    """n namespaces, each with one pod and a policy allowing its own namespace and namespace ns0."""
    from_ns0 = NetworkPolicyPeer(namespace_selector=sel(**{NAME_LABEL: "ns0"}))
    namespaces = [make_namespace(f"ns{i}", team=("red", "blue")[i % 2]) for i in range(n)]
    pods = [make_pod(f"ns{i}", "p", f"10.{i >> 16}.{i >> 8 & 255}.{i & 255}", {"app": "web"},
                     [("http", 80, "TCP")]) for i in range(n)]
    policies = [make_policy(f"ns{i}", "allow", sel(), ingress=[_from(_pods(sel()), from_ns0)],
                            egress=[_from(_pods(sel(app="web")), ports=[NetworkPolicyPort("TCP", "http")])])
                for i in range(n)]
    return namespaces, pods, policies


def test_selector_work_grows_linearly_with_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that per-namespace policies cost a bounded number of selector evaluations per namespace."""
    evaluations = _counting(monkeypatch, LabelSelector, "matches")
    for n in (500, 2000):
        evaluations.clear()
        namespaces, pods, policies = _namespace_world(n)
        compiler = PolicyCompiler(IdentityAllocator())
        compiler.sync(namespaces, pods, policies)
        compiled = compiler.compile({p.metadata.key: i + 1 for i, p in enumerate(pods)})
        assert len(evaluations) <= 5 * n, (n, len(evaluations))
    for src, dst in ((pods[0], pods[7]), (pods[7], pods[8]), (pods[9], pods[9]), (pods[8], pods[0])):
        assert _ok(compiled, src, dst, 80) == allowed(policies, namespaces, src, dst, 80, "TCP")


# --- the datapath twin --------------------------------------------------------------------------

def test_lookup_takes_the_identity_entry_first_and_unknown_sides_are_not_enforced() -> None:
    """Test the lookup order on hand-made entries: the peer's own entry before the any-peer one, the
    any-peer one when the peer has none; IPs without endpoint are not enforced."""
    any_peer = PolicyKey(1, Direction.INGRESS, ANY_IDENTITY, 0, 0, 0)
    own = PolicyKey(1, Direction.INGRESS, 300, 6, 80, 16)
    endpoint = CompiledEndpoint("ns/a", "10.0.0.1", 1, 256, ("ns/p",), (),
                                MappingProxyType({any_peer: PolicyValue(1), own: PolicyValue(2)}))
    compiled = CompiledPolicy(
        MappingProxyType({1: endpoint}), MappingProxyType({"10.0.0.2/32": 300}),
        MappingProxyType({"0.0.0.0/0": 2}), MappingProxyType({1: ("ns/p",), 2: ("ns/q",)}),
    )
    by_own = lookup(compiled, 1, Direction.INGRESS, 300, 2, "TCP", 80)
    assert (by_own.allowed, by_own.policy_names, by_own.entry) == (True, ("ns/q",), own)
    by_any = lookup(compiled, 1, Direction.INGRESS, 300, 2, "TCP", 81)
    assert (by_any.allowed, by_any.policy_names, by_any.entry) == (True, ("ns/p",), any_peer)
    assert lookup(compiled, 1, Direction.EGRESS, 300, 2, 6, 80).reason == "egress not isolated for ns/a"
    result = trace(compiled, "10.0.0.2", "10.0.0.1", 80)
    assert result.egress is None
    assert result.ingress == by_own
    assert result.allowed
    assert result.policies == ("ns/q",)


def test_icmp_is_matched_by_protocol_only() -> None:
    """Test that ICMP is looked up with port 0: allowed by an any-protocol rule, not by an any-TCP rule."""
    any_proto = _ingress("all", sel(app="db"), _from(_pods(sel(app="web"))))
    tcp_only = _ingress("tcp", sel(app="web"), _from(_pods(sel(app="db")), ports=[NetworkPolicyPort("TCP")]))
    compiled, _ = _compile([any_proto, tcp_only])
    assert trace(compiled, WEB, DB, 8, "ICMP").allowed
    assert not trace(compiled, DB, WEB, 8, "ICMP").allowed


def test_describe_key() -> None:
    """Test the human form of policy map keys."""
    assert describe_key(PolicyKey(1, Direction.INGRESS, 0, 0, 0, 0)) == "any peer any protocol"
    assert describe_key(PolicyKey(1, Direction.INGRESS, 256, 17, 0, 0)) == "identity 256 UDP/any"
    assert describe_key(PolicyKey(1, Direction.INGRESS, 256, 6, 1024, 6)) == "identity 256 TCP/1024-2047"
    assert describe_key(PolicyKey(1, Direction.INGRESS, 256, 132, 80, 16)) == "identity 256 SCTP/80"


# --- port ranges --------------------------------------------------------------------------------

def _minimal_cover_size(start: int, end: int) -> int:
    """The fewest aligned prefixes partitioning start..end, by dynamic programming."""
    best = {end + 1: 0}
    for port in range(end, start - 1, -1):
        sizes = [1 << b for b in range(17) if port % (1 << b) == 0 and port + (1 << b) - 1 <= end]
        best[port] = 1 + min(best[port + size] for size in sizes)
    return best[start]


@pytest.mark.parametrize(
    ("start", "end"),
    [(0, MAX_PORT), (1, MAX_PORT), (80, 80), (1000, 2000), (1, 1023), (32768, 60999)]
    + [tuple(sorted(random.Random(seed).sample(range(MAX_PORT + 1), 2))) for seed in range(4)],
)
def test_split_port_range_is_exact_and_minimal(start: int, end: int) -> None:
    """Test over every port 0..65535 that the prefixes cover exactly the range, minimally."""
    prefixes = split_port_range(start, end)
    covered = [p for p in range(MAX_PORT + 1) if any(prefix_covers(base, n, p) for base, n in prefixes)]
    assert covered == list(range(start, end + 1))
    assert all(mask_port(base, n) == base for base, n in prefixes)
    assert len(prefixes) == _minimal_cover_size(start, end)


def test_split_port_range_rejects_invalid_ranges() -> None:
    """Test that reversed or out-of-range ranges raise ValueError."""
    for start, end in ((2, 1), (-1, 5), (0, MAX_PORT + 1)):
        with pytest.raises(ValueError, match="invalid port range"):
            split_port_range(start, end)


def test_remote_pods_ipcache_entries_come_from_their_nodes_endpoints() -> None:
    """Test that in a cluster the ipcache takes this node's pods from the pod objects and every other
    pod only from what its node published: a pod object of another node without a published endpoint
    (its node left) has no entry, a published one has the identity its node gave, and a record this node
    published itself does not override its pod object."""
    here = replace(WEB, spec=replace(WEB.spec, node_name="n0"))
    there = replace(DB, spec=replace(DB.spec, node_name="n1"))
    gone = replace(MON, spec=replace(MON.spec, node_name="n2"))
    compiler = PolicyCompiler(IdentityAllocator())
    published = {"10.0.0.2": ClusterEndpoint("10.0.0.2", 4242, "n1", "shop/db"),
                 "10.0.0.1": ClusterEndpoint("10.0.0.1", 4243, "n0", "shop/web"),
                 "10.0.9.9": ClusterEndpoint("10.0.9.9", 4244, "n1", "shop/new")}
    compiler.sync(NAMESPACES, [here, there, gone], [], host_ips=[HOST_IP], remote_node_ips=["10.0.254.2"],
                  remote_endpoints=published, local_node="n0")
    compiled = compiler.compile({"shop/web": 1})
    web = compiler.identity_of("shop/web")
    assert web is not None
    assert dict(compiled.ipcache) == {"10.0.0.1/32": web.id, "10.0.0.2/32": 4242, "10.0.9.9/32": 4244,
                                      f"{HOST_IP}/32": ReservedIdentity.HOST,
                                      "10.0.254.2/32": ReservedIdentity.REMOTE_NODE}
    compiler.sync(NAMESPACES, [here, there, gone], [], host_ips=[HOST_IP])
    assert {"10.0.0.2/32", "10.0.1.1/32"} <= compiler.compile({"shop/web": 1}).ipcache.keys()
