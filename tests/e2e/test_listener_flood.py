"""Test that a local user flooding the agent's loopback listener cannot take the agent down.

1,100 half-open requests from `nobody` to the sandbox agent's /metrics + service map listener (on
the host's loopback, where any local user can reach it): the agent's sockets stay within the
listener's cap, the API answers throughout, the stalled requests are closed, the listener answers
again, the agent is the same process, and its log grows by a few lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from harness import REPO, sandbox

from velvet.api.limits import UI_LIMITS
from velvet.sandbox import SandboxConfig

pytestmark = pytest.mark.privileged
HALFOPEN = REPO / "tests" / "unit" / "halfopen.py"
NOBODY = 65534
WAIT_SECONDS = 60.0


def _sockets(pid: int) -> int:
    """Sockets process `pid` holds open."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


def test_half_open_flood_from_nobody_leaves_the_agent_answering() -> None:
    with sandbox("lst") as sb:
        names = SandboxConfig(sandbox=sb.name).names
        url = sb.velvet("ui").stdout.strip()
        port = int(url.removeprefix("http://127.0.0.1:").removesuffix("/ui/"))
        pid = int(names.pid_file("agent").read_text())
        log = names.log_file("agent")
        log_before = log.stat().st_size
        sockets_before = _sockets(pid)
        peak = [sockets_before]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.005):
                peak[0] = max(peak[0], _sockets(pid))

        sampler = threading.Thread(target=sample)
        sampler.start()
        attacker = subprocess.Popen([sys.executable, str(HALFOPEN), "127.0.0.1", str(port), "1100"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert attacker.stdin is not None
            assert attacker.stdout is not None
            opened = json.loads(attacker.stdout.readline())
            assert opened["uid"] == NOBODY
            assert opened["open"] + opened["failed"] == 1100
            assert sb.api.get("/v1/health")["ok"] is True
            assert sb.json("get", "namespaces")["items"]
            deadline = time.monotonic() + WAIT_SECONDS
            while _sockets(pid) > sockets_before + 4:  # closed by the agent while the attacker holds on
                assert time.monotonic() < deadline, f"the agent still holds {_sockets(pid)} sockets"
                time.sleep(0.2)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
                assert resp.status == 200
            with urllib.request.urlopen(url, timeout=30) as resp:
                assert resp.status == 200
        finally:
            attacker.communicate(timeout=WAIT_SECONDS)
            done.set()
            sampler.join()
        assert int(names.pid_file("agent").read_text()) == pid
        assert peak[0] <= sockets_before + UI_LIMITS.max_connections + 8, (sockets_before, peak[0])
        with log.open("rb") as f:
            f.seek(log_before)
            grown = f.read()
        assert b"Traceback" not in grown
        assert len(grown) < 4096, grown.decode(errors="replace")
