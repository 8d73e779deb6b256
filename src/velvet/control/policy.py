"""The NetworkPolicy compiler: namespaces, pods and policies to the contents of the policy maps.

Output shape (the datapath contract):

- `ipcache`: pod IP/32 -> the pod's label identity (pods of every node), this node's IP/32 -> HOST,
  the other nodes' IPs/32 -> REMOTE_NODE; a miss means WORLD. In a cluster the pods of other nodes
  come from what their nodes publish (`ClusterEndpoint`s, under their leases), not from the pod
  objects, so a node that left takes its entries with it.
- `cidr_identities` (ipcache_cidr): every policy prefix -> its local CIDR identity, 0.0.0.0/0 ->
  WORLD. An ipBlock{cidr C, except E...} selects every CIDR identity whose prefix lies inside C and
  inside no E; since the datapath looks the remote IP up in both tries, a connection matches the
  block iff the longest policy prefix containing the IP is selected, i.e. iff the IP is in C and in
  no E. Two refinements keep that exact:
  * 0.0.0.0/0 with excepts is replaced by the prefixes of its complement, since WORLD is also the
    *label* identity of every unknown IP and must only be selected by an except-free 0.0.0.0/0;
  * some pods get a /32 prefix of their own so a named egress port can be resolved on that very
    pod (see below).
- per endpoint `entries`: PolicyKey -> PolicyValue in the single LPM `policy` map, and the policy
  set table naming, for each entry, every NetworkPolicy that allows what it matches. An entry's set
  includes the sets of all less specific entries covering it for the same identity and for the
  any-peer identity 0, so the one entry a longest-prefix match returns names them all. Every entry
  allows (NetworkPolicy has no deny).

Semantics (networking.k8s.io/v1): a pod is isolated for a direction iff a policy of its namespace
selects it and lists the direction in policyTypes; then traffic is allowed iff some rule of some such
policy matches (union). Ingress from HOST (kubelet probes) is always allowed, as an explicit entry
named `reserved:allow-localhost`. Named ports resolve on the destination pod's container ports
(name and protocol), exactly: for ingress on the endpoint itself; for egress on each destination
pod. A peer identity whose pods (with an IP) all give the name the same number gets one entry for
that number; when they disagree (or some lack the name), every such pod gets a /32 CIDR identity
and the entry is keyed on it, so each pod accepts only its own number. ipBlock peers resolve per
pod /32 the same way, and an empty `to` over every pod identity — so named egress ports never
match destinations outside the cluster, and a name nobody defines allows nothing.

Target pods are selected on their full labels; peers on identity labels (see `labels`), so a peer
selector on a label the identity filter drops matches nothing, as in Cilium.

Cost: what depends only on the policies (parsed ipBlocks, their prefixes, CIDR identities and the
identities each block selects) is kept across `sync` calls until the policies or the set of pod
/32 prefixes change; block selection is O(log n) per block plus its answer (see `cidrs`), so n
ipBlocks compile in O(n log n). Peer selectors look only at the identities of the namespaces they
can match.
"""

from __future__ import annotations

import bisect
import heapq
import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

from velvet.control.cidrs import Block, PrefixIndex, exclude, parse_block, prefix_key
from velvet.control.identity import WORLD_PREFIX, IdentityAllocator, normalize_prefix
from velvet.control.labels import (
    DEFAULT_LABEL_FILTER,
    LabelFilter,
    endpoint_labels,
    namespace_labels_of,
    pod_labels_of,
)
from velvet.control.portrange import PORT_BITS, mask_port, split_port_range
from velvet.datapath.tables import (
    ANY_IDENTITY,
    ANY_PROTO,
    Direction,
    PolicyKey,
    PolicyValue,
)
from velvet.errors import VelvetError
from velvet.model import (
    Identity,
    IPBlock,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    NetworkPolicyPeer,
    Pod,
    ReservedIdentity,
)
from velvet.model.cluster_endpoint import ClusterEndpoint
from velvet.model.policy import NetworkPolicyRule

