"""Test that Services load-balance real pod traffic in the sandbox as kube-proxy's e2e suite expects.

One sandbox for the module: four echo pods behind several services, a client pod, and services
that each exercise one upstream behaviour (names follow kubernetes test/e2e/network/service.go).
Many probes run in ONE exec of a small Python client inside a pod (PROBE), never one exec each.
The helpers here are shared with test_services_external.py (clients outside the node).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness import Sandbox, echo_pod, namespace, sandbox

from velvet.sandbox import SandboxConfig, run_in_netns

pytestmark = pytest.mark.privileged

NS = "svc"
WEB = [f"web-{i}" for i in range(4)]

# A client doing many queries in one process: argv[1] is JSON {"url", "count", "timeout",
# "sport", "pause"}; prints a JSON list of answers ("<pod> <client ip>:<port>") or "ERR <errno name>".
PROBE = r"""
import errno, json, socket, sys, time
spec = json.loads(sys.argv[1])
scheme, _, rest = spec["url"].partition("://")
host, _, port = rest.rpartition(":")
tcp = scheme == "tcp"
out = []
for i in range(spec.get("count", 1)):
    if i and spec.get("pause"):
        time.sleep(spec["pause"])
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    s.settimeout(spec.get("timeout", 2.0))
    try:
        if spec.get("sport"):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", spec["sport"] + (i if spec.get("vary") else 0)))
        if tcp:
            s.connect((host, int(port)))
            s.sendall(b"hello\n")
            out.append(s.makefile("rb").readline().decode().strip() or "ERR EOF")
        else:
            s.sendto(b"hello\n", (host, int(port)))
            out.append(s.recv(65535).decode().strip())
    except OSError as e:
        out.append("ERR " + (errno.errorcode.get(e.errno or 0) or type(e).__name__))
    finally:
        s.close()
print(json.dumps(out))
"""


def probe(sb: Sandbox, pod: str, url: str, count: int = 1, **opts: Any) -> list[str]:
    """`count` queries of `url` from inside `pod`, in one process: answers or "ERR <errno>"."""
    spec = json.dumps({"url": url, "count": count, **opts})
    done = sb.exec(pod, "python3", "-c", PROBE, spec, timeout=60 + count * opts.get("timeout", 2.0))
    assert done.returncode == 0, done.stderr
    answers: list[str] = json.loads(done.stdout)
    return answers


def ext_probe(sb: Sandbox, url: str, count: int = 1, **opts: Any) -> list[str]:
    """Like `probe`, from the external client's namespace (the node's uplink peer)."""
    spec = json.dumps({"url": url, "count": count, **opts})
    netns = SandboxConfig(sandbox=sb.name).names.ext_netns
    done = run_in_netns(netns, [sys.executable, "-c", PROBE, spec], capture_output=True, text=True,
                        timeout=60 + count * opts.get("timeout", 2.0), check=False)
    assert done.returncode == 0, done.stderr
    answers: list[str] = json.loads(done.stdout)
    return answers


def pods_of(answers: list[str]) -> Counter[str]:
    """How often each pod answered (errors counted under their "ERR …" text)."""
    return Counter(a if a.startswith("ERR") else a.split()[0] for a in answers)


def eventually(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll `check()` until it returns a truthy value; fail with `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.3)


def cluster_ip(sb: Sandbox, name: str, ns: str = NS) -> str:
    """The ClusterIP the store allocated to a service."""
    ip: str = service_spec(sb, name, ns)["clusterIP"]
    return ip


def service_spec(sb: Sandbox, name: str, ns: str = NS) -> dict[str, Any]:
    """A service's spec as `velvet get` shows it."""
    spec: dict[str, Any] = sb.json("get", "svc", name, "-n", ns)["spec"]
    return spec


def frontends(sb: Sandbox, service: str, scope: str = "external") -> dict[str, dict[str, Any]]:
    """`velvet service list -o json` rows of one service in one scope, by frontend.

    Frontends with two backend sets (traffic policy Local) have an "internal" row too.
    """
    rows = sb.json("service", "list")
    return {r["frontend"]: r for r in rows if r["service"] == service and r["scope"] == scope}


def drop_count(sb: Sandbox, reason: int) -> int:
    """Packets dropped for `reason` so far (`velvet bpf metrics list`, summed over CPUs)."""
    total = 0
    for entry in sb.json("bpf", "metrics", "list")["metrics"]:
        values = entry["value"] if isinstance(entry["value"], list) else [entry["value"]]
        if entry["key"]["reason"] == reason:
            total += sum(v["packets"] for v in values)
    return total


