"""Raw ctypes declarations of libbpf 1.1 (libbpf.so.1) and libc, plus errno -> VelvetError translation.

Needs libbpf >= 1.0 semantics: int functions return -errno, pointer functions return NULL and set
errno. Nothing here is public API beyond this module's callers in `velvet.datapath`.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char,
    c_char_p,
    c_int,
    c_size_t,
    c_uint8,
    c_uint32,
    c_uint64,
    c_void_p,
)
from typing import Any

from velvet.errors import DatapathError, KeyNotFound, NotSupported

log = logging.getLogger("velvet.libbpf")

ENOTSUPP = 524  # kernel-internal "operation not supported", leaks to user space from BPF syscalls

lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
libc = ctypes.CDLL(None, use_errno=True)


class TestRunOpts(Structure):
    """struct bpf_test_run_opts (libbpf 1.1); `sz` must be set to sizeof."""

    __test__ = False  # not a pytest class
    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_uint32),
        ("data_size_out", c_uint32),
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_uint32),
        ("ctx_size_out", c_uint32),
        ("retval", c_uint32),
        ("repeat", c_int),
        ("duration", c_uint32),
        ("flags", c_uint32),
        ("cpu", c_uint32),
        ("batch_size", c_uint32),
    ]


class MapBatchOpts(Structure):
    """struct bpf_map_batch_opts."""

    _fields_ = [("sz", c_size_t), ("elem_flags", c_uint64), ("flags", c_uint64)]


class TcHook(Structure):
    """struct bpf_tc_hook (BPF_TC_INGRESS = 1, BPF_TC_EGRESS = 2)."""

    _fields_ = [("sz", c_size_t), ("ifindex", c_int), ("attach_point", c_int), ("parent", c_uint32)]


class TcOpts(Structure):
    """struct bpf_tc_opts (BPF_TC_F_REPLACE = 1)."""

    _fields_ = [
        ("sz", c_size_t),
        ("prog_fd", c_int),
        ("flags", c_uint32),
        ("prog_id", c_uint32),
        ("handle", c_uint32),
        ("priority", c_uint32),
    ]


class MapInfoStruct(Structure):
    """Leading part of struct bpf_map_info (the kernel accepts a shorter info_len)."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("key_size", c_uint32),
        ("value_size", c_uint32),
        ("max_entries", c_uint32),
        ("map_flags", c_uint32),
        ("name", c_char * 16),
    ]


class ProgInfoStruct(Structure):
    """Leading part of struct bpf_prog_info up to `name`."""

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("tag", c_uint8 * 8),
        ("jited_prog_len", c_uint32),
        ("xlated_prog_len", c_uint32),
        ("jited_prog_insns", c_uint64),
        ("xlated_prog_insns", c_uint64),
        ("load_time", c_uint64),
        ("created_by_uid", c_uint32),
        ("nr_map_ids", c_uint32),
        ("map_ids", c_uint64),
        ("name", c_char * 16),
    ]


class LinkInfoStruct(Structure):
    """struct bpf_link_info: type, id, prog_id, then a per-link-type union read as raw u32 words.

    The union starts at byte 16. tcx: u32[0] ifindex, u32[1] attach_type; cgroup: u64 cgroup_id
    (u32[0..1]), u32[2] attach_type; netns: u32[0] ino, u32[1] attach_type.
    """

    _fields_ = [("type", c_uint32), ("id", c_uint32), ("prog_id", c_uint32), ("_pad", c_uint32),
                ("u", c_uint32 * 16)]


def _fn(name: str, restype: object, *argtypes: object) -> Any:
    """Declare one libbpf function."""
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


