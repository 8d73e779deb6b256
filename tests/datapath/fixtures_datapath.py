"""Fixtures of the datapath program tests: a freshly loaded object per test, its map views, and
running a program on a frame with BPF_PROG_TEST_RUN (needs root and a BPF-capable kernel).

Import the fixtures into a test module (`from fixtures_datapath import lxc, node  # noqa: F401`).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from velvet.datapath import build
from velvet.datapath.bpfobject import BpfObject
from velvet.datapath.testrun import TestRunResult, skb_ctx, test_run
from velvet.datapath.views import Views, open_views

TC_ACT_OK = 0
TC_ACT_SHOT = 2
TC_ACT_REDIRECT = 7
LO_IFINDEX = 1  # test_run's skb->dev without an ifindex in the context: the loopback device

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root and a BPF-capable kernel")


def sh(*args: str) -> str:
    """Run a command (e.g. `ip`), fail the test if it fails, return its stdout."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, f"{args}: {proc.stderr}"
    return proc.stdout


@dataclass
class Loaded:
    """A loaded object with its views."""

    obj: BpfObject
    views: Views

    def run(self, program: str, frame: bytes) -> TestRunResult:
        """Run a tc program once on a frame (skb->ifindex is LO_IFINDEX)."""
        return test_run(self.obj.program(program), frame, ctx=skb_ctx())

    def events(self) -> npt.NDArray[np.void]:
        """The flow events emitted since the last call."""
        return self.views.events.read()


@contextmanager
def loaded(name: str) -> Iterator[Loaded]:
    """Load build/bpf/<name>.bpf.o with fresh (unpinned) maps."""
    with BpfObject.open(build.object_path(name)) as obj:
        obj.load()
        views = open_views(obj)
        try:
            yield Loaded(obj, views)
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