def backend_addresses(row: dict[str, Any]) -> set[str]:
    """The backend addresses of a `service list` row."""
    return {b["address"] for b in row["backends"]}


def wait_backends(sb: Sandbox, service: str, frontend: str, count: int) -> dict[str, Any]:
    """Wait until `service list` shows `frontend` of `service` with `count` backends; its row."""
    def row() -> dict[str, Any] | None:
        found = frontends(sb, service).get(frontend)
        return found if found is not None and len(found["backends"]) == count else None
    found: dict[str, Any] = eventually(row, f"{service} {frontend} with {count} backends")
    return found


def lb_addresses(sb: Sandbox) -> set[str]:
    """Every frontend address:port in the raw lb4_services map (`velvet bpf lb list`)."""
    entries = sb.json("bpf", "lb", "list")["lb4_services"]
    return {f"{e['key']['address']}:{e['key']['dport']}" for e in entries}


def service(name: str, ports: str, selector: str | None = "app: web", extra: str = "",
            meta: str = "") -> str:
    """YAML of a service in NS; `ports` and `extra` are spec lines (indented by two)."""
    sel = f"  selector: {{{selector}}}\n" if selector else ""
    return (f"---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {NS}\n{meta}"
            f"spec:\n{sel}{extra}  ports:\n{ports}")


def tcp_port(port: int, target: int | str, name: str = "", proto: str = "TCP") -> str:
    """One service port line."""
    named = f"name: {name}, " if name else ""
    return f"  - {{{named}port: {port}, targetPort: {target}, protocol: {proto}}}\n"


def endpoint_slice(name: str, service_name: str, endpoints: list[tuple[str, str]], port: int,
                   port_name: str = "") -> str:
    """YAML of a user EndpointSlice: endpoints are (address, nodeName), all ready."""
    eps = "".join(f"  - addresses: [\"{ip}\"]\n    nodeName: {node}\n    conditions: {{ready: true}}\n"
                  for ip, node in endpoints)
    return (f"---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n"
            f"  namespace: {NS}\n  labels: {{kubernetes.io/service-name: {service_name}}}\n"
            f"addressType: IPv4\nports:\n- {{name: \"{port_name}\", port: {port}, protocol: TCP}}\n"
            f"endpoints:\n{eps}")


def web_pod(name: str) -> str:
    """An echo pod (TCP 8080, UDP 8081) with a second container answering as `<name>-alt` on 9090."""
    return echo_pod(NS, name, {"app": "web"}) + f"""  - name: alt
    command: ["python3", "-m", "velvet.sandbox.echo"]
    args: ["--tcp", "9090"]
    env: [{{name: HOSTNAME, value: "{name}-alt"}}]
"""


def named_port_pod(name: str, port: int) -> str:
    """An echo pod listening on `port`, declared as the containerPort named "http"."""
    return f"""---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NS}, labels: {{app: named}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    command: ["python3", "-m", "velvet.sandbox.echo"]
    args: ["--tcp", "{port}"]
    ports: [{{name: http, containerPort: {port}, protocol: TCP}}]
    readinessProbe: {{tcpSocket: {{port: {port}}}, periodSeconds: 1}}
"""


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    """The module's sandbox with web-0..3 (app=web), a client, and the named-port pods."""
    with sandbox("svc") as box:
        box.apply(namespace(NS) + "".join(web_pod(n) for n in WEB) + echo_pod(NS, "client", {"app": "client"})
                  + named_port_pod("named-a", 8080) + named_port_pod("named-b", 7070))
        box.wait_ready([f"{NS}/{n}" for n in [*WEB, "client", "named-a", "named-b"]])
        yield box


@pytest.fixture(scope="module")
def ips(sb: Sandbox) -> dict[str, str]:
    """Pod name -> pod IP."""
    pods = [p for p in sb.pods() if p["metadata"]["namespace"] == NS]
    return {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}


CLIENT = f"{NS}/client"
EXTERNAL_NAME = "  type: ExternalName\n  externalName: example.org\n"


def test_should_serve_a_basic_endpoint_from_pods(sb: Sandbox) -> None:
    """ClusterIP:port reaches every ready endpoint: all four hostnames answer."""
    sb.apply(service("basic", tcp_port(80, 8080)))
    vip = cluster_ip(sb, "basic")
    wait_backends(sb, f"{NS}/basic", f"{vip}:80/TCP", 4)
    seen = pods_of(probe(sb, CLIENT, f"tcp://{vip}:80", 40))
    assert set(seen) == set(WEB), seen


