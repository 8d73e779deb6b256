"""The connectivity suite: each check sends real traffic, then finds that traffic in the flow log.

A check returns its problems (empty: passed). It judges twice: by the traffic's outcome (an answer
naming the expected pod, or no answer) and by the flows the agent recorded for it (verdict, drop
reason, the policy that allowed or isolated).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from velvet.connectivity import manifests as m
from velvet.connectivity.env import Env, Flow

AFFINITY_REQUESTS = 8
_SINCE_MARGIN_NS = 50_000_000


@dataclass(frozen=True)
class Check:
    """One named test of the suite."""

    name: str
    description: str
    run: Callable[[Env], list[str]]
    enforcing: bool = False
    """It needs policy drops: skipped when the agent runs in global policy audit mode."""


def _since() -> int:
    return time.time_ns() - _SINCE_MARGIN_NS


def _dport(flow: Flow) -> int:
    l4 = flow.get("l4") or {}
    return int((l4.get("TCP") or l4.get("UDP") or {}).get("destination_port", 0))


def _syn_only(flow: Flow) -> bool:
    flags = ((flow.get("l4") or {}).get("TCP") or {}).get("flags") or {}
    return bool(flags.get("SYN")) and not flags.get("ACK")


def _pod(flow: Flow, side: str) -> str:
    ep = flow.get(side) or {}
    return f"{ep.get('namespace', '')}/{ep.get('pod_name', '')}"


def _policies(flow: Flow, key: str) -> list[str]:
    return [f"{p['namespace']}/{p['name']}" for p in flow.get(key) or ()]


def _answered_by(answer: str | None) -> str:
    """The pod ("ns/name") an echo answer names, "" for none."""
    return f"{m.NAMESPACE}/{answer.split()[0]}" if answer else ""


def _expect_answer(problems: list[str], what: str, answer: str | None, pods: tuple[str, ...]) -> None:
    if answer is None:
        problems.append(f"{what}: no answer")
    elif _answered_by(answer) not in pods:
        problems.append(f"{what}: answered by {answer.split()[0]!r}, want one of {list(pods)}")


def _expect_flow(problems: list[str], env: Env, since: int, what: str, match: Callable[[Flow], bool],
                 **filters: str) -> Flow | None:
    flow = env.wait_flow(since, match, **filters)
    if flow is None:
        problems.append(f"no flow recorded for {what}")
    return flow


def _forwarded_to(port: int, pod: str = "") -> Callable[[Flow], bool]:
    """A FORWARDED packet arriving at the pod (`pod`, when given) on `port`."""
    return lambda f: (f.get("verdict") == "FORWARDED" and f.get("trace_observation_point") == "TO_ENDPOINT"
                      and _dport(f) == port and (not pod or _pod(f, "destination") == pod))


def pod_to_pod(env: Env) -> list[str]:
    """client reaches echo-a by pod IP over TCP and UDP; both recorded FORWARDED at echo-a."""
    problems: list[str] = []
    since, ip = _since(), env.pod_ips[m.ECHO_A]
    _expect_answer(problems, "TCP", env.probe(m.CLIENT, f"tcp://{ip}:{m.TCP_PORT}"), (m.ECHO_A,))
    _expect_answer(problems, "UDP", env.probe(m.CLIENT, f"udp://{ip}:{m.UDP_PORT}"), (m.ECHO_A,))
    for proto, port in (("tcp", m.TCP_PORT), ("udp", m.UDP_PORT)):
        _expect_flow(problems, env, since, f"{proto.upper()} client -> echo-a:{port} FORWARDED",
                     _forwarded_to(port), from_pod=m.CLIENT, to_pod=m.ECHO_A, protocol=proto)
    return problems


def _pod_to_service(env: Env, proto: str, port: int) -> list[str]:
    """client reaches the echo ClusterIP; the socket LB's translation and the backend's arrival recorded."""
    problems: list[str] = []
    since, vip = _since(), env.cluster_ips[m.SERVICE]
    answer = env.probe(m.CLIENT, f"{proto}://{vip}:{m.SERVICE_PORT}")
    _expect_answer(problems, f"{proto.upper()} {vip}:{m.SERVICE_PORT}", answer, (m.ECHO_A, m.ECHO_B))
    service = f"{m.NAMESPACE}/{m.SERVICE}"
    _expect_flow(problems, env, since, f"the {proto.upper()} translation to a backend of service {service}",
                 lambda f: f.get("verdict") == "TRANSLATED" and _dport(f) == port,
                 from_pod=m.CLIENT, to_service=service, protocol=proto)
    if answer is not None:
        backend = _answered_by(answer)
        _expect_flow(problems, env, since, f"{proto.upper()} client -> {backend}:{port} FORWARDED",
                     _forwarded_to(port), from_pod=m.CLIENT, to_pod=backend, protocol=proto)
    return problems


def pod_to_service_tcp(env: Env) -> list[str]:
    """client reaches the echo Service's ClusterIP over TCP."""
    return _pod_to_service(env, "tcp", m.TCP_PORT)


