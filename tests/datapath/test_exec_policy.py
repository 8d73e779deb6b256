"""Tests of exec tracing policies on the real kernel: proc.bpf.o attached to a cgroup of the test's own with
two "pods" (child cgroups in namespaces shop and other), policies compiled by `control.tracing` and
written as the agent writes them, real processes executed in the pods.

Needs root, cgroup v2, bpffs and tracefs; the cgroups, pins, links and copied binaries are removed by
exact name.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from ctypes import c_uint32, c_uint64
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures_datapath import remove_proc_source
from prometheus_client import CollectorRegistry

from velvet.control.tracing import PodScope, TracingCompiler, TracingPolicy
from velvet.datapath.maps import Map
from velvet.model.codec import parse_documents
from velvet.observe.enrich import DictResolver, EndpointInfo
from velvet.runtime.monitor import EventQuery, ProcessMonitor
from velvet.runtime.source import KernelProcSource
from velvet.system import mounts

Json = dict[str, Any]
PODS = {"a": ("shop", "web-1", "10.0.8.1"), "b": ("other", "web-1", "10.0.8.2")}


class Node:
    """The monitored cgroup, its two pods' cgroups, the monitor and the compiler, as an agent has them."""

    def __init__(self, root: Path, source: KernelProcSource, monitor: ProcessMonitor, tmp: Path) -> None:
        self.root, self.source, self.monitor, self.tmp = root, source, monitor, tmp
        self.compiler = TracingCompiler()
        self.pods = [PodScope(ns, name, {"app": "web"}, (root / key).stat().st_ino)
                     for key, (ns, name, _) in PODS.items()]

    def apply(self, *documents: str) -> None:
        """Compile `documents` (YAML policies) for the two pods and write them as the agent does."""
        policies: list[TracingPolicy] = []
        for text in documents:
            for obj in parse_documents(text, "policy.yaml"):
                assert isinstance(obj, TracingPolicy)
                policies.append(obj)
        compiled = self.compiler.compile(policies, self.pods)
        assert compiled.problems == []
        self.monitor.set_policy(compiled.tables, compiled.names, compiled.args)

    def run(self, pod: str, argv: list[str]) -> subprocess.CompletedProcess[bytes]:
        """Run `argv` in pod `pod` ("a" or "b") and wait for it."""
        return subprocess.run(argv, preexec_fn=_enter(self.root / pod), capture_output=True, check=False,
                              timeout=30)

    def events(self, until: Callable[[list[Json]], bool]) -> list[Json]:
        """Poll until `until(all events)` holds (a few seconds at most); all events as JSON."""
        deadline = time.monotonic() + 10
        while True:
            self.monitor.poll()
            found = self.monitor.query(EventQuery(last=100000))
            if until(found) or time.monotonic() > deadline:
                return found

    def binsets(self, pid: int) -> int | None:
        """proc_binsets of `pid` as the kernel holds it (None: no entry)."""
        with Map.from_pin(self.source.pin_dir / "proc_binsets", c_uint32, c_uint64) as sets:
            found = sets.lookup(c_uint32(pid))
        return None if found is None else int(found.value)


def _enter(cgroup: Path) -> Callable[[], object]:
    procs = cgroup / "cgroup.procs"
    return lambda: procs.write_text(str(os.getpid()))


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """proc.bpf.o with pins of its own, aimed at a fresh cgroup with pods a (shop/web-1), b (other/web-1)."""
    token = secrets.token_hex(4)
    root = mounts.cgroup2_mount() / f"velvet-dp-rtpol-{token}"
    pin_dir = mounts.ensure_bpffs() / f"velvet-dp-rtpol-{token}"
    root.mkdir()
    for pod in PODS:
        (root / pod).mkdir()
    source = KernelProcSource(pin_dir, root)
    resolver = DictResolver()
    for pod, (namespace, name, ip) in PODS.items():
        resolver.set_cgroup((root / pod).stat().st_ino, ip)
        resolver.set_endpoint(ip, EndpointInfo(namespace, name, ("k8s:app=web",)))
    monitor = ProcessMonitor(source, resolver, "dp-node", cgroup=root)
    try:
        monitor.start()
        yield Node(root, source, monitor, tmp_path)
    finally:
        try:
            monitor.close()
            remove_proc_source(source, pin_dir)
        finally:
            for cgroup in [*(root / pod for pod in PODS), root]:
                (cgroup / "cgroup.kill").write_text("1")  # what a failed test left running
                deadline = time.monotonic() + 5
                while "populated 1" in (cgroup / "cgroup.events").read_text() and time.monotonic() < deadline:
                    time.sleep(0.05)
                cgroup.rmdir()


