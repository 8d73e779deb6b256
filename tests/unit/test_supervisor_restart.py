"""Test the sandbox supervisor's restart policy: at once after a stable run, backoff after a quick exit."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from velvet.sandbox.supervisor import Supervisor


@pytest.mark.timeout(120)
def test_a_daemon_that_ran_stably_is_restarted_without_the_backoff(tmp_path: Path) -> None:
    """Test that a daemon exiting after a stable run is started again at once, not after min_backoff.

    The backoff is an hour, so a second run can only come from the immediate restart; the third (after
    the second, stable too) shows that the backoff does not grow across stable runs either.
    """
    argv = [sys.executable, "-c", "import time; time.sleep(0.3)"]
    supervisor = Supervisor(argv, netns=None, cgroup=None, log=tmp_path / "d.log",
                            pid_file=tmp_path / "d.pid", min_backoff=3600.0, max_backoff=3600.0,
                            stable_after=0.1)
    supervisor.start()
    deadline = time.monotonic() + 60
    try:
        while supervisor.restarts < 2:
            assert time.monotonic() < deadline, "not restarted"
            time.sleep(0.01)
    finally:
        supervisor.stop()


@pytest.mark.timeout(60)
def test_a_daemon_that_dies_at_once_waits_for_the_backoff(tmp_path: Path) -> None:
    """Test that a daemon exiting before it was stable is not restarted before min_backoff."""
    argv = [sys.executable, "-c", "pass"]
    supervisor = Supervisor(argv, netns=None, cgroup=None, log=tmp_path / "d.log",
                            pid_file=tmp_path / "d.pid", min_backoff=3600.0, max_backoff=3600.0,
                            stable_after=30.0)
    supervisor.start()
    try:
        while supervisor.pid is None and not (tmp_path / "d.pid").exists():
            time.sleep(0.01)
        time.sleep(1.0)  # the daemon has long exited; an immediate restart would count now
        assert supervisor.restarts == 0
    finally:
        supervisor.stop()
