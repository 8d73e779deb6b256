"""Compile the BPF C sources into objects (needs clang with the bpf target and, for CO-RE, kernel BTF).

Objects go to `build_dir()`; `vmlinux.h` is generated from `/sys/kernel/btf/vmlinux` into
`build_dir()/include` and never committed. `python -m velvet.datapath.build` is `make bpf`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from velvet.errors import BuildError, DatapathError

SOURCE_DIR: Path = Path(__file__).resolve().parent / "bpf"
_REPO_ROOT = Path(__file__).resolve().parents[3]
_GEN_VMLINUX = _REPO_ROOT / "scripts" / "gen-vmlinux.sh"
_VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
CLANG_FLAGS: tuple[str, ...] = ("-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall", "-Werror")


def build_dir() -> Path:
    """Where BPF objects are written: $VELVET_BUILD_DIR, <repo>/build/bpf, or /var/cache/velvet/bpf."""
    env = os.environ.get("VELVET_BUILD_DIR")
    if env:
        return Path(env)
    if (_REPO_ROOT / "pyproject.toml").is_file():
        return _REPO_ROOT / "build" / "bpf"
    return Path("/var/cache/velvet/bpf")


def include_dir() -> Path:
    """The generated-header directory (holds vmlinux.h)."""
    return build_dir() / "include"


def vmlinux_h() -> Path:
    """Generate vmlinux.h from the running kernel's BTF if it is missing (needs CONFIG_DEBUG_INFO_BTF)."""
    out = include_dir() / "vmlinux.h"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    if _GEN_VMLINUX.is_file():
        proc = subprocess.run([str(_GEN_VMLINUX), str(out)], capture_output=True, text=True, check=False)
    else:  # installed package without the scripts/ directory: same command, inline
        tmp = out.with_name(f".vmlinux.h.{os.getpid()}.tmp")
        with tmp.open("w") as fh:
            proc = subprocess.run(["bpftool", "btf", "dump", "file", str(_VMLINUX_BTF), "format", "c"],
                                  stdout=fh, stderr=subprocess.PIPE, text=True, check=False)
        if proc.returncode == 0:
            tmp.replace(out)
        tmp.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise BuildError("vmlinux.h", proc.stderr.strip() or f"vmlinux.h generation exited {proc.returncode}")
    return out


def _headers() -> list[Path]:
    """Every header an object may depend on: bpf/*.h, bpf/lib/*.h and the generated vmlinux.h."""
    found = sorted(SOURCE_DIR.glob("*.h")) + sorted((SOURCE_DIR / "lib").glob("*.h"))
    return [*found, include_dir() / "vmlinux.h"]


def _is_stale(obj: Path, deps: list[Path]) -> bool:
    """Whether `obj` is missing or older than any existing dependency."""
    if not obj.is_file():
        return True
    built = obj.stat().st_mtime_ns
    return any(dep.is_file() and dep.stat().st_mtime_ns > built for dep in deps)


def compile(source: Path, out: Path, extra_include: list[Path] | None = None) -> Path:
    """Compile one BPF C file with the project's clang flags into `out` (written atomically)."""
    clang = shutil.which("clang")
    if clang is None:
        raise DatapathError("clang is not installed (apt-get install clang); BPF objects need it")
    vmlinux_h()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    includes = [SOURCE_DIR, include_dir(), *(extra_include or [])]
    cmd = [clang, *CLANG_FLAGS, *(f"-I{d}" for d in includes), "-c", str(source), "-o", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(str(source), (proc.stderr + proc.stdout).strip())
    tmp.replace(out)
    return out


def _object_for(source: Path) -> Path:
    """The object path for a `<name>.bpf.c` source."""
    return build_dir() / source.name.replace(".bpf.c", ".bpf.o")


def _build(force: bool) -> tuple[list[Path], list[Path]]:
    """Build every stale object; return (all objects, the ones rebuilt)."""
    sources = sorted(SOURCE_DIR.glob("*.bpf.c"))
    if not sources:
        return [], []
    vmlinux_h()
    headers = _headers()
    todo = [s for s in sources if force or _is_stale(_object_for(s), [s, *headers])]
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        rebuilt = list(pool.map(lambda s: compile(s, _object_for(s)), todo))
    return [_object_for(s) for s in sources], rebuilt


def build_all(force: bool = False) -> list[Path]:
    """Compile every SOURCE_DIR/*.bpf.c that is stale (or all with force); return every object path."""
    return _build(force)[0]


def object_path(name: str) -> Path:
    """Path of the built object `name` (e.g. "lxc" -> lxc.bpf.o), rebuilding it first when stale."""
    source = SOURCE_DIR / f"{name}.bpf.c"
    obj = build_dir() / f"{name}.bpf.o"
    if not source.is_file():
        if obj.is_file():
            return obj
        raise DatapathError(f"no BPF source {source} and no built object {obj}")
    vmlinux_h()
    if _is_stale(obj, [source, *_headers()]):
        compile(source, obj)
    return obj


def main() -> int:
    """Entry point of `python -m velvet.datapath.build`: build, print one line if anything changed."""
    try:
        objects, rebuilt = _build(force="--force" in sys.argv[1:])
    except DatapathError as exc:
        print(f"velvet: {exc}", file=sys.stderr)
        return 1
    if rebuilt:
        print(f"velvet: built {len(rebuilt)} of {len(objects)} BPF objects into {build_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
