"""Tests of when the programs wake a ring buffer's reader (lib/common.h, ringbuf_submit_lazy): with
BPF_PROG_TEST_RUN of lxc_from_pod dropping packets (one flow event each) and an edge-triggered epoll
on the events ring, as the agent's reader waits on it. Needs root."""

from __future__ import annotations

import os
import select
from collections.abc import Iterator

import pytest
from fixtures_datapath import Loaded, loaded
from packets import tcp

from velvet.datapath.structs import FLOW_EVENT_DTYPE
from velvet.datapath.testrun import skb_ctx, test_run
from velvet.datapath.views import EventsRing

pytestmark = [pytest.mark.privileged, pytest.mark.skipif(os.geteuid() != 0, reason="needs root and BPF")]

RECORD = (FLOW_EVENT_DTYPE.itemsize + 8 + 7) // 8 * 8  # a record and its header in the ring


@pytest.fixture
def lxc() -> Iterator[Loaded]:
    """lxc.bpf.o with fresh maps: no endpoints, so every packet from a pod is dropped and reported."""
    with loaded("lxc") as obj:
        yield obj


def test_the_reader_is_woken_once_per_quarter_of_the_ring_not_per_record(lxc: Loaded) -> None:
    """Test that flow events wake a waiting reader when the pending records cross a quarter of the ring,
    neither before (a wakeup is an interrupt, a VM exit on a virtual machine) nor for every record after,
    and that every record is still read."""
    ring = lxc.views.get(EventsRing)
    quarter = lxc.obj.map("events").info.max_entries // 4 // RECORD  # records that fill a quarter
    drop = tcp("10.244.9.9", "10.244.0.20", 1, 80)  # no endpoint behind the veth: dropped, one event
    prog = lxc.obj.program("lxc_from_pod")
    waiting = select.epoll()
    waiting.register(ring.ring.fileno(), select.EPOLLIN | select.EPOLLET)
    try:
        test_run(prog, drop, ctx=skb_ctx(), repeat=quarter - 50)
        assert waiting.poll(0) == []
        test_run(prog, drop, ctx=skb_ctx(), repeat=100)
        assert len(waiting.poll(0)) == 1
        test_run(prog, drop, ctx=skb_ctx(), repeat=quarter // 2)  # still short of half the ring
        assert waiting.poll(0) == []
    finally:
        waiting.close()
    assert len(ring.read(4 * quarter)) == quarter - 50 + 100 + quarter // 2
