"""Test the floor tree's rewrite (bench/floor.py): every program of the real sources passes at once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.floor import EARLY, passing

SOURCES = sorted((Path(__file__).resolve().parents[2] / "src/velvet/datapath/bpf").glob("*.bpf.c"))


@pytest.mark.parametrize("source", SOURCES, ids=[s.name for s in SOURCES])
def test_every_program_of_the_sources_gets_its_pass_first(source: Path) -> None:
    text = source.read_text()
    rewritten, programs = passing(text)
    assert programs == len(re.findall(r'^SEC\("', text, re.MULTILINE)) > 0
    assert rewritten.count("bpf_get_smp_processor_id() < 0x10000") == programs
    assert rewritten.replace(EARLY.format("TC_ACT_OK"), "").replace(EARLY.format("1"), "").replace(
        EARLY.format("0"), "") == text


def test_each_kind_passes_its_own_way_and_an_unknown_kind_stops() -> None:
    text = 'SEC("tc")\nint a(struct __sk_buff *skb)\n{\n}\nSEC("cgroup/connect4")\nint b(void *c)\n{\n}\n'
    rewritten, programs = passing(text)
    assert programs == 2
    assert "\t\treturn TC_ACT_OK;\n" in rewritten
    assert "\t\treturn 1;\n" in rewritten
    with pytest.raises(SystemExit, match="xdp"):
        passing('SEC("xdp")\nint c(struct xdp_md *ctx)\n{\n}\n')
