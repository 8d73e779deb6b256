"""Open and load a BPF ELF object with libbpf; optionally pin and re-adopt its maps on bpffs.

Needs the bpf() syscall (CAP_BPF/CAP_SYS_ADMIN) and, for CO-RE objects, kernel BTF.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from velvet.datapath import libbpf
from velvet.datapath.maps import Map, untyped
from velvet.errors import DatapathError, VerifierError
from velvet.system import mounts

PROG_TYPES: dict[int, str] = dict(enumerate((
    "unspec", "socket_filter", "kprobe", "sched_cls", "sched_act", "tracepoint", "xdp", "perf_event",
    "cgroup_skb", "cgroup_sock", "lwt_in", "lwt_out", "lwt_xmit", "sock_ops", "sk_skb", "cgroup_device",
    "sk_msg", "raw_tracepoint", "cgroup_sock_addr", "lwt_seg6local", "lirc_mode2", "sk_reuseport",
    "flow_dissector", "cgroup_sysctl", "raw_tracepoint_writable", "cgroup_sockopt", "tracing",
    "struct_ops", "ext", "lsm", "sk_lookup", "syscall", "netfilter",
)))
_VERIFIER_MARK = "-- BEGIN PROG LOAD LOG --"
# Maps of plain data, whose entries a replaced pin hands to its successor (not rings, program or socket maps).
CARRIED_TYPES = frozenset({"hash", "lru_hash", "percpu_hash", "lru_percpu_hash", "array", "percpu_array",
                           "lpm_trie"})
log = logging.getLogger("velvet.datapath")


def prog_id(fd: int) -> int:
    """Kernel id of the program behind `fd` (BPF_OBJ_GET_INFO_BY_FD)."""
    info = libbpf.ProgInfoStruct()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    libbpf.check(libbpf.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "program info")
    return int(info.id)


class Program:
    """One program of a BpfObject; `fd` is valid after load() and until the object is closed."""

    def __init__(self, obj: BpfObject, handle: int) -> None:
        self._obj = obj
        self.handle = handle
        self.name: str = libbpf.bpf_program__name(handle).decode()
        self.prog_type: int = int(libbpf.bpf_program__type(handle))

    @property
    def fd(self) -> int:
        """The program fd; raises if the object is not loaded."""
        self._obj._check_open()
        fd = int(libbpf.bpf_program__fd(self.handle))
        if fd < 0:
            raise DatapathError(f"program {self.name} is not loaded")
        return fd

    @property
    def id(self) -> int:
        """The kernel's id of the loaded program."""
        return prog_id(self.fd)

    @property
    def type_name(self) -> str:
        """Program type as bpftool names it ("sched_cls", "cgroup_sock_addr", ...)."""
        return PROG_TYPES.get(self.prog_type, str(self.prog_type))

    def pin(self, path: Path) -> None:
        """Pin the program on bpffs at `path` (BPF_OBJ_PIN)."""
        mounts.ensure_pin_dir(path.parent)
        ret = libbpf.bpf_obj_pin(self.fd, str(path).encode())
        libbpf.check(ret, f"pinning program {self.name} at {path}")

    def __repr__(self) -> str:
        return f"Program({self.name!r}, {self.type_name})"