PROTOCOLS: Mapping[str, int] = MappingProxyType({"TCP": 6, "UDP": 17, "SCTP": 132})
ALLOW_LOCALHOST = "reserved:allow-localhost"

PortKey = tuple[int, int, int]  # (proto, port, port prefix length)
_ANY_PORT: PortKey = (ANY_PROTO, 0, 0)
_Grant = tuple[str, tuple[PortKey, ...]]  # a policy name and the port keys it allows
_Grants = dict[int, list[_Grant]]  # identity -> what each rule selecting it allows


@dataclass(frozen=True)
class CompiledEndpoint:
    """The desired policy state of one local endpoint (pod)."""

    pod: str
    ip: str | None
    ep_id: int
    identity: int
    ingress_policies: tuple[str, ...]
    egress_policies: tuple[str, ...]
    entries: Mapping[PolicyKey, PolicyValue]

    @property
    def ingress_isolated(self) -> bool:
        """Some policy selects the pod for ingress."""
        return bool(self.ingress_policies)

    @property
    def egress_isolated(self) -> bool:
        """Some policy selects the pod for egress."""
        return bool(self.egress_policies)

    def isolated(self, direction: Direction) -> bool:
        """Whether the endpoint is isolated for `direction`."""
        return self.ingress_isolated if direction is Direction.INGRESS else self.egress_isolated

    @cached_property
    def entry_index(self) -> Mapping[tuple[Direction, int], Mapping[PortKey, PolicyKey]]:
        """`entries` keys by (direction, identity), then (proto, port, port prefix length)."""
        index: dict[tuple[Direction, int], dict[PortKey, PolicyKey]] = defaultdict(dict)
        for key in self.entries:
            index[key.direction, key.identity][key.proto, key.port, key.port_prefix_len] = key
        return dict(index)


@dataclass(frozen=True)
class CompiledPolicy:
    """Everything the policy datapath needs: endpoints, both ipcaches, the policy set table."""

    endpoints: Mapping[int, CompiledEndpoint]
    ipcache: Mapping[str, int]
    cidr_identities: Mapping[str, int]
    policy_sets: Mapping[int, tuple[str, ...]]

    @cached_property
    def endpoints_by_ip(self) -> Mapping[str, CompiledEndpoint]:
        """Local endpoints by pod IP."""
        return {ep.ip: ep for ep in self.endpoints.values() if ep.ip is not None}

    @cached_property
    def ipcache_index(self) -> Mapping[int, Mapping[int, int]]:
        """`ipcache` as prefix length -> network address (int) -> identity, for LPM emulation."""
        return _prefix_index(self.ipcache)

    @cached_property
    def cidr_index(self) -> Mapping[int, Mapping[int, int]]:
        """`cidr_identities` as prefix length -> network address (int) -> identity."""
        return _prefix_index(self.cidr_identities)


@dataclass(frozen=True)
class _IdentityInfo:
    """What selectors and named ports need to know about one pod identity."""

    namespace: str
    pod_labels: Mapping[str, str]
    namespace_labels: Mapping[str, str]
    pods: tuple[Pod, ...]


class _PolicySets:
    """Interns sets of policy names as small ids, lowest free id first."""

    def __init__(self) -> None:
        self.names: dict[int, tuple[str, ...]] = {}
        self._ids: dict[frozenset[str], int] = {}
        self._next = 1
        self._free: list[int] = []

    def intern(self, names: frozenset[str]) -> int:
        """The id of a set of names."""
        found = self._ids.get(names)
        if found is None:
            if self._free:
                found = heapq.heappop(self._free)
            else:
                found, self._next = self._next, self._next + 1
            self._ids[names] = found
            self.names[found] = tuple(sorted(names))
        return found

    def retain(self, used: set[int]) -> None:
        """Forget every id not in `used`."""
        for stale in self.names.keys() - used:
            del self._ids[frozenset(self.names.pop(stale))]
            heapq.heappush(self._free, stale)


