"""Test that structs.py mirrors types.h: struct layouts against the BTF of every built object, and
enum/#define values against the header text (the "alignchecker").

Objects only carry the BTF of structs their maps or CO-RE reads use (ring buffer records are not
among them), so, like Cilium's bpf_alignchecker.c, the test also compiles an object declaring one
global of every struct in types.h and checks that one too.
"""

from __future__ import annotations

import ctypes
import re
import shutil
from pathlib import Path

import pytest

from velvet.datapath import build, structs
from velvet.datapath.btf import StructLayout, struct_layouts

TYPES_H = build.SOURCE_DIR / "types.h"

pytestmark = pytest.mark.skipif(shutil.which("clang") is None or shutil.which("bpftool") is None,
                                reason="needs clang and bpftool")


def header_text() -> str:
    """types.h without comments."""
    text = TYPES_H.read_text()
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def header_structs() -> set[str]:
    """Names of the structs types.h defines."""
    return set(re.findall(r"^struct (\w+) \{", header_text(), flags=re.M))


def header_enums() -> dict[str, dict[str, int]]:
    """Every enum of types.h: enum name -> {constant name: value}."""
    enums: dict[str, dict[str, int]] = {}
    for name, body in re.findall(r"^enum (\w+) \{(.*?)\};", header_text(), flags=re.M | re.S):
        values: dict[str, int] = {}
        for item in body.split(","):
            if "=" in item:
                const, expr = (part.strip() for part in item.split("=", 1))
                values[const] = int(eval(expr, {"__builtins__": {}}))  # literals and shifts only
        enums[name] = values
    return enums


def header_defines() -> dict[str, int]:
    """Every numeric #define of types.h."""
    return {name: int(value) for name, value in
            re.findall(r"^#define (\w+) (\d+)\b", header_text(), flags=re.M)}


def alignchecker_object(directory: Path) -> Path:
    """Compile an object with one global of every struct types.h defines."""
    source = directory / "alignchecker.bpf.c"
    lines = ['#include "lib/common.h"']
    lines += [f"struct {name} velvet_align_{name};" for name in sorted(header_structs())]
    lines.append('char LICENSE[] SEC("license") = "GPL";')
    source.write_text("\n".join(lines) + "\n")
    return build.compile(source, directory / "alignchecker.bpf.o")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, dict[str, StructLayout]]:
    """BTF struct layouts of every built object and of the alignchecker object."""
    objects = [*build.build_all(), alignchecker_object(tmp_path_factory.mktemp("align"))]
    return {obj: struct_layouts(obj) for obj in objects}


def test_every_types_h_struct_has_exactly_one_mirror() -> None:
    """Test that the set of mirrored structs is the set of structs types.h defines."""
    assert header_structs() == set(structs.C_STRUCTS)


@pytest.mark.parametrize("name", sorted(structs.C_STRUCTS))
def test_struct_layout_matches_btf(name: str, layouts: dict[Path, dict[str, StructLayout]]) -> None:
    """Test that a ctypes mirror has the size and every field offset of its C struct in each object."""
    mirror = structs.C_STRUCTS[name]
    mirror_fields = {field: getattr(mirror, field).offset for field, *_ in mirror._fields_}
    seen = 0
    for obj, found in layouts.items():
        if name not in found:
            continue
        seen += 1
        layout = found[name]
        assert layout.size == ctypes.sizeof(mirror), f"{name} size in {obj.name}"
        assert not layout.bitfields, f"{name} has bitfields in {obj.name}"
        assert layout.fields == mirror_fields, f"{name} fields in {obj.name}"
    assert seen, f"struct {name} is in no built object's BTF"


def test_every_enum_matches_types_h() -> None:
    """Test that every C enum has its IntEnum with the same names (minus prefix) and values."""
    enums = header_enums()
    assert set(enums) == set(structs.C_ENUMS)
    for c_name, (py_enum, prefix) in structs.C_ENUMS.items():
        expected = {const.removeprefix(prefix): value for const, value in enums[c_name].items()}
        assert all(const.startswith(prefix) for const in enums[c_name]), c_name
        assert {m.name: int(m.value) for m in py_enum} == expected, c_name


def test_every_define_matches_types_h() -> None:
    """Test that every shared #define has the same value in Python."""
    defines = header_defines()
    assert defines == structs.C_DEFINES


def test_flow_event_dtype_matches_struct() -> None:
    """Test that the ring buffer dtype has the ctypes struct's size and offsets."""
    dtype = structs.FLOW_EVENT_DTYPE
    assert dtype.itemsize == ctypes.sizeof(structs.FlowEvent) == 64
    for field, *_ in structs.FlowEvent._fields_:
        assert dtype.fields is not None
        assert dtype.fields[field][1] == getattr(structs.FlowEvent, field).offset
