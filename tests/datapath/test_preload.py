"""Test that the BPF objects the agent loads while its store loads are the ones its start attaches.

`daemon.build_agent` preloads the datapath's objects and proc.bpf.o on a thread (the kernel's verifier
runs without the GIL while the store decodes); `start` must not load them again.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_datapath import remove_proc_source

from velvet.datapath import bpfobject
from velvet.datapath.kernel import OBJECTS, KernelDatapath
from velvet.runtime.source import KernelProcSource
from velvet.system import mounts

pytestmark = [pytest.mark.privileged]


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of every object file loaded over pins from now on."""
    seen: list[str] = []
    real = bpfobject.load_over_pins

    def counting(path: Path, *args: object, **kwargs: object) -> bpfobject.BpfObject:
        seen.append(path.stem.split(".")[0])
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    for module in ("velvet.datapath.kernel", "velvet.runtime.source"):
        monkeypatch.setattr(f"{module}.load_over_pins", counting)
    return seen


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    path = mounts.ensure_bpffs() / f"velvet-test-preload-{secrets.token_hex(4)}"
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_a_preloaded_datapath_starts_on_the_objects_it_loaded(pin_dir: Path, loads: list[str]) -> None:
    """Test that start() after preload() loads nothing again, keeps the preloaded objects and serves
    its maps."""
    datapath = KernelDatapath(pin_dir, cgroup=None, uplink=None)
    try:
        datapath.preload()
        preloaded = dict(datapath.objects)
        datapath.start()
        assert sorted(loads) == sorted(OBJECTS)
        assert datapath.objects == preloaded
        assert datapath.read("lb4_services") == {}
    finally:
        datapath.close()


def test_a_preloaded_process_source_starts_on_the_object_it_loaded(pin_dir: Path, loads: list[str]) -> None:
    """Test that the process source's start() after preload() loads proc.bpf.o no second time."""
    cgroup = mounts.cgroup2_mount() / f"velvet-test-preload-{secrets.token_hex(4)}"
    cgroup.mkdir()
    source = KernelProcSource(pin_dir, cgroup)
    try:
        source.preload()
        source.start()
        assert loads == ["proc"]
    finally:
        remove_proc_source(source, pin_dir)
        cgroup.rmdir()
