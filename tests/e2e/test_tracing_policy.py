"""Runtime policy end to end: a VelvetTracingPolicyNamespaced applied with `velvet apply` kills /bin/sleep
on exec in its namespace's pod and not in another namespace's; the events, `velvet policy get`, `velvet
status` and /metrics say so; a refused policy changes nothing; deleting it lets sleep run again; an
openat under a path prefix is reported with the pod.

One sandbox for the module: pods shop/web-1 and other/web-1 (both app=web).
"""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import Event, Sandbox, echo_pod, namespace, sandbox
from harness import eventually_events as eventually

from velvet.errors import CommandFailed

pytestmark = pytest.mark.privileged
PODS = namespace("shop") + namespace("other") + echo_pod("shop", "web-1", {"app": "web"}) + \
    echo_pod("other", "web-1", {"app": "web"})
NO_SLEEP = """
apiVersion: velvet.io/v1alpha1
kind: VelvetTracingPolicyNamespaced
metadata: {name: no-sleep, namespace: shop}
spec:
  tracepoints:
  - subsystem: sched
    event: sched_process_exec
    selectors:
    - matchBinaries: [{operator: In, values: [/bin/sleep, /usr/bin/sleep]}]
      matchActions: [{action: Sigkill}]
"""
SLEEP = ("/bin/sh", "-c", "/bin/sleep 0.2; echo status=$?")


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    with sandbox("rtp") as sb:
        sb.apply(PODS)
        sb.wait_ready(["shop/web-1", "other/web-1"])
        yield sb


def sleeps(kind: str) -> Callable[[list[Event]], list[Event]]:
    """The events of `kind` whose process is /bin/sleep 0.2."""
    return lambda evs: [e[kind] for e in evs if kind in e and e[kind]["process"]["binary"] == "/bin/sleep"
                        and e[kind]["process"]["arguments"] == "0.2"]


def test_sigkill_policy_kills_sleep_in_its_namespace_only(sb: Sandbox) -> None:
    """Test that after `velvet apply` of the policy, /bin/sleep run by a shell in shop/web-1 is killed by
    SIGKILL (the shell sees 137; the exec event names the pod, binary, parent and policy; the exit names
    SIGKILL), while the same command in other/web-1 runs; and that policy get, status and /metrics list it."""
    sb.apply(NO_SLEEP)
    assert sb.exec("shop/web-1", *SLEEP).stdout.strip() == "status=137"
    assert sb.exec("other/web-1", *SLEEP).stdout.strip() == "status=0"

    [killed] = eventually(sb, ("--namespace", "shop"), sleeps("process_exec"))
    assert killed["policy_name"] == "shop/no-sleep"
    assert killed["action"] == "Sigkill"
    assert killed["process"]["pod"]["name"] == "web-1"
    assert killed["parent"]["binary"] == "/bin/sh"
    [exit_event] = eventually(sb, ("--namespace", "shop", "--type", "process_exit"), sleeps("process_exit"))
    assert exit_event["signal"] == "SIGKILL"
    [spared] = eventually(sb, ("--namespace", "other"), sleeps("process_exec"))
    assert "policy_name" not in spared
    compact = sb.velvet("events", "--namespace", "shop", "--last", "5000").stdout.splitlines()
    assert "🚀 process shop/web-1 /bin/sleep 0.2 (Sigkill by policy shop/no-sleep)" in compact

    table = sb.velvet("get", "tpn", "-A").stdout.splitlines()
    assert table[1].split() == ["shop", "no-sleep", "sched/sched_process_exec", "<all>", table[1].split()[-1]]
    listed = sb.json("policy", "get")["tracing_policies"]
    assert listed == [{"name": "shop/no-sleep", "kind": "VelvetTracingPolicyNamespaced",
                       "hooks": ["sched/sched_process_exec"], "selectors": 1, "scope": "1 pods",
                       "programmed": True}]
    status = sb.json("status")
    assert status["tracing"]["hooks"] == ["sched/sched_process_exec"]
    assert status["tracing"]["problems"] == []
    assert "Tracing:       1 policies on sched/sched_process_exec (1 rules, 1 binary sets): shop/no-sleep" \
        in sb.velvet("status").stdout.splitlines()
    with urllib.request.urlopen(status["http"]["metrics"], timeout=10) as resp:
        metrics = resp.read().decode()
    counted = [line for line in metrics.splitlines() if line.startswith(
        'velvet_policy_actions_total{action="Sigkill",namespace="shop",pod="web-1",policy="shop/no-sleep"}')]
    assert counted
    assert float(counted[0].split()[-1]) >= 1


def test_a_refused_policy_changes_nothing_and_a_deleted_one_stops_acting(sb: Sandbox) -> None:
    """Test that a policy using Tetragon's Override is refused with one line naming the document and the
    field and nothing of the file is applied, and that once the policy is deleted sleep runs in shop."""
    sb.apply(NO_SLEEP)
    override = NO_SLEEP.replace("no-sleep", "bad").replace("action: Sigkill",
                                                           "action: Override, argError: -1")
    bad = NO_SLEEP.replace("no-sleep", "other-policy") + "---\n" + override
    with pytest.raises(CommandFailed) as refused:
        sb.apply(bad)
    [line] = refused.value.stderr.strip().splitlines()
    assert "matchActions[0].action" in line
    assert "not supported" in line
    assert [p["name"] for p in sb.json("policy", "get")["tracing_policies"]] == ["shop/no-sleep"]
    sb.delete(NO_SLEEP)
    assert sb.json("policy", "get")["tracing_policies"] == []
    assert sb.exec("shop/web-1", *SLEEP).stdout.strip() == "status=0"


