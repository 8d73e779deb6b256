"""Readiness probes run from inside the pod: tcpSocket (connect in the pod's netns) and exec.

`ReadinessTracker` applies Kubernetes semantics: not ready until the first success after the
initial delay, probed at most once per period, ready after `success_threshold` consecutive
successes, unready after `failure_threshold` consecutive failures.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from velvet.sandbox.process import exec_in
from velvet.sandbox.spec import ProbeLite
from velvet.system.netns import call_in_netns


def tcp_connects(netns_path: Path, ip: str, port: int, timeout: float) -> bool:
    """Whether a TCP connect to `ip:port` from inside the namespace at `netns_path` succeeds."""

    def connect() -> bool:
        try:
            with socket.create_connection((ip, port), timeout=timeout):
                return True
        except OSError:
            return False

    return call_in_netns(netns_path, connect)


def exec_succeeds(netns_path: Path, cgroup: Path, argv: tuple[str, ...], timeout: float) -> bool:
    """Whether `argv`, run in the pod's netns and cgroup, exits 0 within `timeout`."""
    try:
        code = exec_in(
            netns_path, cgroup, argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, timeout=timeout,
        )
    except (subprocess.TimeoutExpired, OSError):
        return False
    return code == 0


def check(probe: ProbeLite, netns_path: Path, cgroup: Path, ip: str) -> bool:
    """Run `probe` once against the pod (netns, cgroup, ip)."""
    if probe.tcp_port is not None:
        return tcp_connects(netns_path, ip, probe.tcp_port, probe.timeout_seconds)
    assert probe.exec_command is not None
    return exec_succeeds(netns_path, cgroup, probe.exec_command, probe.timeout_seconds)


@dataclass
class _ProbeState:
    """Counters of one pod's probe."""

    ready: bool = False
    last: float = float("-inf")
    successes: int = 0
    failures: int = 0


class ReadinessTracker:
    """Remembers each pod's readiness between probes (in memory: a restart starts unready again)."""

    def __init__(self) -> None:
        """Start with no pod known."""
        self._states: dict[str, _ProbeState] = {}

    def observe(
        self, uid: str, probe: ProbeLite, started_at: float, run: Callable[[], bool], now: float | None = None
    ) -> bool:
        """Probe pod `uid` if due (calling `run()`), and return its readiness."""
        now = time.time() if now is None else now
        state = self._states.setdefault(uid, _ProbeState())
        if now < started_at + probe.initial_delay_seconds or now - state.last < probe.period_seconds:
            return state.ready
        state.last = now
        if run():
            state.successes, state.failures = state.successes + 1, 0
            state.ready = state.ready or state.successes >= probe.success_threshold
        else:
            state.successes, state.failures = 0, state.failures + 1
            state.ready = state.ready and state.failures < probe.failure_threshold
        return state.ready

    def forget(self, uid: str) -> None:
        """Drop the state of a deleted pod."""
        self._states.pop(uid, None)

