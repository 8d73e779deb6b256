"""Test that manifests decode strictly with API defaults, errors name document and field, and round-trip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from velvet.errors import InvalidManifest
from velvet.model import NetworkPolicy, Pod, Service
from velvet.model.codec import from_dict, load_manifests, parse_documents, resolve_kind, to_dict

GOOD = """\
apiVersion: v1
kind: Namespace
metadata:
  name: demo
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: demo
  labels: {app: web}
  creationTimestamp: 2024-01-01T00:00:00Z
  uid: ignored
spec:
  restartPolicy: Always
  containers:
  - name: web
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "httpd -f -p 8080"]
    env: [{name: A, value: "1"}]
    ports: [{containerPort: 8080, name: http}, {containerPort: 53, protocol: UDP}]
    readinessProbe: {tcpSocket: {port: http}, periodSeconds: 2}
    resources: {limits: {cpu: 100m}}
status: {phase: Running}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: web}
  sessionAffinity: ClientIP
  ports: [{port: 80, targetPort: http, name: http}, {port: 53, protocol: UDP, name: dns}]
status:
  loadBalancer: {ingress: [{ip: 192.0.2.10}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np}
spec:
  podSelector: {matchExpressions: [{key: app, operator: In, values: [web]}]}
  ingress: [{}]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}, {namespaceSelector: {}, podSelector: {}}]
    ports: [{port: 1000, endPort: 2000}, {port: dns, protocol: UDP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-1, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
endpoints: [{addresses: [192.0.2.1], conditions: {ready: true}, zone: a}]
ports: [{name: http, port: 80, protocol: TCP}]
"""


def test_good_manifests_decode_with_defaults() -> None:
    ns, pod, svc, policy, eps = parse_documents(GOOD, "good.yaml")
    assert ns.metadata.labels == {"kubernetes.io/metadata.name": "demo"}
    assert isinstance(pod, Pod)
    assert pod.metadata.uid == ""
    assert pod.status.phase == "Pending"
    assert pod.spec.termination_grace_period_seconds == 30
    probe = pod.spec.containers[0].readiness_probe
    assert probe is not None
    assert probe.tcp_socket_port == "http"
    assert probe.timeout_seconds == 1
    assert pod.spec.containers[0].ports[1].protocol == "UDP"
    assert isinstance(svc, Service)
    assert svc.spec.ports[1].target_port == 53
    assert svc.spec.affinity_timeout_seconds == 10800
    assert svc.load_balancer_ingress == ("192.0.2.10",)
    assert isinstance(policy, NetworkPolicy)
    assert policy.metadata.namespace == "default"
    assert policy.spec.policy_types == ("Ingress", "Egress")
    assert eps.metadata.namespace == "default"


def test_to_dict_round_trips_through_trusted_and_user_decoding() -> None:
    for obj in parse_documents(GOOD, "good.yaml"):
        assert from_dict(to_dict(obj), trusted=True) == obj
        assert from_dict(json.loads(json.dumps(to_dict(obj)))) == obj


def test_list_kind_and_directories(tmp_path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(GOOD)]
    (tmp_path / "b.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs[2:]}))
    (tmp_path / "a.yaml").write_text(yaml.safe_dump_all(docs[:2]))
    (tmp_path / "ignored.txt").write_text("not: a manifest")
    kinds = [type(o).__name__ for o in load_manifests([tmp_path])]
    assert kinds == ["Namespace", "Pod", "Service", "NetworkPolicy", "EndpointSlice"]


def test_policy_types_default_to_ingress_only_without_egress() -> None:
    (policy,) = parse_documents("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
                                "metadata: {name: p}\nspec: {podSelector: {}}\n", "p.yaml")
    assert isinstance(policy, NetworkPolicy)
    assert policy.spec.policy_types == ("Ingress",)


def test_resolve_kind_accepts_kubectl_names() -> None:
    for name, kind in [("po", "Pod"), ("pods", "Pod"), ("svc", "Service"), ("netpol", "NetworkPolicy"),
                       ("endpointslice", "EndpointSlice"), ("ns", "Namespace"), ("Service", "Service")]:
        assert resolve_kind(name).kind == kind
    with pytest.raises(KeyError):
        resolve_kind("deployments")


def _pod(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"containers": [{"name": "c", "image": "busybox"}]}
    base.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": base}


def _svc(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"ports": [{"port": 80}]}
    base.update(spec)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": base}


def _np(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"podSelector": {}}
    base.update(spec)
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "n"},
            "spec": base}


def _ports(*ports: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"ports": list(ports)}]


BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("unknown kind", {"apiVersion": "v1", "kind": "Deployment", "metadata": {"name": "x"}}, "kind",
     "no matches"),
    ("wrong apiVersion", {"apiVersion": "v1", "kind": "NetworkPolicy", "metadata": {"name": "x"}},
     "apiVersion", "no matches"),
    ("missing name", {"apiVersion": "v1", "kind": "Namespace", "metadata": {}}, "metadata.name", "Required"),
    ("generateName", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"generateName": "x-"}},
     "metadata.generateName", "not supported"),
    ("bad namespace name", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "Demo"}},
     "metadata.name", "RFC 1123"),
    ("service name must be DNS-1035", {**_svc(), "metadata": {"name": "1web"}}, "metadata.name", "DNS-1035"),
    ("bad label value", {**_svc(), "metadata": {"name": "s", "labels": {"a": "-x"}}}, "metadata.labels",
     "label value"),
    ("label value not a string", {**_svc(), "metadata": {"name": "s", "labels": {"v": 1}}},
     "metadata.labels.v", "must be a string"),
    ("unknown top-level field", {**_svc(), "specs": {}}, "specs", 'unknown field "specs"'),
    ("unknown spec field", _svc(clusterIp="1.2.3.4"), "spec.clusterIp", "unknown field"),
    ("unknown pod field", _pod(foo=1), "spec.foo", "unknown field"),
    ("unknown container field", _pod(containers=[{"name": "c", "imag": "x"}]), "spec.containers[0].imag",
     "unknown field"),
    ("no containers", _pod(containers=[]), "spec.containers", "Required"),
    ("env valueFrom", _pod(containers=[{"name": "c", "env": [{"name": "A", "valueFrom": {}}]}]),
     "spec.containers[0].env[0].valueFrom", "not supported"),
    ("env value not a string", _pod(containers=[{"name": "c", "env": [{"name": "A", "value": 1}]}]),
     "spec.containers[0].env[0].value", "must be a string"),
    ("container port out of range", _pod(containers=[{"name": "c", "ports": [{"containerPort": 70000}]}]),
     "spec.containers[0].ports[0].containerPort", "between 1 and 65535"),
    ("httpGet probe", _pod(containers=[{"name": "c", "readinessProbe": {"httpGet": {"port": 80}}}]),
     "spec.containers[0].readinessProbe.httpGet", "not supported"),
    ("probe without handler", _pod(containers=[{"name": "c", "readinessProbe": {"periodSeconds": 1}}]),
     "spec.containers[0].readinessProbe", "exactly one handler"),
    ("negative grace", _pod(terminationGracePeriodSeconds=-1), "spec.terminationGracePeriodSeconds",
     "between"),
    ("port is a string", _svc(ports=[{"port": "80"}]), "spec.ports[0].port", "must be an integer"),
    ("port is a boolean", _svc(ports=[{"port": True}]), "spec.ports[0].port", "must be an integer"),
    ("port out of range", _svc(ports=[{"port": 0}]), "spec.ports[0].port", "between 1 and 65535"),
    ("bad protocol", _svc(ports=[{"port": 80, "protocol": "ICMP"}]), "spec.ports[0].protocol",
     "Unsupported value"),
    ("numeric-looking target name", _svc(ports=[{"port": 80, "targetPort": "8080"}]),
     "spec.ports[0].targetPort", "at least one letter"),
    ("unnamed ports", _svc(ports=[{"port": 80}, {"port": 81, "name": "b"}]), "spec.ports[0].name",
     "needs a name"),
    ("duplicate port", _svc(ports=[{"port": 80, "name": "a"}, {"port": 80, "name": "b"}]), "spec.ports[1]",
     "Duplicate"),
    ("nodePort out of range", _svc(type="NodePort", ports=[{"port": 80, "nodePort": 8080}]),
     "spec.ports[0].nodePort", "30000-32767"),
    ("nodePort on ClusterIP", _svc(ports=[{"port": 80, "nodePort": 30080}]), "spec.ports[0].nodePort",
     "Forbidden"),
    ("bad type", _svc(type="Ingress"), "spec.type", "Unsupported value"),
    ("ExternalName without name", _svc(type="ExternalName"), "spec.externalName", "Required"),
    ("bad clusterIP", _svc(clusterIP="10.96.0.300"), "spec.clusterIP", "IPv4"),
    ("headless NodePort", _svc(type="NodePort", clusterIP="None"), "spec.clusterIP", '"None"'),
    ("bad sessionAffinity", _svc(sessionAffinity="Sticky"), "spec.sessionAffinity", "Unsupported"),
    ("affinity timeout", _svc(sessionAffinity="ClientIP",
                              sessionAffinityConfig={"clientIP": {"timeoutSeconds": 0}}),
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds", "between 1 and 86400"),
    ("affinity config without ClientIP", _svc(sessionAffinityConfig={"clientIP": {}}),
     "spec.sessionAffinityConfig", "session affinity is None"),
    ("bad eTP value", _svc(type="NodePort", externalTrafficPolicy="Global"), "spec.externalTrafficPolicy",
     "Unsupported"),
    ("eTP on ClusterIP", _svc(externalTrafficPolicy="Local"), "spec.externalTrafficPolicy",
     "externally-accessible"),
    ("bad iTP", _svc(internalTrafficPolicy="Node"), "spec.internalTrafficPolicy", "Unsupported"),
    ("healthCheckNodePort on NodePort", _svc(type="NodePort", healthCheckNodePort=30001),
     "spec.healthCheckNodePort", "LoadBalancer"),
    ("bad source range", _svc(type="LoadBalancer", loadBalancerSourceRanges=["10.0.0.1/8"]),
     "spec.loadBalancerSourceRanges[0]", "CIDR"),
    ("bad externalIP", _svc(externalIPs=["example.com"]), "spec.externalIPs[0]", "IPv4"),
    ("In without values", _np(podSelector={"matchExpressions": [{"key": "a", "operator": "In"}]}),
     "spec.podSelector.matchExpressions[0].values", "Required"),
    ("Exists with values", _np(podSelector={"matchExpressions": [
        {"key": "a", "operator": "Exists", "values": ["x"]}]}), "spec.podSelector.matchExpressions[0].values",
     "Forbidden"),
    ("bad operator", _np(podSelector={"matchExpressions": [{"key": "a", "operator": "Equals"}]}),
     "spec.podSelector.matchExpressions[0].operator", "not a valid selector operator"),
    ("endPort without port", _np(ingress=_ports({"endPort": 90})), "spec.ingress[0].ports[0].endPort",
     "`port` is not specified"),
    ("endPort with named port", _np(ingress=_ports({"port": "http", "endPort": 90})),
     "spec.ingress[0].ports[0].endPort", "non-numeric"),
    ("endPort below port", _np(egress=_ports({"port": 100, "endPort": 90})),
     "spec.egress[0].ports[0].endPort",
     "greater than or equal"),
    ("empty peer", _np(ingress=[{"from": [{}]}]), "spec.ingress[0].from[0]", "must specify a peer"),
    ("ipBlock with selector", _np(egress=[{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]),
     "spec.egress[0].to[0]", "more than 1 peer"),
    ("except outside cidr",
     _np(egress=[{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/8"]}}]}]),
     "spec.egress[0].to[0].ipBlock.except[0]", "strict subset"),
    ("bad policyType", _np(policyTypes=["Both"]), "spec.policyTypes[0]", "Unsupported"),
    ("ingress uses to", _np(ingress=[{"to": []}]), "spec.ingress[0].to", "unknown field"),
    ("slice address not IPv4", {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                                "metadata": {"name": "e"}, "addressType": "IPv4",
                                "endpoints": [{"addresses": ["fe80::1"]}]},
     "endpoints[0].addresses[0]", "IPv4"),
    ("slice without addressType", {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                                   "metadata": {"name": "e"}}, "addressType", "Required"),
    # Names and label values are matched whole: Python's `$` would also accept a trailing newline.
    ("namespace name ends in a newline",
     {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a\n"}}, "metadata.name",
     "RFC 1123 label"),
    ("pod name ends in a newline", {**_pod(), "metadata": {"name": "p\n"}}, "metadata.name",
     "RFC 1123 subdomain"),
    ("service name ends in a newline", {**_svc(), "metadata": {"name": "s\n"}}, "metadata.name", "DNS-1035"),
    ("label value ends in a newline", {**_svc(), "metadata": {"name": "s", "labels": {"a": "x\n"}}},
     "metadata.labels", "label value"),
    ("label key ends in a newline", {**_svc(), "metadata": {"name": "s", "labels": {"a\n": "x"}}},
     "metadata.labels", "name part"),
    ("annotation key ends in a newline", {**_svc(), "metadata": {"name": "s", "annotations": {"a\n": "x"}}},
     "metadata.annotations", "name part"),
    ("port name ends in a newline", _pod(containers=[{"name": "c", "ports": [{"containerPort": 1,
                                                                             "name": "http\n"}]}]),
     "spec.containers[0].ports[0].name", "15 characters"),
    ("selector value ends in a newline", {**_svc(selector={"app": "web\n"})}, "spec.selector", "label value"),
    # Selector values are label values.
    ("matchExpressions value with a space", _np(podSelector={"matchExpressions": [
        {"key": "a", "operator": "In", "values": ["ok", "b c"]}]}),
     "spec.podSelector.matchExpressions[0].values[1]", "label value"),
    ("matchExpressions value too long", _np(podSelector={"matchExpressions": [
        {"key": "a", "operator": "NotIn", "values": ["x" * 64]}]}),
     "spec.podSelector.matchExpressions[0].values[0]", "63 characters"),
    ("matchLabels value with a slash",
     _np(ingress=[{"from": [{"podSelector": {"matchLabels": {"a": "b/c"}}}]}]),
     "spec.ingress[0].from[0].podSelector.matchLabels", "label value"),
    # Env var names as kube-apiserver has them since 1.32: printable ASCII except '='.
    ("env name with =", _pod(containers=[{"name": "c", "env": [{"name": "A=B", "value": "1"}]}]),
     "spec.containers[0].env[0].name", "other than '='"),
    ("env name with a newline", _pod(containers=[{"name": "c", "env": [{"name": "A\n"}]}]),
     "spec.containers[0].env[0].name", "printable ASCII"),
    ("env name not ASCII", _pod(containers=[{"name": "c", "env": [{"name": "\u00c9T\u00c9"}]}]),
     "spec.containers[0].env[0].name", "printable ASCII"),
    ("empty env name", _pod(containers=[{"name": "c", "env": [{"name": ""}]}]),
     "spec.containers[0].env[0].name", "Required"),
    # A NUL ends a C string: argv, env and paths would be cut short or refused by execve.
    ("NUL in command", _pod(containers=[{"name": "c", "command": ["sh", "-c\0x"]}]),
     "spec.containers[0].command[1]", "NUL"),
    ("NUL in args", _pod(containers=[{"name": "c", "args": ["\0"]}]), "spec.containers[0].args[0]", "NUL"),
    ("NUL in env value", _pod(containers=[{"name": "c", "env": [{"name": "A", "value": "a\0b"}]}]),
     "spec.containers[0].env[0].value", "NUL"),
    ("NUL in probe command",
     _pod(containers=[{"name": "c", "readinessProbe": {"exec": {"command": ["\0"]}}}]),
     "spec.containers[0].readinessProbe.exec.command[0]", "NUL"),
    ("NUL in image", _pod(containers=[{"name": "c", "image": "busy\0box"}]), "spec.containers[0].image",
     "NUL"),
    ("NUL in annotation value", {**_svc(), "metadata": {"name": "s", "annotations": {"a": "\0"}}},
     "metadata.annotations.a", "NUL"),
    # Integers are Go's int64 at most; terminationGracePeriodSeconds is int64 and non-negative.
    ("grace beyond int64", _pod(terminationGracePeriodSeconds=2**63), "spec.terminationGracePeriodSeconds",
     "between 0 and 9223372036854775807"),
    ("grace as a float", _pod(terminationGracePeriodSeconds=1e30), "spec.terminationGracePeriodSeconds",
     "must be an integer"),
    ("endPort beyond int64", _np(ingress=_ports({"port": 80, "endPort": 2**64})),
     "spec.ingress[0].ports[0].endPort", "64-bit"),
]


@pytest.mark.parametrize(("doc", "field", "reason"), [case[1:] for case in BAD],
                         ids=[case[0] for case in BAD])
def test_invalid_documents_name_document_and_field(doc: dict[str, Any], field: str, reason: str) -> None:
    text = GOOD + "---\n" + yaml.safe_dump(doc)
    with pytest.raises(InvalidManifest) as caught:
        parse_documents(text, "in.yaml")
    err = caught.value
    assert (err.path, err.document, err.field) == ("in.yaml", 6, field)
    assert reason in err.reason
    assert "\n" not in str(err)


def test_list_items_errors_name_the_item_path() -> None:
    text = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [_svc(), _svc(type="Bad")]})
    with pytest.raises(InvalidManifest) as caught:
        parse_documents(text, "list.yaml")
    assert (caught.value.document, caught.value.field) == (1, "items[1].spec.type")


@pytest.mark.parametrize(("text", "document"), [
    ("a: 1\n---\nkind: [\n", 2),
    ("apiVersion: v1\nkind: Namespace\nkind: Pod\n", 1),
])
def test_yaml_syntax_and_duplicate_keys_are_invalid(text: str, document: int) -> None:
    with pytest.raises(InvalidManifest) as caught:
        parse_documents(text, "bad.yaml")
    assert caught.value.document == document


def test_the_largest_grace_period_the_api_takes_is_valid() -> None:
    (pod,) = parse_documents(yaml.safe_dump(_pod(terminationGracePeriodSeconds=2**63 - 1)), "p.yaml")
    assert isinstance(pod, Pod)
    assert pod.spec.termination_grace_period_seconds == 2**63 - 1


def test_env_names_take_printable_ascii_as_kube_apiserver_does() -> None:
    names = ["A", "my.env-name", "1ST", "with space", "a:b", "$HOME"]
    doc = _pod(containers=[{"name": "c", "env": [{"name": n, "value": "v"} for n in names]}])
    (pod,) = parse_documents(yaml.safe_dump(doc), "p.yaml")
    assert isinstance(pod, Pod)
    assert list(pod.spec.containers[0].env) == names


def test_a_bad_file_fails_the_whole_load(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(_svc(type="Bad")))
    with pytest.raises(InvalidManifest) as caught:
        load_manifests([tmp_path])
    assert caught.value.path == str(tmp_path / "b.yaml")
