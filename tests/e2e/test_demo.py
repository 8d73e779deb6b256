"""The demo is a test: `velvet demo` run as a user runs it, checked on what it prints and leaves behind.

Each test runs the whole demo (its own sandbox name) as a subprocess: the Star Wars scenario on a
two-node sandbox (the ships on velvet-node, the Death Star on velvet-node-1) with real traffic through
the socket load balancer, the route between the nodes and the pod veth programs.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import Sandbox, unique_name

from velvet.sandbox.cleanup import find_leftovers
from velvet.sandbox.naming import SandboxNames

pytestmark = pytest.mark.privileged
DEMO_TIMEOUT = 300


def run_demo(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`velvet --sandbox NAME demo ARGS`, to the end."""
    argv = [sys.executable, "-m", "velvet.cli.main", "--sandbox", name, "demo", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=DEMO_TIMEOUT, check=False)


def leftovers(name: str) -> list[str]:
    """What exists of sandbox `name` on this machine: netns, cgroup, pins, state and runtime dirs (of
    every node), processes (agents, node daemons, etcd and its daemon)."""
    names = SandboxNames(name)
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    found += [line.split()[0] for line in netns.splitlines() if line.startswith(names.prefix)]
    found += [str(p) for p in (names.cgroup_sandbox, names.pin_dir, names.state_dir, names.run_dir)
              if p.exists()]
    processes = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    found += [line for line in processes.splitlines()
              if f"--sandbox {name} " in line or f"{names.state_dir}/" in line]
    if not find_leftovers(name).empty:
        found.append(repr(find_leftovers(name)))
    return found


def test_demo_shows_balancing_the_policy_drop_and_leaves_nothing(tmp_path: Path) -> None:
    """Test that the demo passes on two nodes, shows the pods' nodes, both backends answering, a
    cross-node flow forwarded and xwing's cross-node drop with its reason and policy (each with both
    pods' nodes), the policy trace and the agents' tables, and removes every node of its sandbox."""
    name = unique_name("demo")
    summary_file = tmp_path / "summary.json"
    try:
        done = run_demo(name, "--json-summary", str(summary_file))
        left = leftovers(name)
    finally:
        Sandbox(name).down()
    out = done.stdout
    assert done.returncode == 0, f"{out}\n{done.stderr}"
    assert "Demo passed" in out
    assert "$ velvet sandbox up --nodes 2" in out
    assert re.search(r"^velvet-node +Ready", out, re.M), out
    assert re.search(r"^velvet-node-1 +Ready", out, re.M), out
    for pod, k, node in (("deathstar-1", 1, "velvet-node-1"), ("deathstar-2", 1, "velvet-node-1"),
                         ("tiefighter", 0, "velvet-node"), ("xwing", 0, "velvet-node")):
        assert re.search(rf"^{pod} +1/1 +Running +0 +\S+ +10\.244\.{k}\.\d+ +{node} ", out, re.M), out
    counts = re.search(r"answers per backend: deathstar-1 (\d+)/20, deathstar-2 (\d+)/20", out)
    assert counts is not None, out
    assert int(counts[1]) > 0
    assert int(counts[2]) > 0
    assert int(counts[1]) + int(counts[2]) == 20
    assert re.search(r"\$ velvet observe --node-name velvet-node-1 --print-node-name .*"
                     r"--from-pod empire/tiefighter", out), out
    assert re.search(r"\[velvet-node-1\]: empire/tiefighter:\d+", out), out
    assert re.search(r"empire/tiefighter:\d+ \(ID:\d+\) -> empire/deathstar-[12]:80 .* to-endpoint FORWARDED",
                     out)
    assert re.search(r"empire/xwing:\d+ \(ID:\d+\) -> empire/deathstar-[12]:80 .* DROPPED .*Policy denied",
                     out)
    assert re.search(r"cross-node flow: empire/tiefighter on velvet-node -> empire/deathstar-[12] on "
                     r"velvet-node-1: FORWARDED, recorded by velvet-node-1\n", out), out
    assert re.search(r"cross-node drop: empire/xwing on velvet-node -> empire/deathstar-[12] "
                     r"on velvet-node-1: "
                     r"DROPPED POLICY_DENIED by empire/empire-only, recorded by velvet-node-1\n", out), out
    assert re.search(r"drop_reason_desc: +POLICY_DENIED", out)
    assert re.search(r"ingress_denied_by: +empire/empire-only", out)
    assert "ingress: DENIED by empire/empire-only" in out
    assert "Final verdict: DENIED" in out
    assert "Final verdict: ALLOWED" in out
    assert re.search(r"10\.96\.\d+\.\d+:80/TCP +ClusterIP +empire/deathstar", out)
    assert re.search(r"enabled +disabled +\d+ +empire/deathstar-1 +10\.244\.1\.", out)
    assert re.search(r"disabled +disabled +\d+ +empire/xwing +10\.244\.0\.", out)
    assert "Programs:" in out
    assert "Maps:" in out
    summary = json.loads(summary_file.read_text())
    assert summary["passed"]
    assert summary["problems"] == []
    assert summary["nodes"] == {"deathstar-1": "velvet-node-1", "deathstar-2": "velvet-node-1",
                                "tiefighter": "velvet-node", "xwing": "velvet-node"}
    assert summary["backends"]["deathstar-1"] + summary["backends"]["deathstar-2"] == 20
    assert summary["xwing_landed"] is False
    flow, drop = summary["cross_node_flow"], summary["xwing_drop"]
    assert (flow["source"], flow["source_node"], flow["destination_node"], flow["verdict"]) == \
        ("tiefighter", "velvet-node", "velvet-node-1", "FORWARDED")
    assert (drop["source"], drop["source_node"], drop["destination_node"], drop["recorded_by"]) == \
        ("xwing", "velvet-node", "velvet-node-1", "velvet-node-1")
    assert drop["policies"] == ["empire/empire-only"]
    if summary["service_map"]:
        assert summary["service_map"] in out
    assert left == []