def policy(name: str, selectors: list[Json], *, namespace: str = "", pod_selector: Json | None = None,
           hook: Json | None = None) -> str:
    """A tracing policy on the exec hook (or `hook`): namespaced when `namespace` is given."""
    hook = {"subsystem": "sched", "event": "sched_process_exec", **(hook or {}), "selectors": selectors}
    spec: Json = {"tracepoints": [hook]}
    if pod_selector is not None:
        spec["podSelector"] = pod_selector
    meta: Json = {"name": name, **({"namespace": namespace} if namespace else {})}
    kind = "VelvetTracingPolicyNamespaced" if namespace else "VelvetTracingPolicy"
    return yaml.safe_dump({"apiVersion": "velvet.io/v1alpha1", "kind": kind, "metadata": meta, "spec": spec})


def _execs(events: list[Json], pid: int) -> list[Json]:
    return [e["process_exec"] for e in events
            if e.get("process_exec", {}).get("process", {}).get("pid") == pid]


def _exits(events: list[Json], pid: int) -> list[Json]:
    return [e["process_exit"] for e in events
            if e.get("process_exit", {}).get("process", {}).get("pid") == pid]


def test_sigkill_on_exec_kills_in_the_policys_namespace_only(node: Node) -> None:
    """Test that a namespaced Sigkill policy on /usr/bin/sleep kills sleep in its namespace's pod before it
    runs (exit by SIGKILL; the exec event names the pod, binary, parent and policy) and not in another."""
    node.apply(policy("no-sleep", [{"matchBinaries": [{"operator": "In", "values": ["/usr/bin/sleep"]}],
                                    "matchActions": [{"action": "Sigkill"}]}], namespace="shop"))
    killed = subprocess.Popen(["/usr/bin/sleep", "30"], preexec_fn=_enter(node.root / "a"))
    assert killed.wait(timeout=10) == -signal.SIGKILL
    spared = node.run("b", ["/usr/bin/sleep", "0"])
    assert spared.returncode == 0
    events = node.events(lambda ev: bool(_exits(ev, killed.pid)))
    [exec_event] = _execs(events, killed.pid)
    assert exec_event["policy_name"] == "shop/no-sleep"
    assert exec_event["action"] == "Sigkill"
    assert exec_event["process"]["binary"] == "/usr/bin/sleep"
    assert exec_event["process"]["pod"]["namespace"] == "shop"
    assert exec_event["process"]["pod"]["name"] == "web-1"
    assert exec_event["parent"]["pid"] == os.getpid()
    [exit_event] = _exits(events, killed.pid)
    assert exit_event["signal"] == "SIGKILL"
    other = [e for e in events if e.get("process_exec", {}).get("process", {}).get("pod", {}).get("namespace")
             == "other"]
    assert other
    assert all("policy_name" not in e["process_exec"] for e in other)


