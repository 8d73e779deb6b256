"""Privileged tests fail loudly without root instead of skipping.

A test marked `privileged` (root, a BPF-capable kernel, network namespaces, cgroups) that runs
without root fails with one line saying so. To run only what needs no privileges, deselect the rest
explicitly: `pytest -m "not privileged"`.
"""

from __future__ import annotations

import os

import pytest

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
