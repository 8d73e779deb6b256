"""Agent restart at N services: `kill -9` of the agent until its API answers again, traffic meanwhile.

    .venv/bin/python -m bench.restart [--services 10000] [--rounds 3]

One sandbox (the default file store) with the bench's server and client pods (bench.velvet_peer) and N
services. Each round, 11 s after the last change (a steady node: the agent runs longer than the
supervisor's stable_after and has saved its compiled services), while a 1-byte request/response
connection through the last service runs in the client pod, the agent is killed with SIGKILL; the
sandbox supervisor starts it again. Timed from the kill: the new agent process exists (`exec`),
`/v1/health` answers (`health`: the API is served), `/v1/status` answers (`status`: the state is
adopted and converged; it may still name the process monitor and the enforcer as starting), health no
longer says "starting" (`started`: every call is served), then one service applied through the API
(`apply_api`) and the next with `velvet apply` (`apply`, the CLI's start included) are in
lb4_services. The pinned lb4_services map is compared before and after (`maps_equal`) and the open
connection must finish without an error (`rr_ok`).

Prints one JSON document: every round and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import time
from typing import Any

from bench.velvet_peer import VelvetPeer, service_yaml
from velvet.api.client import ApiClient
from velvet.errors import VelvetError
from velvet.paths import AgentPaths

POLL_SECONDS = 0.005
# longer than the supervisor's stable_after (its backoff is 0 again) and the agent's wait before it saves
# its compiled services (daemon.SAVE_QUIET_SECONDS)
SUPERVISOR_STABLE_SECONDS = 11.0


def _answers(api: ApiClient, path: str) -> bool:
    try:
        api.get(path)
    except (VelvetError, OSError):
        return False
    return True


def _lb_entries(peer: VelvetPeer) -> dict[bytes, bytes]:
    """The pinned lb4_services map, raw (key bytes -> value bytes)."""
    assert peer.services is not None
    return {bytes(k): bytes(v) for k, v in peer.services.map.items()}


def round_once(peer: VelvetPeer, index: int, budget: float) -> dict[str, Any]:
    """Kill the agent once while traffic runs; seconds from the kill to each step (`index`: a free one)."""
    api = ApiClient(AgentPaths(peer.name).socket, timeout=2.0)
    # a status call waits for the start: it must not time out and be asked again (that timed each
    # status 2 s after the health until this was fixed), and it is timed when it answers
    waiting = ApiClient(AgentPaths(peer.name).socket, timeout=budget)
    before = _lb_entries(peer)
    rr = subprocess.Popen(peer.client("rr", peer.target(), "--seconds", "6"), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    old = peer.agent_pid()
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()
    marks: dict[str, float] = {}
    deadline = killed + budget
    while len(marks) < 4 and time.monotonic() < deadline:
        now = time.monotonic() - killed
        if "exec" not in marks:
            try:
                if peer.agent_pid() != old:
                    marks["exec"] = now
            except (OSError, ValueError):
                pass
        elif "health" not in marks:
            if _answers(api, "/v1/health"):
                marks["health"] = time.monotonic() - killed
        elif "status" not in marks:
            if _answers(waiting, "/v1/status"):
                marks["status"] = time.monotonic() - killed
        elif api.started():
            marks["started"] = time.monotonic() - killed
        time.sleep(POLL_SECONDS)
    after = _lb_entries(peer)
    for mark, service, api_call in (("apply_api", index, True), ("apply", index + 1, False)):
        peer._apply_text(service_yaml(service, 1), api=api_call)
        while peer._frontend_count(service) != 1 and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        marks[mark] = time.monotonic() - killed
    out, err = rr.communicate(timeout=60)
    peer._apply_text(service_yaml(index, 1) + service_yaml(index + 1, 1), delete=True)
    return {**marks, "maps_equal": before == after, "rr_ok": rr.returncode == 0,
            "rr": json.loads(out.splitlines()[-1]) if rr.returncode == 0 else err.strip()[-300:]}


def measure(services: int, rounds: int, budget: float) -> dict[str, Any]:
    """Grow to `services`, then `rounds` kills."""
    peer = VelvetPeer()
    report: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "kernel": os.uname().release},
                              "services": services, "rounds": []}
    try:
        peer.up()
        grown = peer.apply_services(services, 1, budget)
        if "seconds" not in grown:
            raise TimeoutError(f"{services} services not programmed within {budget:g} s")
        report["hwm_kib_before"] = peer.agent_hwm_kib()
        for _ in range(rounds):
            time.sleep(SUPERVISOR_STABLE_SECONDS)  # a steady node: past the backoff, its services saved
            report["rounds"].append(round_once(peer, peer.free_index(), budget))
        report["hwm_kib_after"] = peer.agent_hwm_kib()
        report["median"] = {step: statistics.median(r[step] for r in report["rounds"] if step in r)
                            for step in ("exec", "health", "status", "started", "apply_api", "apply")}
    finally:
        peer.down()
    return report


def main() -> None:
    """Parse the arguments, measure, print JSON."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=120.0)
    args = parser.parse_args()
    print(json.dumps(measure(args.services, args.rounds, args.budget), indent=2))


if __name__ == "__main__":
    main()
