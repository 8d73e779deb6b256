"""`velvet demo`: the Star Wars scenario on a two-node sandbox, narrated, then nothing left behind.

The ships run on one node and the Death Star's two backends on the other (spec.nodeName in
examples/starwars), so every landing crosses nodes. It shows the deathstar Service spreading
tiefighter's requests over both backends, xwing dropped by a NetworkPolicy, both flows as the Death
Star's node recorded them (a cross-node flow forwarded, a cross-node drop with its reason and
isolating policy, each pod's node named), `policy trace`, the service and endpoint tables and
`velvet status`. Ctrl-C (or SIGTERM) tears the sandbox down too.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from velvet.cli.common import require_root
from velvet.cli.runner import SandboxCli
from velvet.errors import VelvetError

DEMO_SANDBOX = "demo"
NODES = 2
SCENARIO = Path(__file__).resolve().parents[3] / "examples" / "starwars"
NAMESPACE = "empire"
PODS = ("deathstar-1", "deathstar-2", "tiefighter", "xwing")
BACKENDS = ("deathstar-1", "deathstar-2")
SERVICE = "deathstar"
REQUESTS = 20
READY_TIMEOUT = 90.0
FLOW_TIMEOUT = 10.0
SHOWN_ANSWERS = 4
DROP_FIELDS = ("verdict", "drop_reason_desc", "traffic_direction")
INTERRUPTED_EXIT = 130


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: stop the show and clean up."""


@dataclass
class Findings:
    """What the demo saw; the test (and `--json-summary`) check these."""

    sandbox: str
    nodes: dict[str, str] = field(default_factory=dict)  # pod -> the node it runs on
    backends: dict[str, int] = field(default_factory=dict)
    tiefighter_failures: int = 0
    xwing_landed: bool | None = None
    cross_node_flow: dict[str, Any] = field(default_factory=dict)
    xwing_drop: dict[str, Any] = field(default_factory=dict)
    trace_verdict: str = ""
    service_map: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Everything the demo shows happened as it should."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The findings and the overall outcome."""
        return {"sandbox": self.sandbox, "nodes": self.nodes, "backends": self.backends, "requests": REQUESTS,
                "tiefighter_failures": self.tiefighter_failures, "xwing_landed": self.xwing_landed,
                "cross_node_flow": self.cross_node_flow, "xwing_drop": self.xwing_drop,
                "trace_verdict": self.trace_verdict, "service_map": self.service_map,
                "problems": self.problems, "passed": self.passed}


class Demo:
    """Runs `velvet` commands against the demo sandbox, narrating as it goes."""

    def __init__(self, sandbox: str) -> None:
        self.sandbox = sandbox
        self.cli = SandboxCli(sandbox)

    def say(self, *lines: str) -> None:
        """A few lines of narration."""
        print("\n" + "\n".join(f"==> {line}" if i == 0 else f"    {line}" for i, line in enumerate(lines)),
              flush=True)

    def velvet(self, *args: str, check: bool = True, show: bool = True,
               node: str = "") -> subprocess.CompletedProcess[str]:
        """Run one velvet command as a user would type it, on `node`'s agent when given (`velvet --node`:
        a command about one node, its endpoints or policy verdicts); show it and its output."""
        args = ("--node", node, *args) if node else args
        if show:
            print(f"$ velvet {' '.join(args)}", flush=True)
        done = self.cli.velvet(*args, check=check, timeout=None)
        if show and done.stdout.strip():
            print(done.stdout.rstrip(), flush=True)
        return done

    def observe(self, receiver: str, *args: str, show: bool = True) -> subprocess.CompletedProcess[str]:
        """`velvet observe ARGS` over every node's flows (the relay merges them): those `receiver` saw."""
        return self.velvet("observe", "--node-name", receiver, "--print-node-name", *args, show=show)

    def exec_lines(self, pod: str, *argv: str) -> list[str]:
        """Run a command in a pod (shown as typed); its output lines."""
        print(f"$ velvet sandbox exec {NAMESPACE}/{pod} -- {' '.join(argv)}", flush=True)
        return self.cli.exec(f"{NAMESPACE}/{pod}", *argv, timeout=None).stdout.splitlines()

    def wait_ready(self) -> None:
        """Wait until the scenario's pods are Running and Ready."""
        self.cli.wait_ready([f"{NAMESPACE}/{pod}" for pod in PODS], READY_TIMEOUT)

    def cluster_ip(self) -> str:
        """The deathstar Service's ClusterIP."""
        services = self.cli.json("get", "svc", "-n", NAMESPACE)["items"]
        found = [s["spec"]["clusterIP"] for s in services if s["metadata"]["name"] == SERVICE]
        if not found:
            raise VelvetError(f"service {NAMESPACE}/{SERVICE} not found")
        return str(found[0])

    def last_flow(self, receiver: str, filters: tuple[str, ...]) -> dict[str, Any] | None:
        """The latest flow matching `filters` that `receiver` recorded, once its agent has it."""
        deadline = time.monotonic() + FLOW_TIMEOUT
        while True:
            done = self.observe(receiver, *filters, "--last", "1", "-o", "json", show=False)
            lines = done.stdout.splitlines()
            if lines:
                flow: dict[str, Any] = json.loads(lines[-1])
                return flow
            if time.monotonic() > deadline:
                return None
            time.sleep(0.3)

    def pod_nodes(self) -> dict[str, str]:
        """The node each of the scenario's pods runs on."""
        pods = self.cli.json("get", "pods", "-n", NAMESPACE)["items"]
        return {p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in pods}