def test_should_serve_multiport_endpoints_from_pods(sb: Sandbox) -> None:
    """Each service port DNATs to its own targetPort; removing and adding a port takes effect."""
    sb.apply(service("multi", tcp_port(80, 8080, "a") + tcp_port(81, 9090, "b")))
    vip = cluster_ip(sb, "multi")
    wait_backends(sb, f"{NS}/multi", f"{vip}:81/TCP", 4)
    assert set(pods_of(probe(sb, CLIENT, f"tcp://{vip}:80", 20))) <= set(WEB)
    assert set(pods_of(probe(sb, CLIENT, f"tcp://{vip}:81", 20))) <= {f"{n}-alt" for n in WEB}
    sb.apply(service("multi", tcp_port(80, 8080, "a") + tcp_port(82, 9090, "c")))
    wait_backends(sb, f"{NS}/multi", f"{vip}:82/TCP", 4)
    assert f"{vip}:81/TCP" not in frontends(sb, f"{NS}/multi")
    assert set(pods_of(probe(sb, CLIENT, f"tcp://{vip}:82", 10))) <= {f"{n}-alt" for n in WEB}
    assert probe(sb, CLIENT, f"tcp://{vip}:81", timeout=1.0)[0].startswith("ERR")


def test_should_serve_endpoints_on_same_port_and_different_protocols(sb: Sandbox) -> None:
    """Port 53 on TCP and on UDP of one service both reach their own targetPort."""
    sb.apply(service("dual", tcp_port(53, 8080, "tcp") + tcp_port(53, 8081, "udp", "UDP")))
    vip = cluster_ip(sb, "dual")
    wait_backends(sb, f"{NS}/dual", f"{vip}:53/UDP", 4)
    assert set(pods_of(probe(sb, CLIENT, f"tcp://{vip}:53", 10))) <= set(WEB)
    assert set(pods_of(probe(sb, CLIENT, f"udp://{vip}:53", 10))) <= set(WEB)


def test_should_resolve_a_named_target_port_per_endpoint(sb: Sandbox, ips: dict[str, str]) -> None:
    """targetPort "http" is 8080 on named-a and 7070 on named-b: the slice's per-pod port is used."""
    sb.apply(service("named", tcp_port(80, "http"), selector="app: named"))
    vip = cluster_ip(sb, "named")
    row = wait_backends(sb, f"{NS}/named", f"{vip}:80/TCP", 2)
    assert backend_addresses(row) == {f"{ips['named-a']}:8080", f"{ips['named-b']}:7070"}
    assert set(pods_of(probe(sb, CLIENT, f"tcp://{vip}:80", 20))) == {"named-a", "named-b"}


def test_should_be_rejected_when_no_endpoints_exist(sb: Sandbox) -> None:
    """A service without endpoints refuses TCP connects and UDP sends at once (no timeout)."""
    sb.apply(service("empty", tcp_port(80, 8080, "tcp") + tcp_port(80, 8081, "udp", "UDP"),
                     selector="app: nothing"))
    vip = cluster_ip(sb, "empty")
    wait_backends(sb, f"{NS}/empty", f"{vip}:80/TCP", 0)
    assert probe(sb, CLIENT, f"tcp://{vip}:80", 3, timeout=5.0) == ["ERR ECONNREFUSED"] * 3
    assert probe(sb, CLIENT, f"udp://{vip}:80", timeout=5.0) == ["ERR ECONNREFUSED"]


def test_should_preserve_source_pod_ip_for_traffic_thru_service_cluster_ip(sb: Sandbox,
                                                                            ips: dict[str, str]) -> None:
    """The backend sees the client pod's own IP as source (no SNAT)."""
    sb.apply(service("srcip", tcp_port(80, 8080)))
    vip = cluster_ip(sb, "srcip")
    wait_backends(sb, f"{NS}/srcip", f"{vip}:80/TCP", 4)
    answers = probe(sb, CLIENT, f"tcp://{vip}:80", 8)
    assert {a.split()[1].split(":")[0] for a in answers} == {ips["client"]}, answers


