"""A sandbox driven through the `velvet` CLI exactly as a user types it, for end-to-end tests.

Each harness has its own sandbox name, so tests never meet a user's sandbox or each other's, and
`close()` runs `velvet sandbox down` for it whatever happened.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from velvet.api.client import ApiClient
from velvet.paths import AgentPaths

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
# Kept for older callers: privileged tests carry this marker, and fail (tests/conftest.py) without root.
needs_root = pytest.mark.privileged


def unique_name(prefix: str = "e") -> str:
    """A sandbox name ([a-z0-9], <= 16 chars) nobody else uses."""
    return prefix + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(7))


def is_ready(pod: dict[str, Any]) -> bool:
    """The pod's Ready condition is True."""
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


class Sandbox:
    """One sandbox and the CLI pointed at it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.api = ApiClient(AgentPaths(name).socket)

    def velvet(self, *args: str, check: bool = True, stdin: str | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run `velvet --sandbox NAME ARGS…`; fail the test with its output when check and it fails."""
        argv = [sys.executable, "-m", "velvet.cli.main", "--sandbox", self.name, *args]
        done = subprocess.run(argv, capture_output=True, text=True, input=stdin, timeout=timeout, check=False)
        if check and done.returncode != 0:
            output = f"{done.stdout}\n{done.stderr}"
            raise AssertionError(f"velvet {' '.join(args)} exited {done.returncode}:\n{output}")
        return done

    def json(self, *args: str) -> Any:
        """A command's `-o json` output, decoded."""
        return json.loads(self.velvet(*args, "-o", "json").stdout)

    def up(self, *extra: str) -> None:
        """velvet sandbox up."""
        self.velvet("sandbox", "up", *extra)

    def down(self) -> None:
        """velvet sandbox down (never raises: it is the cleanup)."""
        self.velvet("sandbox", "down", check=False)

    def apply(self, manifest: str | Path) -> subprocess.CompletedProcess[str]:
        """Apply a manifest file/dir, or YAML text."""
        if isinstance(manifest, Path):
            return self.velvet("apply", "-f", str(manifest))
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(manifest)
        try:
            return self.velvet("apply", "-f", f.name)
        finally:
            os.unlink(f.name)

    def delete(self, manifest: str, *extra: str) -> subprocess.CompletedProcess[str]:
        """Delete what YAML text names."""
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(manifest)
        try:
            return self.velvet("delete", "-f", f.name, *extra)
        finally:
            os.unlink(f.name)

    def pods(self) -> list[dict[str, Any]]:
        """All pods (kubectl JSON)."""
        items: list[dict[str, Any]] = self.json("get", "pods", "-A")["items"]
        return items

    def wait_ready(self, names: list[str], timeout: float = 60) -> dict[str, str]:
        """Wait until the pods ("ns/name") are Ready; returns their IPs."""
        deadline = time.monotonic() + timeout
        while True:
            ready = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p["status"].get("podIP", "")
                     for p in self.pods() if is_ready(p)}
            if all(n in ready for n in names):
                return {n: ready[n] for n in names}
            if time.monotonic() > deadline:
                raise AssertionError(f"pods not ready after {timeout}s: {sorted(set(names) - set(ready))}")
            time.sleep(0.3)

    def exec(self, pod: str, *argv: str, stdin: str | None = None,
             timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """velvet sandbox exec POD -- ARGV (not checked)."""
        return self.velvet("sandbox", "exec", pod, "--", *argv, check=False, stdin=stdin, timeout=timeout)

    def query(self, pod: str, url: str, timeout: float = 2.0) -> str | None:
        """Ask an echo server from inside `pod`: its one-line answer, or None when the query failed."""
        done = self.exec(pod, "python3", "-m", "velvet.sandbox.echo", "--query", url,
                         "--timeout", str(timeout))
        return done.stdout.strip() if done.returncode == 0 else None


@contextmanager
def sandbox(prefix: str = "e", *up_args: str) -> Iterator[Sandbox]:
    """A fresh sandbox that is brought up and always torn down."""
    sb = Sandbox(unique_name(prefix))
    try:
        sb.up(*up_args)
        yield sb
    finally:
        sb.down()


def echo_pod(namespace: str, name: str, labels: dict[str, str] | None = None, *, tcp: int = 8080,
             udp: int = 8081, grace: int = 2) -> str:
    """YAML of a pod running the echo server (TCP and UDP), ready once its TCP port accepts."""
    label_lines = "".join(f"\n    {k}: \"{v}\"" for k, v in (labels or {"app": name}).items())
    return f"""---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  labels:{label_lines}
spec:
  terminationGracePeriodSeconds: {grace}
  containers:
  - name: echo
    command: ["python3", "-m", "velvet.sandbox.echo"]
    args: ["--tcp", "{tcp}", "--udp", "{udp}"]
    ports:
    - {{name: tcp-echo, containerPort: {tcp}, protocol: TCP}}
    - {{name: udp-echo, containerPort: {udp}, protocol: UDP}}
    readinessProbe:
      tcpSocket: {{port: {tcp}}}
      periodSeconds: 1
"""


def namespace(name: str, labels: dict[str, str] | None = None) -> str:
    """YAML of a namespace."""
    label_lines = "".join(f"\n    {k}: \"{v}\"" for k, v in (labels or {}).items())
    return f"---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n" + (
        f"  labels:{label_lines}\n" if labels else "")
