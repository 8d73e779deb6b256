"""Test the agent's logging: repeated errors collapsed with a count, log files bounded, crashes kept."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from velvet.logs import RepeatLimiter, rotate_if_full
from velvet.sandbox.supervisor import Supervisor


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Collect(logging.Handler):
    """Keeps what reaches the log, formatted (tracebacks included)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _logger(handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger(f"velvet.test.logs.{id(handler)}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    return log


def _fail(log: logging.Logger, n: int) -> None:
    try:
        raise OSError(24, "Too many open files")
    except OSError:
        log.exception("cannot accept on port %d", n)


def test_a_flood_of_one_error_is_one_traceback_and_one_count_per_interval() -> None:
    """Test that 1,000 identical errors in an interval are the first (with traceback) plus 'repeated 999'."""
    clock, out = Clock(), Collect()
    limiter = RepeatLimiter(out, interval=10.0, clock=clock)
    log = _logger(limiter)
    for i in range(1000):
        clock.now += 0.001
        _fail(log, 9000 + i % 2)  # the same template with other arguments is the same error
    assert len(out.lines) == 1
    assert out.lines[0].startswith("ERROR cannot accept on port 9000\nTraceback")
    clock.now += 10.0
    log.info("reconcile done")
    assert re.fullmatch(r"ERROR cannot accept on port 9001 \(repeated 999 more times in \d+s\)", out.lines[1])
    assert out.lines[2] == "INFO reconcile done"
    _fail(log, 9000)  # a new interval: shown again, with its traceback
    assert out.lines[3].startswith("ERROR cannot accept on port 9000\nTraceback")
    limiter.close()


def test_the_count_is_written_when_the_repeats_stop_and_nothing_else_is_logged() -> None:
    """Test the timer: after a burst, the 'repeated' line comes without another record to carry it."""
    out = Collect()
    limiter = RepeatLimiter(out, interval=0.2)
    log = _logger(limiter)
    for _ in range(5):
        log.warning("refused a connection")
    deadline = time.monotonic() + 60
    while len(out.lines) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert re.fullmatch(r"WARNING refused a connection \(repeated 4 more times in \d+s\)", out.lines[1])
    limiter.close()


def test_other_errors_and_info_lines_pass_and_close_reports_what_was_held() -> None:
    """Test that distinct errors each pass, info is never held, and close() reports pending counts."""
    clock, out = Clock(), Collect()
    limiter = RepeatLimiter(out, clock=clock)
    log = _logger(limiter)
    for _ in range(3):
        log.warning("pod %s not ready", "a")
        log.error("map %s full", "lb4")
        log.info("pod %s added", "a")
    limiter.close()
    assert [re.sub(r"in \d+s", "in Ns", line) for line in out.lines] == [
        "WARNING pod a not ready", "ERROR map lb4 full", "INFO pod a added", "INFO pod a added",
        "INFO pod a added", "WARNING pod a not ready (repeated 2 more times in Ns)",
        "ERROR map lb4 full (repeated 2 more times in Ns)"]


LOG_FILE_CHILD = """
import logging, sys
from pathlib import Path
from velvet.logs import setup_logging
setup_logging(Path(sys.argv[1]), max_bytes=4096, backups=2)
log = logging.getLogger("velvet.test")
for i in range(500):
    log.info("line %d of the agent's log", i)
print("printed on stdout")
raise RuntimeError("the agent crashed")
"""


def test_the_log_file_is_bounded_and_keeps_the_crash_traceback(tmp_path: Path) -> None:
    """Test setup_logging with a file: rotated at max_bytes into 2 backups, stdout/stderr in it too."""
    path = tmp_path / "agent.log"
    done = subprocess.run([sys.executable, "-c", LOG_FILE_CHILD, str(path)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 1
    assert (done.stdout, done.stderr) == ("", "")  # everything went to the file
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["agent.log", "agent.log.1", "agent.log.2"]
    assert all(f.stat().st_size <= 4096 for f in files[1:])
    current = path.read_text()
    assert "line 499 of the agent's log" in current
    assert "printed on stdout\n" in current
    assert current.rstrip().endswith("RuntimeError: the agent crashed")
    assert "Traceback (most recent call last)" in current


def test_rotate_if_full_shifts_backups_only_when_full(tmp_path: Path) -> None:
    """Test the supervisor's rollover before a start: like LogFile's, and only at max_bytes."""
    path = tmp_path / "agent.log"
    path.write_text("a" * 10)
    rotate_if_full(path, max_bytes=100, backups=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.log"]
    for generation in "xyz":
        path.write_text(generation * 100)
        rotate_if_full(path, max_bytes=100, backups=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.log.1", "agent.log.2"]
    assert (tmp_path / "agent.log.1").read_text() == "z" * 100
    assert (tmp_path / "agent.log.2").read_text() == "y" * 100


@pytest.mark.timeout(120)
def test_a_crash_looping_daemon_cannot_grow_its_log_without_bound(tmp_path: Path) -> None:
    """Test the supervisor: a daemon that writes 3 KiB and dies, restarted 6 times, leaves <= 3 x 4 KiB."""
    log = tmp_path / "agent.log"
    argv = [sys.executable, "-c", "import sys; sys.stderr.write('crash ' * 512); sys.exit(1)"]
    supervisor = Supervisor(argv, netns=None, cgroup=None, log=log, pid_file=tmp_path / "agent.pid",
                            min_backoff=0.01, max_backoff=0.01, log_max_bytes=4096, log_backups=2)
    supervisor.start()
    deadline = time.monotonic() + 60
    try:
        while supervisor.restarts < 6:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        supervisor.stop()
    files = sorted(tmp_path.glob("agent.log*"))
    assert [f.name for f in files] == ["agent.log", "agent.log.1", "agent.log.2"]
    assert sum(f.stat().st_size for f in files) <= 3 * (4096 + 3072)
    newest = log.read_text() or (tmp_path / "agent.log.1").read_text()  # stop() may catch a fresh start
    assert newest.endswith("crash ")
