"""Test how the agent's ring readers wait: only for their fds while idle, never spinning on them."""

from __future__ import annotations

import asyncio
import os

from velvet.agent.daemon import _readable


def test_a_ring_fd_is_watched_only_while_its_reader_waits() -> None:
    """Test that waiting for a readable fd returns at once and stops watching it: epoll reports a ring's fd
    on every turn of the loop while records are pending, which spun the loop while a reader let records
    gather between reads (issue 14)."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"x")  # stays readable: nobody reads the pipe

        async def wait() -> bool:
            await _readable([read_end], 60.0)
            return asyncio.get_running_loop().remove_reader(read_end)

        assert asyncio.run(asyncio.wait_for(wait(), 30.0)) is False
    finally:
        os.close(read_end)
        os.close(write_end)
