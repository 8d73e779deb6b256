"""Test that the `velvet` CLI refuses a bad sandbox name and a non-root user with one line, and has --version.

The CLI runs as a subprocess under a non-root user: `nobody` (through setpriv) when the suite runs as
root, else the suite's own user. A refused command must print one line, exit 1 and create nothing.
"""

from __future__ import annotations

import importlib.metadata
import os
import secrets
import string
import subprocess
import sys
from pathlib import Path

import pytest

from velvet import __version__
from velvet.cli.main import main
from velvet.errors import SandboxError
from velvet.paths import RUN_ROOT, STATE_ROOT, AgentPaths, check_sandbox_name, current_sandbox
from velvet.sandbox import SandboxConfig, SandboxNames

REPO = Path(__file__).resolve().parents[2]
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if os.geteuid() == 0 else []
BAD_NAMES = ["../..", "..", "a/b", "Default", "a-b", "a.b", "x" * 17, "", "a\n", " a"]
BAD_FLAGS = ["../..", "a/b", "a-b", "x" * 17, "", "a\n"]
ROOT_COMMANDS = [
    ["sandbox", "up"],
    ["sandbox", "down"],
    ["sandbox", "status"],
    ["sandbox", "exec", "blue/echo-1", "--", "true"],
    ["agent"],
    ["demo"],
    ["status"],
    ["ui"],
    ["apply", "-f", str(REPO / "examples" / "echo")],
    ["delete", "-f", str(REPO / "examples" / "echo")],
    ["get", "pods", "-A"],
    ["service", "list"],
    ["endpoint", "list"],
    ["identity", "list"],
    ["policy", "get"],
    ["policy", "trace", "--from", "blue/echo-1", "--to", "green/echo-2", "--port", "8080/tcp"],
    ["bpf", "lb", "list"],
    ["observe", "--last", "1"],
    ["monitor"],
    ["connectivity", "test"],
]


def velvet_unprivileged(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`velvet ARGS` as a non-root user, with this interpreter and a clean VELVET_* environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("VELVET_")}
    argv = [*AS_NOBODY, sys.executable, "-m", "velvet.cli.main", *args]
    return subprocess.run(argv, capture_output=True, text=True, env={**base, **(env or {})}, cwd="/",
                          timeout=60, check=False)


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a refused command (exit 1, nothing on stdout)."""
    assert done.returncode == 1, done
    assert done.stdout == "", done
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: "), done.stderr
    return lines[0]


def unique_sandbox() -> str:
    """A sandbox name no one uses."""
    return "g" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(7))


def traces(sandbox: str) -> list[str]:
    """What exists of `sandbox` that a command could have created: runtime and state dirs, namespaces."""
    found = [str(p) for p in (RUN_ROOT / sandbox, STATE_ROOT / sandbox) if p.exists()]
    netns = Path("/run/netns")
    return found + ([p.name for p in netns.iterdir() if p.name.startswith(f"velvet-{sandbox}-")]
                    if netns.is_dir() else [])


@pytest.mark.parametrize("name", BAD_FLAGS)
def test_a_bad_sandbox_flag_is_one_line_naming_the_flag(name: str) -> None:
    """Test that `velvet --sandbox NAME sandbox up` with a name that could become a path is refused."""
    line = one_error_line(velvet_unprivileged("--sandbox", name, "sandbox", "up"))
    assert line == f"Error: --sandbox: {name!r} is not a sandbox name: use 1-16 characters of [a-z0-9]"


@pytest.mark.parametrize("name", ["../..", "a-b", "x" * 17])
def test_a_bad_velvet_sandbox_variable_is_one_line_naming_the_variable(name: str) -> None:
    """Test that $VELVET_SANDBOX is checked like --sandbox, for API commands and sandbox commands alike."""
    for command in (["status"], ["sandbox", "down"]):
        line = one_error_line(velvet_unprivileged(*command, env={"VELVET_SANDBOX": name}))
        assert line.startswith(f"Error: $VELVET_SANDBOX: {name!r} is not a sandbox name"), line


def test_the_flag_wins_over_a_bad_variable() -> None:
    """Test that a valid --sandbox is used (and $VELVET_SANDBOX ignored), as before."""
    done = velvet_unprivileged("--sandbox", "ok1", "status", env={"VELVET_SANDBOX": "../.."})
    assert "must run as root" in one_error_line(done)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_no_sandbox_path_or_name_is_built_from_a_bad_name(name: str) -> None:
    """Test that every place a sandbox name becomes a path or a namespace name refuses a bad one."""
    with pytest.raises(SandboxError, match="is not a sandbox name"):
        check_sandbox_name(name)
    for build in (AgentPaths, SandboxNames, lambda n: SandboxConfig(sandbox=n)):
        with pytest.raises(SandboxError, match="is not a sandbox name"):
            build(name)


def test_names_at_the_bounds_are_sandbox_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that 1 and 16 characters of [a-z0-9] are accepted, and the default applies without either."""
    assert AgentPaths("a").pin_dir == Path("/sys/fs/bpf/velvet/a")
    assert SandboxNames("z9" * 8).run_dir == RUN_ROOT / ("z9" * 8)
    monkeypatch.delenv("VELVET_SANDBOX", raising=False)
    assert current_sandbox() == "default"
    monkeypatch.setenv("VELVET_SANDBOX", "blue")
    assert current_sandbox() == "blue"
    assert current_sandbox("red") == "red"


def test_sandbox_and_agent_agree_on_every_root() -> None:
    """Test that the sandbox's names and the agent's paths are one derivation, not two."""
    names, paths = SandboxNames("abc"), AgentPaths("abc")
    assert (names.pin_dir, names.run_dir, names.agent_socket) == (paths.pin_dir, paths.run_dir, paths.socket)
    assert paths.state_dir.parent == names.state_dir == STATE_ROOT / "abc"


@pytest.mark.parametrize("command", ROOT_COMMANDS, ids=" ".join)
def test_a_non_root_user_gets_one_line_and_nothing_is_created(command: list[str]) -> None:
    """Test that every command that needs root says so in one line, before it touches anything."""
    sandbox = unique_sandbox()
    done = velvet_unprivileged("--sandbox", sandbox, *command)
    assert one_error_line(done).startswith("Error: velvet must run as root: "), done.stderr
    assert "Traceback" not in done.stderr
    assert traces(sandbox) == []


def test_the_api_refusal_names_the_socket() -> None:
    """Test that an API command says which root-only socket it would have used."""
    line = one_error_line(velvet_unprivileged("--sandbox", "blue", "status"))
    socket = AgentPaths("blue").socket
    assert line == f"Error: velvet must run as root: the agent's API socket {socket} is root-only"


def test_listing_the_connectivity_tests_needs_no_root() -> None:
    """Test that a command that only prints what it knows runs for any user."""
    done = velvet_unprivileged("connectivity", "test", "--list")
    assert done.returncode == 0, done.stderr
    assert "pod-to-pod" in done.stdout


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    """Test that `velvet --version` prints `velvet <version>`, the version the package is installed as."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"velvet {__version__}\n"
    assert __version__ == importlib.metadata.version("velvet")


def test_version_needs_no_root_and_no_agent() -> None:
    """Test that --version answers for any user, with nothing running."""
    done = velvet_unprivileged("--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"velvet {__version__}\n", "")
