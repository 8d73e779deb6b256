"""The kernel peers: client netns -- router netns (kube-proxy-style rules, forwarding on) -- server netns.

Every namespace is named `velvet-bench-<run>-<peer>-{c,r,s}`, created here and removed by exact name;
nothing touches the root namespace (forwarding is enabled inside the router namespace only, and
iptables/nft run inside it: both are per network namespace). Needs root, iproute2, iptables, nft.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import kubeproxy

PROBE = str(Path(__file__).resolve().parent / "probe.py")
PEERS = ("none", "legacy", "nft", "vmap")
SERVER_IPS = ("10.244.2.10", "10.244.2.11", "10.244.2.12", "10.244.2.13")
CLIENT_IP = "10.244.1.2"
PORT = 8080
CLIENT_CPU, SERVER_CPU = 0, 1


def sh(*argv: str, stdin: str | None = None) -> str:
    """Run a command; raise with its stderr when it fails."""
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])}: {done.stderr.strip()[:400]}")
    return done.stdout


def run_probe(argv: list[str]) -> dict[str, Any] | None:
    """Run a probe command; its JSON, or None when it failed."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        print(f"probe failed: {' '.join(argv[-6:])}: {done.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def timed(*argv: str, stdin: str | None = None) -> float:
    """Seconds one command took (it must succeed)."""
    started = time.perf_counter()
    sh(*argv, stdin=stdin)
    return time.perf_counter() - started


class PeerNet:
    """One peer's three namespaces, its server process and its rules."""

    def __init__(self, run_id: str, peer: str) -> None:
        self.peer = peer
        base = f"velvet-bench-{run_id}-{peer}"
        self.cli, self.rtr, self.srv = f"{base}-c", f"{base}-r", f"{base}-s"
        self.server: subprocess.Popen[bytes] | None = None

    @property
    def names(self) -> tuple[str, str, str]:
        """The namespaces this peer owns."""
        return (self.cli, self.rtr, self.srv)

    def create(self) -> None:
        """Namespaces, veths, addresses, routes, forwarding in the router, and the server (CPU 1)."""
        for ns in self.names:
            sh("ip", "netns", "add", ns)
        sh("ip", "-n", self.cli, "link", "add", "c0", "type", "veth", "peer", "name", "rc", "netns", self.rtr)
        sh("ip", "-n", self.srv, "link", "add", "s0", "type", "veth", "peer", "name", "rs", "netns", self.rtr)
        sh("ip", "-n", self.cli, "addr", "add", f"{CLIENT_IP}/24", "dev", "c0")
        sh("ip", "-n", self.rtr, "addr", "add", "10.244.1.1/24", "dev", "rc")
        sh("ip", "-n", self.rtr, "addr", "add", "10.244.2.1/24", "dev", "rs")
        for ip in SERVER_IPS:
            sh("ip", "-n", self.srv, "addr", "add", f"{ip}/24", "dev", "s0")
        for ns, dev in ((self.cli, "c0"), (self.rtr, "rc"), (self.rtr, "rs"), (self.srv, "s0")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        for ns in self.names:
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.cli, "route", "add", "default", "via", "10.244.1.1")
        sh("ip", "-n", self.srv, "route", "add", "default", "via", "10.244.2.1")
        sh("ip", "netns", "exec", self.rtr, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.srv, "taskset", "-c", str(SERVER_CPU), sys.executable, PROBE,
             "serve", "--ports", str(PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def remove(self) -> None:
        """Stop the server and delete this peer's namespaces (never raises)."""
        if self.server is not None:
            self.server.terminate()
            self.server.wait(timeout=10)
        for ns in self.names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    def target(self, svcs: list[kubeproxy.Svc]) -> str:
        """Where M1/M3/M4 connect: the last service's VIP, or the pod IP without rules."""
        return f"{SERVER_IPS[0]}:{PORT}" if self.peer == "none" else f"{svcs[-1].vip}:{svcs[-1].port}"

    def client(self, *args: str) -> list[str]:
        """argv running probe.py in the client namespace on the client CPU."""
        return ["ip", "netns", "exec", self.cli, "taskset", "-c", str(CLIENT_CPU), sys.executable, PROBE,
                *args]

    def load(self, svcs: list[kubeproxy.Svc]) -> float | None:
        """Replace the rules with `svcs` (full load); seconds taken, None for the no-rules peer."""
        if self.peer == "legacy":
            return timed("ip", "netns", "exec", self.rtr, "iptables-legacy-restore",
                         stdin=kubeproxy.iptables_restore(svcs))
        if self.peer == "nft":
            return timed("ip", "netns", "exec", self.rtr, "iptables-nft-restore",
                         stdin=kubeproxy.iptables_restore(svcs))
        if self.peer == "vmap":
            sh("ip", "netns", "exec", self.rtr, "nft", "flush", "ruleset")
            return timed("ip", "netns", "exec", self.rtr, "nft", "-f", "-", stdin=kubeproxy.nft_script(svcs))
        return None

    def add_one(self, svcs: list[kubeproxy.Svc]) -> float | None:
        """Add the last of `svcs` to rules holding the others, as kube-proxy's partial sync does."""
        if self.peer in ("legacy", "nft"):
            return timed("ip", "netns", "exec", self.rtr, f"iptables-{self.peer}-restore", "--noflush",
                         stdin=kubeproxy.iptables_partial_sync(svcs, svcs[-1]))
        if self.peer == "vmap":
            return timed("ip", "netns", "exec", self.rtr, "nft", "-f", "-",
                         stdin=kubeproxy.nft_add_one(svcs[-1]))
        return None