_XWING_DROPS = ("--verdict", "DROPPED", "--type", "drop", "--from-pod", f"{NAMESPACE}/xwing",
                "--to-pod", f"{NAMESPACE}/deathstar")
_TIEFIGHTER_LANDINGS = ("--verdict", "FORWARDED", "--type", "trace:to-endpoint",
                        "--from-pod", f"{NAMESPACE}/tiefighter", "--to-pod", f"{NAMESPACE}/deathstar")


def cross_node_line(what: str, flow: dict[str, Any], nodes: dict[str, str]) -> tuple[dict[str, Any], str]:
    """What a flow says about its two pods and their nodes, and one line for people:
    "cross-node flow: empire/tiefighter on velvet-node -> empire/deathstar-2 on velvet-node-1: ..."."""
    source = (flow.get("source") or {}).get("pod_name", "")
    destination = (flow.get("destination") or {}).get("pod_name", "")
    facts = {"source": source, "source_node": nodes.get(source, ""), "destination": destination,
             "destination_node": nodes.get(destination, ""), "recorded_by": flow.get("node_name", ""),
             "verdict": flow.get("verdict")}
    line = (f"{what}: {NAMESPACE}/{source} on {facts['source_node'] or '?'} -> {NAMESPACE}/{destination} on "
            f"{facts['destination_node'] or '?'}: {facts['verdict']}")
    return facts, line


def crossed(facts: dict[str, Any]) -> bool:
    """Whether a flow went from a pod on one node to a pod on another."""
    return bool(facts["source_node"] and facts["destination_node"]
                and facts["source_node"] != facts["destination_node"])


def landing(demo: Demo, found: Findings, url: str) -> None:
    """Tiefighter lands many times (spread over both backends); xwing is turned away."""
    ships, receiver = found.nodes.get("tiefighter", "?"), found.nodes.get("deathstar-1", "?")
    demo.say(f"Load balancing: tiefighter (org=empire) asks to land {REQUESTS} times, from one process,",
             f"each request a new connection to the deathstar Service {url.split('/')[2]}. The socket",
             f"load balancer on {ships} picks a backend at connect(); the packets cross to {receiver}",
             "(routed via its node IP); each answer names the backend pod.")
    answers = demo.exec_lines("tiefighter", "python3", "-m", "velvet.connectivity.httpget",
                              "--count", str(REQUESTS), url)
    for line in answers[:SHOWN_ANSWERS]:
        print(line)
    if len(answers) > SHOWN_ANSWERS:
        print(f"... ({len(answers) - SHOWN_ANSWERS} more)")
    counts = Counter(line.split()[0] for line in answers if line and not line.startswith("error:"))
    found.backends = {name: counts.get(name, 0) for name in BACKENDS}
    found.tiefighter_failures = REQUESTS - sum(counts.values())
    print("answers per backend: " + ", ".join(f"{n} {c}/{REQUESTS}" for n, c in found.backends.items()))
    if found.tiefighter_failures:
        found.problems.append(f"{found.tiefighter_failures} of tiefighter's requests failed")
    if not all(found.backends.values()):
        found.problems.append(f"the service did not spread requests over both backends: {found.backends}")

    demo.say("Policy: empire/empire-only lets only org=empire reach class=deathstar on TCP 80.",
             "xwing (org=alliance) tries to land; the deathstar pods' veth programs drop its SYN.")
    answer = demo.exec_lines("xwing", "python3", "-m", "velvet.connectivity.httpget", "--timeout", "2", url)
    print("\n".join(answer))
    found.xwing_landed = bool(answer) and not answer[0].startswith("error:")
    if found.xwing_landed:
        found.problems.append("xwing landed on the deathstar: the policy did not drop it")


