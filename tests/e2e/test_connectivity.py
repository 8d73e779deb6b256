"""`velvet connectivity test` in a fresh sandbox: the suite passes, reports, and removes what it deployed."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from harness import Sandbox, sandbox, unique_name

pytestmark = pytest.mark.privileged
NAMESPACES = ("velvet-connectivity", "velvet-connectivity-audit")
SUITE = ["pod-to-pod", "pod-to-service-tcp", "pod-to-service-udp", "nodeport-from-external",
         "session-affinity", "default-deny-allow", "egress-cidr", "policy-audit-mode"]
SUITE_TIMEOUT = 300


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    """One sandbox for the module."""
    with sandbox("cx") as box:
        yield box


def assert_cleaned_up(sb: Sandbox) -> None:
    """Nothing of the suite is left: namespaces, pods, policies, services, endpoints, pod runtimes."""
    namespaces = {n["metadata"]["name"] for n in sb.json("get", "namespaces")["items"]}
    assert not namespaces & set(NAMESPACES)
    for kind in ("pods", "services", "networkpolicies"):
        left = [o["metadata"]["namespace"] for o in sb.json("get", kind, "-A")["items"]]
        assert not set(left) & set(NAMESPACES), f"{kind} left: {left}"
    endpoints = [e["pod"] for e in sb.json("endpoint", "list")]
    assert not [e for e in endpoints if e.split("/")[0] in NAMESPACES]
    runtime = json.loads(sb.velvet("sandbox", "status", "-o", "json").stdout)
    assert not [p for p in runtime["pods"] if p["namespace"] in NAMESPACES]


def test_the_whole_suite_passes_and_cleans_up(sb: Sandbox) -> None:
    """Test that every test of the suite passes on real traffic and flows, and nothing stays deployed."""
    done = sb.velvet("connectivity", "test", "-o", "json", check=False, timeout=SUITE_TIMEOUT)
    report = json.loads(done.stdout)
    assert done.returncode == 0, json.dumps(report, indent=2)
    assert [t["name"] for t in report["tests"]] == SUITE
    assert {t["name"]: t["result"] for t in report["tests"]} == dict.fromkeys(SUITE, "pass")
    assert (report["passed"], report["failed"], report["skipped"]) == (len(SUITE), 0, 0)
    assert all(t["seconds"] > 0 for t in report["tests"])
    assert_cleaned_up(sb)


def test_list_names_every_test(sb: Sandbox) -> None:
    """Test that --list prints one row per test, in suite order, without deploying anything."""
    done = sb.velvet("connectivity", "test", "--list")
    rows = done.stdout.splitlines()
    assert rows[0].split() == ["TEST", "DESCRIPTION"]
    assert [r.split()[0] for r in rows[1:]] == SUITE
    assert_cleaned_up(sb)


def test_one_test_runs_alone_and_prints_the_table(sb: Sandbox) -> None:
    """Test that --test NAME runs just that test and prints the result table with its time."""
    done = sb.velvet("connectivity", "test", "--test", "egress-cidr", timeout=SUITE_TIMEOUT)
    table = done.stdout[done.stdout.index("TEST "):].splitlines()
    assert table[0].split()[:4] == ["TEST", "RESULT", "TIME", "DETAIL"]
    name, result, seconds = table[1].split()[:3]
    assert (name, result) == ("egress-cidr", "pass")
    assert seconds.endswith("s")
    assert "1 passed, 0 failed, 0 skipped" in done.stdout
    assert_cleaned_up(sb)


def test_a_failing_test_is_reported_and_exits_non_zero(sb: Sandbox) -> None:
    """Test that a policy blocking the suite's traffic makes pod-to-pod FAIL with its problems, exit 1."""
    blocker = """---
apiVersion: v1
kind: Namespace
metadata: {name: velvet-connectivity}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: block-echo-a, namespace: velvet-connectivity}
spec:
  podSelector: {matchLabels: {app: echo}}
  policyTypes: [Ingress]
"""
    sb.apply(blocker)
    try:
        done = sb.velvet("connectivity", "test", "--test", "pod-to-pod", check=False, timeout=SUITE_TIMEOUT)
    finally:
        sb.delete(blocker)
    assert done.returncode == 1
    row = next(line for line in done.stdout.splitlines() if line.startswith("pod-to-pod "))
    assert row.split()[1] == "FAIL"
    assert "TCP: no answer" in row
    assert "no flow recorded for TCP client -> echo-a:8080 FORWARDED" in row
    assert "0 passed, 1 failed" in done.stdout
    assert_cleaned_up(sb)


def test_unknown_test_name_is_one_error_line(sb: Sandbox) -> None:
    """Test that an unknown --test name fails with one line naming the known tests."""
    done = sb.velvet("connectivity", "test", "--test", "nope", check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"Error: unknown test nope; known: {', '.join(SUITE)}"]


def test_without_a_sandbox_it_says_to_start_one() -> None:
    """Test that the suite, with no sandbox up, says how to start one instead of deploying anything."""
    done = Sandbox(unique_name("n")).velvet("connectivity", "test", check=False)
    assert done.returncode == 1
    assert "velvet sandbox up" in done.stderr
