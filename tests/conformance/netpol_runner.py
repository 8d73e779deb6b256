"""Replay NetworkPolicy cases on a sandbox: build the model, apply each step, probe, compare, reset.

Decisions (see run_netpol.py's help): probes go through each destination's Service ClusterIP (or the
pod IP with via="pod"); a mismatching step is re-probed for up to POLL_SECONDS, as upstream polls;
every blocked cell of the last round must also show as a POLICY_DENIED drop of that pair in the flow
log; the diagonal (pod to itself, looping back inside the pod) is reported but never fails a case, as
upstream ignores it; probes of a protocol whose kernel feature `velvet status` reports missing are
skipped; every case starts from a checked baseline (no policy: everything connects), and ends with a
reset (policies deleted, labels restored).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from netpol_cases import ALLOWED, BLOCKED, Case, CaseFileError, Model, Probe, Step
from netpol_cluster import Cluster, ClusterError
from netpol_flows import POLICY_DENIED, Cell, DropLog
from netpol_matrix import Comparison, Pair, compare, render
from netpol_state import ModelState

from velvet.errors import VelvetError

POLL_SECONDS = 10.0
POLL_PAUSE = 0.1
SETUP_SECONDS = 30.0
DROP_SECONDS = 5.0  # how long a blocked cell's drop may take to reach the flow log
PROBED = ("TCP", "UDP")  # what the echo server and the prober speak


@dataclass(frozen=True)
class Unsupported:
    """A protocol this kernel cannot carry, as `velvet status -o json` reports its kernel feature."""

    feature: str  # the feature's name in the status ("SCTP")
    detail: str  # what the product's check saw


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
    skipped_for: str = ""  # the missing kernel feature that made it skip
    drops: int = 0  # blocked cells the flow log showed as POLICY_DENIED drops


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
    mark: int = 0  # the drop log's position when the round started


class Runner:
    """Runs cases one after another on one sandbox, rebuilding pods only when the servers change."""

    def __init__(self, cluster: Cluster, model: Model, unsupported: Mapping[str, Unsupported], drops: DropLog,
                 via: str, say: Callable[[str], None]) -> None:
        """Use `cluster`; probes of a protocol in `unsupported` are skipped; blocked cells are looked up
        in `drops`."""
        self.cluster = cluster
        self.state = ModelState(cluster, model)
        self.unsupported = unsupported
        self.drops = drops
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
            started, mark = time.monotonic(), self.drops.mark()
            result = self._round(probes)
            result.started, result.count, result.mark = started, rounds, mark
            if all(c.matches for c in result.comparisons) or time.monotonic() > deadline:
                return result
            time.sleep(POLL_PAUSE)

    def _all_allowed(self) -> list[Probe]:
        """One probe per served (port, protocol) expecting every pair to connect."""
        assert self.state.servers is not None
        row = tuple(ALLOWED for _ in self.order)
        return [Probe(port, proto, {src: row for src in self.order})
                for port, proto in self.state.servers if proto in PROBED]

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

    def _probeable(self, step: Step, report: CaseReport) -> list[Probe]:
        """The step's probes that can run; the others go to the report as skipped or failed, saying why."""
        active = []
        for probe in step.probes:
            missing = self.unsupported.get(probe.protocol)
            if missing is not None:
                report.probes.append(ProbeReport(
                    step.number, probe.port, probe.protocol, "skipped", skipped_for=missing.feature,
                    detail=f"this kernel lacks {missing.feature} ({missing.detail})"))
            elif probe.protocol not in PROBED:
                report.probes.append(ProbeReport(
                    step.number, probe.port, probe.protocol, "failed",
                    detail=f"this kernel has {probe.protocol}, but the echo server and the prober speak only "
                           f"{' and '.join(PROBED)}: the probe cannot be checked"))
            else:
                active.append(probe)
        return active

    def _blocked_without_drop(self, probe: Probe, observed: Mapping[Pair, bool], said: Mapping[Pair, str],
                              mark: int, started: float) -> tuple[int, str]:
        """(blocked cells the flow log explains, a line per blocked cell without a POLICY_DENIED drop: what
        the prober said, and the pair's other drops since the round began; then where the first source's
        drops got to in the flow pipeline)."""
        wanted: list[Cell] = [(s, d, probe.port, probe.protocol)
                              for s in self.order for j, d in enumerate(self.order)
                              if s != d and probe.expected[s][j] == BLOCKED and not observed[(s, d)]]
        missing = self.drops.unexplained(wanted, mark, DROP_SECONDS)
        if not missing:
            return len(wanted), ""
        lines = []
        for (s, d, _, _), others in sorted(missing.items()):
            lines.append(f"  {s} -> {d}: blocked ({said[(s, d)]}), but the flow log has no {POLICY_DENIED} "
                         f"drop of it" + (f" (dropped as {', '.join(others)})" if others else ""))
            others_of_source = self.drops.involving(s, d, mark, self.state.pod_ips.get(s, ""))
            lines += [f"    a drop of {s} since the round began: {x.source} -> {x.destination} {x.port}/"
                      f"{x.protocol} {x.reason}" + ("" if x.source == s else f" (from {x.source_ip})")
                      for x in others_of_source]
        first = min(missing)[0]  # the flow pipeline's view, once: all of a round's drops travel together
        since = time.time() - (time.monotonic() - started)
        lines += [f"  {line}" for line in self.drops.accounts(self.state.pod_ips.get(first, ""), since)]
        still = self.drops.unexplained(wanted, mark, 0.0)
        lines.append(f"  after these checks, {len(missing) - len(still)} of the {len(missing)} missing "
                     "drop(s) came")
        problems = self.drops.problems()
        if problems:
            lines.append(f"  flow follower: {problems}")
        return len(wanted) - len(missing), "\n".join(lines)

    def run_step(self, step: Step, report: CaseReport) -> None:
        """Apply a step's actions, then probe all its probes together; blocked cells need their drops."""
        for action in step.actions:
            self.state.act(action)
        started = time.monotonic()
        active = self._probeable(step, report)
        if not active:
            return
        result = self.probe(active, started + POLL_SECONDS)
        settled = result.started - started
        for i, probe in enumerate(active):
            comparison = result.comparisons[i]
            details = []
            if not comparison.matches:
                details += [f"  {s} -> {d}: expected {_word(probe.expected[s][self.order.index(d)])}, "
                            f"got {result.details[i][(s, d)]}" for s, d in comparison.off_diagonal]
            explained, unexplained = self._blocked_without_drop(probe, result.observed[i], result.details[i],
                                                                 result.mark, result.started)
            if unexplained:
                details.append(unexplained)
            if not comparison.matches:
                details.append(render(self.order, probe.expected, result.observed[i]))
            if comparison.diagonal:
                pods = ", ".join(f"{src} {'connected' if result.observed[i][(src, src)] else 'blocked'}"
                                 for src in comparison.diagonal)
                report.notes.append(f"step {step.number} {probe.port}/{probe.protocol}: to itself {pods}, "
                                    "unlike the expectation (ignored as upstream does: loopback through "
                                    "the pod's own Service never leaves the pod)")
            status = "failed" if details else "passed"
            report.probes.append(ProbeReport(step.number, probe.port, probe.protocol, status, result.count,
                                             settled, "\n".join(details), drops=explained))

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


def unsupported_protocols(features: Sequence[Mapping[str, Any]]) -> dict[str, Unsupported]:
    """Protocols to skip: those whose kernel feature `velvet status -o json` reports not ok (only SCTP
    has one); a status without the SCTP feature is an error, not a guess."""
    sctp = next((f for f in features if f.get("name") == "SCTP"), None)
    if sctp is None or not isinstance(sctp.get("ok"), bool):
        raise ClusterError("`velvet status -o json` reports no SCTP kernel feature (name, ok): "
                           "cannot tell whether SCTP probes can run")
    return {} if sctp["ok"] else {"SCTP": Unsupported("SCTP", str(sctp.get("detail", "")))}
