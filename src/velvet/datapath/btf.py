"""Read struct layouts from the BTF of a built BPF object (needs bpftool; the object built with -g).

This powers the "alignchecker" test that compares every ctypes mirror with its C struct.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from velvet.errors import DatapathError

_ANON = "(anon)"


@dataclass(frozen=True)
class StructLayout:
    """A named C struct: total size and byte offset of every member.

    Members of anonymous struct/union members are flattened in (as C lets you name them);
    bitfields are listed separately as (bit offset, bit size).
    """

    name: str
    size: int
    fields: dict[str, int]
    bitfields: dict[str, tuple[int, int]] = field(default_factory=dict)


def _dump(path: Path) -> list[dict[str, Any]]:
    """All BTF types of an object, as bpftool's JSON."""
    proc = subprocess.run(["bpftool", "btf", "dump", "file", str(path), "-j"], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise DatapathError(f"reading BTF of {path}: {proc.stderr.strip()}")
    types: list[dict[str, Any]] = json.loads(proc.stdout)["types"]
    return types


def _members(struct: dict[str, Any], by_id: dict[int, dict[str, Any]], base_bits: int,
             layout: StructLayout) -> None:
    """Record the members of `struct` at `base_bits` into `layout`, flattening anonymous ones."""
    for member in struct.get("members", []):
        bits = base_bits + int(member["bits_offset"])
        inner = by_id.get(int(member["type_id"]), {})
        if member["name"] == _ANON and inner.get("kind") in ("STRUCT", "UNION"):
            _members(inner, by_id, bits, layout)
        elif member.get("bitfield_size"):
            layout.bitfields[member["name"]] = (bits, int(member["bitfield_size"]))
        else:
            layout.fields[member["name"]] = bits // 8


def struct_layouts(obj_path: Path) -> dict[str, StructLayout]:
    """Every named struct in the object's BTF, by name."""
    types = _dump(obj_path)
    by_id = {int(t["id"]): t for t in types}
    layouts: dict[str, StructLayout] = {}
    for t in types:
        if t["kind"] == "STRUCT" and t["name"] != _ANON:
            layout = StructLayout(t["name"], int(t["size"]), {})
            _members(t, by_id, 0, layout)
            layouts[t["name"]] = layout
    return layouts
