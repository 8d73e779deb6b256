"""An event loop in a background thread, like the agent's, so tests can call it with blocking clients."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from io import StringIO
from typing import Any, TypeVar

from velvet.logs import LOG_FORMAT, RepeatLimiter

T = TypeVar("T")


class BackgroundLoop:
    """A running event loop in a daemon thread; `run` waits for a coroutine's result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def close(self) -> None:
        """Stop the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@contextmanager
def agent_log() -> Iterator[StringIO]:
    """Everything logged meanwhile, as the agent writes it (repeats collapsed), in a string buffer."""
    text = StringIO()
    target = logging.StreamHandler(text)
    target.setFormatter(logging.Formatter(LOG_FORMAT))
    limiter = RepeatLimiter(target)
    root = logging.getLogger()
    root.addHandler(limiter)
    try:
        yield text
    finally:
        root.removeHandler(limiter)
        limiter.close()