class PolicyCompiler:
    """Compiles NetworkPolicies for local endpoints; holds the identities of the pods it was given.

    Call `sync` with the complete current state (O(pods + policies); the CIDR work is redone only
    when the policies or the pod /32 prefixes change), then `compile` for all endpoints or
    `compile_endpoint` for the affected ones and `assemble` to build the result.
    """

    def __init__(
        self, allocator: IdentityAllocator, label_filter: LabelFilter = DEFAULT_LABEL_FILTER
    ) -> None:
        self.allocator = allocator
        self.label_filter = label_filter
        self._pods: dict[str, Pod] = {}
        self._pod_labels: dict[str, Mapping[str, str]] = {}
        self._pod_identity: dict[str, Identity] = {}
        self._identities: dict[int, _IdentityInfo] = {}
        self._ns_identities: dict[str, list[int]] = {}
        self._ns_labels: dict[str, Mapping[str, str]] = {}
        self._ns_by_label: dict[tuple[str, str], list[str]] = {}
        self._policy_list: list[NetworkPolicy] = []
        self._policies: dict[str, list[NetworkPolicy]] = {}
        self._host_ips: tuple[str, ...] = ()
        self._remote_node_ips: tuple[str, ...] = ()
        self._remote_endpoints: Mapping[str, ClusterEndpoint] | None = None
        self._local_node = ""
        self._policy_cidrs = _PolicyCidrs()
        self._cidrs: dict[str, int] = {}
        self._cidr_index = PrefixIndex({})
        self._block_peers: dict[IPBlock, tuple[int, ...]] = {}
        self._cidr_pod: dict[int, Pod] = {}
        self._pod_cidr: dict[str, int] = {}
        self._peer_cache: dict[tuple[str, Direction, int], tuple[int, ...]] = {}
        self._named_cache: dict[tuple[int, str, str], tuple[tuple[int, int], ...]] = {}
        self._sets = _PolicySets()

    def sync(
        self,
        namespaces: Iterable[Namespace],
        pods: Iterable[Pod],
        policies: Iterable[NetworkPolicy],
        host_ips: Iterable[str] = (),
        remote_node_ips: Iterable[str] = (),
        remote_endpoints: Mapping[str, ClusterEndpoint] | None = None,
        local_node: str = "",
    ) -> None:
        """Take the complete current state: (re)acquire pod identities and policy CIDR identities.

        `remote_endpoints` (IP -> record), when given, are the cluster's published endpoints: the
        ipcache then takes the pods of `local_node` from the pod objects and every other pod from them.
        Without it (one node) every pod object with an IP is in the ipcache.

        When an identity cannot be acquired (a cluster allocator that cannot be asked), the error is
        raised and the compiler keeps the state of the previous `sync`.
        """
        ns_labels = {ns.metadata.name: ns.metadata.labels for ns in namespaces}
        by_key = sorted(pods, key=lambda p: p.metadata.key)
        before, self._pods = self._pods, {p.metadata.key: p for p in by_key if not p.spec.host_network}
        try:
            self._sync_identities(ns_labels)
        except VelvetError:
            self._pods = before
            raise
        self._host_ips = tuple(host_ips)
        self._remote_node_ips = tuple(remote_node_ips)
        self._remote_endpoints = None if remote_endpoints is None else dict(remote_endpoints)
        self._local_node = local_node
        policy_list = sorted(policies, key=lambda p: p.metadata.key)
        if policy_list != self._policy_list:
            self._policy_list = policy_list
            self._policies = defaultdict(list)
            for policy in policy_list:
                self._policies[policy.metadata.namespace].append(policy)
            self._policy_cidrs = _PolicyCidrs.of(policy_list)
        self._sync_cidrs()
        self._peer_cache.clear()
        self._named_cache.clear()

    def identity_of(self, pod_key: str) -> Identity | None:
        """The identity of a pod (namespace/name) given to the last `sync`."""
        return self._pod_identity.get(pod_key)

    def compile(self, endpoints: Mapping[str, int]) -> CompiledPolicy:
        """Compile every local endpoint (pod key -> ep_id) and assemble the result."""
        return self.assemble(self.compile_endpoint(key, ep_id) for key, ep_id in sorted(endpoints.items()))

    def assemble(self, endpoints: Iterable[CompiledEndpoint]) -> CompiledPolicy:
        """The complete result from the compiled endpoints (fresh or kept from earlier compiles)."""
        by_id = {ep.ep_id: ep for ep in endpoints}
        used = {v.policy_id for ep in by_id.values() for v in ep.entries.values()}
        self._sets.retain(used)
        ipcache = {f"{ip}/32": int(ReservedIdentity.REMOTE_NODE) for ip in self._remote_node_ips}
        remote = self._remote_endpoints
        for ip, endpoint in (remote or {}).items():
            if endpoint.node != self._local_node:
                ipcache[f"{ip}/32"] = remote_entry(endpoint)
        ipcache.update((f"{ip}/32", int(ReservedIdentity.HOST)) for ip in self._host_ips)
        for key, pod in self._pods.items():
            if pod.status.pod_ip and (remote is None or pod.spec.node_name == self._local_node):
                ipcache[f"{pod.status.pod_ip}/32"] = self._pod_identity[key].id
        cidrs = {WORLD_PREFIX: int(ReservedIdentity.WORLD), **self._cidrs}
        return CompiledPolicy(
            endpoints=MappingProxyType(dict(sorted(by_id.items()))),
            ipcache=MappingProxyType(ipcache),
            cidr_identities=MappingProxyType(cidrs),
            policy_sets=MappingProxyType({i: self._sets.names[i] for i in sorted(used)}),
        )

    def compile_endpoint(self, pod_key: str, ep_id: int) -> CompiledEndpoint:
        """The entries and isolation of one local endpoint, from the state of the last `sync`."""
        pod = self._pods[pod_key]
        selecting = [
            p for p in self._policies.get(pod.metadata.namespace, ())
            if p.spec.pod_selector.matches(pod.metadata.labels)
        ]
        entries: dict[PolicyKey, PolicyValue] = {}
        isolated_by: dict[Direction, tuple[str, ...]] = {}
        for direction in Direction:
            isolating = [p for p in selecting if direction.policy_type in p.spec.policy_types]
            isolated_by[direction] = tuple(p.metadata.key for p in isolating)
            if not isolating:
                continue
            grants: _Grants = defaultdict(list)
            if direction is Direction.INGRESS:
                grants[int(ReservedIdentity.HOST)].append((ALLOW_LOCALHOST, (_ANY_PORT,)))
            for policy in isolating:
                for index, rule in enumerate(_applied_rules(policy, direction)):
                    self._grant_rule(grants, pod, policy, direction, index, rule)
            entries.update(self._entries(ep_id, direction, grants))
        return CompiledEndpoint(
            pod=pod_key,
            ip=pod.status.pod_ip,
            ep_id=ep_id,
            identity=self._pod_identity[pod_key].id,
            ingress_policies=isolated_by[Direction.INGRESS],
            egress_policies=isolated_by[Direction.EGRESS],
            entries=MappingProxyType(entries),
        )

    def _sync_identities(self, ns_labels: Mapping[str, Mapping[str, str]]) -> None:
        """Acquire identities for new or relabelled pods, then release the ones no longer used."""
        old_labels, old_identity = self._pod_labels, self._pod_identity
        pod_labels: dict[str, Mapping[str, str]] = {}
        pod_identity: dict[str, Identity] = {}
        acquired: list[Mapping[str, str]] = []
        members: dict[int, list[Pod]] = defaultdict(list)
        try:
            for key, pod in self._pods.items():
                ns = pod.metadata.namespace
                labels = endpoint_labels(pod.metadata.labels, ns, ns_labels.get(ns, {}), self.label_filter)
                if old_labels.get(key) == labels:
                    identity = old_identity[key]
                else:
                    identity = self.allocator.acquire(labels)
                    acquired.append(labels)
                pod_labels[key], pod_identity[key] = labels, identity
                members[identity.id].append(pod)
        except VelvetError:  # all or nothing: hand back what this pass took
            for labels in acquired:
                self.allocator.release(labels)
            raise
        for key, labels in old_labels.items():
            if pod_labels.get(key) != labels:
                self.allocator.release(labels)
        self._pod_labels, self._pod_identity = pod_labels, pod_identity
        self._identities, self._ns_identities, self._ns_labels = {}, defaultdict(list), {}
        for number, pods in members.items():
            labels = self._pod_labels[pods[0].metadata.key]
            info = self._identities[number] = _IdentityInfo(
                namespace=pods[0].metadata.namespace,
                pod_labels=pod_labels_of(labels),
                namespace_labels=namespace_labels_of(labels),
                pods=tuple(pods),
            )
            self._ns_identities[info.namespace].append(number)
            self._ns_labels[info.namespace] = info.namespace_labels
        self._ns_by_label = defaultdict(list)
        for ns, labels in self._ns_labels.items():
            for item in labels.items():
                self._ns_by_label[item].append(ns)

    def _sync_cidrs(self) -> None:
        """Hold one CIDR identity per policy prefix and needed pod /32; re-index only on change."""
        pod_prefixes = self._pod_prefixes()
        wanted = self._policy_cidrs.prefixes | pod_prefixes.keys()
        if wanted != self._cidrs.keys():
            for prefix in sorted(wanted - self._cidrs.keys(), key=prefix_key):
                self._cidrs[prefix] = self.allocator.allocate_cidr(prefix).id
            for prefix in self._cidrs.keys() - wanted:
                self.allocator.release_cidr(prefix)
                del self._cidrs[prefix]
            self._cidrs = dict(sorted(self._cidrs.items(), key=lambda kv: prefix_key(kv[0])))
            self._cidr_index = PrefixIndex(self._cidrs)
            self._block_peers.clear()
        by_prefix = {f"{p.status.pod_ip}/32": p for p in self._pods.values() if p.status.pod_ip}
        self._cidr_pod = {self._cidrs[p]: by_prefix[p] for p in pod_prefixes}
        self._pod_cidr = {pod.metadata.key: n for n, pod in self._cidr_pod.items()}

    def _pod_prefixes(self) -> dict[str, None]:
        """The pod /32 prefixes that named egress ports need.

        Those of pods inside an ipBlock of a rule with a named port, and those of every pod of an
        identity whose pods disagree on the number of a name some egress rule uses.
        """
        found: dict[str, None] = {}
        blocks = self._policy_cidrs.named_blocks
        if blocks:
            by_address = sorted(
                (int(ipaddress.IPv4Address(p.status.pod_ip)), p.status.pod_ip)
                for p in self._pods.values() if p.status.pod_ip
            )
            addresses = [a for a, _ in by_address]
            for block in blocks:
                low = bisect.bisect_left(addresses, int(block.cidr.network_address))
                high = bisect.bisect_right(addresses, int(block.cidr.broadcast_address))
                found.update((f"{ip}/32", None) for a, ip in by_address[low:high] if block.contains(a))
        for info in self._identities.values():
            with_ip = [p for p in info.pods if p.status.pod_ip]
            names = self._policy_cidrs.names
            if len(with_ip) > 1 and any(len(_numbers(with_ip, *name)) > 1 for name in names):
                found.update((f"{p.status.pod_ip}/32", None) for p in with_ip)
        return found

    def _grant_rule(
        self, grants: _Grants, pod: Pod, policy: NetworkPolicy, direction: Direction, index: int,
        rule: NetworkPolicyRule,
    ) -> None:
        """Add what one rule allows to `grants`."""
        name = policy.metadata.key
        peers = self._rule_peers(policy, direction, index, rule)
        numbered: list[PortKey] = [] if rule.ports else [_ANY_PORT]
        for port in rule.ports:
            proto = PROTOCOLS[port.protocol]
            if not isinstance(port.port, str):
                numbered.extend(_port_keys(proto, port.port, port.end_port))
            else:
                for identity, number in self._named_targets(pod, direction, peers, port.port, port.protocol):
                    grants[identity].append((name, ((proto, number, PORT_BITS),)))
        if numbered:
            grant = (name, tuple(numbered))
            for peer in peers:
                grants[peer].append(grant)

    def _named_targets(
        self, pod: Pod, direction: Direction, peers: tuple[int, ...], name: str, protocol: str
    ) -> Iterator[tuple[int, int]]:
        """(identity, number) pairs of a named port: resolved on the endpoint (ingress) or each peer."""
        if direction is Direction.INGRESS:
            number = pod.named_port(name, protocol)
            if number is not None:
                yield from ((peer, number) for peer in peers)
        else:
            for peer in peers:
                yield from self._resolve_named(peer, name, protocol)

    def _rule_peers(
        self, policy: NetworkPolicy, direction: Direction, index: int, rule: NetworkPolicyRule
    ) -> tuple[int, ...]:
        """The identities a rule's from/to selects, ascending ((0,) = any peer), cached per sync."""
        if not rule.peers:
            return (ANY_IDENTITY,)
        key = (policy.metadata.key, direction, index)
        found = self._peer_cache.get(key)
        if found is None:
            selected = {n for peer in rule.peers for n in self._select_peer(policy.metadata.namespace, peer)}
            found = self._peer_cache[key] = tuple(sorted(selected))
        return found

    def _select_peer(self, namespace: str, peer: NetworkPolicyPeer) -> Iterable[int]:
        """The identities one peer selects: CIDR identities for an ipBlock, else pod identities."""
        if peer.ip_block is not None:
            return self._select_block(peer.ip_block)
        pod_sel, ns_sel = peer.pod_selector, peer.namespace_selector
        if pod_sel is None and ns_sel is None:
            return ()
        spaces = [namespace] if ns_sel is None else self._namespaces_matching(ns_sel)
        numbers = (n for ns in spaces for n in self._ns_identities.get(ns, ()))
        if pod_sel is None:
            return numbers
        return (n for n in numbers if pod_sel.matches(self._identities[n].pod_labels))

    def _namespaces_matching(self, selector: LabelSelector) -> list[str]:
        """The namespaces with pod identities that `selector` selects (matchLabels via an index)."""
        candidates: list[str] | Mapping[str, Mapping[str, str]] = self._ns_labels
        if selector.match_labels:
            postings = (self._ns_by_label.get(item, []) for item in selector.match_labels.items())
            candidates = min(postings, key=len)
        return [ns for ns in candidates if selector.matches(self._ns_labels[ns])]

    def _select_block(self, ip_block: IPBlock) -> tuple[int, ...]:
        """The CIDR identities (and WORLD for an except-free 0.0.0.0/0) an ipBlock selects; cached."""
        found = self._block_peers.get(ip_block)
        if found is None:
            block = self._policy_cidrs.blocks[ip_block]
            selected: list[int] = []
            if block is not None:
                if block.cidr.prefixlen == 0 and not block.excepts:
                    selected.append(int(ReservedIdentity.WORLD))
                selected.extend(self._cidr_index.inside(block))
            found = self._block_peers[ip_block] = tuple(selected)
        return found

    def _resolve_named(self, peer: int, name: str, protocol: str) -> tuple[tuple[int, int], ...]:
        """(identity, port number) pairs a named egress port means for one selected peer."""
        key = (peer, name, protocol)
        found = self._named_cache.get(key)
        if found is None:
            if peer == ANY_IDENTITY:
                owners: Iterable[int] = self._identities
            else:
                owners = (peer,) if peer in self._identities else ()
            resolved = {pair for n in owners for pair in self._identity_ports(n, name, protocol)}
            pod = self._cidr_pod.get(peer)
            number = pod.named_port(name, protocol) if pod is not None else None
            if number is not None:
                resolved.add((peer, number))
            found = self._named_cache[key] = tuple(sorted(resolved))
        return found

    def _identity_ports(self, identity: int, name: str, protocol: str) -> Iterator[tuple[int, int]]:
        """What a named port means on the pods of one identity, as (identity, number) pairs.

        The identity itself when all its pods give the name one number, else the /32 CIDR identity
        of each pod that defines the name.
        """
        pods = [p for p in self._identities[identity].pods if p.status.pod_ip]
        numbers = _numbers(pods, name, protocol)
        if len(numbers) == 1:
            number = numbers.pop()
            if number is not None:
                yield identity, number
            return
        for pod in pods:
            number = pod.named_port(name, protocol)
            if number is not None:
                yield self._pod_cidr[pod.metadata.key], number

    def _entries(
        self, ep_id: int, direction: Direction, grants: _Grants
    ) -> Iterator[tuple[PolicyKey, PolicyValue]]:
        """Policy map entries from grants, each naming the policies of every entry covering it.

        Identities that received the same grants get the same port keys and policy sets, so the
        sets are computed once per distinct list of grants.
        """
        any_peer = _merge(grants.get(ANY_IDENTITY, ()))
        done: dict[tuple[_Grant, ...], list[tuple[PortKey, PolicyValue]]] = {}
        for identity, granted in grants.items():
            if identity == ANY_IDENTITY:
                values = self._closure(any_peer, {})
            else:
                signature = tuple(granted)
                found = done.get(signature)
                if found is None:
                    found = done[signature] = self._closure(_merge(granted), any_peer)
                values = found
            for key, value in values:
                yield PolicyKey(ep_id, direction, identity, *key), value

    def _closure(
        self, keys: Mapping[PortKey, set[str]], any_peer: Mapping[PortKey, set[str]]
    ) -> list[tuple[PortKey, PolicyValue]]:
        """Each key with the value naming its policies plus those of covering keys here and in `any_peer`."""
        lengths, any_lengths = _port_lengths(keys), _port_lengths(any_peer)
        values = []
        for key, own in keys.items():
            names = set(own)
            _add_covering(names, keys, lengths, key, inclusive=False)
            if any_peer:
                _add_covering(names, any_peer, any_lengths, key, inclusive=True)
            values.append((key, PolicyValue(self._sets.intern(frozenset(names)))))
        return values


