"""Replay NetworkPolicy cases on a sandbox: build the model, apply each step, probe, compare, reset.

Decisions (see run_netpol.py's help): probes go through each destination's Service ClusterIP (or the
pod IP with via="pod"); a mismatching step is re-probed for up to POLL_SECONDS, as upstream polls;
the diagonal (pod to itself, looping back inside the pod) is reported but never fails a case, as
upstream ignores it; every case starts from a checked baseline (no policy: everything connects),
and ends with a reset (policies deleted, labels restored).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from netpol_cases import ALLOWED, Case, CaseFileError, Model, Probe, Step
from netpol_cluster import Cluster, ClusterError
from netpol_matrix import Comparison, Pair, compare, render
from netpol_state import ModelState

from velvet.errors import VelvetError

POLL_SECONDS = 10.0
POLL_PAUSE = 0.1
SETUP_SECONDS = 30.0


@dataclass
class ProbeReport:
    """The outcome of one probe (port/protocol) of one step."""

    step: int
    port: int
    protocol: str
    status: str  # "passed" | "failed" | "skipped"
    rounds: int = 0
    settled: float = 0.0  # seconds from the step's last action to the start of the last round
    detail: str = ""


@dataclass
class CaseReport:
    """The outcome of one case."""

    case: Case
    probes: list[ProbeReport] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def status(self) -> str:
        """failed (an error or a failed probe), skipped (every probe skipped) or passed."""
        if self.error or any(p.status == "failed" for p in self.probes):
            return "failed"
        if self.probes and all(p.status == "skipped" for p in self.probes):
            return "skipped"
        return "passed"


@dataclass
class _Round:
    """One probe round of a step: per probe, what connected and what each cell said."""

    observed: list[dict[Pair, bool]]
    details: list[dict[Pair, str]]
    comparisons: list[Comparison]
    started: float = 0.0
    count: int = 1


class Runner:
    """Runs cases one after another on one sandbox, rebuilding pods only when the servers change."""

    def __init__(self, cluster: Cluster, model: Model, skip_reasons: Mapping[str, str], via: str,
                 say: Callable[[str], None]) -> None:
        """Use `cluster`; probes of a protocol in `skip_reasons` are skipped with that reason."""
        self.cluster = cluster
        self.state = ModelState(cluster, model)
        self.skip_reasons = skip_reasons
        self.via = via
        self.say = say
        self.order = model.pod_order
        self.targets: dict[str, str] = {}

    # -- the model -------------------------------------------------------------------------------

    def setup(self) -> None:
        """Create the namespaces."""
        self.state.setup()

    def use_servers(self, servers: tuple[tuple[int, str], ...]) -> None:
        """Make every pod run exactly these servers (re-creating the pods when they differ)."""
        if servers == self.state.servers:
            return
        started = time.monotonic()
        self.cluster.close_sessions()
        pod_ips = self.state.build(servers)
        self.targets = pod_ips if self.via == "pod" else self.cluster.cluster_ips(self.order)
        ready = time.monotonic()
        self.cluster.open_sessions(self.order)
        self.cluster.probe_round({src: [] for src in self.order})
        served = ", ".join(f"{port}/{proto}" for port, proto in servers)
        self.say(f"model: pods serve {served}; ready in {ready - started:.1f}s, "
                 f"probe sessions in {time.monotonic() - ready:.1f}s")

    # -- probing ---------------------------------------------------------------------------------

    def _url(self, probe: Probe, dst: str) -> str:
        """tcp|udp://<ClusterIP or pod IP>:<port> of one destination."""
        return f"{probe.protocol.lower()}://{self.targets[dst]}:{probe.port}"

    def _round(self, probes: Sequence[Probe]) -> _Round:
        """Probe every pair on every port of `probes` once, from all sources at once."""
        urls = [(probe, dst, self._url(probe, dst)) for probe in probes for dst in self.order]
        answers = self.cluster.probe_round({src: [u for _, _, u in urls] for src in self.order})
        observed: list[dict[Pair, bool]] = [{} for _ in probes]
        details: list[dict[Pair, str]] = [{} for _ in probes]
        for src in self.order:
            for n, result in enumerate(answers[src]):
                i, dst = divmod(n, len(self.order))
                pair = (src, self.order[dst])
                observed[i][pair] = bool(result["ok"])
                details[i][pair] = f"connected ({result['reply']})" if result["ok"] else result["error"]
                if result["ok"] and result["reply"].split()[0] != pair[1].split("/")[1]:
                    details[i][pair] = f"answered by the wrong pod: {result['reply']!r}"
        comparisons = [compare(self.order, p.expected, o) for p, o in zip(probes, observed, strict=True)]
        for i, comparison in enumerate(comparisons):
            comparison.off_diagonal += [pair for pair, text in details[i].items()
                                        if text.startswith("answered by the wrong pod")
                                        and pair not in comparison.off_diagonal]
        return _Round(observed, details, comparisons)

    def probe(self, probes: Sequence[Probe], deadline: float) -> _Round:
        """Probe until every probe matches or `deadline` passes; the last round (numbered, timed)."""
        rounds = 0
        while True:
            rounds += 1
            started = time.monotonic()
            result = self._round(probes)
            result.started, result.count = started, rounds
            if all(c.matches for c in result.comparisons) or time.monotonic() > deadline:
                return result
            time.sleep(POLL_PAUSE)

    def _all_allowed(self) -> list[Probe]:
        """One probe per served (port, protocol) expecting every pair to connect."""
        assert self.state.servers is not None
        row = tuple(ALLOWED for _ in self.order)
        return [Probe(port, proto, {src: row for src in self.order})
                for port, proto in self.state.servers if proto not in self.skip_reasons]

    def baseline(self, seconds: float) -> str | None:
        """None when, with no policy, every pod reaches every other on every served port; else the diff."""
        probes = self._all_allowed()
        if not probes:
            return None
        result = self.probe(probes, time.monotonic() + seconds)
        for probe, observed, comparison in zip(probes, result.observed, result.comparisons, strict=True):
            if not comparison.matches:
                return (f"baseline {probe.port}/{probe.protocol} (no policy) does not connect everywhere:\n"
                        + render(self.order, probe.expected, observed))
        return None

    def run_step(self, step: Step, report: CaseReport) -> None:
        """Apply a step's actions, then probe all its probes together."""
        for action in step.actions:
            self.state.act(action)
        started = time.monotonic()
        active = [p for p in step.probes if p.protocol not in self.skip_reasons]
        for probe in step.probes:
            if probe.protocol in self.skip_reasons:
                report.probes.append(ProbeReport(step.number, probe.port, probe.protocol, "skipped",
                                                 detail=self.skip_reasons[probe.protocol]))
        if not active:
            return
        result = self.probe(active, started + POLL_SECONDS)
        settled = result.started - started
        for i, probe in enumerate(active):
            comparison = result.comparisons[i]
            status = "passed" if comparison.matches else "failed"
            detail = ""
            if not comparison.matches:
                cells = [f"  {s} -> {d}: expected {_word(probe.expected[s][self.order.index(d)])}, "
                         f"got {result.details[i][(s, d)]}" for s, d in comparison.off_diagonal]
                detail = "\n".join(cells) + "\n" + render(self.order, probe.expected, result.observed[i])
            if comparison.diagonal:
                pods = ", ".join(f"{src} {'connected' if result.observed[i][(src, src)] else 'blocked'}"
                                 for src in comparison.diagonal)
                report.notes.append(f"step {step.number} {probe.port}/{probe.protocol}: to itself {pods}, "
                                    "unlike the expectation (ignored as upstream does: loopback through "
                                    "the pod's own Service never leaves the pod)")
            report.probes.append(ProbeReport(step.number, probe.port, probe.protocol, status, result.count,
                                             settled, detail))

    def run_case(self, case: Case) -> CaseReport:
        """Run one case from a checked baseline, and reset afterwards whatever happened."""
        report = CaseReport(case)
        started = time.monotonic()
        try:
            self.use_servers(case.servers)
            started = time.monotonic()
            problem = self.baseline(SETUP_SECONDS)
            if problem is not None:
                report.error = problem
                return report
            for step in case.steps:
                try:
                    self.run_step(step, report)
                except (CaseFileError, VelvetError) as exc:
                    report.error = f"step {step.number}: {exc}"
                    return report
        except (ClusterError, VelvetError) as exc:
            report.error = str(exc)
        finally:
            try:
                self.state.reset()
            except VelvetError as exc:
                report.error = (report.error or "") + f"; reset failed: {exc}"
            report.seconds = time.monotonic() - started
        return report


def _word(cell: str) -> str:
    """'connect' or 'blocked' for an expected cell."""
    return "connect" if cell == ALLOWED else "blocked"


def skip_reason(features: Sequence[Mapping[str, Any]]) -> str:
    """Why SCTP probes are skipped, from the product's kernel feature check."""
    sctp = next((f for f in features if str(f.get("name", "")).upper() == "SCTP"), None)
    if sctp is not None and not sctp.get("ok"):
        why = re.search(r"\(([^)]*)\)", str(sctp.get("detail", "")))
        return "SCTP is not supported by this kernel" + (f" ({why[1]})" if why else "")
    return "the echo server does not serve SCTP"