def flows_seen(demo: Demo, found: Findings) -> None:
    """Both landings as the Death Star's node recorded them: tiefighter's forwarded and xwing's dropped,
    each from a pod on one node to a pod on the other; the drop with its reason and isolating policy."""
    ships, receiver = found.nodes.get("tiefighter", ""), found.nodes.get("deathstar-1", "")
    demo.say(f"The flow log of {receiver}, the Death Star's node: its pod veth programs saw tiefighter's",
             f"landings arrive from {ships} and forwarded them, and dropped xwing's SYN, naming the",
             "NetworkPolicy that isolated the deathstar pods (nothing in it allowed org=alliance).")
    landed = demo.last_flow(receiver, _TIEFIGHTER_LANDINGS)
    demo.observe(receiver, *_TIEFIGHTER_LANDINGS, "--last", "2")
    dropped = demo.last_flow(receiver, _XWING_DROPS)
    demo.observe(receiver, *_XWING_DROPS, "--last", "2")
    if landed is None:
        found.problems.append(f"{receiver} recorded no forwarded landing of tiefighter")
    if dropped is None:
        found.problems.append(f"{receiver} recorded no drop of xwing's traffic")
    print(f"$ velvet observe ... --last 1 -o json   (fields of each flow, on {receiver})")
    if landed is not None:
        found.cross_node_flow, line = cross_node_line("cross-node flow", landed, found.nodes)
        print(f"  {line}, recorded by {found.cross_node_flow['recorded_by']}")
        if not crossed(found.cross_node_flow) or found.cross_node_flow["verdict"] != "FORWARDED":
            found.problems.append(f"tiefighter's landing was not a forwarded cross-node flow: {line}")
    if dropped is None:
        return
    policies = [f"{p['namespace']}/{p['name']}" for p in dropped.get("ingress_denied_by", [])]
    facts, line = cross_node_line("cross-node drop", dropped, found.nodes)
    found.xwing_drop = {**facts, **{k: dropped.get(k) for k in DROP_FIELDS}, "policies": policies}
    print(f"  {line} {dropped.get('drop_reason_desc')} by {', '.join(policies) or '-'}, recorded by "
          f"{facts['recorded_by']}")
    for key in DROP_FIELDS:
        print(f"  {key + ':':<19}{dropped.get(key)}")
    print(f"  {'ingress_denied_by:':<19}{', '.join(policies) or '-'}")
    if dropped.get("drop_reason_desc") != "POLICY_DENIED" or f"{NAMESPACE}/empire-only" not in policies:
        found.problems.append(f"the recorded drop does not name POLICY_DENIED by {NAMESPACE}/empire-only")
    if not crossed(facts):
        found.problems.append(f"xwing's drop was not a cross-node flow: {line}")


def agent_view(demo: Demo, found: Findings) -> None:
    """Policy trace on the Death Star's node, the service and endpoint tables, and the agent's status."""
    ships, receiver = found.nodes.get("tiefighter", ""), found.nodes.get("deathstar-1", "")
    demo.say(f"Ask {receiver}'s agent why, without sending a packet: `policy trace` runs the datapath's",
             "lookup where the deathstar pods' ingress policy is enforced.")
    done = demo.velvet("policy", "trace", "--from", f"{NAMESPACE}/xwing", "--to", f"{NAMESPACE}/deathstar-1",
                       "--port", "80/tcp", check=False, node=receiver)
    found.trace_verdict = "DENIED" if "Final verdict: DENIED" in done.stdout else done.stdout.strip()[-40:]
    if found.trace_verdict != "DENIED":
        found.problems.append("policy trace did not say DENIED for xwing")
    demo.velvet("policy", "trace", "--from", f"{NAMESPACE}/tiefighter", "--to", f"{NAMESPACE}/deathstar-1",
                "--port", "80/tcp", check=False, node=receiver)
    demo.say("The service as the datapath holds it (lb4 maps, the same on every node), and each node's",
             f"endpoints with their identities and policy enforcement: the ships on {ships}, the",
             f"deathstar pods on {receiver} (they enforce ingress policy).")
    demo.velvet("service", "list")
    for node in dict.fromkeys((ships, receiver)):
        demo.velvet("endpoint", "list", node=node)
    demo.say("The agent and the kernel: programs, where they are attached, maps and how full.")
    demo.velvet("status")


