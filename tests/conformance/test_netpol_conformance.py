"""Test that the upstream Kubernetes NetworkPolicy e2e cases pass on Velvet's real datapath.

Runs tests/conformance/run_netpol.py on ../shared/conformance/netpol_cases.yaml in one sandbox: real
pods, real Services (socket LB), real tc policy programs, probes from inside the pods, and the drops
`velvet observe` shows for every blocked cell.
"""

from __future__ import annotations

import pytest
from cases_file import CASES_FILE, SHARED_CASES, VENDORED_CASES
from netpol_cases import load
from run_netpol import run


def test_cases_copy_is_current() -> None:
    """Test that our copy of the upstream cases equals the shared file (when this checkout has it)."""
    if SHARED_CASES.exists():
        assert VENDORED_CASES.read_bytes() == SHARED_CASES.read_bytes()
    assert load(VENDORED_CASES).cases


@pytest.mark.privileged
@pytest.mark.timeout(1200)
def test_every_upstream_case_passes_and_only_sctp_is_skipped() -> None:
    """Test that every case passes, each blocked cell also a POLICY_DENIED drop in the flow log, except
    the cases probing only SCTP: skipped because `velvet status` reports the SCTP kernel feature missing."""
    lines: list[str] = []
    summary = run(CASES_FILE, say=lines.append)
    report = "\n".join([*lines, summary.line])
    print(report)
    sctp_only = {c.id for c in load(CASES_FILE).cases
                 if all(p.protocol == "SCTP" for s in c.steps for p in s.probes)}
    assert summary.count("failed") == 0, report
    assert {r.case.id for r in summary.reports if r.status == "skipped"} == sctp_only, report
    skipped = [p for r in summary.reports for p in r.probes if p.status == "skipped"]
    assert all((p.protocol, p.skipped_for) == ("SCTP", "SCTP") for p in skipped), report
    assert summary.count("passed") == len(summary.reports) - len(sctp_only), report
    assert sum(p.drops for r in summary.reports for p in r.probes) > 0, report  # the drop check ran
