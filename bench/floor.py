"""The floor of a Velvet sandbox: a copy of this tree whose BPF programs all return at once.

    python -m bench.floor [--out DIR]      # prints the tree's path; the benches' --floor build it themselves

A sandbox whose agents run that tree has every program of the real one loaded and attached (tc on every
veth and uplink, the socket LB's cgroup hooks, the process monitor's tracepoints), each returning its
pass verdict before any work: the cost of the sandbox's topology and of the hooks themselves, which no
change to the programs' work can go below. Its packets take the node's IP stack (no host routing) and
nothing is translated (a service cannot be reached), so it is measured pod to pod.

Each program's body gets, first, `if (bpf_get_smp_processor_id() < 0x10000) return PASS;` (a helper's
answer: neither clang nor the verifier drops the rest, which keeps its maps and subprograms loadable).
PASS by section: `tc` TC_ACT_OK; `cgroup/*` 1 (allow); tracepoints 0. A section not in that list stops
the build: a new kind of program must say how it passes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TREE = Path(__file__).resolve().parents[1]
PASS = (("tc", "TC_ACT_OK"), ("cgroup/", "1"), ("tracepoint/", "0"), ("raw_tp/", "0"), ("tp_btf/", "0"))
_PROGRAM = re.compile(r'^SEC\("([^"]+)"\)\n([^\n]*\n)\{\n', re.MULTILINE)
EARLY = "\tif (bpf_get_smp_processor_id() < 0x10000)\n\t\treturn {};\n"


def pass_value(section: str) -> str:
    """What a program of `section` returns to let everything through."""
    for prefix, value in PASS:
        if section == prefix or (prefix.endswith("/") and section.startswith(prefix)):
            return value
    raise SystemExit(f"bench.floor: no pass verdict known for SEC(\"{section}\"): add it to PASS")


def passing(source: str) -> tuple[str, int]:
    """`source` with an early pass at the top of every program, and how many programs it has."""
    count = 0

    def early(match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return match.group(0) + EARLY.format(pass_value(match.group(1)))
    return _PROGRAM.sub(early, source), count


def build(out: Path) -> Path:
    """Copy the sources to `out`, make every program pass at once, compile them; return `out` (removed
    again when that fails)."""
    try:
        return _build(out)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise


def _build(out: Path) -> Path:
    for part in ("src", "scripts"):
        shutil.copytree(TREE / part, out / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(TREE / "pyproject.toml", out / "pyproject.toml")
    for path in sorted((out / "src" / "velvet" / "datapath" / "bpf").glob("*.bpf.c")):
        source = path.read_text()
        text, programs = passing(source)
        if programs != len(re.findall(r'^SEC\("', source, re.MULTILINE)):
            raise SystemExit(f"bench.floor: {path.name}: a program whose signature is not the one line "
                             "between its SEC() and its opening brace: its body was not found")
        path.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(out / "src")}
    env.pop("VELVET_BUILD_DIR", None)
    subprocess.run([sys.executable, "-m", "velvet.datapath.build"], cwd=out, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return out


def main() -> None:
    """Build the floor tree and print its path."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", default="", help="directory to create (default: a new one under /tmp)")
    args = parser.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="velvet-floor-"))
    print(build(out))


if __name__ == "__main__":
    main()
