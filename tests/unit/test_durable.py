"""Test that durable files are private (0600 in 0700 directories) and replaced whole or not at all."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from velvet.durable import StorageError, private_dir, write_atomic
from velvet.errors import VelvetError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("open_umask")
def test_write_atomic_writes_a_private_file_and_syncs_file_and_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    target = tmp_path / "endpoints.json"
    write_atomic(target, b'{"a": 1}')
    assert target.read_bytes() == b'{"a": 1}'
    assert mode(target) == 0o600
    assert synced == ["file", "dir"]
    target.chmod(0o644)
    write_atomic(target, b'{"a": 2}')
    assert target.read_bytes() == b'{"a": 2}'
    assert mode(target) == 0o600  # the replacement is private even when the old file was not
    assert sorted(p.name for p in tmp_path.iterdir()) == ["endpoints.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "endpoints.json"
    write_atomic(target, b"old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError) as caught:
        write_atomic(target, b"new")
    assert isinstance(caught.value, VelvetError)
    assert str(caught.value) == f"cannot write {target}: No space left on device"
    assert caught.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["endpoints.json"]


@pytest.mark.usefixtures("open_umask")
def test_private_dir_creates_every_missing_level_0700_and_fixes_an_existing_one(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    leaf = tmp_path / "a" / "b" / "store"
    assert private_dir(leaf) == leaf
    assert [mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", leaf)] == [0o700] * 3
    assert mode(tmp_path) == 0o755  # an existing parent is not ours to change
    leaf.chmod(0o755)
    private_dir(leaf)
    assert mode(leaf) == 0o700
