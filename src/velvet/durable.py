"""Private, durable files: state that holds secrets (pod env values) and must survive a crash whole.

`write_atomic` replaces a file so a reader sees either the old or the new content, never a torn mix,
and the new content is on disk when it returns; `private_dir` makes a directory only its owner can
enter. Files are 0600 and directories 0700 whatever the umask. Failures raise `StorageError` naming
the path and the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from velvet import __version__
from velvet.errors import VelvetError

FILE_MODE = 0o600
DIR_MODE = 0o700


class StorageError(VelvetError):
    """A state file or directory could not be read or written; `path` names it."""

    def __init__(self, path: Path | str, action: str, err: OSError | str) -> None:
        reason = (err.strerror or str(err)) if isinstance(err, OSError) else err
        super().__init__(f"cannot {action} {path}: {reason}")
        self.path = str(path)
        self.errno = err.errno if isinstance(err, OSError) else 0


def private_dir(path: Path) -> Path:
    """Create `path` and any missing parents as 0700 (mkdir -p); an existing `path` is made 0700."""
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    try:
        for created in reversed(missing):
            with contextlib.suppress(FileExistsError):  # another process made it meanwhile
                created.mkdir(mode=DIR_MODE)
            os.chmod(created, DIR_MODE)
        if not missing:
            os.chmod(path, DIR_MODE)
    except OSError as err:
        raise StorageError(path, "create the private directory", err) from err
    return path


def private_file(path: Path) -> None:
    """Make an existing file 0600 (no-op when it does not exist)."""
    try:
        os.chmod(path, FILE_MODE)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise StorageError(path, "make private", err) from err


def open_append(path: Path) -> int:
    """A file descriptor appending to `path`, created 0600 if needed (the caller closes it)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except OSError as err:
        raise StorageError(path, "open", err) from err
    return fd


def fsync_dir(path: Path) -> None:
    """Make the directory entries of `path` (a directory) durable: creations, renames, removals."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        raise StorageError(path, "sync the directory", err) from err


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: a 0600 temp file in the same directory, fsync, rename, directory fsync."""
    directory = path.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)  # created 0600
    except OSError as err:
        raise StorageError(path, "write", err) from err
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StorageError(path, "write", err) from err
    fsync_dir(directory)


def code_digest(files: Iterable[Path]) -> bytes:
    """A 32-byte digest of Python's and Velvet's versions and the source `files` (name and text): what
    saved state written by one build and read by another must agree on."""
    digest = hashlib.blake2b(f"{sys.version}|{__version__}".encode(), digest_size=32)
    for file in files:
        digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.digest()
