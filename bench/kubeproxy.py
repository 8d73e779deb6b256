"""kube-proxy's rules for N ClusterIP services, written the way kube-proxy writes them (pure text, no I/O).

`iptables_restore` gives iptables-restore input of kube-proxy's iptables mode (nat: KUBE-SERVICES ->
KUBE-SVC-<hash> -> KUBE-SEP-<hash> with `statistic --mode random` and DNAT; filter: KUBE-FORWARD);
`nft_script` gives an `nft -f` script shaped like kube-proxy's nftables mode (one `service-ips`
verdict map, `numgen random mod E vmap` per service). Chain names hash like kube-proxy's
(base32 of sha256, 16 characters). The benchmark's target service is the last one in `services`.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

CLUSTER_CIDR = "10.244.0.0/16"
MASQ_MARK = "0x4000"


@dataclass(frozen=True)
class Svc:
    """One ClusterIP service port: namespace/name, VIP:port, TCP backends (ip, port)."""

    namespace: str
    name: str
    vip: str
    port: int
    endpoints: tuple[tuple[str, int], ...]

    @property
    def port_name(self) -> str:
        """kube-proxy's ServicePortName string (ns/name:port-name)."""
        return f"{self.namespace}/{self.name}:tcp"


def _hash(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def svc_chain(svc: Svc) -> str:
    """KUBE-SVC-<hash> of a service port."""
    return "KUBE-SVC-" + _hash(svc.port_name + "tcp")


def sep_chain(svc: Svc, endpoint: tuple[str, int]) -> str:
    """KUBE-SEP-<hash> of one endpoint of a service port."""
    return "KUBE-SEP-" + _hash(svc.port_name + "tcp" + f"{endpoint[0]}:{endpoint[1]}")


def probability(index: int, count: int) -> str | None:
    """kube-proxy's `--probability` for endpoint `index` of `count` (None for the last: no match)."""
    if index == count - 1:
        return None
    return f"{1.0 / (count - index):0.10f}"


def services(count: int, endpoints: Sequence[tuple[str, int]], first_vip: str = "10.96.1.0",
             namespace: str = "bench-svc") -> list[Svc]:
    """`count` services s00000.. with consecutive VIPs from `first_vip`, all on `endpoints`."""
    base = int(ipaddress.IPv4Address(first_vip))
    return [Svc(namespace, f"s{i:05d}", str(ipaddress.IPv4Address(base + i)), 80, tuple(endpoints))
            for i in range(count)]


def iptables_restore(svcs: Sequence[Svc]) -> str:
    """iptables-restore input (nat and filter tables) for `svcs`, in order (the last one last)."""
    nat_chains = ["KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-NODEPORTS", "KUBE-MARK-MASQ"]
    nat_rules = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
        f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}",
    ]
    for svc in svcs:
        chain = svc_chain(svc)
        comment = f'"{svc.port_name} cluster IP"'
        nat_chains.append(chain)
        nat_rules.append(f"-A KUBE-SERVICES -m comment --comment {comment} -m tcp -p tcp "
                         f"-d {svc.vip}/32 --dport {svc.port} -j {chain}")
        nat_rules.append(f"-A {chain} -m comment --comment {comment} -m tcp -p tcp -d {svc.vip}/32 "
                         f"--dport {svc.port} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ")
        for index, ep in enumerate(svc.endpoints):
            sep = sep_chain(svc, ep)
            nat_chains.append(sep)
            prob = probability(index, len(svc.endpoints))
            stat = f" -m statistic --mode random --probability {prob}" if prob else ""
            nat_rules.append(f'-A {chain} -m comment --comment "{svc.port_name} -> {ep[0]}:{ep[1]}"{stat} '
                             f"-j {sep}")
            nat_rules.append(f"-A {sep} -m comment --comment {svc.port_name} -s {ep[0]}/32 -j KUBE-MARK-MASQ")
            nat_rules.append(f"-A {sep} -m comment --comment {svc.port_name} -m tcp -p tcp "
                             f"-j DNAT --to-destination {ep[0]}:{ep[1]}")
    nat_rules.append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must '
                     'be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')
    filter_lines = [
        "*filter",
        ":KUBE-SERVICES - [0:0]", ":KUBE-EXTERNAL-SERVICES - [0:0]", ":KUBE-FORWARD - [0:0]",
        ":KUBE-NODEPORTS - [0:0]", ":KUBE-PROXY-FIREWALL - [0:0]",
        '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" '
        "-j KUBE-PROXY-FIREWALL",
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" '
        "-j KUBE-PROXY-FIREWALL",
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" '
        "-j KUBE-SERVICES",
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service '
        'portals" -j KUBE-EXTERNAL-SERVICES',
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark '
        f"{MASQ_MARK}/{MASQ_MARK} -j ACCEPT",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack '
        "--ctstate RELATED,ESTABLISHED -j ACCEPT",
        "COMMIT",
    ]
    nat = ["*nat", *(f":{c} - [0:0]" for c in nat_chains), *nat_rules, "COMMIT"]
    return "\n".join([*filter_lines, *nat]) + "\n"


