"""Keep one daemon (the agent) running inside the node: start, restart with backoff, stop.

The daemon is a child in its own session, so it outlives a crashed supervisor (the datapath keeps
working); a restarted supervisor re-adopts it from its pid file and waits on it with a pidfd
(pidfd_open, Linux >= 5.3) since it is no longer its child.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from velvet.logs import LOG_BACKUPS, LOG_MAX_BYTES, rotate_if_full
from velvet.sandbox import process
from velvet.sandbox.cleanup import read_pid
from velvet.sandbox.linux import send_signal


def write_pid(path: Path, pid: int) -> None:
    """Write a pid file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pid}\n")
    os.replace(tmp, path)


class Supervisor:
    """Runs `argv` in `netns` and `cgroup`, restarting it when it exits (at once after a stable run, then
    backoff 0.5 s doubling to 5 s)."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        netns: str | Path | None,
        cgroup: Path | None,
        log: Path,
        pid_file: Path,
        env: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = (),
        min_backoff: float = 0.5,
        max_backoff: float = 5.0,
        stable_after: float = 10.0,
        log_max_bytes: int = LOG_MAX_BYTES,
        log_backups: int = LOG_BACKUPS,
    ) -> None:
        """Configure; nothing runs before `start()`. After a run longer than `stable_after` the daemon is
        restarted at once and the backoff starts again from `min_backoff`.

        `pass_fds` stay open in the daemon under the same numbers (e.g. a namespace it needs). The
        daemon's stdout and stderr are appended to `log`, which is rolled over (log.1 ..
        log.<log_backups>, as velvet.logs.LogFile does) before a start finds it holding `log_max_bytes`:
        a daemon crashing before it rotates its own log cannot grow it without bound.
        """
        self.argv = list(argv)
        self.pass_fds = tuple(pass_fds)
        self.netns = netns
        self.cgroup = cgroup
        self.log = log
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        self.pid_file = pid_file
        self.env = dict(env) if env is not None else None
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.stable_after = stable_after
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """Pid of the running daemon, if any."""
        with self._lock:
            return self._pid

    def start(self) -> None:
        """Adopt the daemon named by the pid file if it still runs, else start one; then keep it running."""
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="velvet-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop supervising and terminate the daemon (SIGTERM, SIGKILL after `timeout`)."""
        self._stopping.set()
        pid = self.pid
        if pid is not None:
            send_signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while process.alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            send_signal(pid, signal.SIGKILL)
        if self._thread is not None:
            self._thread.join()
        self.pid_file.unlink(missing_ok=True)

    def _loop(self) -> None:
        """Run, wait, back off, repeat until stopped."""
        backoff = self.min_backoff
        adopted = self._adoptable()
        while not self._stopping.is_set():
            started = time.monotonic()
            if adopted is not None:
                self._set_pid(adopted)
                _wait_foreign(adopted, self._stopping)
                adopted = None
            else:
                self._run_child()
            self._set_pid(None)
            if self._stopping.is_set():
                break
            if time.monotonic() - started > self.stable_after:
                backoff = 0.0  # the first exit after a stable run restarts at once, as the kubelet does
            if self._stopping.wait(backoff):
                break
            backoff = min(max(backoff * 2, self.min_backoff), self.max_backoff)
            self.restarts += 1

    def _run_child(self) -> None:
        """Start the daemon as a child in its own session and wait for it."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        rotate_if_full(self.log, self.log_max_bytes, self.log_backups)
        with open(self.log, "ab") as out:
            proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                pass_fds=self.pass_fds,
                start_new_session=True,
                preexec_fn=process.enter(self.netns, self.cgroup),
            )
        self._set_pid(proc.pid)
        write_pid(self.pid_file, proc.pid)
        if self._stopping.is_set():
            proc.terminate()
        proc.wait()

    def _adoptable(self) -> int | None:
        """The pid-file pid if it runs our command (a daemon left by a crashed supervisor), else None."""
        pid = read_pid(self.pid_file)
        if pid is None or not process.alive(pid, self.cgroup):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        except OSError:
            return None
        return pid if [c.decode(errors="replace") for c in cmdline] == self.argv else None

    def _set_pid(self, pid: int | None) -> None:
        """Record the running daemon's pid."""
        with self._lock:
            self._pid = pid


def _wait_foreign(pid: int, stopping: threading.Event) -> None:
    """Wait until process `pid` (not our child) exits, or until `stopping` is set."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        while not stopping.is_set():
            if select.select([fd], [], [], 0.2)[0]:
                return
    finally:
        os.close(fd)

