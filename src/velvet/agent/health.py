"""Health probes, like cilium-health: reachability and latency of every node and of one pod per node.

Each agent listens on its InternalIP at `HEALTH_PORT` (cilium-health's 4240) and, every
`PROBE_PERIOD_SECONDS` from its own thread (`velvet-health`, inside the node's network namespace where
the agent lives), connects over TCP to every registered node's listener and sends an ICMP echo to one
running pod of every node. Cilium probes a dedicated health endpoint that policy always admits; Velvet
has none, so it probes a pod that no NetworkPolicy isolates for ingress (an isolated pod would drop the
probe and put a drop in every node's flows) and says so when a node has no such pod. The state
worker aims the probes (`aim`, with targets from the store); the thread only sends packets.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from velvet.model import NetworkPolicy, Pod
from velvet.model.node import NodeRecord

HEALTH_PORT = 4240
PROBE_PERIOD_SECONDS = 5.0
PROBE_TIMEOUT_SECONDS = 1.0
_ICMP_ECHO, _ICMP_ECHO_REPLY = 8, 0

log = logging.getLogger("velvet.health")


@dataclass(frozen=True)
class Target:
    """What to probe on one node: its InternalIP and one pod (pod "" with `why` when there is none)."""

    node: str
    node_ip: str
    pod: str = ""
    pod_ip: str = ""
    why: str = ""


@dataclass(frozen=True)
class Probe:
    """One probe's outcome: reachable with a round-trip latency, or the error."""

    reachable: bool
    latency_ms: float | None = None
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        """{"reachable", "latency_ms", "error"} (latency rounded to microseconds)."""
        latency = None if self.latency_ms is None else round(self.latency_ms, 3)
        return {"reachable": self.reachable, "latency_ms": latency, "error": self.error}


def _ingress_isolated(pod: Pod, policies: Sequence[NetworkPolicy]) -> bool:
    """Whether some NetworkPolicy of the pod's namespace selects it for ingress."""
    return any(p.metadata.namespace == pod.metadata.namespace and "Ingress" in p.spec.policy_types
               and p.spec.pod_selector.matches(pod.metadata.labels) for p in policies)


def choose_targets(nodes: Iterable[NodeRecord], pods: Iterable[Pod],
                   policies: Iterable[NetworkPolicy]) -> list[Target]:
    """Every node, with its first running pod (by namespace/name) that no policy isolates for ingress."""
    policies = list(policies)
    running: dict[str, list[Pod]] = {}
    for pod in pods:
        if pod.status.phase == "Running" and pod.status.pod_ip and not pod.terminating:
            running.setdefault(pod.spec.node_name or "", []).append(pod)
    targets = []
    for node in nodes:
        candidates = sorted(running.get(node.name, ()), key=lambda p: p.metadata.key)
        open_pods = [p for p in candidates if not _ingress_isolated(p, policies)]
        if open_pods:
            pod = open_pods[0]
            targets.append(Target(node.name, node.internal_ip, pod.metadata.key, pod.status.pod_ip or ""))
        else:
            why = "every running pod is isolated for ingress by a NetworkPolicy" if candidates else (
                "no running pod")
            targets.append(Target(node.name, node.internal_ip, why=why))
    return targets


def probe_tcp(ip: str, port: int, timeout: float) -> Probe:
    """Connect to ip:port; the latency is the handshake's."""
    started = time.perf_counter()
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return Probe(True, (time.perf_counter() - started) * 1000)
    except TimeoutError:
        return Probe(False, error=f"no answer within {timeout:g} s")
    except OSError as err:
        return Probe(False, error=err.strerror or str(err))


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def probe_icmp(ip: str, ident: int, seq: int, timeout: float) -> Probe:
    """One ICMP echo to `ip` on a raw socket (needs CAP_NET_RAW); the latency is the round trip."""
    payload = b"velvet-health"
    header = struct.pack("!BBHHH", _ICMP_ECHO, 0, 0, ident, seq)
    packet = struct.pack("!BBHHH", _ICMP_ECHO, 0, _checksum(header + payload), ident, seq) + payload
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    except OSError as err:
        return Probe(False, error=f"no raw ICMP socket: {err.strerror or err}")
    with sock:
        started = time.perf_counter()
        deadline = started + timeout
        try:
            sock.sendto(packet, (ip, 0))
            while (left := deadline - time.perf_counter()) > 0:
                if not select.select([sock], [], [], left)[0]:
                    break
                data, (source, _) = sock.recvfrom(2048)
                start = (data[0] & 0x0F) * 4  # past the IP header
                if len(data) < start + 8:
                    continue
                kind, _, _, got_id, got_seq = struct.unpack("!BBHHH", data[start:start + 8])
                if source == ip and kind == _ICMP_ECHO_REPLY and (got_id, got_seq) == (ident, seq):
                    return Probe(True, (time.perf_counter() - started) * 1000)
        except OSError as err:
            return Probe(False, error=err.strerror or str(err))
    return Probe(False, error=f"no echo reply within {timeout:g} s")


