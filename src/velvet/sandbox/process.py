"""Starting real processes inside a network namespace and a cgroup (setns(2), cgroup v2 cgroup.procs).

`spawn` starts a process that outlives its caller: the caller forks a helper that starts a new
session and forks again, so the process is re-parented to init (or the nearest subreaper) and is
never the caller's child. With `exit_file`, a shim (the second fork, a copy of the caller that runs
only os calls) stays as the process's parent, reaps it and records its exit status, like
containerd-shim; without, the helper exits at once. `exec_in` is `kubectl exec`: a child of the
caller that inherits its stdin/stdout/stderr.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from velvet.errors import SandboxError
from velvet.sandbox import cgroups
from velvet.system.netns import enter_netns, netns_path

_SHIM_IGNORES = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_RESTORED = (*_SHIM_IGNORES, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD)
_MAXFD = 1 << 20


@dataclass(frozen=True)
class ExitStatus:
    """How a process ended: `exit_code` (shell convention: 128+N for signal N), when."""

    exit_code: int
    signal: int
    finished_at: float

    @classmethod
    def read(cls, path: Path) -> ExitStatus | None:
        """The status a shim wrote to `path`, or None while the process runs (or had no shim)."""
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return cls(int(data["exit_code"]), int(data["signal"]), float(data["finished_at"]))


def wait_code(status: int) -> int:
    """Turn a wait(2) status into a shell-style exit code."""
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def spawn(
    argv: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    netns: str | Path | None = None,
    cgroup: Path | None = None,
    exit_file: Path | None = None,
    shim_cgroup: Path | None = None,
    cwd: str = "/",
) -> int:
    """Start `argv` detached, in `netns` and `cgroup`, in its own session; return its pid.

    stdin is /dev/null, stdout and stderr append to `log`. Raises SandboxError (with errno text) when
    the process cannot be started: exec failure, missing namespace or cgroup.
    """
    if not argv:
        raise SandboxError("cannot spawn an empty command")
    log.parent.mkdir(parents=True, exist_ok=True)
    ns = netns_path(netns) if netns is not None else None
    environ = dict(os.environ if env is None else env)
    log_fd = _above_stdio(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644))
    null_fd = _above_stdio(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC))
    r, w = (_above_stdio(fd) for fd in os.pipe2(os.O_CLOEXEC))
    try:
        helper = os.fork()
        if helper == 0:  # pragma: no cover - runs in the forked helper
            _helper(w, list(argv), environ, ns, cgroup, exit_file, shim_cgroup, cwd, log_fd, null_fd)
        os.close(w)
        w = -1
        report = _read_all(r)
        os.waitpid(helper, 0)
    finally:
        for fd in (r, w, log_fd, null_fd):
            if fd >= 0:
                os.close(fd)
    pid = 0
    for line in report.splitlines():
        kind, _, value = line.partition(" ")
        if kind == "err":
            raise SandboxError(f"cannot start {argv[0]!r}: {value}")
        if kind == "pid":
            pid = int(value)
    if not pid:
        raise SandboxError(f"cannot start {argv[0]!r}: the launcher died ({report.strip() or 'no report'})")
    return pid


def spawn_detached(
    argv: Sequence[str],
    netns: str | Path | None,
    cgroup: Path | None,
    log: Path,
    env: Mapping[str, str] | None = None,
) -> int:
    """Start a daemon (e.g. the sandbox supervisor) in `netns` and `cgroup`, not a child of the caller."""
    return spawn(argv, log=log, env=env, netns=netns, cgroup=cgroup)


def _above_stdio(fd: int) -> int:
    """Move `fd` above 0-2 (close-on-exec) so that wiring the child's stdio cannot clobber it."""
    if fd > 2:
        return fd
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return high


def _read_all(fd: int) -> str:
    """Read a pipe to EOF."""
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def _report(w: int, text: str) -> None:
    """Write one report line to the launcher pipe."""
    os.write(w, f"{text}\n".encode())


