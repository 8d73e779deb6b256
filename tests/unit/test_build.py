"""Tests of the BPF build driver (clang and bpftool, no privileges): paths, staleness, errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from velvet.datapath import build
from velvet.errors import BuildError

SOURCE = """#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "shared.h"
char LICENSE[] SEC("license") = "GPL";
SEC("tc")
int prog(struct __sk_buff *skb) { return ANSWER; }
"""


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private SOURCE_DIR and build dir; vmlinux.h is copied from the real build when there is one."""
    src = tmp_path / "bpf"
    (src / "lib").mkdir(parents=True)
    out = tmp_path / "out"
    real = build.include_dir() / "vmlinux.h"
    if real.is_file():
        (out / "include").mkdir(parents=True)
        (out / "include" / "vmlinux.h").write_bytes(real.read_bytes())
    monkeypatch.setattr(build, "SOURCE_DIR", src)
    monkeypatch.setenv("VELVET_BUILD_DIR", str(out))
    return src


def test_that_the_build_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VELVET_BUILD_DIR", raising=False)
    assert build.build_dir() == Path(build.__file__).resolve().parents[3] / "build" / "bpf"
    monkeypatch.setenv("VELVET_BUILD_DIR", "/tmp/velvet-elsewhere")
    assert build.build_dir() == Path("/tmp/velvet-elsewhere")


def test_that_an_empty_source_dir_builds_nothing(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert build.build_all() == []
    assert build.main() == 0
    assert capsys.readouterr().out == ""


def test_that_objects_are_rebuilt_only_when_a_dependency_is_newer(
        tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tree / "shared.h").write_text("#define ANSWER 1\n")
    (tree / "demo.bpf.c").write_text(SOURCE)
    obj = build.object_path("demo")
    assert obj == build.build_dir() / "demo.bpf.o"
    assert (build.build_dir() / "include" / "vmlinux.h").is_file()
    built = obj.stat().st_mtime_ns
    assert build.build_all() == [obj]
    assert obj.stat().st_mtime_ns == built
    assert build.main() == 0
    assert capsys.readouterr().out == ""  # quiet when nothing changed
    (tree / "shared.h").write_text("#define ANSWER 2\n")
    os.utime(tree / "shared.h", ns=(built + 10**9, built + 10**9))
    assert build.object_path("demo").stat().st_mtime_ns != built


def test_that_a_clang_failure_raises_build_error_with_its_output(
        tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tree / "broken.bpf.c").write_text("int broken(void) { return undeclared_name; }\n")
    with pytest.raises(BuildError, match="undeclared_name") as failed:
        build.build_all()
    assert "broken.bpf.c" in failed.value.source
    assert not (build.build_dir() / "broken.bpf.o").exists()
    assert build.main() == 1
    assert "undeclared_name" in capsys.readouterr().err
