"""`velvet agent`: serve the API first, then import, build and start the agent behind it.

Only the API server is imported before the socket answers; the datapath, the controllers and the
store are imported and loaded in a thread while `/v1/health` already answers (`starting.StartingApi`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from velvet.agent import malloc
from velvet.agent.config import AgentConfig
from velvet.agent.starting import StartingApi, keep_the_loop_responsive
from velvet.api.server import build_app, serve_unix
from velvet.paths import AgentPaths

if TYPE_CHECKING:
    from velvet.agent.node import Agent

log = logging.getLogger("velvet.agent")


async def serve_while_starting(config: AgentConfig, fake_datapath: bool) -> None:
    """Serve the API at once; build and run the agent behind it until SIGTERM/SIGINT."""
    api = StartingApi()
    runner = await serve_unix(build_app(api), AgentPaths(config.sandbox, config.node_dir).socket)
    log.info("API answering while the agent starts")
    keep_the_loop_responsive()  # before the store loads: no full collection over its growing heap
    try:
        agent = await asyncio.to_thread(_build, config, fake_datapath)
    except BaseException as exc:
        api.failed(exc)
        await runner.cleanup()
        raise
    from velvet.agent.daemon import run_agent  # imported by _build already

    await run_agent(agent, api, runner)


def _build(config: AgentConfig, fake_datapath: bool) -> Agent:
    """Import the agent's modules and build it (in a thread: the loop answers health meanwhile)."""
    from velvet.agent.daemon import build_agent

    return build_agent(config, fake_datapath)


def main(config: AgentConfig, *, fake_datapath: bool = False) -> None:
    """Run an agent with the kernel datapath (or the in-memory fake, for unprivileged trials)."""
    malloc.tune()  # before the loop's threads exist
    asyncio.run(serve_while_starting(config, fake_datapath))
