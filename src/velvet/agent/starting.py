"""The API of an agent still starting: health answers at once, every other call waits for the agent.

A restarted agent serves its socket before it imports the datapath and controllers, loads its store
and adopts the pinned maps, so `/v1/health` answers within the interpreter's start; the datapath keeps
forwarding meanwhile from its pinned maps. A call that needs the agent's state (apply, get, status,
the kubelet's and velvet-cni's) waits until the agent has started, then is served as usual; only
the status is answered earlier, once the state is adopted and converged (`serve_status`): while the
process monitor and the enforcer start, it says so for them.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from velvet import __version__
from velvet.api.server import AgentApi

Json = Any
SWITCH_INTERVAL_SECONDS = 0.001
NEVER = 2**31 - 1


def keep_the_loop_responsive() -> None:
    """Let the event loop answer within milliseconds while the state worker computes.

    Measured with a 10k-service apply: the loop waited up to 5 ms per turn for the GIL (the default
    switch interval), and full cyclic collections over the store held it for 40-320 ms. The loop now
    takes the GIL within 1 ms, and full collections run only when no state work is queued
    (`collect_when_idle`); young generations are still collected as usual. Set before the agent is
    built: loading a 10k-service store ran full collections over the growing heap (0.3-0.7 s of 1.2-1.6 s).
    """
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, NEVER)


class StartingApi:
    """An `AgentApi` that serves health while starting and hands every call to the agent once ready."""

    def __init__(self) -> None:
        self.started_at = time.time()
        loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[AgentApi] = loop.create_future()
        self._status: asyncio.Future[AgentApi] = loop.create_future()  # the api the status comes from

    def serve_status(self, api: AgentApi) -> None:
        """The agent's state is adopted and converged: answer the status through `api` from now on
        (which says what is still starting)."""
        self._status.set_result(api)

    def ready(self, api: AgentApi) -> None:
        """The agent has started: serve every call through `api` from now on."""
        self._ready.set_result(api)
        if not self._status.done():
            self._status.set_result(api)

    def failed(self, exc: BaseException) -> None:
        """The agent could not start: calls waiting for it get this error."""
        for future in (self._ready, self._status):
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved here: nobody may be waiting

    async def state_adopted(self) -> None:
        """Wait until the state is adopted and converged (or the start failed: its error is raised)."""
        await asyncio.shield(self._status)

    async def _api(self) -> AgentApi:
        return await asyncio.shield(self._ready)

    async def health(self) -> Json:
        """Answered at once: while starting, with `starting: true`."""
        if self._ready.done() and self._ready.exception() is None:
            return await self._ready.result().health()
        return {"ok": True, "starting": True, "version": __version__, "started_at": self.started_at,
                "uptime_seconds": time.time() - self.started_at}

    async def status(self) -> Json:
        """`velvet status`, once the state is adopted and converged (`serve_status`)."""
        return await (await asyncio.shield(self._status)).status()

    async def apply(self, documents: list[Mapping[str, str]]) -> Json:
        """velvet apply, once started."""
        return await (await self._api()).apply(documents)

    async def delete(self, documents: list[Mapping[str, str]], grace_seconds: int | None) -> Json:
        """velvet delete, once started."""
        return await (await self._api()).delete(documents, grace_seconds)

    async def get_objects(self, kind: str, namespace: str | None, name: str | None) -> Json:
        """velvet get, once started."""
        return await (await self._api()).get_objects(kind, namespace, name)

    async def list_node_pods(self) -> Json:
        """The kubelet's list of this node's pods, once started."""
        return await (await self._api()).list_node_pods()

    async def add_endpoint(self, namespace: str, name: str, report: Mapping[str, Any]) -> Json:
        """CNI ADD, once started."""
        return await (await self._api()).add_endpoint(namespace, name, report)

    async def report_pod(self, namespace: str, name: str, report: Mapping[str, Any]) -> Json:
        """The kubelet's pod status report, once started."""
        return await (await self._api()).report_pod(namespace, name, report)

    async def pod_gone(self, namespace: str, name: str) -> Json:
        """The kubelet finished a pod, once started."""
        return await (await self._api()).pod_gone(namespace, name)

    async def cni(self, request: Mapping[str, Any]) -> Json:
        """A velvet-cni call, once started."""
        return await (await self._api()).cni(request)

    async def query(self, what: str, params: Mapping[str, str]) -> Json:
        """Named queries, once started."""
        return await (await self._api()).query(what, params)

    def stream(self, what: str, params: Mapping[str, str]) -> AsyncIterator[Json]:
        """Named streams; one asked for while starting begins once started."""
        if self._ready.done() and self._ready.exception() is None:
            return self._ready.result().stream(what, params)
        return self._stream_later(what, params)

    async def _stream_later(self, what: str, params: Mapping[str, str]) -> AsyncIterator[Json]:
        async for item in (await self._api()).stream(what, params):
            yield item
