"""Test a subset of the shared upstream NetworkPolicy cases on a sandbox node on the Kubernetes source.

The conformance runner (tests/conformance) drives the cases as it does on the local store; only its
`Cluster` differs (`kube_cluster.KubeCluster`: objects go to the stand-in API server, which the node's
agent follows). Real pods, real Services, the real datapath, probes from inside the pods, and every
blocked cell also a drop in the flow log.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "conformance"))  # the runner's modules

from cases_file import CASES_FILE  # noqa: E402
from kube_apiserver import KubeApiServer  # noqa: E402
from kube_cluster import KubeCluster  # noqa: E402
from netpol_cases import load  # noqa: E402
from netpol_flows import DropLog  # noqa: E402
from netpol_runner import Runner, unsupported_protocols  # noqa: E402
from run_netpol import describe  # noqa: E402
from test_kube_sandbox import kube_node as kube_node  # noqa: E402  the fixture, re-exported

from velvet.cli.runner import SandboxCli  # noqa: E402
from velvet.sandbox.naming import SandboxConfig  # noqa: E402

pytestmark = pytest.mark.privileged
SUBSET = tuple(str(k) for k in range(1, 42, 2))  # the first 21 cases (TCP): selectors, label changes, egress


def test_netpol_cases_pass_on_the_kubernetes_source(kube_node: tuple[SandboxCli, SandboxConfig,
                                                                     KubeApiServer]) -> None:
    """Test that the subset's cases pass, each blocked cell also a POLICY_DENIED drop."""
    sb, cfg, api = kube_node
    data = load(CASES_FILE)
    cases = [c for c in data.cases if c.id in SUBSET]
    assert [c.id for c in cases] == list(SUBSET)
    lines: list[str] = []
    drops = DropLog(sb.name, 1)
    cluster = KubeCluster(sb, cfg, api)
    try:
        runner = Runner(cluster, data.model, unsupported_protocols(sb.json("status")["kernel"]["features"]),
                        drops, "service", lines.append)
        runner.setup()
        reports = [runner.run_case(case) for case in cases]
        lines += [describe(r) for r in reports]
    finally:
        cluster.close()
        drops.close()
    print("\n".join(lines))
    assert len(reports) == len(SUBSET)
    failed = [r for r in reports if r.status != "passed"]
    assert not failed, "\n".join(lines + [f"{r.case.id}: {r.status}" for r in failed])