def _helper(
    w: int,
    argv: list[str],
    env: dict[str, str],
    ns: Path | None,
    cgroup: Path | None,
    exit_file: Path | None,
    shim_cgroup: Path | None,
    cwd: str,
    log_fd: int,
    null_fd: int,
) -> None:  # pragma: no cover - runs in a forked child
    """First fork: leave the caller's session, fork the shim or the process itself, then exit."""
    try:
        os.setsid()
        if exit_file is None:
            child = os.fork()
            if child == 0:
                _exec_child(w, argv, env, ns, cgroup, cwd, log_fd, null_fd)
            _report(w, f"pid {child}")
        elif os.fork() == 0:
            _shim(w, argv, env, ns, cgroup, exit_file, shim_cgroup, cwd, log_fd, null_fd)
    except BaseException as exc:
        _report(w, f"err helper: {exc}")
    os._exit(0)


def _shim(
    w: int,
    argv: list[str],
    env: dict[str, str],
    ns: Path | None,
    cgroup: Path | None,
    exit_file: Path,
    shim_cgroup: Path | None,
    cwd: str,
    log_fd: int,
    null_fd: int,
) -> None:  # pragma: no cover - runs in a forked child
    """Second fork: start the process, report its pid, reap it, record its exit status."""
    try:
        for sig in _SHIM_IGNORES:
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if shim_cgroup is not None:
            cgroups.join(shim_cgroup)
        child = os.fork()
        if child == 0:
            _exec_child(w, argv, env, ns, cgroup, cwd, log_fd, null_fd)
        _report(w, f"pid {child}")
        for fd in (0, 1, 2):
            os.dup2(null_fd, fd)
        os.closerange(3, _MAXFD)
        _, status = os.waitpid(child, 0)
        code = wait_code(status)
        killed_by = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        tmp = f"{exit_file}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        report = {"exit_code": code, "signal": killed_by, "finished_at": time.time()}
        os.write(fd, json.dumps(report).encode())
        os.close(fd)
        os.rename(tmp, exit_file)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            _report(w, f"err shim: {exc}")
    os._exit(0)


def _exec_child(
    w: int,
    argv: list[str],
    env: dict[str, str],
    ns: Path | None,
    cgroup: Path | None,
    cwd: str,
    log_fd: int,
    null_fd: int,
) -> None:  # pragma: no cover - runs in a forked child
    """Last fork: join the cgroup and the namespace, own a session, wire the log, exec."""
    try:
        if cgroup is not None:
            cgroups.join(cgroup)
        if ns is not None:
            enter_netns(ns)
        os.setsid()
        os.chdir(cwd)
        for sig in _RESTORED:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.closerange(3, w)
        os.closerange(w + 1, _MAXFD)
        os.execvpe(argv[0], argv, env)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            _report(w, f"err {argv[0]}: {exc}")
    os._exit(127)


def enter(netns: str | Path | None, cgroup: Path | None) -> Callable[[], None]:
    """A `preexec_fn` that joins `cgroup` and then `netns` (in that order: no netns is needed to join)."""
    ns = netns_path(netns) if netns is not None else None

    def preexec() -> None:
        if cgroup is not None:
            cgroups.join(cgroup)
        if ns is not None:
            enter_netns(ns)

    return preexec


def run_in_netns(netns: str | Path, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """`subprocess.run(argv, **kwargs)` with the child in network namespace `netns` (name or path)."""
    return subprocess.run(list(argv), preexec_fn=enter(netns, None), **kwargs)


def exec_in(
    netns: str | Path,
    cgroup: Path | None,
    argv: Sequence[str],
    *,
    stdin: Any = None,
    stdout: Any = None,
    stderr: Any = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> int:
    """Run `argv` in `netns` and `cgroup`, by default on the caller's stdin/stdout/stderr; return its code.

    The code follows the shell convention (128+N when killed by signal N); 127 when it cannot start.
    """
    try:
        proc = subprocess.Popen(
            list(argv), stdin=stdin, stdout=stdout, stderr=stderr, env=env, preexec_fn=enter(netns, cgroup)
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxError(f"cannot run {argv[0]!r} in {netns}: {exc}") from exc
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return code if code >= 0 else 128 - code


def alive(pid: int, cgroup: Path | None = None) -> bool:
    """Whether `pid` runs (not a zombie) and, when `cgroup` is given, is in that cgroup (no pid reuse)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
        return False
    return cgroup is None or cgroups.cgroup_of(pid) == cgroup
