"""The node's runtime enforcement as the agent runs it: the guard's rules in force, its events, its status.

`Enforcer.set_rules` is the one way in for rules (the policy compiler's output); a bad rule raises
InvalidRule and the rules in force stay. A kernel that refuses the programs leaves the agent running
without enforcement: one error line in the log, `velvet status` says why, and `set_rules` refuses with
that reason rather than pretend. Call every method but `start` from the agent's event loop thread.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from velvet.errors import DatapathError, VelvetError
from velvet.runtime.guard import GuardSource, RuleWrite
from velvet.runtime.guard_events import GuardEvents
from velvet.runtime.guard_rules import DenyRule
from velvet.runtime.monitor import EventQuery, ProcessMonitor
from velvet.runtime.process import Json

log = logging.getLogger("velvet.runtime")
FOLLOWER_QUEUE = 4096


class Enforcer:
    """Rules in, denials and audits out (Tetragon-shaped, with the process monitor's processes)."""

    def __init__(self, source: GuardSource | None, monitor: ProcessMonitor, node_name: str) -> None:
        """Enforcement through `source` (None: none on this node); actions counted with the monitor's."""
        self.source = source
        self.events = GuardEvents(node_name, monitor)
        self.rules: list[DenyRule] = []
        self.error = "" if source is not None else "runtime enforcement is off on this node"
        self.actions = monitor.policy_actions  # one velvet_policy_actions_total for every hook
        self.monitor = monitor
        self._followers: set[_Follower] = set()

    def start(self) -> None:
        """Load and attach the guard (rules written before an agent restart stay enforced meanwhile)."""
        if self.source is None:
            return
        try:
            self.source.start()
        except VelvetError as exc:
            log.error("no runtime enforcement: %s", exc)
            self.error = str(exc)
            self.source.close()
            self.source = None

    def set_rules(self, rules: list[DenyRule], policy_names: Mapping[int, str]) -> RuleWrite:
        """Enforce exactly `rules`; `policy_names` names each policy index in events."""
        if self.source is None:
            raise DatapathError(f"cannot enforce runtime rules: {self.error}")
        written = self.source.set_rules(rules)
        self.rules = list(rules)
        self.events.policy_names = dict(policy_names)
        return written

    def filenos(self) -> list[int]:
        """The guard's pollable fds."""
        return self.source.filenos() if self.source is not None else []

    def poll(self, max_records: int = 4096) -> int:
        """Take up to `max_records` pending denials and audits; how many were taken."""
        if self.source is None:
            return 0
        batch = self.source.read(max_records)
        if len(batch):
            # the exec of every process in `batch` is in proc_events already: take it in first, so the
            # events name the binary as executed (not /proc's resolved one)
            while self.monitor.poll():
                pass
        made = self.events.ingest(batch)
        for follower in self._followers:
            for event in made:
                if _wanted(event, follower.query):
                    follower.offer(event)
        for event in made:
            body = event["process_tracepoint"]
            pod = body["process"].get("pod") or {}
            self.actions.labels(namespace=pod.get("namespace", ""), pod=pod.get("name", ""),
                                policy=body["policy_name"] or str(body["policy_index"]),
                                action=body["action"]).inc()
        return len(made)

    def query(self, params: Mapping[str, str]) -> list[Json]:
        """The last `last` (20) events of `namespace` and `pod` (glob); a bad `last` raises ValueError."""
        last = int(params.get("last", 20))
        if last < 0:
            raise ValueError(f"last must be >= 0, not {last}")
        return self.events.query(last=last, namespace=params.get("namespace", ""), pod=params.get("pod", ""))

    def process_events(self, query: EventQuery) -> list[Json]:
        """`velvet events`: the process monitor's events and the denials and audits that `query` wants,
        merged by time, the last `query.last`."""
        found = self.monitor.query(query) + [e for e in self.events.events if _wanted(e, query)]
        found.sort(key=lambda e: str(e.get("time", "")))
        return found[-query.last:] if query.last else []

    async def stream_process_events(self, query: EventQuery) -> AsyncGenerator[Json]:
        """`velvet events --follow`: the stored events `process_events` gives, then new process events
        and denials as they come (a follower too slow for the denials loses them, as the monitor's)."""
        for stored in self.process_events(query):
            yield stored
        follower = _Follower(query)
        merged = follower.queue
        self._followers.add(follower)

        async def pump() -> None:
            async for event in self.monitor.stream(EventQuery(query.types, query.pod, query.namespace, 0)):
                await merged.put(event)
            await merged.put(None)

        task = asyncio.create_task(pump())
        try:
            while (item := await merged.get()) is not None:
                yield item
                if follower.lost and merged.empty():
                    yield {"lost_events": {"source": "GUARD_EVENTS_QUEUE", "num_events_lost": follower.lost}}
                    follower.lost = 0
        finally:
            self._followers.discard(follower)
            task.cancel()

    def status(self) -> Json:
        """For `velvet status`: attached or why not, the rules in force with their matches, events lost."""
        if self.source is None:
            return {"attached": False, "error": self.error, "rules": [], "lost": 0, "programs": []}
        matches = self.source.matches()
        slots = self.source.slots
        rules: list[Any] = [
            {"policy_index": r.policy, "policy_name": self.events.policy_names.get(r.policy, ""),
             "hook": r.hook.name.lower(), "action": r.action.name.lower(),
             "matches": matches.get(slots[r], 0)}
            for r in self.rules if r in slots]
        return {"attached": True, "error": "", "rules": rules, "lost": self.source.lost(),
                "programs": self.source.programs()}

    def close(self) -> None:
        """Release the source (pinned links keep enforcing)."""
        if self.source is not None:
            self.source.close()


class _Follower:
    """One merged `velvet events --follow`: its query, a bounded queue, the denials it lost while full."""

    def __init__(self, query: EventQuery) -> None:
        self.query = query
        self.queue: asyncio.Queue[Json | None] = asyncio.Queue(FOLLOWER_QUEUE)
        self.lost = 0

    def offer(self, event: Json) -> None:
        """Queue a denial, or count it lost when the follower is too slow."""
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.lost += 1


def _wanted(event: Json, query: EventQuery) -> bool:
    """Whether a guard event (a `process_tracepoint`) is of the query's types, namespace and pod."""
    if query.types and "process_tracepoint" not in query.types:
        return False
    pod = event["process_tracepoint"]["process"].get("pod")
    if query.namespace and (pod is None or pod["namespace"] != query.namespace):
        return False
    return not query.pod or (pod is not None and fnmatch.fnmatchcase(pod["name"], query.pod))
