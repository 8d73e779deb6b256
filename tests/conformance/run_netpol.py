#!/usr/bin/env python3
"""Run upstream Kubernetes NetworkPolicy e2e cases against Velvet's real datapath in a sandbox.

    tests/conformance/run_netpol.py --cases FILE [--case ID ...] [--nodes N] [--sandbox NAME] [--keep]
                                    [--via pod]

Builds the upstream model (the file's namespaces and pods; one container per (port, protocol) of
each case's servers running Velvet's echo server; one Service s-<ns>-<pod> per pod), then for each
case applies its steps' actions in order (create_policy/update_policy, delete_policy,
delete_all_policies, add/remove/set/reset_namespace_labels, add/remove/set/reset_pod_labels) and
probes every ordered pair of pods through the destination's Service ClusterIP on each probe's
port/protocol, from one long-lived probe session per source pod. With --nodes N (2 to 8) the sandbox
is a cluster of N nodes on etcd and the pods are spread round-robin over them in the model's order
(spec.nodeName velvet-node, velvet-node-1, ...), so every matrix mixes same-node and cross-node pairs;
the drops are looked up in every node's flow log. A mismatching step is re-probed for
up to 10 s (upstream polls too). Every blocked cell must also be a POLICY_DENIED drop of that pair
in `velvet observe`. Probes of a protocol whose kernel feature `velvet status -o json` reports
missing (SCTP here) are skipped, naming that feature. Pod-to-itself (the diagonal) is reported but
never fails a case: the packet loops back inside the pod and never meets policy, and upstream
ignores it as well. Each case starts from a checked baseline (no policy: every pair connects) and is
reset afterwards (policies deleted, labels restored), so cases are independent: they run grouped by
their servers (in the file's order within a group), and pods are re-created only between groups.

Prints a diff (expected, observed, comparison) for every mismatch and ends with one line
"N passed, M failed, K skipped"; exits 1 when a case failed, 2 on bad input or a broken sandbox.
The sandbox is always removed at the end, unless --keep.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
try:
    import velvet  # noqa: F401
except ImportError:  # started with a python that lacks the project: use the repo's virtualenv
    VENV_PYTHON = REPO / ".venv" / "bin" / "python"
    if not VENV_PYTHON.exists() or Path(sys.executable) == VENV_PYTHON:
        raise
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), *sys.argv])

import argparse  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Mapping, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from netpol_cases import Case, CaseFileError, load  # noqa: E402
from netpol_cluster import Cluster, ClusterError, Sandbox, unique_name  # noqa: E402
from netpol_flows import DropLog  # noqa: E402
from netpol_runner import CaseReport, Runner, unsupported_protocols  # noqa: E402

from velvet.errors import VelvetError  # noqa: E402
from velvet.sandbox.naming import MAX_NODES  # noqa: E402

SANDBOX_NAME = re.compile(r"^[a-z0-9]{1,16}$")


@dataclass
class Summary:
    """What a run found."""

    reports: list[CaseReport]
    seconds: float

    def count(self, status: str) -> int:
        """How many cases ended with `status`."""
        return sum(1 for r in self.reports if r.status == status)

    @property
    def line(self) -> str:
        """The final line: N passed, M failed, K skipped."""
        passed, failed, skipped = (self.count(s) for s in ("passed", "failed", "skipped"))
        return f"{passed} passed, {failed} failed, {skipped} skipped"


def placement(nodes: Mapping[str, str]) -> str:
    """Which pods run on which node, for people: "velvet-node: x/a, y/a; velvet-node-1: ..."."""
    by_node: dict[str, list[str]] = {}
    for pod, node in nodes.items():
        by_node.setdefault(node, []).append(pod)
    return "; ".join(f"{node}: {', '.join(pods)}" for node, pods in by_node.items())


def describe(report: CaseReport) -> str:
    """One case's result for people: a status line, then any diff, error and notes."""
    case = report.case
    ran = [p for p in report.probes if p.status != "skipped"]
    rounds = max((p.rounds for p in ran), default=0)
    settled = max((p.settled for p in ran), default=0.0)
    head = f"{report.status.upper():7} case {case.id}: {case.name} ({report.seconds:.1f}s"
    if ran and report.status == "passed":
        head += f"; {len(ran)} probe(s), matched by round {rounds}, {settled:.2f}s after the change"
        head += f"; {sum(p.drops for p in ran)} blocked cell(s), each a POLICY_DENIED drop"
    head += ")"
    lines = [head]
    for probe in report.probes:
        if probe.status == "skipped":
            lines.append(f"         step {probe.step} {probe.port}/{probe.protocol}: skipped: {probe.detail}")
        elif probe.status == "failed":
            lines.append(f"         step {probe.step} {probe.port}/{probe.protocol}: FAILED after "
                         f"{probe.rounds} round(s) over {probe.settled:.1f}s")
            lines += ["           " + line for line in probe.detail.splitlines()]
    if report.error:
        lines += ["         error: " + line for line in report.error.splitlines()]
    lines += [f"         note: {note}" for note in report.notes]
    return "\n".join(lines)