# object / program / map life cycle
bpf_object__open_file = _fn("bpf_object__open_file", c_void_p, c_char_p, c_void_p)
bpf_object__load = _fn("bpf_object__load", c_int, c_void_p)
bpf_object__close = _fn("bpf_object__close", None, c_void_p)
bpf_object__next_program = _fn("bpf_object__next_program", c_void_p, c_void_p, c_void_p)
bpf_object__next_map = _fn("bpf_object__next_map", c_void_p, c_void_p, c_void_p)
bpf_program__name = _fn("bpf_program__name", c_char_p, c_void_p)
bpf_program__fd = _fn("bpf_program__fd", c_int, c_void_p)
bpf_program__type = _fn("bpf_program__type", c_int, c_void_p)
bpf_map__name = _fn("bpf_map__name", c_char_p, c_void_p)
bpf_map__fd = _fn("bpf_map__fd", c_int, c_void_p)
bpf_map__set_pin_path = _fn("bpf_map__set_pin_path", c_int, c_void_p, c_char_p)
bpf_map__is_internal = _fn("bpf_map__is_internal", ctypes.c_bool, c_void_p)

# low-level syscall wrappers (bpf.h)
bpf_prog_load = _fn("bpf_prog_load", c_int, c_int, c_char_p, c_char_p, c_void_p, c_size_t, c_void_p)
bpf_map_lookup_elem = _fn("bpf_map_lookup_elem", c_int, c_int, c_void_p, c_void_p)
bpf_map_update_elem = _fn("bpf_map_update_elem", c_int, c_int, c_void_p, c_void_p, c_uint64)
bpf_map_delete_elem = _fn("bpf_map_delete_elem", c_int, c_int, c_void_p)
bpf_map_get_next_key = _fn("bpf_map_get_next_key", c_int, c_int, c_void_p, c_void_p)
bpf_map_update_batch = _fn("bpf_map_update_batch", c_int, c_int, c_void_p, c_void_p,
                           POINTER(c_uint32), POINTER(MapBatchOpts))
bpf_map_delete_batch = _fn("bpf_map_delete_batch", c_int, c_int, c_void_p, POINTER(c_uint32),
                           POINTER(MapBatchOpts))
bpf_map_lookup_batch = _fn("bpf_map_lookup_batch", c_int, c_int, c_void_p, c_void_p, c_void_p, c_void_p,
                           POINTER(c_uint32), POINTER(MapBatchOpts))
bpf_obj_pin = _fn("bpf_obj_pin", c_int, c_int, c_char_p)
bpf_obj_get = _fn("bpf_obj_get", c_int, c_char_p)
bpf_obj_get_info_by_fd = _fn("bpf_obj_get_info_by_fd", c_int, c_int, c_void_p, POINTER(c_uint32))
bpf_link_create = _fn("bpf_link_create", c_int, c_int, c_int, c_int, c_void_p)
bpf_link_update = _fn("bpf_link_update", c_int, c_int, c_int, c_void_p)
bpf_link_detach = _fn("bpf_link_detach", c_int, c_int)
bpf_raw_tracepoint_open = _fn("bpf_raw_tracepoint_open", c_int, c_char_p, c_int)
bpf_prog_test_run_opts = _fn("bpf_prog_test_run_opts", c_int, c_int, POINTER(TestRunOpts))
bpf_tc_hook_create = _fn("bpf_tc_hook_create", c_int, POINTER(TcHook))
bpf_tc_attach = _fn("bpf_tc_attach", c_int, POINTER(TcHook), POINTER(TcOpts))
bpf_tc_detach = _fn("bpf_tc_detach", c_int, POINTER(TcHook), POINTER(TcOpts))
bpf_tc_query = _fn("bpf_tc_query", c_int, POINTER(TcHook), POINTER(TcOpts))
libbpf_probe_bpf_prog_type = _fn("libbpf_probe_bpf_prog_type", c_int, c_int, c_void_p)
libbpf_probe_bpf_map_type = _fn("libbpf_probe_bpf_map_type", c_int, c_int, c_void_p)
libbpf_probe_bpf_helper = _fn("libbpf_probe_bpf_helper", c_int, c_int, c_int, c_void_p)
libbpf_num_possible_cpus = _fn("libbpf_num_possible_cpus", c_int)

_PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
libbpf_set_print = _fn("libbpf_set_print", c_void_p, _PRINT_FN)
vsnprintf = libc.vsnprintf
vsnprintf.restype = c_int
vsnprintf.argtypes = [c_void_p, c_size_t, c_char_p, c_void_p]


# --- errno translation ---------------------------------------------------------------------------


def strerror(err: int) -> str:
    """Human text for an errno, including the kernel-internal ENOTSUPP (524)."""
    if err == ENOTSUPP:
        return "operation not supported (ENOTSUPP)"
    return f"{os.strerror(err)} ({_errno.errorcode.get(err, err)})"


def error_from_errno(err: int, what: str, *, feature: tuple[str, str] | None = None,
                     einval_unsupported: bool = False) -> DatapathError:
    """Map a positive errno from `what` to the error tree.

    ENOENT -> KeyNotFound; with `feature` (name, minimum kernel) given, EOPNOTSUPP/ENOTSUPP (and
    EINVAL when `einval_unsupported`) -> NotSupported; anything else -> DatapathError with the errno.
    """
    if err == _errno.ENOENT:
        return KeyNotFound(f"{what}: {strerror(err)}", err)
    unsupported = err in (_errno.EOPNOTSUPP, ENOTSUPP) or (err == _errno.EINVAL and einval_unsupported)
    if unsupported and feature is not None:
        exc = NotSupported(feature[0], feature[1])
        exc.errno = err
        return exc
    return DatapathError(f"{what}: {strerror(err)}", err)


def check(ret: int, what: str, *, feature: tuple[str, str] | None = None,
          einval_unsupported: bool = False) -> int:
    """Return `ret` if it is >= 0, else raise the translated -ret (libbpf 1.x int convention)."""
    if ret < 0:
        raise error_from_errno(-ret, what, feature=feature, einval_unsupported=einval_unsupported)
    return ret


def num_possible_cpus() -> int:
    """Number of possible CPUs: the slot count of per-CPU map values."""
    return check(libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


# --- libbpf log capture ----------------------------------------------------------------------------

_VA_LIST_SIZE = 24  # x86-64 va_list is one 24-byte __va_list_tag; copying it is va_copy()
_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
_capture = threading.local()


def _format(fmt: bytes, ap: int) -> str:
    """printf-format a libbpf message of any length from its va_list."""
    ap_copy = ctypes.create_string_buffer(_VA_LIST_SIZE)
    ctypes.memmove(ap_copy, ap, _VA_LIST_SIZE)
    buf = ctypes.create_string_buffer(4096)
    need = vsnprintf(buf, len(buf), fmt, ap_copy)
    if need >= len(buf):
        buf = ctypes.create_string_buffer(need + 1)
        vsnprintf(buf, len(buf), fmt, ap)
    return buf.value.decode(errors="replace")


def _print_impl(level: int, fmt: bytes, ap: int) -> int:
    """libbpf print callback: warnings/info go to the thread's capture buffer, else to Python logging."""
    try:
        sink: list[str] | None = getattr(_capture, "lines", None)
        pylevel = _LEVELS.get(level, logging.DEBUG)
        if sink is not None and pylevel >= logging.INFO:
            sink.append(_format(fmt, ap))
        elif sink is None and log.isEnabledFor(pylevel):
            log.log(pylevel, "%s", _format(fmt, ap).rstrip())
    except Exception:  # a callback must never raise into C
        return 0
    return 0


_print = _PRINT_FN(_print_impl)  # module global: the callback must outlive every libbpf call
libbpf_set_print(_print)


@contextmanager
def capture_log() -> Iterator[list[str]]:
    """Collect every libbpf message printed by this thread inside the block (e.g. the verifier log)."""
    previous: list[str] | None = getattr(_capture, "lines", None)
    lines: list[str] = []
    _capture.lines = lines
    try:
        yield lines
    finally:
        _capture.lines = previous
