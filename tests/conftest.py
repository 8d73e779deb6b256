"""Privileged tests fail loudly without root instead of skipping; fixtures the tests share.

A test marked `privileged` (root, a BPF-capable kernel, network namespaces, cgroups) that runs
without root fails with one line saying so. To run only what needs no privileges, deselect the rest
explicitly: `pytest -m "not privileged"`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from velvet.sources.local import LocalStore

NEEDS_ROOT = "needs root: "


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a privileged test run without root before its fixtures or skip marks are looked at."""
    if item.get_closest_marker("privileged") is not None and os.geteuid() != 0:
        pytest.fail(f'{NEEDS_ROOT}{item.nodeid} is a privileged test; run it as root, or deselect '
                    'privileged tests with -m "not privileged"', pytrace=False)


def pytest_report_teststatus(report: pytest.TestReport) -> tuple[str, str, str] | None:
    """Count that refusal as a failed test (it stops before fixtures, which pytest calls an error)."""
    if report.when == "setup" and report.failed and report.longreprtext.startswith(NEEDS_ROOT):
        return "failed", "F", "FAILED"
    return None


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """Where the store under test keeps its files (created by the store)."""
    return tmp_path / "state"


@pytest.fixture
def store(state: Path) -> LocalStore:
    """A fresh local store in `state`."""
    return LocalStore.open(state)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that would leave new files world-readable and -writable."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)
