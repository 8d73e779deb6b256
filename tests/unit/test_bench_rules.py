"""The benchmark's kube-proxy rule generator writes the chains, jumps and probabilities kube-proxy writes."""

from __future__ import annotations

import re

from bench import kubeproxy

ENDPOINTS = [("10.244.2.10", 8080), ("10.244.2.11", 8080), ("10.244.2.12", 8080), ("10.244.2.13", 8080)]


def nat_rules(text: str) -> list[str]:
    """The -A lines of the nat table."""
    nat = text.split("*nat\n", 1)[1]
    return [line for line in nat.splitlines() if line.startswith("-A ")]


def test_each_service_gets_a_svc_chain_jumped_from_kube_services_in_order() -> None:
    """Test that KUBE-SERVICES jumps to one KUBE-SVC chain per service, in order, then to KUBE-NODEPORTS."""
    svcs = kubeproxy.services(3, ENDPOINTS[:1])
    rules = nat_rules(kubeproxy.iptables_restore(svcs))
    jumps = [line for line in rules if line.startswith("-A KUBE-SERVICES ")]
    assert [j.split(" -d ", 1)[1].split("/32")[0] for j in jumps[:-1]] == [s.vip for s in svcs]
    assert [j.rsplit(" ", 1)[1] for j in jumps[:-1]] == [kubeproxy.svc_chain(s) for s in svcs]
    assert jumps[-1].endswith("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")
    assert len({kubeproxy.svc_chain(s) for s in svcs}) == 3


def test_endpoints_are_chosen_with_kube_proxy_probabilities_and_dnat() -> None:
    """Test that 4 endpoints get probabilities 1/4, 1/3, 1/2 and a catch-all, each a SEP chain with DNAT."""
    svc = kubeproxy.services(1, ENDPOINTS)[0]
    rules = nat_rules(kubeproxy.iptables_restore([svc]))
    chain = kubeproxy.svc_chain(svc)
    to_sep = [r for r in rules if r.startswith(f"-A {chain} ") and "-j KUBE-SEP-" in r]
    probs = [m[1] if (m := re.search(r"--probability (\S+)", r)) else None for r in to_sep]
    assert probs == ["0.2500000000", "0.3333333333", "0.5000000000", None]
    assert all("-m statistic --mode random" in r for r in to_sep[:3])
    for rule, ep in zip(to_sep, ENDPOINTS, strict=True):
        sep = kubeproxy.sep_chain(svc, ep)
        assert rule.endswith(f"-j {sep}")
        assert f"-A {sep} -m comment --comment {svc.port_name} -m tcp -p tcp -j DNAT --to-destination " \
               f"{ep[0]}:{ep[1]}" in rules
    masq = [r for r in rules if r.startswith(f"-A {chain} ") and "KUBE-MARK-MASQ" in r]
    assert len(masq) == 1
    assert f"! -s {kubeproxy.CLUSTER_CIDR}" in masq[0]


def test_every_chain_used_is_declared_once() -> None:
    """Test that every KUBE-SVC/KUBE-SEP chain a rule names is declared exactly once in the nat table."""
    text = kubeproxy.iptables_restore(kubeproxy.services(5, ENDPOINTS[:2]))
    nat = text.split("*nat\n", 1)[1]
    declared = [line[1:].split(" ")[0] for line in nat.splitlines() if line.startswith(":")]
    used = set(re.findall(r"KUBE-(?:SVC|SEP)-[A-Z2-7]{16}", nat))
    assert len(declared) == len(set(declared))
    assert used <= set(declared)
    assert len(used) == 5 * (1 + 2)


def test_partial_sync_rewrites_kube_services_and_only_the_new_chains() -> None:
    """Test that the --noflush input carries every KUBE-SERVICES jump but only the new service's chains."""
    svcs = kubeproxy.services(4, ENDPOINTS[:2])
    text = kubeproxy.iptables_partial_sync(svcs, svcs[-1])
    rules = nat_rules(text)
    assert sum(r.startswith("-A KUBE-SERVICES ") for r in rules) == 4 + 1
    chains = {line[1:].split(" ")[0] for line in text.splitlines() if line.startswith(":")}
    assert chains == {"KUBE-SERVICES", kubeproxy.svc_chain(svcs[-1]),
                      *(kubeproxy.sep_chain(svcs[-1], ep) for ep in ENDPOINTS[:2])}


def test_nft_script_maps_each_vip_to_its_service_chain() -> None:
    """Test that the nftables script has one service-ips element per service and numgen over its endpoints."""
    svcs = kubeproxy.services(3, ENDPOINTS)
    script = kubeproxy.nft_script(svcs)
    prefix = "add element ip kube-proxy service-ips"
    elements = [line for line in script.splitlines() if line.startswith(prefix)]
    assert [e.split("{ ")[1].split(" ")[0] for e in elements] == [s.vip for s in svcs]
    assert script.count("numgen random mod 4 vmap") == 3
    assert script.count(" dnat to ") == 3 * 4