def show(demo: Demo, found: Findings) -> None:
    """The whole scenario, narrated."""
    demo.say(f"Bringing up sandbox {demo.sandbox!r}: {NODES} nodes made of network namespaces and cgroups on",
             "this machine (no route leaves it), each with its own Velvet agent and eBPF programs, on one",
             "bridged segment with etcd, which holds the cluster's objects, nodes and identities.")
    demo.velvet("sandbox", "up", "--nodes", str(NODES))
    demo.velvet("get", "nodes")
    scenario = SCENARIO.relative_to(SCENARIO.parents[1])
    demo.say(f"Applying {scenario}: the deathstar Service with two backends on velvet-node-1,",
             "a tiefighter (org=empire) and an xwing (org=alliance) on velvet-node, and the",
             "NetworkPolicy empire-only.")
    demo.velvet("apply", "-f", str(SCENARIO))
    demo.wait_ready()
    demo.velvet("get", "pods", "-n", NAMESPACE, "-o", "wide")
    demo.velvet("get", "svc", "-n", NAMESPACE)
    found.nodes = demo.pod_nodes()
    found.service_map = (demo.cli.json("status").get("http") or {}).get("ui")
    if found.service_map:
        demo.say(f"Service map (a live web page on this machine's loopback): {found.service_map}",
                 "Open it now to watch the flows below; it is up while the sandbox runs.")
    landing(demo, found, f"http://{demo.cluster_ip()}/v1/request-landing")
    flows_seen(demo, found)
    agent_view(demo, found)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def teardown(demo: Demo) -> bool:
    """Remove the sandbox (whether it worked); a second Ctrl-C does not stop the cleanup."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    demo.say("Tearing the sandbox down: pods, namespaces, cgroups, pinned maps, programs.")
    done = demo.cli.down()
    print((done.stdout or done.stderr).strip(), flush=True)
    return done.returncode == 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The Star Wars demo: services, policy and flows on real traffic, then nothing left behind."""
    require_root("the demo brings up a sandbox: network namespaces, cgroups and eBPF programs")
    demo = Demo(args.sandbox or DEMO_SANDBOX)
    found = Findings(demo.sandbox)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)
    interrupted = False
    try:
        show(demo, found)
    except Interrupted as exc:
        interrupted = True
        found.problems.append(f"interrupted ({exc})")
        print(f"\ninterrupted ({exc}): cleaning up", file=sys.stderr, flush=True)
    except VelvetError as exc:
        found.problems.append(str(exc))
        print(f"\nError: {exc}", file=sys.stderr, flush=True)
    finally:
        if args.keep and not interrupted:
            where = f"; service map: {found.service_map}" if found.service_map else ""
            print(f"\nThe sandbox stays up for exploring, e.g.: velvet --sandbox {demo.sandbox} observe -f"
                  f" --print-node-name (every node's flows){where}"
                  f"\nTear it down with: velvet --sandbox {demo.sandbox} sandbox down", flush=True)
        elif not teardown(demo):
            found.problems.append(f"`velvet --sandbox {demo.sandbox} sandbox down` failed")
    if args.json_summary:
        args.json_summary.write_text(json.dumps(found.to_json(), indent=2) + "\n")
    elapsed = f"({time.monotonic() - started:.0f}s)"
    if interrupted:
        print(f"\nDemo {'; '.join(found.problems)} {elapsed}.", flush=True)
        return INTERRUPTED_EXIT
    outcome = "passed" if found.passed else "FAILED: " + "; ".join(found.problems)
    print(f"\nDemo {outcome} {elapsed}.", flush=True)
    return 0 if found.passed else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `velvet demo`."""
    p = sub.add_parser("demo", help="show Velvet at work on a two-node sandbox (Star Wars), then clean up")
    p.add_argument("--keep", action="store_true", help="leave the sandbox up for exploring")
    p.add_argument("--json-summary", type=Path, metavar="FILE", help="also write what the demo saw as JSON")
    p.set_defaults(func=cmd_demo)
