"""The `velvet` command aimed at one sandbox, run in a subprocess exactly as a user types it.

For whatever drives a sandbox from outside: `velvet demo`, the end-to-end tests, the NetworkPolicy
conformance runner and the benchmarks. Each call is a new `python -m velvet.cli.main --sandbox NAME
...` process with this interpreter.
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
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from velvet.api.client import ApiClient
from velvet.api.objects import is_ready
from velvet.errors import CommandFailed, VelvetError
from velvet.paths import AgentPaths, check_sandbox_name

COMMAND_TIMEOUT = 120.0
POLL_SECONDS = 0.3


def velvet_argv(sandbox: str, *args: str) -> list[str]:
    """argv of `velvet --sandbox SANDBOX ARGS...` run by this interpreter."""
    return [sys.executable, "-m", "velvet.cli.main", "--sandbox", sandbox, *args]


def unique_name(prefix: str = "e") -> str:
    """A sandbox name nobody else uses: `prefix` followed by 7 random characters of [a-z0-9]."""
    name = prefix + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(7))
    return check_sandbox_name(name, f"unique_name({prefix!r})")


class SandboxCli:
    """The `velvet` command for sandbox `name`; a command that fails raises CommandFailed with its output."""

    def __init__(self, name: str) -> None:
        """Aim at sandbox `name` (its agent's API is `api`, for what the CLI does not print)."""
        self.name = name
        self.api = ApiClient(AgentPaths(name).socket)

    def argv(self, *args: str) -> list[str]:
        """argv of `velvet --sandbox NAME ARGS...`."""
        return velvet_argv(self.name, *args)

    def velvet(self, *args: str, check: bool = True, stdin: str | None = None,
               timeout: float | None = COMMAND_TIMEOUT, new_session: bool = False,
               ) -> subprocess.CompletedProcess[str]:
        """Run `velvet --sandbox NAME ARGS...`, capturing its output.

        `check`: a non-zero exit raises CommandFailed. A command still running after `timeout` seconds is
        killed and raises CommandFailed. `new_session`: a Ctrl-C at the terminal does not reach it.
        """
        try:
            done = subprocess.run(self.argv(*args), capture_output=True, text=True, input=stdin,
                                  timeout=timeout, check=False, start_new_session=new_session)
        except subprocess.TimeoutExpired as exc:
            raise CommandFailed(("velvet", *args), None, _text(exc.stdout), _text(exc.stderr)) from None
        if check and done.returncode != 0:
            raise CommandFailed(("velvet", *args), done.returncode, done.stdout, done.stderr)
        return done

    def json(self, *args: str) -> Any:
        """A command's `-o json` output, decoded."""
        return json.loads(self.velvet(*args, "-o", "json").stdout)

    def up(self, *extra: str) -> None:
        """velvet sandbox up."""
        self.velvet("sandbox", "up", *extra)

    def down(self) -> subprocess.CompletedProcess[str]:
        """velvet sandbox down, in its own session so that a Ctrl-C cannot stop it; a failure is returned."""
        return self.velvet("sandbox", "down", check=False, new_session=True)

    def apply(self, manifest: str | Path) -> subprocess.CompletedProcess[str]:
        """Apply a manifest file or directory, or YAML text."""
        if isinstance(manifest, Path):
            return self.velvet("apply", "-f", str(manifest))
        with _manifest_file(manifest) as path:
            return self.velvet("apply", "-f", path)

    def delete(self, manifest: str, *extra: str) -> subprocess.CompletedProcess[str]:
        """Delete what YAML text names (`extra`: more `velvet delete` flags)."""
        with _manifest_file(manifest) as path:
            return self.velvet("delete", "-f", path, *extra)

    def pods(self, namespace: str | None = None) -> list[dict[str, Any]]:
        """Pods of `namespace`, or of every namespace (kubectl JSON)."""
        scope = ("-n", namespace) if namespace is not None else ("-A",)
        items: list[dict[str, Any]] = self.json("get", "pods", *scope)["items"]
        return items

    def wait_ready(self, keys: Iterable[str], timeout: float = 60.0) -> dict[str, str]:
        """Wait until the pods ("ns/name") are Ready; their IPs."""
        wanted = list(keys)
        deadline = time.monotonic() + timeout
        while True:
            ready = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p["status"].get("podIP", "")
                     for p in self.pods() if is_ready(p)}
            if all(k in ready for k in wanted):
                return {k: ready[k] for k in wanted}
            if time.monotonic() > deadline:
                raise VelvetError(f"pods not ready after {timeout:.0f}s: {sorted(set(wanted) - set(ready))}")
            time.sleep(POLL_SECONDS)

    def exec(self, pod: str, *argv: str, stdin: str | None = None,
             timeout: float | None = 30.0) -> subprocess.CompletedProcess[str]:
        """velvet sandbox exec POD -- ARGV (its exit code is not checked)."""
        return self.velvet("sandbox", "exec", pod, "--", *argv, check=False, stdin=stdin, timeout=timeout)

    def query(self, pod: str, url: str, timeout: float = 2.0) -> str | None:
        """Ask an echo server from inside `pod`: its one-line answer, or None when the query failed."""
        done = self.exec(pod, "python3", "-m", "velvet.sandbox.echo", "--query", url,
                         "--timeout", str(timeout))
        return done.stdout.strip() if done.returncode == 0 else None


@contextmanager
def _manifest_file(text: str) -> Iterator[str]:
    """YAML text in a temporary file for `velvet apply/delete -f`, removed afterwards."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    try:
        yield f.name
    finally:
        os.unlink(f.name)


def _text(output: str | bytes | None) -> str:
    """What a timed-out command had printed (TimeoutExpired may hold bytes or nothing)."""
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""
