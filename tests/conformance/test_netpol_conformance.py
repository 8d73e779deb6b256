"""Test that the upstream Kubernetes NetworkPolicy e2e cases pass on Velvet's real datapath.

Runs tests/conformance/run_netpol.py on ../shared/conformance/netpol_cases.yaml in a one-node sandbox
and again with the pods spread over a three-node sandbox: real pods, real Services (socket LB), real
tc policy programs, probes from inside the pods, and the drops `velvet observe` shows for every
blocked cell.
"""

from __future__ import annotations

import pytest
from cases_file import CASES_FILE, SHARED_CASES, VENDORED_CASES
from netpol_cases import load
from run_netpol import Summary, run


def test_cases_copy_is_current() -> None:
    """Test that our copy of the upstream cases equals the shared file (when this checkout has it)."""
    if SHARED_CASES.exists():
        assert VENDORED_CASES.read_bytes() == SHARED_CASES.read_bytes()
    assert load(VENDORED_CASES).cases


def assert_every_case_passes_but_sctp(summary: Summary, lines: list[str]) -> None:
    """Every case passed, each blocked cell also a POLICY_DENIED drop in the flow log, except the cases
    probing only SCTP: skipped because `velvet status` reports the SCTP kernel feature missing."""
    report = "\n".join([*lines, f"took {summary.seconds:.1f}s", summary.line])
    print(report)
    sctp_only = {c.id for c in load(CASES_FILE).cases
                 if all(p.protocol == "SCTP" for s in c.steps for p in s.probes)}
    assert summary.count("failed") == 0, report
    assert {r.case.id for r in summary.reports if r.status == "skipped"} == sctp_only, report
    skipped = [p for r in summary.reports for p in r.probes if p.status == "skipped"]
    assert all((p.protocol, p.skipped_for) == ("SCTP", "SCTP") for p in skipped), report
    assert summary.count("passed") == len(summary.reports) - len(sctp_only), report
    assert sum(p.drops for r in summary.reports for p in r.probes) > 0, report  # the drop check ran


@pytest.mark.privileged
@pytest.mark.timeout(1200)
def test_every_upstream_case_passes_and_only_sctp_is_skipped() -> None:
    """Test that every case passes on one node, each blocked cell also a POLICY_DENIED drop in the flow
    log, except the cases probing only SCTP (the SCTP kernel feature is missing)."""
    lines: list[str] = []
    summary = run(CASES_FILE, say=lines.append)
    assert_every_case_passes_but_sctp(summary, lines)


@pytest.mark.privileged
@pytest.mark.timeout(1200)
def test_every_upstream_case_passes_with_the_pods_spread_over_three_nodes() -> None:
    """Test that the same cases pass with the same rule when the nine pods run round-robin on three
    nodes (x/a, y/a, z/a on velvet-node, the b pods on velvet-node-1, the c pods on velvet-node-2), so
    that every matrix mixes same-node and cross-node pairs and each cross-node drop is found in the
    flow log of the node that dropped it."""
    lines: list[str] = []
    summary = run(CASES_FILE, say=lines.append, nodes=3)
    assert ("pods round-robin over 3 nodes: velvet-node: x/a, y/a, z/a; velvet-node-1: x/b, y/b, z/b; "
            "velvet-node-2: x/c, y/c, z/c") in lines, "\n".join(lines)
    assert_every_case_passes_but_sctp(summary, lines)