def remote_entry(endpoint: ClusterEndpoint) -> int:
    """The ipcache value of a pod another node published: its identity number."""
    return endpoint.identity


@dataclass(frozen=True)
class _PolicyCidrs:
    """What the ipBlocks of a set of policies need, computed once per change of the policies."""

    blocks: Mapping[IPBlock, Block | None] = field(default_factory=dict)  # every ipBlock, parsed
    prefixes: frozenset[str] = frozenset()  # their prefixes (pod /32s aside)
    named_blocks: tuple[Block, ...] = ()  # blocks of egress rules with named ports: pod /32s inside
    names: frozenset[tuple[str, str]] = frozenset()  # (name, protocol) of every named egress port

    @classmethod
    def of(cls, policies: Iterable[NetworkPolicy]) -> _PolicyCidrs:
        """Parse the ipBlocks and named egress ports of `policies`."""
        blocks: dict[IPBlock, Block | None] = {}
        prefixes: set[str] = set()
        named_blocks: dict[IPBlock, Block] = {}
        names: set[tuple[str, str]] = set()
        for policy in policies:
            for direction in Direction:
                for rule in _applied_rules(policy, direction):
                    named = {(p.port, p.protocol) for p in rule.ports if isinstance(p.port, str)}
                    egress_named = direction is Direction.EGRESS and bool(named)
                    if egress_named:
                        names |= named
                    for ip_block in (p.ip_block for p in rule.peers if p.ip_block is not None):
                        if ip_block not in blocks:
                            block = blocks[ip_block] = parse_block(ip_block)
                            prefixes.update(_block_prefixes(block))
                        block = blocks[ip_block]
                        if egress_named and block is not None:
                            named_blocks[ip_block] = block
        return cls(blocks, frozenset(prefixes), tuple(named_blocks.values()), frozenset(names))