def test_prefix_signal_and_notin_post(node: Node) -> None:
    """Test that matchBinaries Prefix (an LPM trie on the path) sends the Signal of argSig to a binary under
    the prefix only, and that NotIn posts every other binary's exec with the policy's name."""
    tools = node.tmp / "tools"
    tools.mkdir()
    shutil.copy("/usr/bin/sleep", tools / "sleep")
    node.apply(policy("usr1-tools", [{"matchBinaries": [{"operator": "Prefix", "values": [f"{tools}/"]}],
                                      "matchActions": [{"action": "Signal", "argSig": 10}]}]),
               policy("post-not-true",
                      [{"matchBinaries": [{"operator": "NotIn", "values": ["/usr/bin/true"]}],
                        "matchActions": [{"action": "Post"}]}]))
    signalled = node.run("a", [str(tools / "sleep"), "30"])
    assert signalled.returncode == -signal.SIGUSR1
    assert node.run("b", ["/usr/bin/sleep", "0"]).returncode == 0
    quiet = subprocess.Popen(["/usr/bin/true"], preexec_fn=_enter(node.root / "a"))
    posted = subprocess.Popen(["/usr/bin/echo"], preexec_fn=_enter(node.root / "a"),
                              stdout=subprocess.DEVNULL)
    assert quiet.wait() == 0
    assert posted.wait() == 0
    events = node.events(lambda ev: bool(_exits(ev, quiet.pid) and _exits(ev, posted.pid)))
    [echo] = _execs(events, posted.pid)
    assert (echo["policy_name"], echo["action"]) == ("post-not-true", "Post")
    [true] = _execs(events, quiet.pid)
    assert "policy_name" not in true