class BpfObject:
    """A libbpf bpf_object: open (parse the ELF), load (create maps, verify programs), close."""

    def __init__(self, path: Path, handle: int) -> None:
        self.path = path
        self._handle: int | None = handle
        self._finalizer = weakref.finalize(self, libbpf.bpf_object__close, handle)
        self.loaded = False
        programs = [Program(self, h) for h in self._walk(libbpf.bpf_object__next_program)]
        self._programs = {p.name: p for p in programs}
        maps = self._walk(libbpf.bpf_object__next_map)
        self._map_handles = {libbpf.bpf_map__name(h).decode(): h for h in maps}

    def _walk(self, next_fn: Any) -> list[int]:
        """Every program or map handle of the object, via bpf_object__next_*."""
        found: list[int] = []
        cur = next_fn(self._handle, None)
        while cur:
            found.append(cur)
            cur = next_fn(self._handle, cur)
        return found

    @classmethod
    def open(cls, path: Path, *, pin_dir: Path | None = None) -> BpfObject:
        """Parse an object file; with pin_dir, every map is pinned at pin_dir/<name> and reused if there.

        libbpf's internal maps (.rodata, .data, .bss) are never pinned: reusing them would keep
        stale initial values from an older object.
        """
        with libbpf.capture_log() as lines:
            handle = libbpf.bpf_object__open_file(str(path).encode(), None)
        if not handle:
            err = ctypes.get_errno() or errno.EINVAL
            raise DatapathError(f"opening BPF object {path}: {libbpf.strerror(err)}\n{''.join(lines)}", err)
        obj = cls(path, handle)
        try:
            if pin_dir is not None:
                mounts.ensure_pin_dir(pin_dir)
                for name, mh in obj._map_handles.items():
                    if not libbpf.bpf_map__is_internal(mh):
                        libbpf.check(libbpf.bpf_map__set_pin_path(mh, str(pin_dir / name).encode()),
                                     f"pin path of map {name}")
        except BaseException:
            obj.close()
            raise
        return obj

    def load(self) -> BpfObject:
        """Create (or re-adopt pinned) maps and load every program; a rejection raises VerifierError."""
        self._check_open()
        with libbpf.capture_log() as lines:
            ret = libbpf.bpf_object__load(self._handle)
        if ret < 0:
            text = "".join(lines)
            if _VERIFIER_MARK in text or -ret in (errno.EACCES, errno.EPERM):
                raise VerifierError(self.path.name, text, -ret)
            raise DatapathError(f"loading {self.path.name}: {libbpf.strerror(-ret)}\n{text}", -ret)
        self.loaded = True
        return self

    def _check_open(self) -> None:
        """Raise if close() was called."""
        if self._handle is None:
            raise DatapathError(f"BPF object {self.path.name} is closed")

    def programs(self) -> dict[str, Program]:
        """Programs by function name."""
        return dict(self._programs)

    def program(self, name: str) -> Program:
        """One program by function name."""
        try:
            return self._programs[name]
        except KeyError:
            raise DatapathError(f"{self.path.name} has no program {name!r} "
                                f"(has: {', '.join(sorted(self._programs))})") from None

    def map_names(self) -> list[str]:
        """The names of the object's maps (known once opened, before load)."""
        return list(self._map_handles)

    def maps(self) -> dict[str, Map[Any, Any]]:
        """Untyped views (byte-array keys/values) of every map, after load."""
        return {name: self.map(name) for name in self._map_handles}

    def map(self, name: str) -> Map[Any, Any]:
        """An untyped view of one map after load; re-type it with Map.typed(K, V)."""
        self._check_open()
        handle = self._map_handles.get(name)
        if handle is None:
            known = ", ".join(sorted(self._map_handles))
            raise DatapathError(f"{self.path.name} has no map {name!r} (has: {known})")
        fd = int(libbpf.bpf_map__fd(handle))
        if fd < 0:
            raise DatapathError(f"map {name} of {self.path.name} is not created yet (call load())")
        return untyped(fd, name)

    def close(self) -> None:
        """Free the object: unpinned maps and unattached programs go away; pins and links stay."""
        self._finalizer()
        self._handle = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_over_pins(path: Path, pin_dir: Path, stale: Callable[[], Iterable[Path]]) -> BpfObject:
    """Load `path` reusing the maps pinned in `pin_dir`. When they no longer match the object's layout (an
    upgrade changed a map), the pins `stale()` names that are this object's maps are replaced, and the new
    maps whose key and value sizes stayed get the old entries (conntrack survives a change of map type)."""
    obj = BpfObject.open(path, pin_dir=pin_dir)
    names = set(obj.map_names())
    try:
        return obj.load()
    except DatapathError as exc:
        obj.close()
        if "reuse" not in str(exc):
            raise
    old: dict[str, Map[Any, Any]] = {}
    try:
        for pinned in stale():
            if pinned.name in names:
                if (previous := _open_pinned_map(pinned)) is not None:
                    old[pinned.name] = previous
                pinned.unlink(missing_ok=True)
        loaded = BpfObject.open(path, pin_dir=pin_dir).load()
        carried = [name for name, previous in sorted(old.items())
                   if _carry_entries(previous, loaded.map(name))]
    finally:
        for previous in old.values():
            previous.close()
    log.warning("pinned maps no longer match %s: replaced them, with the entries of %s", path.name,
                ", ".join(carried) or "none")
    return loaded


def _open_pinned_map(path: Path) -> Map[Any, Any] | None:
    """The map pinned at `path`, untyped (None: gone, or not a map)."""
    fd = libbpf.bpf_obj_get(str(path).encode())
    if fd < 0:
        return None
    try:
        return untyped(fd, path.name)
    except DatapathError:
        return None
    finally:
        os.close(fd)


def _carry_entries(old: Map[Any, Any], new: Map[Any, Any]) -> bool:
    """Copy `old`'s entries into `new` when both hold plain data laid out alike; whether it did."""
    try:
        layout = (old.info.key_size, old.info.value_size, old.per_cpu)
        if (old.info.type not in CARRIED_TYPES or new.info.type not in CARRIED_TYPES
                or layout != (new.info.key_size, new.info.value_size, new.per_cpu)):
            return False
        new.update_raw_batch(*old.lookup_batch_raw())
        return True
    except DatapathError as exc:
        log.warning("the entries of map %s were not all carried over: %s", new.name, exc)
        return False
    finally:
        new.close()