def pod_to_service_udp(env: Env) -> list[str]:
    """client reaches the echo Service's ClusterIP over UDP."""
    return _pod_to_service(env, "udp", m.UDP_PORT)


def nodeport_from_external(env: Env) -> list[str]:
    """The external client (its own netns, off the node) reaches the NodePort on the node's IP."""
    problems: list[str] = []
    since, node_port = _since(), env.node_ports[m.NODEPORT_SERVICE]
    node_ip, external_ip = env.cfg.node_uplink_ip, env.cfg.ext_uplink_ip
    answer = env.probe_external(f"tcp://{node_ip}:{node_port}")
    _expect_answer(problems, f"TCP {node_ip}:{node_port} from {external_ip}", answer, (m.ECHO_A, m.ECHO_B))
    if answer is not None:
        _expect_flow(problems, env, since, f"TCP -> {_answered_by(answer)}:{m.TCP_PORT} FORWARDED",
                     _forwarded_to(m.TCP_PORT), to_pod=_answered_by(answer), protocol="tcp",
                     not_from_namespace=m.NAMESPACE)
    return problems


def session_affinity(env: Env) -> list[str]:
    """Every new connection of client to a ClientIP-affinity Service lands on the same backend."""
    problems: list[str] = []
    since, vip = _since(), env.cluster_ips[m.AFFINITY_SERVICE]
    answers = env.http_gets(m.CLIENT, f"http://{vip}:{m.SERVICE_PORT}/", AFFINITY_REQUESTS)
    backends = {_answered_by(a) for a in answers if a and not a.startswith("error:")}
    failed = AFFINITY_REQUESTS - sum(1 for a in answers if a and not a.startswith("error:"))
    if failed:
        problems.append(f"{failed} of {AFFINITY_REQUESTS} requests failed")
    if len(backends) != 1:
        problems.append(f"answers came from {sorted(backends)}, want one backend")
    flows = env.wait_flows(since, lambda f: _forwarded_to(m.TCP_PORT)(f) and _syn_only(f),
                           lambda found: len(found) >= AFFINITY_REQUESTS,
                           from_pod=m.CLIENT, to_namespace=m.NAMESPACE, protocol="tcp")
    landed = sorted({_pod(f, "destination") for f in flows})
    if len(flows) < AFFINITY_REQUESTS or len(landed) != 1:
        problems.append(f"flows show {len(flows)} new connections landing on {landed}, "
                        f"want {AFFINITY_REQUESTS} on one backend")
    return problems


def _drop_of(direction: str, policy: str) -> Callable[[Flow], bool]:
    """A policy drop (POLICY_DENIED) in `direction` that names `policy` as isolating the endpoint."""
    key = f"{direction.lower()}_denied_by"
    return lambda f: (f.get("verdict") == "DROPPED" and f.get("drop_reason_desc") == "POLICY_DENIED"
                      and f.get("traffic_direction") == direction and policy in _policies(f, key))


def _allow_by(direction: str, policy: str) -> Callable[[Flow], bool]:
    """A FORWARDED policy verdict in `direction` naming `policy` as the one that allowed it."""
    key = f"{direction.lower()}_allowed_by"
    return lambda f: f.get("verdict") == "FORWARDED" and policy in _policies(f, key)