def run(cases_file: Path, case_ids: Sequence[str] = (), sandbox: str | None = None, keep: bool = False,
        via: str = "service", say: Callable[[str], None] = print, nodes: int = 1) -> Summary:
    """Run the cases (all, or those with these ids) on a sandbox of `nodes` nodes that is removed at the
    end unless keep."""
    started = time.monotonic()
    data = load(cases_file)
    unknown = sorted(set(case_ids) - {c.id for c in data.cases})
    if unknown:
        raise CaseFileError(f"{cases_file}: no case with id {', '.join(unknown)}")
    by_servers: dict[tuple[tuple[int, str], ...], list[Case]] = {}
    for case in data.cases:
        if not case_ids or case.id in case_ids:
            by_servers.setdefault(case.servers, []).append(case)
    cases = [case for group in by_servers.values() for case in group]
    name = sandbox or unique_name("np")
    if not SANDBOX_NAME.match(name):
        raise CaseFileError(f"sandbox name {name!r}: want 1-16 characters of [a-z0-9]")
    if not 1 <= nodes <= MAX_NODES:
        raise CaseFileError(f"--nodes {nodes}: a sandbox has 1 to {MAX_NODES} nodes")
    box = Sandbox(name)
    reports: list[CaseReport] = []
    cluster: Cluster | None = None
    drops: DropLog | None = None
    try:
        box.up(*(("--nodes", str(nodes)) if nodes > 1 else ()))
        unsupported = unsupported_protocols(box.json("status")["kernel"]["features"])
        drops = DropLog(name, nodes)
        cluster = Cluster(box, nodes)
        runner = Runner(cluster, data.model, unsupported, drops, via, say)
        say(f"{len(cases)} case(s) from {cases_file} on sandbox {name}, probing via "
            f"{'pod IPs' if via == 'pod' else 'Service ClusterIPs'}")
        if nodes > 1:
            say(f"pods round-robin over {nodes} nodes: " + placement(cluster.placement(data.model.pod_order)))
        runner.setup()
        for case in cases:
            report = runner.run_case(case)
            reports.append(report)
            say(describe(report))
    finally:
        if cluster is not None:
            cluster.close()
        if drops is not None:
            drops.close()
        if keep:
            say(f"sandbox {name} kept: remove it with `velvet --sandbox {name} sandbox down`")
        else:
            box.down()
    return Summary(reports, time.monotonic() - started)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="run_netpol.py", description="upstream NetworkPolicy cases on a sandbox")
    p.add_argument("--cases", required=True, type=Path, help="case file (netpol_cases.yaml format)")
    p.add_argument("--case", action="append", default=[], metavar="ID",
                   help="run only this case (repeatable)")
    p.add_argument("--nodes", type=int, default=1, metavar="N",
                   help=f"spread the pods round-robin over N nodes (1 to {MAX_NODES}; default 1)")
    p.add_argument("--sandbox", help="sandbox name (default: a fresh unique one)")
    p.add_argument("--keep", action="store_true", help="leave the sandbox up at the end")
    p.add_argument("--via", choices=("service", "pod"), default="service",
                   help="probe the destination's Service ClusterIP (default, as upstream) or its pod IP")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        summary = run(args.cases, args.case, args.sandbox, args.keep, args.via, nodes=args.nodes)
    except (CaseFileError, ClusterError, VelvetError, AssertionError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        message = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"
        print(f"run_netpol: {message}", file=sys.stderr)
        return 2
    print(f"took {summary.seconds:.1f}s")
    print(summary.line)
    return 1 if summary.count("failed") else 0


if __name__ == "__main__":
    raise SystemExit(main())