class HealthProber:
    """The health listener and the probe thread of one node; `report()` is safe from any thread.

    Every node listens on the same port, so the port probed on the others is this node's own.
    """

    def __init__(self, listen_ip: str, port: int = HEALTH_PORT, period: float = PROBE_PERIOD_SECONDS,
                 timeout: float = PROBE_TIMEOUT_SECONDS) -> None:
        self.listen_ip, self.port, self.period, self.timeout = listen_ip, port, period, timeout
        self._lock = threading.Lock()
        self._targets: list[Target] = []
        self._results: dict[str, tuple[Target, Probe, Probe | None, float]] = {}
        self._aimed_at = 0.0
        self._stop = threading.Event()
        self._retarget = threading.Event()  # the nodes changed: probe now rather than at the next period
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._ident = os.getpid() & 0xFFFF
        self._seq = itertools.count(1)

    def start(self) -> None:
        """Start the thread that listens on the node's health port and probes."""
        self._thread = threading.Thread(target=self._run, name="velvet-health", daemon=True)
        self._thread.start()

    def listen(self) -> None:
        """Listen on the node's health port (a failure is logged; the next round tries again)."""
        try:
            self._listener = socket.create_server((self.listen_ip, self.port), backlog=128)
            self.port = self._listener.getsockname()[1]  # port 0: the one the kernel chose
        except OSError as err:
            log.error("no health listener on %s:%d (other nodes see this one unreachable): %s",
                      self.listen_ip, self.port, err)

    def due(self) -> bool:
        """Whether the targets were last aimed a probe period ago or more."""
        return time.monotonic() - self._aimed_at >= self.period

    def aim(self, targets: Sequence[Target]) -> None:
        """What the next rounds probe (the state worker's view of nodes and pods)."""
        with self._lock:
            names = {t.node for t in targets}
            if names != {t.node for t in self._targets}:
                self._retarget.set()
            self._targets = list(targets)
            self._aimed_at = time.monotonic()
            self._results = {n: r for n, r in self._results.items() if n in names}

    def report(self) -> list[dict[str, Any]]:
        """Per node: its address and probe, the probed pod and its probe, when last probed (Unix time)."""
        with self._lock:
            targets, results = list(self._targets), dict(self._results)
        rows = []
        for aimed in sorted(targets, key=lambda t: t.node):
            found = results.get(aimed.node)
            target = found[0] if found else aimed  # what the shown probes were sent to
            node_probe = found[1].to_json() if found else None
            pod_probe = found[2].to_json() if found and found[2] else None
            rows.append({"name": target.node, "ip": target.node_ip, "node": node_probe,
                         "pod": {"name": target.pod, "ip": target.pod_ip, "probe": pod_probe} if target.pod
                         else {"name": "", "ip": "", "probe": None, "why": target.why},
                         "checked": found[3] if found else None})
        return rows

    def close(self) -> None:
        """Stop probing and close the listener."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.period + 2 * self.timeout)
        if self._listener is not None:
            self._listener.close()

    def probe_once(self) -> None:
        """One round over every target (what the thread does every period)."""
        with self._lock:
            targets = list(self._targets)
        for target in targets:
            node = probe_tcp(target.node_ip, self.port, self.timeout)
            seq = next(self._seq) & 0xFFFF
            pod = probe_icmp(target.pod_ip, self._ident, seq, self.timeout) if target.pod_ip else None
            with self._lock:
                if any(t.node == target.node for t in self._targets):
                    self._results[target.node] = (target, node, pod, time.time())

    def _run(self) -> None:
        """Probe every period; between rounds, accept (and close) the other nodes' probe connections."""
        while not self._stop.is_set():
            if self._listener is None:
                self.listen()
            try:
                self.probe_once()
            except Exception:  # a probe must never end the thread
                log.exception("health probe round failed")
            self._serve_until(time.monotonic() + self.period)

    def _serve_until(self, deadline: float) -> None:
        while not self._stop.is_set() and (left := deadline - time.monotonic()) > 0:
            if self._retarget.is_set():
                self._retarget.clear()
                return
            if self._listener is None:
                self._stop.wait(min(left, 0.5))
                continue
            if select.select([self._listener], [], [], min(left, 0.5))[0]:
                with contextlib.suppress(OSError):
                    conn, _ = self._listener.accept()
                    conn.close()