def default_deny_allow(env: Env) -> list[str]:
    """deny-target isolated with nothing allowed but client on TCP: client gets in, other is dropped."""
    manifest = m.default_deny_policies()
    env.apply(manifest)
    try:
        env.wait_enforcement(m.DENY_TARGET, "ingress_enforcement", "enabled")
        problems: list[str] = []
        since, url = _since(), f"tcp://{env.pod_ips[m.DENY_TARGET]}:{m.TCP_PORT}"
        allowed = env.probe(m.CLIENT, url)
        _expect_answer(problems, "client -> deny-target (allowed)", allowed, (m.DENY_TARGET,))
        if env.probe(m.OTHER, url) is not None:
            problems.append("other -> deny-target: answered, want dropped by policy")
        allow, deny = f"{m.NAMESPACE}/allow-client", f"{m.NAMESPACE}/default-deny-ingress"
        _expect_flow(problems, env, since, f"client -> deny-target allowed by {allow}",
                     _allow_by("INGRESS", allow), from_pod=m.CLIENT, to_pod=m.DENY_TARGET)
        _expect_flow(problems, env, since, f"other -> deny-target POLICY_DENIED, isolated by {deny}",
                     _drop_of("INGRESS", deny), from_pod=m.OTHER, to_pod=m.DENY_TARGET)
        return problems
    finally:
        env.delete(manifest)


def egress_cidr(env: Env) -> list[str]:
    """egress-client may reach only echo-a's /32 (an ipBlock): echo-a answers, echo-b is dropped at egress."""
    manifest = m.egress_cidr_policy(env.pod_ips[m.ECHO_A])
    env.apply(manifest)
    try:
        env.wait_enforcement(m.EGRESS_CLIENT, "egress_enforcement", "enabled")
        problems: list[str] = []
        since = _since()
        allowed = env.probe(m.EGRESS_CLIENT, f"tcp://{env.pod_ips[m.ECHO_A]}:{m.TCP_PORT}")
        _expect_answer(problems, "egress-client -> echo-a (in the CIDR)", allowed, (m.ECHO_A,))
        if env.probe(m.EGRESS_CLIENT, f"tcp://{env.pod_ips[m.ECHO_B]}:{m.TCP_PORT}") is not None:
            problems.append("egress-client -> echo-b (outside the CIDR): answered, want dropped")
        policy = f"{m.NAMESPACE}/egress-to-cidr"
        _expect_flow(problems, env, since, f"egress-client -> echo-a allowed by {policy}",
                     _allow_by("EGRESS", policy), from_pod=m.EGRESS_CLIENT, to_pod=m.ECHO_A)
        _expect_flow(problems, env, since, f"egress-client -> echo-b POLICY_DENIED, isolated by {policy}",
                     _drop_of("EGRESS", policy), from_pod=m.EGRESS_CLIENT, to_ip=env.pod_ips[m.ECHO_B])
        return problems
    finally:
        env.delete(manifest)


def policy_audit_mode(env: Env) -> list[str]:
    """audit-target (namespace annotated velvet.io/policy-audit-mode) is isolated: traffic passes, AUDIT."""
    manifest = m.audit_policy()
    env.apply(manifest)
    try:
        env.wait_enforcement(m.AUDIT_TARGET, "ingress_enforcement", "audit")
        problems: list[str] = []
        since, url = _since(), f"tcp://{env.pod_ips[m.AUDIT_TARGET]}:{m.TCP_PORT}"
        answer = env.probe(m.OTHER, url)
        if answer is None or not answer.startswith("audit-target "):
            problems.append(f"other -> audit-target: {answer or 'no answer'}, want its answer (no drop)")
        _expect_flow(problems, env, since, "other -> audit-target with verdict AUDIT",
                     lambda f: f.get("verdict") == "AUDIT", from_pod=m.OTHER, to_pod=m.AUDIT_TARGET)
        dropped = env.flows(since, from_pod=m.OTHER, to_pod=m.AUDIT_TARGET, verdict="DROPPED")
        if dropped:
            problems.append(f"{len(dropped)} flows of other -> audit-target DROPPED, want none")
        return problems
    finally:
        env.delete(manifest)


CHECKS = (
    Check("pod-to-pod", "pod to pod on the same node, TCP and UDP", pod_to_pod),
    Check("pod-to-service-tcp", "pod to a ClusterIP Service over TCP (socket LB)", pod_to_service_tcp),
    Check("pod-to-service-udp", "pod to a ClusterIP Service over UDP (socket LB)", pod_to_service_udp),
    Check("nodeport-from-external", "external client to a NodePort on the node IP", nodeport_from_external),
    Check("session-affinity", "ClientIP session affinity keeps one backend", session_affinity),
    Check("default-deny-allow", "default deny ingress plus one allow rule", default_deny_allow,
          enforcing=True),
    Check("egress-cidr", "egress allowed to one /32 ipBlock, denied elsewhere", egress_cidr, enforcing=True),
    Check("policy-audit-mode", "per-namespace policy audit mode: reported, not dropped", policy_audit_mode),
)