def _block_prefixes(block: Block | None) -> Iterator[str]:
    """The prefixes an ipBlock needs: its cidr and excepts, or for 0.0.0.0/0 with excepts the complement."""
    if block is None:
        return
    if block.cidr.prefixlen == 0 and block.excepts:
        yield from (str(n) for n in exclude(block.cidr, block.excepts))
    yield from (str(n) for n in (block.cidr, *block.excepts) if n.prefixlen)


def _numbers(pods: Iterable[Pod], name: str, protocol: str) -> set[int | None]:
    """The numbers `pods` give a named port (None for a pod that lacks it)."""
    return {p.named_port(name, protocol) for p in pods}


def _merge(granted: Iterable[_Grant]) -> dict[PortKey, set[str]]:
    """Port key -> names of the policies allowing it, from a list of grants."""
    keys: dict[PortKey, set[str]] = defaultdict(set)
    for name, port_keys in granted:
        for key in port_keys:
            keys[key].add(name)
    return keys


def _applied_rules(policy: NetworkPolicy, direction: Direction) -> tuple[NetworkPolicyRule, ...]:
    """The rules of `policy` for `direction`; none unless policyTypes lists the direction."""
    if direction.policy_type not in policy.spec.policy_types:
        return ()
    return policy.spec.ingress if direction is Direction.INGRESS else policy.spec.egress


