"""The agent's API handlers: state work runs on one worker thread, the event loop stays free.

Everything that reads or changes the store, the controllers or the datapath runs on a single
"state" thread, one call at a time, so a big apply or a long policy compile never stalls the loop:
`/v1/health`, flow queries and streams, and /metrics keep answering meanwhile. Flows live on the
loop (the ring buffer is read there), so flow queries never wait for the worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from velvet.agent import queries
from velvet.agent.node import Agent, Dirty
from velvet.errors import NotFound
from velvet.observe.filters import FlowQuery
from velvet.observe.pipeline import event_types
from velvet.runtime.monitor import EventQuery
from velvet.sources.delta import Delta

T = TypeVar("T")
PROGRAM_WAIT_SECONDS = 60.0


class AgentHandlers:
    """Implements the API's `AgentApi` over an `Agent`; also owns what the reconcile loop must do next."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.dirty = Dirty()
        self.wake = asyncio.Event()
        self.waited = asyncio.Event()  # a request waits for the next pass: it starts without the debounce
        self.marked = self.reconciled = agent.store.version  # store versions: in `dirty`, programmed
        self._progress = asyncio.Condition()
        self.http_address: str | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="velvet-state")
        self._queued = 0

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the state worker, after every call queued before it."""
        self._queued += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)
        finally:
            self._queued -= 1

    @property
    def idle(self) -> bool:
        """No state work is queued or running."""
        return self._queued == 0

    def close(self) -> None:
        """Finish the queued state work and stop the worker."""
        self._worker.shutdown(wait=True)

    def mark(self, delta: Delta) -> None:
        """A store change: make what it touches dirty and wake the reconcile loop."""
        Agent.mark(self.dirty, delta)
        self.marked = max(self.marked, delta.obj.metadata.resource_version)
        self.wake.set()

    def take_dirty(self) -> tuple[Dirty, int]:
        """What the next reconcile pass must do, and the store version it brings the datapath to."""
        dirty, self.dirty = self.dirty, Dirty()
        return dirty, self.marked

    async def passed(self, version: int) -> None:
        """A reconcile pass brought the datapath to store `version`."""
        async with self._progress:
            self.reconciled = max(self.reconciled, version)
            self._progress.notify_all()

    async def programmed(self, version: int) -> bool:
        """Wait until a reconcile pass has covered store `version`; False after PROGRAM_WAIT_SECONDS."""
        if self.reconciled < version:
            self.waited.set()
        async with self._progress:
            try:
                await asyncio.wait_for(self._progress.wait_for(lambda: self.reconciled >= version),
                                       PROGRAM_WAIT_SECONDS)
            except TimeoutError:
                return False
        return True

    def _policy_changed(self) -> None:
        self.dirty.policy = True
        self.wake.set()

    # -- AgentApi ---------------------------------------------------------------------------------

    async def health(self) -> Any:
        """Answered on the loop: it must not wait behind state work."""
        return self.agent.health()

    async def status(self) -> Any:
        """`velvet status`: the state part from the worker, flows and listeners from the loop."""
        answer = await self.run(queries.status, self.agent)
        address = self.http_address
        answer["flows"] = self.agent.flows.status()
        if self.agent.monitors_started:
            answer["processes"] = self.agent.processes.status()
            answer["enforcement"] = self.agent.guard.status()
        else:  # attaching and scanning /proc on another thread: nothing of theirs to show as done yet
            answer["agent"]["starting"] = ["processes", "enforcement"]
            answer["processes"] = {"starting": True, "attached": False, "error": ""}
            answer["enforcement"] = {"starting": True, "attached": False, "error": ""}
        answer["tracing"] = self.agent.tracing.status()
        answer["http"] = None if address is None else {
            "address": address, "netns": self.agent.config.metrics_netns or "agent",
            "metrics": f"http://{address}/metrics", "ui": f"http://{address}/ui/"}
        return answer

    async def apply(self, documents: list[Mapping[str, str]]) -> Any:
        """velvet apply: answered once the datapath has the change, with the services that do not fit."""
        answer = await self.run(self.agent.apply, documents)
        services = set(answer.pop("services"))
        if not await self.programmed(answer.pop("version")):
            answer["warnings"].append(f"not yet programmed after {PROGRAM_WAIT_SECONDS:.0f} s: "
                                      "see velvet status")
        problems = await self.run(self.agent.services.problems)
        answer["problems"] = {key: why for key, why in problems.items() if key in services}
        return answer

    async def delete(self, documents: list[Mapping[str, str]], grace_seconds: int | None) -> Any:
        """velvet delete: answered once the datapath no longer has what was deleted."""
        answer = await self.run(self.agent.delete, documents, grace_seconds)
        await self.programmed(answer.pop("version"))
        return answer

    async def get_objects(self, kind: str, namespace: str | None, name: str | None) -> Any:
        """velvet get."""
        return await self.run(self.agent.get_objects, kind, namespace, name)

    async def list_node_pods(self) -> Any:
        """The kubelet's list of this node's pods."""
        return await self.run(self.agent.list_node_pods)

    async def add_endpoint(self, namespace: str, name: str, report: Mapping[str, Any]) -> Any:
        """CNI ADD; the endpoint's policy is compiled on the next reconcile pass."""
        answer = await self.run(self.agent.add_endpoint, namespace, name, report)
        self._policy_changed()
        return answer

    async def report_pod(self, namespace: str, name: str, report: Mapping[str, Any]) -> Any:
        """The kubelet's pod status report."""
        return await self.run(self.agent.report_pod, namespace, name, report)

    async def pod_gone(self, namespace: str, name: str) -> Any:
        """The kubelet finished a pod."""
        answer = await self.run(self.agent.pod_gone, namespace, name)
        self._policy_changed()
        return answer

    async def cni(self, request: Mapping[str, Any]) -> Any:
        """A call of velvet-cni (ADD, DEL, CHECK, GC, STATUS), answered once the datapath has it."""
        return await self.run(self.agent.cni_call, request)

    async def query(self, what: str, params: Mapping[str, str]) -> Any:
        """Named read-only queries; flows are answered on the loop, the rest on the worker."""
        if what == "flows":
            return self.agent.flows.query(FlowQuery.from_params(params))
        if what == "process_events":
            return self.agent.guard.process_events(EventQuery.from_params(params))
        if what == "enforcement_events":
            return self.agent.guard.query(params)
        return await self.run(queries.query, self.agent, what, params)

    def stream(self, what: str, params: Mapping[str, str]) -> AsyncIterator[Any]:
        """Named streams: flows (filtered like observe) or raw datapath events."""
        if what == "flows":
            return self.agent.flows.stream(FlowQuery.from_params(params))
        if what == "events":
            return self.agent.flows.stream_events(event_types(params.get("type", "")))
        if what == "process_events":
            return self.agent.guard.stream_process_events(EventQuery.from_params(params))
        raise NotFound(f"unknown stream {what!r}")
