"""The flow log's side of a blocked cell: the drop `velvet observe` shows for a pair, and its reason.

A blocked cell passes only when the product also says why: a drop from the source pod to the
destination pod on the probed port and protocol whose `drop_reason_desc` is POLICY_DENIED, as
`velvet observe --type drop -o json` prints it. DropLog follows that command on every node for the whole
run (from the run's start, so nothing before it is mistaken for this run's drops).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from velvet.cli.runner import velvet_argv
from velvet.observe.codes import DropReason
from velvet.observe.filters import parse_time
from velvet.observe.format import lost_text
from velvet.paths import AgentPaths
from velvet.sandbox.naming import node_config

POLICY_DENIED = "POLICY_DENIED"  # Hubble's drop_reason_desc of a packet NetworkPolicy denied
DROP_POLICY_DENIED = int(DropReason.POLICY_DENIED)  # its number in the datapath's counters
_EXCEPTION = re.compile(r"[\w.]+(Error|Exception|Exit): ")  # a traceback's last line
REPLAY = 4095  # the flow store's capacity: replay everything since the start the follower may have missed

Cell = tuple[str, str, int, str]  # (source "ns/pod", destination "ns/pod", port, protocol)


@dataclass(frozen=True)
class Drop:
    """One drop flow: which pods, port and protocol, and the reason the product gives."""

    source: str
    destination: str
    port: int
    protocol: str
    reason: str
    source_ip: str = ""  # the addresses, whatever names the flow gives
    destination_ip: str = ""
    time: str = ""  # when the datapath saw it (RFC 3339, as Hubble writes it)

    @property
    def cell(self) -> Cell:
        """The matrix cell (and port/protocol) this drop stands for."""
        return self.source, self.destination, self.port, self.protocol


def _peer(endpoint: Any, ip: Any) -> str:
    """"ns/pod" of a Hubble endpoint; its IP address when it is not a pod (a Service, the world)."""
    if not isinstance(endpoint, Mapping) or not endpoint.get("pod_name"):
        return str(ip or "")
    return f"{endpoint.get('namespace', '')}/{endpoint['pod_name']}"


def parse_drop(line: str) -> Drop | None:
    """The Drop of one `observe -o json` line (a peer that is no pod named by its IP: never a cell of the
    matrix, but shown when a blocked cell lacks its drop); None for a line that is no L4 drop."""
    flow = json.loads(line)
    if not isinstance(flow, Mapping):
        return None
    l4 = flow.get("l4") or {}
    protocol = next((p for p in ("TCP", "UDP", "SCTP") if p in l4), "")
    ip = flow.get("IP") or {}
    source = _peer(flow.get("source"), ip.get("source"))
    destination = _peer(flow.get("destination"), ip.get("destination"))
    if not (protocol and source and destination):
        return None
    return Drop(source, destination, int(l4[protocol].get("destination_port", 0)), protocol,
                str(flow.get("drop_reason_desc", "")), str(ip.get("source") or ""),
                str(ip.get("destination") or ""), str(flow.get("time", "")))


def seconds_late(drop: Drop, now: float) -> float:
    """How long after the datapath saw it a drop reached the log (0 when its time is unknown)."""
    if not drop.time:
        return 0.0
    return now - parse_time(drop.time, 0) / 1e9


def unexplained(drops: Collection[Drop], wanted: Collection[Cell]) -> dict[Cell, list[str]]:
    """Wanted cells without a POLICY_DENIED drop: cell -> the other drop reasons seen for it."""
    denied = {d.cell for d in drops if d.reason == POLICY_DENIED}
    others: dict[Cell, list[str]] = {}
    for d in drops:
        if d.reason != POLICY_DENIED and d.reason not in others.setdefault(d.cell, []):
            others[d.cell].append(d.reason)
    return {cell: others.get(cell, []) for cell in wanted if cell not in denied}


def involving(drops: Collection[Drop], source: str, destination: str, source_ip: str = "") -> list[Drop]:
    """The drops from pod `source` or from its address `source_ip` whatever pod the flow names, if any
    (to any peer: a Service's address too), or from `destination` back to it, on any port, for any
    reason: what else the flow log shows of a cell it does not explain."""
    return [d for d in drops if d.source == source or (source_ip and d.source_ip == source_ip)
            or (d.source, d.destination) == (destination, source)]


def node_environments(sandbox: str, nodes: int) -> list[dict[str, str]]:
    """The environment of a `velvet` command aimed at each node's agent (one: the sandbox's own)."""
    if nodes == 1:
        return [dict(os.environ)]
    sockets = [AgentPaths(sandbox, f"node{k}" if k else "").socket for k in range(nodes)]
    return [{**os.environ, "VELVET_API_SOCKET": str(socket)} for socket in sockets]


def drop_followers(sandbox: str, nodes: int, since: str) -> list[tuple[list[str], dict[str, str]]]:
    """argv and environment of the `velvet observe --follow --type drop -o json` commands that together
    see every node's drops: one per node, each aimed at that node's agent (a drop is recorded by the
    node that drops: ingress at the destination's node, egress at the source's)."""
    argv = velvet_argv(sandbox, "observe", "--follow", "--type", "drop", "--since", since, "--last",
                       str(REPLAY), "-o", "json")
    return [(argv, env) for env in node_environments(sandbox, nodes)]


def _velvet(sandbox: str, env: Mapping[str, str], *args: str) -> str:
    """What a `velvet` command prints; VelvetCommandFailed with its stderr when it fails."""
    done = subprocess.run(velvet_argv(sandbox, *args), capture_output=True, text=True, env=dict(env),
                          timeout=60, check=False)
    if done.returncode:
        raise VelvetCommandFailed(f"`velvet {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout


class VelvetCommandFailed(Exception):
    """A `velvet` command the diagnostics ran failed."""


def agent_complaints(sandbox: str, node: int, most: int = 5) -> list[str]:
    """The last `most` warnings and errors of a node's agent log (tracebacks' last lines too)."""
    path = node_config(sandbox, node).names.log_file("agent")
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return [f"{path}: {exc.strerror}"]
    said = [line for line in lines if " WARNING " in line or " ERROR " in line or _EXCEPTION.match(line)]
    return said[-most:]


def policy_denied_packets(metrics: Any) -> int:
    """POLICY_DENIED packets the kernel counted (`velvet bpf metrics list -o json`), all CPUs."""
    return sum(v["packets"] for m in metrics["metrics"] if m["key"]["reason"] == DROP_POLICY_DENIED
               for v in m["value"])


class DropLog:
    """The drops of every node of one sandbox (`velvet observe --follow --type drop -o json`), collected
    from the start of the run."""

    def __init__(self, sandbox: str, nodes: int = 1) -> None:
        """Start following (drops since now; earlier ones of a reused sandbox are left out)."""
        since = datetime.now(UTC).isoformat()
        self._sandbox, self._nodes = sandbox, nodes
        self._procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env=env) for argv, env in drop_followers(sandbox, nodes, since)]
        self._drops: list[Drop] = []
        self._latest = 0.0  # the most seconds a drop took to reach the log
        self._said: list[str] = []
        self._ended: list[int | None] = []
        self._changed = threading.Condition()
        self._threads = [thread for proc in self._procs for thread in (
            threading.Thread(target=self._pump, args=(proc,), name="drop log", daemon=True),
            threading.Thread(target=self._listen, args=(proc,), name="drop log stderr", daemon=True))]
        for thread in self._threads:
            thread.start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        """Collect every drop line until the follower ends."""
        assert proc.stdout is not None
        for line in proc.stdout:
            if '"lost_events"' in line:  # Hubble's notice, in the JSON stream where the loss was seen
                with self._changed:
                    self._said.append(lost_text(json.loads(line)))
                continue
            try:
                drop = parse_drop(line) if line.strip() else None
                late = seconds_late(drop, time.time()) if drop is not None else 0.0
            except (ValueError, TypeError, AttributeError, KeyError) as exc:  # said, not a dead pump
                with self._changed:
                    self._said.append(f"unreadable line ({exc}): {line.strip()[:200]}")
                continue
            if drop is not None:
                with self._changed:
                    self._latest = max(self._latest, late)
                    self._drops.append(drop)
                    self._changed.notify_all()
        code = proc.wait()
        with self._changed:
            self._ended.append(code)
            self._changed.notify_all()

    def _listen(self, proc: subprocess.Popen[str]) -> None:
        """Keep what the follower says on stderr (errors)."""
        assert proc.stderr is not None
        for line in proc.stderr:
            with self._changed:
                self._said.append(line.strip())

    def mark(self) -> int:
        """A position in the log: `unexplained(..., since=mark)` looks only at drops that came after."""
        with self._changed:
            return len(self._drops)

    def unexplained(self, wanted: Collection[Cell], since: int, timeout: float) -> dict[Cell, list[str]]:
        """Wanted cells that got no POLICY_DENIED drop after `since` within `timeout` seconds (flows reach
        the log a little after the packets): cell -> other drop reasons seen for it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                missing = unexplained(self._drops[since:], wanted)
                left = deadline - time.monotonic()
                if not missing or left <= 0 or self._ended:
                    return missing
                self._changed.wait(left)

    def involving(self, source: str, destination: str, since: int, source_ip: str = "") -> list[Drop]:
        """`involving` of the drops after `since`."""
        with self._changed:
            return involving(self._drops[since:], source, destination, source_ip)

    def accounts(self, source_ip: str, since: float) -> list[str]:
        """Where the drops of a source since `since` (Unix time) got to, per node: the agent's flow store
        (asked, not followed), its flow counters, and the POLICY_DENIED packets the kernel counted against
        those this log holds."""
        after = datetime.fromtimestamp(since, UTC).isoformat()
        with self._changed:
            logged = sum(1 for d in self._drops if d.reason == POLICY_DENIED)
            lines = [f"drops reached this log up to {self._latest:.2f} s after the datapath saw them"]
        for k, env in enumerate(node_environments(self._sandbox, self._nodes)):
            try:
                stored = _velvet(self._sandbox, env, "observe", "--type", "drop", "--since", after,
                                 "--from-ip", source_ip, "-o", "json").splitlines()
                flows = json.loads(_velvet(self._sandbox, env, "status", "-o", "json"))["flows"]
                metrics = json.loads(_velvet(self._sandbox, env, "bpf", "metrics", "list", "-o", "json"))
            except VelvetCommandFailed as exc:
                lines.append(f"node {k}: {exc}")
                continue
            lines.append(f"node {k}: its flow store holds {len(stored)} drop(s) from {source_ip} since "
                         f"{after}; flows {flows}; its kernel counted {policy_denied_packets(metrics)} "
                         f"POLICY_DENIED packet(s), this log has {logged} of all nodes")
            lines += [f"node {k}'s agent said: {line}" for line in agent_complaints(self._sandbox, k)]
        return lines

    def problems(self) -> str:
        """What the followers said on stderr (lost events, errors), and whether one ended early."""
        with self._changed:
            said = "; ".join(line for line in self._said if line)
            ended = ", ".join(f"exit {code}" for code in self._ended)
        ended = f"velvet observe --follow ended ({ended})" if ended else ""
        return "; ".join(p for p in (ended, said) if p)

    def close(self) -> None:
        """Stop following."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for thread in self._threads:
            thread.join(timeout=10)
        for proc in self._procs:
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