def _port_keys(proto: int, number: int | None, end_port: int | None) -> Iterator[PortKey]:
    """The port keys of a numbered (or omitted) port, ranges split into aligned prefixes."""
    if number is None:
        yield (proto, 0, 0)
    elif end_port is None:
        yield (proto, number, PORT_BITS)
    else:
        for start, length in split_port_range(number, end_port):
            yield (proto, start, length)


def _port_lengths(keys: Mapping[PortKey, set[str]]) -> dict[int, list[int]]:
    """For each protocol, the port prefix lengths present among `keys`, ascending."""
    lengths: dict[int, set[int]] = defaultdict(set)
    for proto, _, length in keys:
        lengths[proto].add(length)
    return {proto: sorted(found) for proto, found in lengths.items()}


def _add_covering(
    names: set[str], keys: Mapping[PortKey, set[str]], lengths: Mapping[int, list[int]], key: PortKey,
    inclusive: bool,
) -> None:
    """Add to `names` the policies of every key in `keys` containing `key` (itself too if inclusive)."""
    proto, port, length = key
    if proto != ANY_PROTO or inclusive:
        names.update(keys.get(_ANY_PORT, ()))
    if proto == ANY_PROTO:
        return
    for shorter in lengths.get(proto, ()):
        if shorter > length or (shorter == length and not inclusive):
            break
        names.update(keys.get((proto, mask_port(port, shorter), shorter), ()))


def _prefix_index(prefixes: Mapping[str, int]) -> Mapping[int, Mapping[int, int]]:
    """prefix text -> value as prefix length -> network address -> value, longest length first."""
    index: dict[int, dict[int, int]] = defaultdict(dict)
    for prefix, value in prefixes.items():
        net = ipaddress.IPv4Network(normalize_prefix(prefix))
        index[net.prefixlen][int(net.network_address)] = value
    return dict(sorted(index.items(), reverse=True))
