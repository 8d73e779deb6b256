"""Manifest files as text: found by suffix, read bounded and checked as UTF-8, before anything parses them.

A leaf the CLI imports without the model (and PyYAML): `velvet apply -f` only reads the files and hands
their text to the agent, which validates it; `velvet.model.codec` reads files the same way.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from velvet.errors import InvalidManifest

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
MAX_FILE_BYTES = 16 * 1024 * 1024  # one file of documents; a request to the agent may be 64 MiB

_SEPARATOR = re.compile(r"^---(?=\s|$)", re.MULTILINE)
_CONTENT = re.compile(r"^[ \t]*[^\s#%]", re.MULTILINE)


def file_too_long(size: int) -> str | None:
    """Why a manifest file of `size` bytes is refused, or None when it is within MAX_FILE_BYTES."""
    if size <= MAX_FILE_BYTES:
        return None
    return (f"Too long: {size} bytes; a manifest file may have at most {MAX_FILE_BYTES} "
            f"bytes ({MAX_FILE_BYTES // 2**20} MiB)")


def document_at(before: str) -> int:
    """The 1-based YAML document a position is in, from the text before it (`---` lines start documents)."""
    first = _SEPARATOR.search(before)
    if first is None:
        return 1
    separators = sum(1 for _ in _SEPARATOR.finditer(before))
    return separators if _CONTENT.search(before, 0, first.start()) is None else separators + 1


def read_manifest_file(file: Path) -> str:
    """The text of one manifest file: refused before reading beyond MAX_FILE_BYTES, and unless UTF-8."""
    try:
        with file.open("rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
            size = max(len(data), os.fstat(stream.fileno()).st_size)
    except OSError as err:
        raise InvalidManifest(str(file), 0, "<file>", err.strerror or str(err)) from err
    too_long = file_too_long(size)
    if too_long is not None:
        raise InvalidManifest(str(file), 0, "<file>", too_long)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        before = data[:err.start].decode("utf-8")
        raise InvalidManifest(str(file), document_at(before), f"line {before.count(chr(10)) + 1}",
                              f"not UTF-8 text: byte 0x{data[err.start]:02x} at offset {err.start}") from err
