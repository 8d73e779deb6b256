"""The loop of a thread that publishes this node's records whenever asked, with backoff after a failure."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 5.0

log = logging.getLogger("velvet.endpoints")


def publish_when_asked(write: Callable[[], bool], dirty: threading.Event, stop: threading.Event,
                       errors: tuple[type[Exception], ...], what: str) -> None:
    """Run `write` each time `dirty` is set, until `stop` is. A failure (one of `errors`) is logged and
    tried again after a backoff (0.5 s doubling to 5 s); `write` returning True asks to run again after
    the first backoff (it lost a race with the view it reads and must look again)."""
    backoff = FIRST_BACKOFF_SECONDS
    while not stop.is_set():
        dirty.wait()
        dirty.clear()
        if stop.is_set():
            return
        try:
            again = write()
            backoff = FIRST_BACKOFF_SECONDS
            if again:
                stop.wait(FIRST_BACKOFF_SECONDS)
                dirty.set()
        except errors as err:
            log.warning("%s: %s; trying again in %.1f s", what, err, backoff)
            dirty.set()
            stop.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
