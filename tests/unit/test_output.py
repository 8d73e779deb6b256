"""Test that `velvet get` output has kubectl's shapes: tables, wide, -A, json and yaml lists."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from velvet.cli.output import format_selector, human_duration, no_resources_message, render

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
CREATED = "2024-05-01T11:55:00Z"


def meta(name: str, namespace: str | None = "default") -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "creationTimestamp": CREATED, "uid": "u", "resourceVersion": "7"}
    if namespace:
        out["namespace"] = namespace
    return out


POD = {"apiVersion": "v1", "kind": "Pod", "metadata": meta("web-1"),
       "spec": {"containers": [{"name": "c"}, {"name": "d"}], "nodeName": "velvet-node"},
       "status": {"phase": "Running", "podIP": "10.244.0.5",
                  "conditions": [{"type": "Ready", "status": "True"}]}}
SVC = {"apiVersion": "v1", "kind": "Service", "metadata": meta("web"),
       "spec": {"type": "LoadBalancer", "clusterIP": "10.96.1.1", "selector": {"tier": "x", "app": "web"},
                "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080},
                          {"port": 53, "protocol": "UDP"}]},
       "status": {"loadBalancer": {}}}


def test_pod_table_and_wide() -> None:
    assert render([POD], now=NOW) == (
        "NAME    READY   STATUS    RESTARTS   AGE\n"
        "web-1   2/2     Running   0          5m\n")
    wide = render([POD], "wide", now=NOW).splitlines()
    assert wide[0].split()[5:] == ["IP", "NODE", "NOMINATED", "NODE", "READINESS", "GATES"]
    assert wide[1].split()[5:] == ["10.244.0.5", "velvet-node", "<none>", "<none>"]


def test_terminating_pod_status() -> None:
    pod = {**POD, "metadata": {**meta("web-1"), "deletionTimestamp": CREATED}}
    assert "Terminating" in render([pod], now=NOW)


def test_service_table_with_all_namespaces() -> None:
    assert render([SVC], "wide", all_namespaces=True, now=NOW) == (
        "NAMESPACE   NAME   TYPE           CLUSTER-IP   EXTERNAL-IP   PORT(S)               AGE   "
        "SELECTOR\n"
        "default     web    LoadBalancer   10.96.1.1    <pending>     80:30080/TCP,53/UDP   5m    "
        "app=web,tier=x\n")


@pytest.mark.parametrize(("spec", "status", "cluster_ip", "external"), [
    ({"type": "ClusterIP", "clusterIP": "None"}, {}, "None", "<none>"),
    ({"type": "ExternalName", "externalName": "example.com"}, {}, "<none>", "example.com"),
    ({"type": "NodePort", "clusterIP": "10.96.0.9", "externalIPs": ["192.0.2.7"]}, {}, "10.96.0.9",
     "192.0.2.7"),
    ({"type": "LoadBalancer", "clusterIP": "10.96.0.9"}, {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}},
     "10.96.0.9", "192.0.2.1"),
])
def test_service_ip_columns(spec: dict[str, Any], status: dict[str, Any], cluster_ip: str,
                            external: str) -> None:
    row = render([{**SVC, "spec": spec, "status": status}], now=NOW).splitlines()[1].split()
    assert row[2:5] == [cluster_ip, external, "<none>"]


def test_endpointslice_policy_and_namespace_tables() -> None:
    eps = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": meta("web-abcde"),
           "addressType": "IPv4", "ports": [{"port": 8080, "name": ""}, {"port": None, "name": "x"}],
           "endpoints": [{"addresses": [f"10.0.0.{i}"]} for i in range(1, 6)]}
    assert render([eps], now=NOW).splitlines()[1].split() == [
        "web-abcde", "IPv4", "8080,x", "10.0.0.1,10.0.0.2,10.0.0.3", "+", "2", "more...", "5m"]
    empty = {**eps, "ports": [], "endpoints": []}
    assert render([empty], now=NOW).splitlines()[1].split()[2:4] == ["<unset>", "<unset>"]
    policy = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta("np"),
              "spec": {"podSelector": {}}}
    assert render([policy], now=NOW) == "NAME   POD-SELECTOR   AGE\nnp     <none>         5m\n"
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": meta("demo", None),
          "status": {"phase": "Active"}}
    assert render([ns], all_namespaces=True, now=NOW) == "NAME   STATUS   AGE\ndemo   Active   5m\n"


def test_mixed_kinds_get_prefixed_names_like_get_all() -> None:
    lines = render([POD, SVC], now=NOW).splitlines()
    assert lines[1].startswith("pod/web-1")
    assert lines[2] == ""
    assert lines[4].startswith("service/web")


def test_json_and_yaml_lists_match_kubectl() -> None:
    text = render([POD, SVC], "json")
    assert json.loads(text) == {"apiVersion": "v1", "kind": "List", "items": [POD, SVC],
                                "metadata": {"resourceVersion": ""}}
    assert text.startswith('{\n    "apiVersion": "v1",\n    "items": [')
    assert text.endswith("}\n")
    assert json.loads(render([POD], "json", single=True)) == POD
    ytext = render([POD], "yaml")
    assert yaml.safe_load(ytext)["items"] == [POD]
    assert ytext.startswith("apiVersion: v1\nitems:\n- apiVersion: v1\n")
    assert 'resourceVersion: ""' in ytext
    assert 'resourceVersion: "7"' in ytext
    assert render([POD, SVC], "name") == "pod/web-1\nservice/web\n"
    with pytest.raises(ValueError, match="output format"):
        render([POD], "table")


def test_selector_format_and_helpers() -> None:
    selector = {"matchLabels": {"b": "1"}, "matchExpressions": [
        {"key": "a", "operator": "In", "values": ["y", "x"]}, {"key": "c", "operator": "DoesNotExist"},
        {"key": "d", "operator": "Exists"}, {"key": "e", "operator": "NotIn", "values": ["z"]}]}
    assert format_selector(selector) == "a in (x,y),b=1,!c,d,e notin (z)"
    assert no_resources_message("demo") == "No resources found in demo namespace."
    assert no_resources_message(None) == "No resources found"


@pytest.mark.parametrize(("seconds", "text"), [
    (-5, "<invalid>"), (-1, "0s"), (59, "59s"), (119, "119s"), (125, "2m5s"), (600, "10m"), (3 * 3600, "3h"),
    (3 * 3600 + 60, "3h1m"), (10 * 3600, "10h"), (50 * 3600, "2d2h"), (9 * 86400, "9d"),
    (800 * 86400, "2y70d"), (3000 * 86400, "8y"),
])
def test_human_duration(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


def test_tracing_policy_tables_name_hooks_and_pod_selector() -> None:
    hooks = [{"subsystem": "sched", "event": "sched_process_exec"},
             {"subsystem": "syscalls", "event": "sys_enter_openat"}]
    cluster = {"apiVersion": "velvet.io/v1alpha1", "kind": "VelvetTracingPolicy",
               "metadata": meta("tp", None), "spec": {"tracepoints": hooks}}
    lines = render([cluster], all_namespaces=True, now=NOW).splitlines()
    assert lines[1].split() == ["tp", "sched/sched_process_exec,syscalls/sys_enter_openat", "<all>", "5m"]
    namespaced = {"apiVersion": "velvet.io/v1alpha1", "kind": "VelvetTracingPolicyNamespaced",
                  "metadata": meta("tpn"),
                  "spec": {"tracepoints": hooks[:1], "podSelector": {"matchLabels": {"app": "web"}}}}
    lines = render([namespaced], all_namespaces=True, now=NOW).splitlines()
    assert lines[1].split() == ["default", "tpn", "sched/sched_process_exec", "app=web", "5m"]