def test_an_openat_under_a_path_prefix_is_reported_with_the_pod(sb: Sandbox, tmp_path: Path) -> None:
    """Test that a cluster-wide policy on syscalls/sys_enter_openat with matchArgs Prefix reports a pod's
    process opening a file under the prefix (process_tracepoint: pod, binary, path) and not a file
    elsewhere, and that status lists the hook while the policy is applied."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_text("k\n")
    watch = f"""
apiVersion: velvet.io/v1alpha1
kind: VelvetTracingPolicy
metadata: {{name: watch-secret}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_openat
    args: [{{index: 6, type: string}}]
    selectors:
    - matchArgs: [{{index: 6, operator: Prefix, values: ["{secret}/"]}}]
      matchActions: [{{action: Post}}]
"""
    sb.apply(watch)
    assert "syscalls/sys_enter_openat" in sb.json("status")["tracing"]["hooks"]
    assert sb.exec("other/web-1", "/bin/cat", str(secret / "key")).stdout == "k\n"
    assert sb.exec("other/web-1", "/bin/cat", "/etc/hostname").returncode == 0
    found = eventually(sb, ("--namespace", "other", "--type", "process_tracepoint"),
                       lambda evs: [e["process_tracepoint"] for e in evs if "process_tracepoint" in e])
    assert [(e["process"]["binary"], e["args"], e["policy_name"]) for e in found] == \
        [("/bin/cat", [{"string_arg": str(secret / "key")}], "watch-secret")]
    assert found[0]["process"]["pod"] == {"namespace": "other", "name": "web-1", "pod_labels": {"app": "web"}}
    compact = sb.velvet("events", "--namespace", "other", "--type", "process_tracepoint").stdout.splitlines()
    assert compact == [f"🔍 syscall other/web-1 /bin/cat sys_enter_openat {secret}/key "
                       "(Post by policy watch-secret)"]
    sb.delete(watch)
    assert sb.json("status")["tracing"]["hooks"] == []


def test_sigkill_on_setuid_zero_by_one_binary_in_one_namespace(sb: Sandbox, tmp_path: Path) -> None:
    """Test that a VelvetTracingPolicyNamespaced on syscalls/sys_enter_setuid (matchArgs uid Equal 0,
    matchBinaries In one binary, Sigkill) kills that binary calling setuid(0) in its namespace's pod — after
    the call, before it returns: the shell sees 137 — with a process_tracepoint naming the pod, binary, uid
    and policy and a counted action, while the same command in another namespace and setuid(65534) run."""
    py = os.path.realpath(sys.executable)
    no_root = f"""
apiVersion: velvet.io/v1alpha1
kind: VelvetTracingPolicyNamespaced
metadata: {{name: no-setuid-root, namespace: shop}}
spec:
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_setuid
    args: [{{index: 5, type: int}}]
    selectors:
    - matchBinaries: [{{operator: In, values: ["{py}"]}}]
      matchArgs: [{{index: 5, operator: Equal, values: [0]}}]
      matchActions: [{{action: Sigkill}}]
"""

    def setuid(pod: str, uid: int) -> str:
        script = f"'{py}' -c 'import os; os.setuid({uid}); print(\"alive\")'; echo status=$?"
        return " ".join(sb.exec(pod, "/bin/sh", "-c", script).stdout.split())

    sb.apply(no_root)
    try:
        assert "syscalls/sys_enter_setuid" in sb.json("status")["tracing"]["hooks"]
        assert setuid("shop/web-1", 0) == "status=137"
        assert setuid("shop/web-1", 65534) == "alive status=0"
        assert setuid("other/web-1", 0) == "alive status=0"
        found = eventually(sb, ("--type", "process_tracepoint"),
                           lambda evs: [e["process_tracepoint"] for e in evs if "process_tracepoint" in e
                                        and e["process_tracepoint"]["event"] == "sys_enter_setuid"])
        assert [(e["process"]["pod"]["namespace"], e["process"]["pod"]["name"], e["process"]["binary"],
                 e["args"], e["policy_name"], e["action"]) for e in found] == \
            [("shop", "web-1", py, [{"int_arg": 0}], "shop/no-setuid-root", "Sigkill")]
        with urllib.request.urlopen(sb.json("status")["http"]["metrics"], timeout=10) as resp:
            metrics = resp.read().decode()
        counted = 'velvet_policy_actions_total{action="Sigkill",namespace="shop",pod="web-1",' \
            'policy="shop/no-setuid-root"}'
        assert any(line.startswith(counted) for line in metrics.splitlines())
    finally:
        sb.delete(no_root)
    assert "syscalls/sys_enter_setuid" not in sb.json("status")["tracing"]["hooks"]
    assert setuid("shop/web-1", 0) == "alive status=0"