def test_match_pids_follow_forks_selects_the_descendants_of_a_pid(node: Node) -> None:
    """Test that matchPIDs In with followForks kills /usr/bin/true run by a listed shell's child, and that
    the same binary run by another shell lives; a policy for label app=db selects neither pod."""
    script = "/usr/bin/true; echo $?"
    listed = subprocess.Popen(["/bin/sh", "-c", f"read x; {script}"], preexec_fn=_enter(node.root / "a"),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    node.apply(policy("kids-of-one", [{"matchBinaries": [{"operator": "In", "values": ["/usr/bin/true"]}],
                                       "matchPIDs": [{"operator": "In", "values": [listed.pid],
                                                      "followForks": True}],
                                       "matchActions": [{"action": "Sigkill"}]}]),
               policy("db-only", [{"matchActions": [{"action": "Sigkill"}]}], pod_selector={"matchLabels":
                                                                                           {"app": "db"}}))
    out, _ = listed.communicate(b"go\n", timeout=10)
    assert out.decode().strip() == str(128 + signal.SIGKILL)
    assert node.run("a", ["/bin/sh", "-c", script]).stdout.decode().strip() == "0"


def test_proc_binsets_follow_exec_fork_and_exit(node: Node) -> None:
    """Test that a process's proc_binsets entry has the bits of its binary's sets from its exec, that a
    forked child has its parent's, that the entry goes with the process, and that the agent's evaluation
    of a path agrees with the kernel's."""
    tools = node.tmp / "tools"
    tools.mkdir()
    shutil.copy("/bin/sh", tools / "sh")
    doc = policy("watch", [{"matchBinaries": [{"operator": "Prefix", "values": [f"{tools}/"]}],
                            "matchActions": [{"action": "NoPost"}]},
                           {"matchBinaries": [{"operator": "In", "values": ["/usr/bin/sleep"]}],
                            "matchActions": [{"action": "NoPost"}]}])
    node.apply(doc)
    [obj] = parse_documents(doc, "p.yaml")
    assert isinstance(obj, TracingPolicy)
    selectors = obj.spec.tracepoints[0].selectors
    compiled = node.compiler.compile([obj], node.pods)
    tools_bit = 1 << compiled.binary_set(selectors[0].match_binaries[0]).index
    sleep_bit = 1 << compiled.binary_set(selectors[1].match_binaries[0]).index
    assert tools_bit != sleep_bit
    assert compiled.sets_of("/usr/bin/sleep") == sleep_bit
    assert compiled.sets_of(f"{tools}/sh") == tools_bit
    script = "exec 3<&0; /usr/bin/sleep 30 & echo $!; (read x <&3) & echo $!; wait"  # subshell reads stdin
    shell = subprocess.Popen([str(tools / "sh"), "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             preexec_fn=_enter(node.root / "a"))
    assert shell.stdout is not None
    sleeper, subshell = int(shell.stdout.readline()), int(shell.stdout.readline())
    deadline = time.monotonic() + 5
    while node.binsets(sleeper) != sleep_bit and time.monotonic() < deadline:
        time.sleep(0.05)
    assert node.binsets(sleeper) == sleep_bit
    assert node.binsets(shell.pid) == tools_bit
    assert node.binsets(subshell) == tools_bit  # a fork without exec: its parent's binary
    os.kill(sleeper, signal.SIGTERM)
    shell.communicate(b"x\n", timeout=10)
    assert node.binsets(sleeper) is None
    assert node.binsets(subshell) is None
    assert node.binsets(shell.pid) is None


def test_policies_keep_acting_across_an_agent_restart(node: Node) -> None:
    """Test that a restarted monitor (new source on the same pins) finds the programmed policy still acting
    before it programs anything, reads back exactly what it holds, and that a compiler restored from the
    earlier numbers compiles the same tables (so nothing is rewritten)."""
    doc = policy("no-sleep", [{"matchBinaries": [{"operator": "In", "values": ["/usr/bin/sleep"]}],
                               "matchActions": [{"action": "Sigkill"}]},
                              {"matchBinaries": [{"operator": "Prefix", "values": ["/usr/lib/", "/opt/"]}],
                               "matchPIDs": [{"operator": "NotIn", "values": [1, 2]}]}], namespace="shop")
    node.apply(doc)
    programmed = node.monitor.policy_tables
    assert programmed.prefixes
    node.monitor.close()
    source = KernelProcSource(node.source.pin_dir, node.root)
    monitor = ProcessMonitor(source, DictResolver(), "dp-node", cgroup=node.root)
    node.source, node.monitor = source, monitor
    monitor.start()
    assert monitor.policy_tables == programmed
    assert node.run("a", ["/usr/bin/sleep", "5"]).returncode == -signal.SIGKILL
    restored = TracingCompiler()
    restored.restore(json.loads(json.dumps(node.compiler.numbers())))
    [obj] = parse_documents(doc, "p.yaml")
    assert isinstance(obj, TracingPolicy)
    assert restored.compile([obj], node.pods).tables == programmed


OPENAT = {"subsystem": "syscalls", "event": "sys_enter_openat",
          "args": [{"index": 6, "type": "string"}, {"index": 7, "type": "int"}]}


def test_openat_on_a_path_prefix_is_reported_with_the_pod_and_an_exact_path_sigkills(node: Node) -> None:
    """Test that an openat policy (attached only while a policy uses it) reports a process opening a file
    under a prefix as process_tracepoint with its pod, binary, path and flags, only in its namespace, and
    that matchArgs Equal with Sigkill kills the opener in the other namespace; removing the policies
    detaches the program."""
    secret = node.tmp / "secret"
    secret.mkdir()
    (secret / "key").write_text("k\n")
    key = str(secret / "key")
    under = {"matchArgs": [{"index": 6, "operator": "Prefix", "values": [f"{secret}/"]}],
             "matchActions": [{"action": "Post"}]}
    exact = {"matchArgs": [{"index": 6, "operator": "Equal", "values": [key]}],
             "matchActions": [{"action": "Sigkill"}]}
    node.apply(policy("watch-secret", [under], namespace="shop", hook=OPENAT),
               policy("no-key", [exact], namespace="other", hook=OPENAT))
    assert "proc_openat" in {p["name"] for p in node.source.programs()}
    read = subprocess.Popen(["/usr/bin/cat", key], preexec_fn=_enter(node.root / "a"),
                            stdout=subprocess.PIPE)
    assert read.communicate(timeout=10)[0] == b"k\n"
    killed = subprocess.Popen(["/usr/bin/cat", key], preexec_fn=_enter(node.root / "b"),
                              stdout=subprocess.PIPE)
    assert killed.communicate(timeout=10)[0] == b""
    assert killed.returncode == -signal.SIGKILL
    events = node.events(lambda ev: bool(_tracepoints(ev, read.pid) and _tracepoints(ev, killed.pid)))
    [kill] = _tracepoints(events, killed.pid)
    assert (kill["policy_name"], kill["action"]) == ("other/no-key", "Sigkill")
    assert kill["process"]["pod"]["namespace"] == "other"
    [seen] = _tracepoints(events, read.pid)
    assert (seen["subsys"], seen["event"]) == ("syscalls", "sys_enter_openat")
    assert seen["args"] == [{"string_arg": key}, {"int_arg": os.O_RDONLY}]
    assert (seen["policy_name"], seen["action"]) == ("shop/watch-secret", "Post")
    assert seen["process"]["binary"] == "/usr/bin/cat"
    assert seen["process"]["pod"]["namespace"] == "shop"
    node.apply()
    assert "proc_openat" not in {p["name"] for p in node.source.programs()}
    assert node.run("b", ["/usr/bin/cat", key]).returncode == 0


def _tracepoints(events: list[Json], pid: int) -> list[Json]:
    return [e["process_tracepoint"] for e in events
            if e.get("process_tracepoint", {}).get("process", {}).get("pid") == pid]



def _python(node: Node) -> str:
    """A copy of this test's Python interpreter under the test's directory: a binary of its own path."""
    copy = node.tmp / "bin" / "py"
    copy.parent.mkdir(exist_ok=True)
    if not copy.exists():
        shutil.copy(os.path.realpath(sys.executable), copy)
    return str(copy)


def _syscall(nr: int, *args: int | bytes | None) -> str:
    """Python code that makes syscall `nr` with `args` through libc and prints "alive" after it."""
    return (f"import ctypes; libc = ctypes.CDLL(None, use_errno=True); libc.syscall({nr}, "
            + ", ".join(repr(a) for a in args) + "); print('alive', flush=True)")


def test_setuid_zero_by_a_matched_binary_is_killed_and_another_binary_or_uid_is_not(node: Node) -> None:
    """Test that Sigkill on syscalls/sys_enter_setuid with matchArgs uid Equal 0 and matchBinaries In kills
    the matched binary calling setuid(0) (after the call: a kill, not a denial), reports it with the uid, and
    spares the same binary calling setuid(65534) and another binary calling setuid(0)."""
    py = _python(node)
    hook = {"subsystem": "syscalls", "event": "sys_enter_setuid", "args": [{"index": 5, "type": "int"}]}
    node.apply(policy("no-root", [{"matchBinaries": [{"operator": "In", "values": [py]}],
                                   "matchArgs": [{"index": 5, "operator": "Equal", "values": [0]}],
                                   "matchActions": [{"action": "Sigkill"}]}], hook=hook))
    assert "proc_setuid" in {p["name"] for p in node.source.programs()}
    killed = subprocess.Popen([py, "-c", "import os; os.setuid(0); print('alive')"],
                              preexec_fn=_enter(node.root / "a"), stdout=subprocess.PIPE)
    assert killed.communicate(timeout=30)[0] == b""
    assert killed.returncode == -signal.SIGKILL
    other_uid = node.run("a", [py, "-c", "import os; os.setuid(65534); print('alive')"])
    assert (other_uid.returncode, other_uid.stdout) == (0, b"alive\n")
    other_binary = node.run("a", [os.path.realpath(sys.executable), "-c",
                                  "import os; os.setuid(0); print('alive')"])
    assert (other_binary.returncode, other_binary.stdout) == (0, b"alive\n")
    events = node.events(lambda ev: bool(_tracepoints(ev, killed.pid)))
    [kill] = _tracepoints(events, killed.pid)
    assert (kill["subsys"], kill["event"], kill["args"]) == ("syscalls", "sys_enter_setuid", [{"int_arg": 0}])
    assert (kill["policy_name"], kill["action"]) == ("no-root", "Sigkill")
    assert kill["process"]["binary"] == py
    assert kill["process"]["pod"]["namespace"] == "shop"
    assert len([e for e in events if "process_tracepoint" in e]) == 1


PTRACE = 101  # x86-64
PTRACE_TRACEME, PTRACE_PEEKDATA, PTRACE_ATTACH, PTRACE_SEIZE = 0, 2, 16, 0x4206


def test_ptrace_request_gt_lt_and_equal(node: Node) -> None:
    """Test numeric matchArgs on syscalls/sys_enter_ptrace's request: GT kills PTRACE_SEIZE, Equal sends
    SIGUSR1 on PTRACE_ATTACH, LT posts PTRACE_TRACEME with the request and pid, and PTRACE_PEEKDATA (none
    of them) is neither acted on nor reported."""
    hook = {"subsystem": "syscalls", "event": "sys_enter_ptrace",
            "args": [{"index": 5, "type": "int"}, {"index": 6, "type": "int"}]}

    def on(operator: str, value: int, action: Json) -> list[Json]:
        return [{"matchArgs": [{"index": 5, "operator": operator, "values": [value]}],
                 "matchActions": [action]}]

    node.apply(policy("seize", on("GT", 0x4200, {"action": "Sigkill"}), hook=hook),
               policy("attach", on("Equal", PTRACE_ATTACH, {"action": "Signal", "argSig": 10}), hook=hook),
               policy("traceme", on("LT", 1, {"action": "Post"}), hook=hook))
    py = _python(node)
    runs = {request: node.run("a", [py, "-c", _syscall(PTRACE, request, 0, 0, 0)])
            for request in (PTRACE_SEIZE, PTRACE_ATTACH, PTRACE_TRACEME, PTRACE_PEEKDATA)}
    assert runs[PTRACE_SEIZE].returncode == -signal.SIGKILL
    assert runs[PTRACE_ATTACH].returncode == -signal.SIGUSR1
    assert (runs[PTRACE_TRACEME].returncode, runs[PTRACE_TRACEME].stdout) == (0, b"alive\n")
    assert (runs[PTRACE_PEEKDATA].returncode, runs[PTRACE_PEEKDATA].stdout) == (0, b"alive\n")
    events = node.events(lambda ev: len([e for e in ev if "process_tracepoint" in e]) >= 3)
    seen = sorted((e["process_tracepoint"]["policy_name"], e["process_tracepoint"]["action"],
                   e["process_tracepoint"]["args"][0]["int_arg"])
                  for e in events if "process_tracepoint" in e)
    assert seen == [("attach", "Signal", PTRACE_ATTACH), ("seize", "Sigkill", PTRACE_SEIZE),
                    ("traceme", "Post", PTRACE_TRACEME)]


MOUNT = 165  # x86-64
MS_NOSUID = 2


def test_a_mount_target_postfix_is_reported_with_its_strings(node: Node) -> None:
    """Test that matchArgs Postfix on syscalls/sys_enter_mount's dir_name (a trie of reversed strings)
    posts a mount onto …/secrets with dev_name, dir_name and flags, and not a mount onto …/public (each
    in a mount namespace of its own, gone with the process)."""
    for name in ("secrets", "public"):
        (node.tmp / name).mkdir()
    hook = {"subsystem": "syscalls", "event": "sys_enter_mount",
            "args": [{"index": 5, "type": "string"}, {"index": 6, "type": "string"},
                     {"index": 8, "type": "int"}]}
    node.apply(policy("secret-mounts", [{"matchArgs": [{"index": 6, "operator": "Postfix",
                                                        "values": ["/secrets", "/private/keys"]}]}],
                      hook=hook))
    py = _python(node)
    for name in ("secrets", "public"):
        target = str(node.tmp / name).encode()
        code = _syscall(MOUNT, b"velvet-test", target, b"tmpfs", MS_NOSUID, None)
        done = node.run("a", ["/usr/bin/unshare", "-m", py, "-c", code])
        assert (done.returncode, done.stdout) == (0, b"alive\n")
    events = node.events(lambda ev: any("process_tracepoint" in e for e in ev))
    [posted] = [e["process_tracepoint"] for e in events if "process_tracepoint" in e]
    assert (posted["event"], posted["policy_name"], posted["action"]) == \
        ("sys_enter_mount", "secret-mounts", "Post")
    assert posted["args"] == [{"string_arg": "velvet-test"}, {"string_arg": str(node.tmp / "secrets")},
                              {"int_arg": MS_NOSUID}]
    assert posted["process"]["binary"] == py


def test_openat_postfix_kills_the_opener_of_a_key_file_only(node: Node) -> None:
    """Test that matchArgs Postfix on openat's path kills cat opening a file ending in .pem or .key, and
    lets it read a .txt and a file whose name only contains .key."""
    for name in ("a.key", "b.pem", "c.txt", "d.key.txt"):
        (node.tmp / name).write_text("x\n")
    keys = {"matchArgs": [{"index": 6, "operator": "Postfix", "values": [".key", ".pem"]}],
            "matchActions": [{"action": "Sigkill"}]}
    node.apply(policy("no-keys", [keys], hook=OPENAT))
    results = {name: node.run("b", ["/usr/bin/cat", str(node.tmp / name)]) for name in
               ("a.key", "b.pem", "c.txt", "d.key.txt")}
    assert {name: r.returncode for name, r in results.items()} == {
        "a.key": -signal.SIGKILL, "b.pem": -signal.SIGKILL, "c.txt": 0, "d.key.txt": 0}
    assert results["c.txt"].stdout == b"x\n"


def test_a_process_in_no_binary_set_skips_in_rules_and_still_meets_notin_rules(node: Node) -> None:
    """Test that, on the openat hook, a process of no binary set (cat) is spared by a Sigkill rule for a
    binary that is not running (the kernel leaves before reading the path) and still posted by a rule with
    matchBinaries NotIn and matchArgs Prefix on its file, while a process of the In rule's set is killed."""
    (node.tmp / "watched").write_text("w\n")
    py = _python(node)
    absent = {"matchBinaries": [{"operator": "In", "values": ["/usr/bin/velvet-test-not-running", py]}],
              "matchArgs": [{"index": 6, "operator": "Prefix", "values": [f"{node.tmp}/"]}],
              "matchActions": [{"action": "Sigkill"}]}
    notin = {"matchBinaries": [{"operator": "NotIn", "values": ["/usr/bin/true"]}],
             "matchArgs": [{"index": 6, "operator": "Equal", "values": [str(node.tmp / "watched")]}],
             "matchActions": [{"action": "Post"}]}
    node.apply(policy("idle-in", [absent], hook=OPENAT), policy("post-notin", [notin], hook=OPENAT))
    read = subprocess.Popen(["/usr/bin/cat", str(node.tmp / "watched")], preexec_fn=_enter(node.root / "a"),
                            stdout=subprocess.PIPE)
    assert read.communicate(timeout=10)[0] == b"w\n"
    killed = node.run("a", [py, "-c", f"open({str(node.tmp / 'watched')!r}); print('alive')"])
    assert killed.returncode == -signal.SIGKILL
    events = node.events(lambda ev: bool(_tracepoints(ev, read.pid)))
    [seen] = _tracepoints(events, read.pid)
    assert (seen["policy_name"], seen["action"]) == ("post-notin", "Post")


def test_syscalls_are_counted_per_pod_only_when_asked(node: Node) -> None:
    """Test that without count_syscalls no raw_syscalls program is attached and nothing is counted, and that
    with it (a restarted monitor, as `velvet agent --syscall-metrics`) a pod's process making 20000 getppid
    calls is counted in its pod's velvet_syscalls_total at scrape time, more than the quiet pod's."""
    assert "proc_syscalls" not in {p["name"] for p in node.source.programs()}
    assert node.source.syscall_counts() == {}
    node.monitor.close()
    resolver = DictResolver()
    for pod, (namespace, name, ip) in PODS.items():
        resolver.set_cgroup((node.root / pod).stat().st_ino, ip)
        resolver.set_endpoint(ip, EndpointInfo(namespace, name, ("k8s:app=web",)))
    registry = CollectorRegistry()
    source = KernelProcSource(node.source.pin_dir, node.root, count_syscalls=True)
    monitor = ProcessMonitor(source, resolver, "dp-node", cgroup=node.root, registry=registry)
    node.source, node.monitor = source, monitor
    monitor.start()
    assert "proc_syscalls" in {p["name"] for p in source.programs()}
    busy = node.run("a", [sys.executable, "-c", "import os\nfor _ in range(20000): os.getppid()"])
    assert busy.returncode == 0
    assert node.run("b", ["/usr/bin/true"]).returncode == 0

    def scraped(namespace: str) -> float:
        value = registry.get_sample_value("velvet_syscalls_total", {"namespace": namespace, "pod": "web-1"})
        return value or 0.0

    assert scraped("shop") >= 20000
    assert 0 < scraped("other") < scraped("shop")
    counts = monitor.syscalls_per_pod()
    assert set(counts) == {("shop", "web-1"), ("other", "web-1")}