def test_should_allow_pods_to_hairpin_back_to_themselves_through_services(sb: Sandbox,
                                                                         ips: dict[str, str]) -> None:
    """The client reaches itself through a service whose only endpoint it is."""
    sb.apply(service("hairpin", tcp_port(80, 8080), selector="app: client"))
    vip = cluster_ip(sb, "hairpin")
    wait_backends(sb, f"{NS}/hairpin", f"{vip}:80/TCP", 1)
    answers = probe(sb, CLIENT, f"tcp://{vip}:80", 3)
    assert [a.split()[0] for a in answers] == ["client"] * 3, answers
    assert {a.split()[1].split(":")[0] for a in answers} == {ips["client"]}


def test_should_be_possible_to_connect_to_a_service_via_externalip_when_the_external_ip_is_not_assigned_to_a_node(  # noqa: E501
        sb: Sandbox) -> None:
    """Pods reach spec.externalIPs:port like the ClusterIP, though no interface has that address."""
    sb.apply(service("extip", tcp_port(80, 8080), extra="  externalIPs: [\"203.0.113.7\"]\n"))
    wait_backends(sb, f"{NS}/extip", "203.0.113.7:80/TCP", 4)
    assert set(pods_of(probe(sb, CLIENT, "tcp://203.0.113.7:80", 20))) <= set(WEB)
    assert frontends(sb, f"{NS}/extip")["203.0.113.7:80/TCP"]["type"] == "ExternalIPs"


def test_should_be_able_to_change_the_type_from_externalname_to_clusterip_to_nodeport_and_back(
        sb: Sandbox) -> None:
    """ExternalName has no datapath entry; ClusterIP then NodePort are served live; back to none."""
    sb.apply(service("retype", "", selector=None, extra=EXTERNAL_NAME))
    assert frontends(sb, f"{NS}/retype") == {}
    sb.apply(service("retype", tcp_port(80, 8080), extra="  type: ClusterIP\n"))
    vip = cluster_ip(sb, "retype")
    wait_backends(sb, f"{NS}/retype", f"{vip}:80/TCP", 4)
    assert set(pods_of(probe(sb, CLIENT, f"tcp://{vip}:80", 10))) <= set(WEB)
    sb.apply(service("retype", tcp_port(80, 8080), extra="  type: NodePort\n"))
    node_port = service_spec(sb, "retype")["ports"][0]["nodePort"]
    wait_backends(sb, f"{NS}/retype", f"192.168.77.2:{node_port}/TCP", 4)
    assert set(pods_of(probe(sb, CLIENT, f"tcp://192.168.77.2:{node_port}", 10))) <= set(WEB)
    sb.apply(service("retype", "", selector=None, extra=EXTERNAL_NAME))
    eventually(lambda: frontends(sb, f"{NS}/retype") == {}, "retype's frontends to go")
    assert not {a for a in lb_addresses(sb) if a.startswith(f"{vip}:") or a.endswith(f":{node_port}")}


def _sticky(answers: list[str]) -> bool:
    return len(pods_of(answers)) == 1 and not answers[0].startswith("ERR")


def test_should_have_session_affinity_work_for_service_with_type_clusterip(sb: Sandbox) -> None:
    """sessionAffinity ClientIP: 15 consecutive connections land on one backend."""
    sb.apply(service("sticky", tcp_port(80, 8080), extra="  sessionAffinity: ClientIP\n"))
    vip = cluster_ip(sb, "sticky")
    row = wait_backends(sb, f"{NS}/sticky", f"{vip}:80/TCP", 4)
    assert row["session_affinity_timeout"] == 10800
    answers = probe(sb, CLIENT, f"tcp://{vip}:80", 15)
    assert _sticky(answers), answers