def iptables_partial_sync(svcs: Sequence[Svc], changed: Svc) -> str:
    """iptables-restore --noflush input of kube-proxy's partial sync after `changed` was added.

    Like kube-proxy (>= 1.26) it rewrites the whole KUBE-SERVICES chain (one jump per service of
    `svcs`, `changed` included) and only the KUBE-SVC/KUBE-SEP chains of `changed`.
    """
    full = iptables_restore(svcs).split("*nat\n", 1)[1].splitlines()
    own = {svc_chain(changed), *(sep_chain(changed, ep) for ep in changed.endpoints)}
    keep = [":KUBE-SERVICES - [0:0]", *(f":{c} - [0:0]" for c in sorted(own))]
    keep += [line for line in full if line.startswith("-A KUBE-SERVICES ")
             or (line.startswith("-A ") and line.split(" ", 2)[1] in own)]
    return "*nat\n" + "\n".join([*keep, "COMMIT"]) + "\n"


def nft_name(svc: Svc) -> str:
    """kube-proxy's nftables chain name of a service port, with `_` for `/` (this nft quotes no names)."""
    return f"service-{_hash(svc.port_name + 'tcp')[:8]}-{svc.namespace}_{svc.name}_tcp_p{svc.port}"


def _nft_service(svc: Svc) -> list[str]:
    chain = nft_name(svc)
    lines = [f"add chain ip kube-proxy {chain}",
             f"add rule ip kube-proxy {chain} ip daddr {svc.vip} tcp dport {svc.port} "
             f"ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade"]
    targets = []
    for index, (ip, port) in enumerate(svc.endpoints):
        ep_chain = f"endpoint-{_hash(chain + ip)[:8]}-{svc.namespace}_{svc.name}_tcp_p{svc.port}__{ip}_{port}"
        lines += [f"add chain ip kube-proxy {ep_chain}",
                  f"add rule ip kube-proxy {ep_chain} ip saddr {ip} jump mark-for-masquerade",
                  f"add rule ip kube-proxy {ep_chain} meta l4proto tcp dnat to {ip}:{port}"]
        targets.append(f"{index} : goto {ep_chain}")
    lines.append(f"add rule ip kube-proxy {chain} numgen random mod {len(svc.endpoints)} "
                 f"vmap {{ {', '.join(targets)} }}")
    lines.append(f"add element ip kube-proxy service-ips {{ {svc.vip} . tcp . {svc.port} : goto {chain} }}")
    return lines


def nft_script(svcs: Sequence[Svc]) -> str:
    """An `nft -f` script shaped like kube-proxy's nftables mode for `svcs`."""
    lines = [
        "add table ip kube-proxy",
        "add chain ip kube-proxy mark-for-masquerade",
        f"add rule ip kube-proxy mark-for-masquerade mark set mark or {MASQ_MARK}",
        "add chain ip kube-proxy masquerading",
        f"add rule ip kube-proxy masquerading mark and {MASQ_MARK} == 0 return",
        f"add rule ip kube-proxy masquerading mark set mark xor {MASQ_MARK}",
        "add rule ip kube-proxy masquerading masquerade fully-random",
        "add chain ip kube-proxy services",
        "add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }",
        "add rule ip kube-proxy nat-prerouting jump services",
        "add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }",
        "add rule ip kube-proxy nat-postrouting jump masquerading",
        "add chain ip kube-proxy filter-forward { type filter hook forward priority -110 ; }",
        "add chain ip kube-proxy services-filter",
        "add rule ip kube-proxy filter-forward ct state new jump services-filter",
        "add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }",
        "add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips",
    ]
    for svc in svcs:
        lines += _nft_service(svc)
    return "\n".join(lines) + "\n"


def nft_add_one(svc: Svc) -> str:
    """An `nft -f` script adding one service to an existing kube-proxy table."""
    return "\n".join(_nft_service(svc)) + "\n"
