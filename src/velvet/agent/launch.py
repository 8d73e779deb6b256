"""`velvet agent`: serve the API first, then import, build and start the agent behind it.

Only the API server is imported before the socket answers; the datapath, the controllers and the
store are imported and loaded in a thread while `/v1/health` already answers (`starting.StartingApi`).
A node registered in etcd renews the lease its killed predecessor left from the process's first
moment (`velvet.agent.lease`, started by `velvet agent` before this module is imported) until the
state is adopted and its registry has taken the lease over: the node and its endpoints never leave the
other nodes' views, however long the start takes on a busy machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from velvet.agent import malloc
from velvet.agent.config import AgentConfig
from velvet.agent.starting import StartingApi, keep_the_loop_responsive
from velvet.api.server import build_app, serve_unix
from velvet.paths import AgentPaths

if TYPE_CHECKING:
    from velvet.agent.node import Agent
    from velvet.sources.etcd_nodes import PredecessorLease

log = logging.getLogger("velvet.agent")


async def serve_while_starting(config: AgentConfig, fake_datapath: bool,
                               predecessor: PredecessorLease | None = None) -> None:
    """Serve the API at once; build and run the agent behind it until SIGTERM/SIGINT (`predecessor`: the
    lease being renewed, stopped once the state is adopted)."""
    api = StartingApi()
    runner = await serve_unix(build_app(api), AgentPaths(config.sandbox, config.node_dir).socket)
    log.info("API answering while the agent starts")
    keep_the_loop_responsive()  # before the store loads: no full collection over its growing heap
    handed_over = asyncio.create_task(_hand_over(api, predecessor)) if predecessor else None
    try:
        agent = await asyncio.to_thread(_build, config, fake_datapath)
    except BaseException as exc:
        api.failed(exc)
        await runner.cleanup()
        raise
    from velvet.agent.daemon import run_agent  # imported by _build already

    try:
        await run_agent(agent, api, runner)
    finally:
        if handed_over is not None:
            handed_over.cancel()


async def _hand_over(api: StartingApi, predecessor: PredecessorLease) -> None:
    """Stop renewing the predecessor's lease once the state is adopted (the registry renews it since the
    start of `start_state`), or the start failed, or the agent stops."""
    try:
        with contextlib.suppress(Exception):  # a failed start: it is reported where it happened
            await api.state_adopted()
    finally:
        predecessor.stop()


def _build(config: AgentConfig, fake_datapath: bool) -> Agent:
    """Import the agent's modules and build it (in a thread: the loop answers health meanwhile)."""
    from velvet.agent.daemon import build_agent

    return build_agent(config, fake_datapath)


def main(config: AgentConfig, *, fake_datapath: bool = False,
         predecessor: PredecessorLease | None = None) -> None:
    """Run an agent with the kernel datapath (or the in-memory fake, for unprivileged trials)."""
    malloc.tune()  # before the loop's threads exist
    asyncio.run(serve_while_starting(config, fake_datapath, predecessor))
