"""`velvet demo`: bring up a sandbox, show Velvet at work on real traffic, and tear everything down."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from velvet.errors import VelvetError

DEMO_SANDBOX = "demo"
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
READY_TIMEOUT = 90.0


class Demo:
    """Runs `velvet` commands against the demo sandbox, narrating as it goes."""

    def __init__(self, sandbox: str, quiet: bool = False) -> None:
        self.sandbox = sandbox
        self.quiet = quiet

    def say(self, text: str) -> None:
        """One line of narration."""
        print(f"\n==> {text}", flush=True)

    def velvet(self, *args: str, check: bool = True, show: bool = True) -> subprocess.CompletedProcess[str]:
        """Run one velvet command as a user would type it; show it and its output."""
        argv = [sys.executable, "-m", "velvet.cli.main", "--sandbox", self.sandbox, *args]
        if show:
            print(f"$ velvet {' '.join(args)}", flush=True)
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if show and done.stdout.strip():
            print(done.stdout.rstrip(), flush=True)
        if check and done.returncode != 0:
            reason = done.stderr.strip() or done.stdout.strip()
            raise VelvetError(f"`velvet {' '.join(args)}` failed: {reason}")
        return done

    def json(self, *args: str) -> Any:
        """A velvet command's JSON output."""
        return json.loads(self.velvet(*args, show=False).stdout)

    def wait_ready(self, count: int) -> list[dict[str, Any]]:
        """Wait until `count` pods are Running and Ready."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            pods = self.json("get", "pods", "-A", "-o", "json")["items"]
            ready = [p for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                            for c in p.get("status", {}).get("conditions", []))]
            if len(ready) >= count:
                return ready
            if time.monotonic() > deadline:
                raise VelvetError(f"only {len(ready)} of {count} pods became ready in {READY_TIMEOUT:.0f}s")
            time.sleep(0.5)

    def query(self, pod: str, url: str) -> str | None:
        """Ask the echo server at `url` from inside `pod`; its answer, or None when it failed."""
        done = self.velvet("sandbox", "exec", pod, "--", "python3", "-m", "velvet.sandbox.echo",
                           "--query", url, "--timeout", "2", check=False, show=False)
        return done.stdout.strip() if done.returncode == 0 else None


def connectivity_matrix(demo: Demo, pods: list[dict[str, Any]]) -> int:
    """Every pod to every other pod over TCP and UDP; prints a matrix and returns the failures."""
    names = [f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in pods]
    ips = [p["status"]["podIP"] for p in pods]
    failures = 0
    width = max(len(n) for n in names)
    corner = "from / to"
    print(f"{corner:<{width}}  " + "  ".join(f"{n:<{width}}" for n in names))
    for src in names:
        cells = []
        for ip in ips:
            tcp = demo.query(src, f"tcp://{ip}:8080") is not None
            udp = demo.query(src, f"udp://{ip}:8081") is not None
            failures += (not tcp) + (not udp)
            cells.append(f"{'tcp ok' if tcp else 'TCP FAIL'} {'udp ok' if udp else 'UDP FAIL'}")
        print(f"{src:<{width}}  " + "  ".join(f"{c:<{width}}" for c in cells), flush=True)
    return failures


def cmd_demo(args: argparse.Namespace) -> int:
    """The foundation demo: pods in two namespaces reaching each other through the eBPF datapath."""
    demo = Demo(args.sandbox or DEMO_SANDBOX)
    failures = 0
    try:
        demo.say("Bringing up a sandbox node (network namespaces, no route off this machine) with its agent")
        demo.velvet("sandbox", "up")
        demo.say("Applying two namespaces with two echo pods each and a service per namespace")
        demo.velvet("apply", "-f", str(EXAMPLES / "echo"))
        pods = demo.wait_ready(4)
        demo.velvet("get", "pods", "-A", "-o", "wide")
        demo.say("Every pod reaches every other pod over TCP and UDP, through the pod-veth programs")
        failures = connectivity_matrix(demo, pods)
        demo.say("What the agent and the kernel say")
        demo.velvet("status")
        print(f"\nDemo {'passed' if not failures else f'FAILED ({failures} probes failed)'}.")
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        failures = 1
    finally:
        if args.keep:
            print(f"\nThe sandbox stays up. Explore with VELVET_SANDBOX={demo.sandbox} velvet status; "
                  f"tear it down with: velvet --sandbox {demo.sandbox} sandbox down")
        else:
            demo.say("Tearing the sandbox down")
            demo.velvet("sandbox", "down", check=False)
    return 1 if failures else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `velvet demo`."""
    p = sub.add_parser("demo", help="show Velvet at work in a sandbox, then clean up")
    p.add_argument("--keep", action="store_true", help="leave the sandbox up for exploring")
    p.set_defaults(func=cmd_demo)