def test_should_have_session_affinity_timeout_work_for_service_with_type_clusterip(sb: Sandbox) -> None:
    """After an idle period longer than timeoutSeconds the client may land on another backend."""
    sb.apply(service("sticky-timeout", tcp_port(80, 8080), extra=(
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 2}}\n")))
    vip = cluster_ip(sb, "sticky-timeout")
    wait_backends(sb, f"{NS}/sticky-timeout", f"{vip}:80/TCP", 4)
    assert _sticky(probe(sb, CLIENT, f"tcp://{vip}:80", 15))
    # one connection every 3 s (> 2 s): each may pick any backend; 12 of them all alike is ~4^-11
    spaced = probe(sb, CLIENT, f"tcp://{vip}:80", 12, pause=3.0)
    assert len(pods_of(spaced)) > 1, spaced


def test_should_be_able_to_switch_session_affinity_for_service_with_type_clusterip(sb: Sandbox) -> None:
    """None spreads, ClientIP sticks, None spreads again, on one live service."""
    def apply(affinity: str) -> None:
        sb.apply(service("switch", tcp_port(80, 8080), extra=f"  sessionAffinity: {affinity}\n"))
    apply("None")
    vip = cluster_ip(sb, "switch")
    row = wait_backends(sb, f"{NS}/switch", f"{vip}:80/TCP", 4)
    assert row["session_affinity_timeout"] == 0
    assert len(pods_of(probe(sb, CLIENT, f"tcp://{vip}:80", 30))) > 1
    apply("ClientIP")
    eventually(lambda: frontends(sb, f"{NS}/switch")[f"{vip}:80/TCP"]["session_affinity_timeout"], "affinity")
    assert _sticky(probe(sb, CLIENT, f"tcp://{vip}:80", 15))
    apply("None")
    eventually(lambda: not frontends(sb, f"{NS}/switch")[f"{vip}:80/TCP"]["session_affinity_timeout"],
               "affinity off")
    assert len(pods_of(probe(sb, CLIENT, f"tcp://{vip}:80", 30))) > 1


def test_should_respect_internal_traffic_policy_local_pod_to_pod(sb: Sandbox, ips: dict[str, str]) -> None:
    """iTP=Local: only endpoints on the client's node; with only remote ones the connect fails.

    The "remote" endpoint is a user EndpointSlice entry with nodeName other-node whose address is
    web-1, a real pod: the datapath could reach it, only the traffic policy must keep it out.
    """
    local, remote = (ips["web-0"], "velvet-node"), (ips["web-1"], "other-node")
    sb.apply(service("itp", tcp_port(80, 8080), selector=None, extra="  internalTrafficPolicy: Local\n")
             + endpoint_slice("itp-1", "itp", [local, remote], 8080)
             + service("itp-remote", tcp_port(80, 8080), selector=None,
                       extra="  internalTrafficPolicy: Local\n")
             + endpoint_slice("itp-remote-1", "itp-remote", [remote], 8080))
    vip, remote_vip = cluster_ip(sb, "itp"), cluster_ip(sb, "itp-remote")
    wait_backends(sb, f"{NS}/itp", f"{vip}:80/TCP", 1)
    assert set(pods_of(probe(sb, CLIENT, f"tcp://{vip}:80", 20))) == {"web-0"}
    wait_backends(sb, f"{NS}/itp-remote", f"{remote_vip}:80/TCP", 0)
    assert probe(sb, CLIENT, f"tcp://{remote_vip}:80", timeout=5.0) == ["ERR EHOSTUNREACH"]
    # the same remote endpoint serves once the policy is Cluster: only the policy kept it out
    sb.apply(service("itp-remote", tcp_port(80, 8080), selector=None,
                     extra="  internalTrafficPolicy: Cluster\n"))
    wait_backends(sb, f"{NS}/itp-remote", f"{remote_vip}:80/TCP", 1)
    assert pods_of(probe(sb, CLIENT, f"tcp://{remote_vip}:80", 3)) == {"web-1": 3}


def test_should_support_a_service_with_multiple_endpoint_ips_specified_in_multiple_endpointslices(
        sb: Sandbox, ips: dict[str, str]) -> None:
    """A selector-less service with two user slices is served by the endpoints of both."""
    sb.apply(service("merged", tcp_port(80, 8080, "http"), selector=None)
             + endpoint_slice("merged-1", "merged", [(ips["web-2"], "velvet-node")], 8080, "http")
             + endpoint_slice("merged-2", "merged", [(ips["web-3"], "velvet-node")], 8080, "http"))
    vip = cluster_ip(sb, "merged")
    wait_backends(sb, f"{NS}/merged", f"{vip}:80/TCP", 2)
    assert set(pods_of(probe(sb, CLIENT, f"tcp://{vip}:80", 20))) == {"web-2", "web-3"}


def test_should_support_a_service_with_multiple_ports_specified_in_multiple_endpointslices(
        sb: Sandbox, ips: dict[str, str]) -> None:
    """One slice per port: each service port gets the endpoints of its own slice."""
    sb.apply(service("mports", tcp_port(80, 8080, "a") + tcp_port(81, 9090, "b"), selector=None)
             + endpoint_slice("mports-a", "mports", [(ips["web-2"], "velvet-node")], 8080, "a")
             + endpoint_slice("mports-b", "mports", [(ips["web-3"], "velvet-node")], 9090, "b"))
    vip = cluster_ip(sb, "mports")
    wait_backends(sb, f"{NS}/mports", f"{vip}:81/TCP", 1)
    assert pods_of(probe(sb, CLIENT, f"tcp://{vip}:80", 3)) == {"web-2": 3}
    assert pods_of(probe(sb, CLIENT, f"tcp://{vip}:81", 3)) == {"web-3-alt": 3}


@pytest.mark.parametrize("label", [
    "service.kubernetes.io/service-proxy-name", "service.kubernetes.io/headless"])
def test_should_implement_service_proxy_name_and_headless_labels(sb: Sandbox, label: str) -> None:
    """A labelled service gets no datapath entry; removing the label programs and serves it."""
    name = "proxied" if label.endswith("proxy-name") else "hl-label"
    labelled = f"  labels: {{{label}: other}}\n"
    sb.apply(service(name, tcp_port(80, 8080), meta=labelled))
    vip = cluster_ip(sb, name)
    sb.apply(service("marker-" + name, tcp_port(80, 8080)))  # applied after: programmed => reconciled
    wait_backends(sb, f"{NS}/marker-{name}", f"{cluster_ip(sb, 'marker-' + name)}:80/TCP", 4)
    assert frontends(sb, f"{NS}/{name}") == {}
    assert not {a for a in lb_addresses(sb) if a.startswith(f"{vip}:")}
    sb.apply(service(name, tcp_port(80, 8080)))
    wait_backends(sb, f"{NS}/{name}", f"{vip}:80/TCP", 4)
    assert set(pods_of(probe(sb, CLIENT, f"tcp://{vip}:80", 5))) <= set(WEB)


def test_headless_and_externalname_services_get_no_datapath_entries(sb: Sandbox) -> None:
    """clusterIP: None and type ExternalName services appear in neither `service list` nor the maps."""
    sb.apply(service("headless", tcp_port(80, 8080), extra="  clusterIP: None\n")
             + service("extname", "", selector=None, extra=EXTERNAL_NAME)
             + service("marker-hl", tcp_port(80, 8080)))
    wait_backends(sb, f"{NS}/marker-hl", f"{cluster_ip(sb, 'marker-hl')}:80/TCP", 4)
    assert frontends(sb, f"{NS}/headless") == {}
    assert frontends(sb, f"{NS}/extname") == {}
    assert service_spec(sb, "headless")["clusterIP"] == "None"


def test_maglev_is_selectable_per_service_and_the_default_for_external_traffic(sb: Sandbox) -> None:
    """The annotation puts Maglev on ClusterIP frontends; NodePorts use it unless told `random`."""
    sb.apply(service("mg-default", tcp_port(80, 8080), extra="  type: NodePort\n")
             + service("mg-annotated", tcp_port(80, 8080),
                       meta="  annotations: {velvet.io/lb-algorithm: maglev}\n")
             + service("mg-random", tcp_port(80, 8080), extra="  type: NodePort\n",
                       meta="  annotations: {velvet.io/lb-algorithm: random}\n"))
    for name in ("mg-default", "mg-annotated", "mg-random"):
        wait_backends(sb, f"{NS}/{name}", f"{cluster_ip(sb, name)}:80/TCP", 4)
    flags = {(name, row["type"]): "MAGLEV" in row["flags"]
             for name in ("mg-default", "mg-annotated", "mg-random")
             for row in frontends(sb, f"{NS}/{name}").values()}
    assert flags == {("mg-default", "ClusterIP"): False, ("mg-default", "NodePort"): True,
                     ("mg-annotated", "ClusterIP"): True,
                     ("mg-random", "ClusterIP"): False, ("mg-random", "NodePort"): False}
    vip = cluster_ip(sb, "mg-annotated")
    assert set(pods_of(probe(sb, CLIENT, f"tcp://{vip}:80", 20))) <= set(WEB)


def test_connections_spread_evenly_over_four_backends(sb: Sandbox) -> None:
    """4,000 connections from one client process: each of the 4 backends gets 20-30 %."""
    sb.apply(service("spread", tcp_port(80, 8080)))
    vip = cluster_ip(sb, "spread")
    wait_backends(sb, f"{NS}/spread", f"{vip}:80/TCP", 4)
    counts = pods_of(probe(sb, CLIENT, f"tcp://{vip}:80", 4000))
    assert set(counts) == set(WEB), counts
    assert all(800 <= n <= 1200 for n in counts.values()), counts
