"""Fixtures of the datapath program tests: a freshly loaded object per test, its tables (written
through the agent's codecs, see seeding.py), and running a program on a frame with
BPF_PROG_TEST_RUN (needs root and a BPF-capable kernel).

What the programs keep for themselves (conntrack, affinity, counters, events) is read here from the
raw maps. Import the fixtures into a test module (`from fixtures_datapath import lxc, node`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from velvet.datapath import build
from velvet.datapath.bpfobject import BpfObject
from velvet.datapath.maps import Map
from velvet.datapath.structs import (
    Ct4Entry,
    Ct4Key,
    CtDir,
    Lb4AffinityKey,
    Lb4AffinityVal,
    MetricDir,
    MetricReason,
    ipv4,
)
from velvet.datapath.tablemaps import TableMaps
from velvet.datapath.testrun import TestRunResult, skb_ctx, test_run
from velvet.datapath.views import EventsRing, MapView, MetricsMap, Views, open_views
from velvet.runtime.source import PINNED_MAPS, KernelProcSource

TC_ACT_OK = 0
TC_ACT_SHOT = 2
TC_ACT_REDIRECT = 7
LO_IFINDEX = 1  # test_run's skb->dev without an ifindex in the context: the loopback device



def sh(*args: str) -> str:
    """Run a command (e.g. `ip`), fail the test if it fails, return its stdout."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, f"{args}: {proc.stderr}"
    return proc.stdout


def ct_key(saddr: str, daddr: str, sport: int, dport: int, proto: int, direction: CtDir) -> Ct4Key:
    """The ct4 key of a tuple in one direction."""
    return Ct4Key(saddr=ipv4(saddr), daddr=ipv4(daddr), sport=sport, dport=dport, proto=proto, dir=direction)


@dataclass
class Loaded:
    """A loaded object with its views and its tables."""

    obj: BpfObject
    views: Views
    tables: TableMaps

    def run(self, program: str, frame: bytes) -> TestRunResult:
        """Run a tc program once on a frame (skb->ifindex is LO_IFINDEX)."""
        return test_run(self.obj.program(program), frame, ctx=skb_ctx())

    def events(self) -> npt.NDArray[np.void]:
        """The flow events emitted since the last call."""
        return self.views.get(EventsRing).read()

    def packets(self, reason: int, direction: MetricDir) -> int:
        """Packets counted under a reason (MetricReason or DropReason) in a direction, over all CPUs."""
        counter = self.views.get(MetricsMap).totals().get((reason, direction))
        return counter.packets if counter is not None else 0

    def forwarded(self, direction: MetricDir) -> int:
        """Packets passed on in a direction."""
        return self.packets(MetricReason.FORWARDED, direction)

    def map(self, name: str) -> Map[Any, Any]:
        """A map, typed by its view (ct4, lb4_affinity, ...: what the programs write themselves)."""
        view = self.views.by_name[name]
        assert isinstance(view, MapView)
        return view.map

    def conntrack(self, saddr: str, daddr: str, sport: int, dport: int, proto: int,
                  direction: CtDir) -> Ct4Entry | None:
        """The ct4 entry of a tuple, or None (entries past their lifetime included)."""
        entry: Ct4Entry | None = self.map("ct4").lookup(ct_key(saddr, daddr, sport, dport, proto, direction))
        return entry

    def affinity(self, client: str, rev_nat_index: int) -> Lb4AffinityVal | None:
        """The backend the tc paths remember for a client address and frontend (lb4_affinity), or None."""
        value: Lb4AffinityVal | None = self.map("lb4_affinity").lookup(_affinity_key(client, rev_nat_index))
        return value

    def remember(self, client: str, rev_nat_index: int, backend_id: int, last_used_ns: int) -> None:
        """Stand in for an affinity the tc paths recorded at last_used_ns (CLOCK_MONOTONIC)."""
        self.map("lb4_affinity").update(_affinity_key(client, rev_nat_index),
                                        Lb4AffinityVal(last_used_ns=last_used_ns, backend_id=backend_id))


def _affinity_key(client: str, rev_nat_index: int) -> Lb4AffinityKey:
    """The lb4_affinity key of a client address (the tc paths key by address, not by netns cookie)."""
    return Lb4AffinityKey(client=ipv4(client), rev_nat_index=rev_nat_index, netns_cookie=0)


@contextmanager
def loaded(name: str) -> Iterator[Loaded]:
    """Load build/bpf/<name>.bpf.o with fresh (unpinned) maps."""
    with BpfObject.open(build.object_path(name)) as obj:
        obj.load()
        views = open_views(obj)
        try:
            yield Loaded(obj, views, TableMaps(views))
        finally:
            views.close()


@pytest.fixture
def lxc() -> Iterator[Loaded]:
    """lxc.bpf.o, loaded with empty maps."""
    with loaded("lxc") as obj:
        yield obj


@pytest.fixture
def node() -> Iterator[Loaded]:
    """node.bpf.o, loaded with empty maps."""
    with loaded("node") as obj:
        yield obj


def remove_proc_source(source: KernelProcSource, pin_dir: Path) -> None:
    """Detach a test's proc.bpf.o and remove its pins and pin directory, by exact name."""
    source.detach()
    for name in PINNED_MAPS:
        (pin_dir / name).unlink(missing_ok=True)
    for directory in (pin_dir / "links", pin_dir):
        if directory.exists():
            directory.rmdir()