def test_demo_keep_leaves_the_sandbox_up_and_says_how_to_remove_it() -> None:
    """Test that `--keep` ends with the scenario still running on both nodes and the teardown command
    printed."""
    sandbox = Sandbox(unique_name("demo"))
    try:
        done = run_demo(sandbox.name, "--keep")
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        assert f"velvet --sandbox {sandbox.name} sandbox down" in done.stdout
        running = {p["metadata"]["name"]: p["spec"]["nodeName"]
                   for p in sandbox.json("get", "pods", "-n", "empire")["items"]}
        assert running == {"deathstar-1": "velvet-node-1", "deathstar-2": "velvet-node-1",
                           "tiefighter": "velvet-node", "xwing": "velvet-node"}
    finally:
        sandbox.down()


def test_ctrl_c_during_the_demo_tears_everything_down() -> None:
    """Test that SIGINT in the middle of the demo (pods running) still removes the whole sandbox."""
    name = unique_name("demo")
    argv = [sys.executable, "-m", "velvet.cli.main", "--sandbox", name, "demo"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + DEMO_TIMEOUT
        seen = b""
        while b"==> Load balancing" not in seen:
            assert time.monotonic() < deadline, seen
            assert proc.poll() is None, seen
            if select.select([fd], [], [], 1.0)[0]:
                seen += os.read(fd, 65536)
        proc.send_signal(signal.SIGINT)
        rest, errors = proc.communicate(timeout=60)
        out, err = (seen + rest).decode(), errors.decode()
        left = leftovers(name)
    finally:
        if proc.poll() is None:
            proc.kill()
        Sandbox(name).down()
    assert proc.returncode == 130
    assert "interrupted (SIGINT): cleaning up" in err
    assert f"sandbox {name} removed" in out
    assert "Demo interrupted (SIGINT)" in out
    assert left == []
