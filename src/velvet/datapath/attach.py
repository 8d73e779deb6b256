"""Attach programs through BPF links pinned on bpffs, so attachments outlive the agent process.

tcx needs Linux >= 6.6 (older kernels fall back to clsact + a direct-action tc filter, which persists
without a pin), cgroup links >= 5.7, perf-event (tracepoint) links >= 5.15. When a pinned link
already exists at the pin path and matches the hook, the new program is swapped in atomically with
BPF_LINK_UPDATE; a pinned link for another hook (or one whose device is gone) is replaced.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from velvet.datapath import libbpf
from velvet.datapath.bpfobject import Program
from velvet.errors import DatapathError, KeyNotFound
from velvet.system import mounts

BPF_CGROUP_INET_INGRESS = 0
BPF_CGROUP_INET_EGRESS = 1
BPF_CGROUP_INET_SOCK_CREATE = 2
BPF_CGROUP_DEVICE = 6
BPF_CGROUP_INET4_CONNECT = 10
BPF_CGROUP_INET6_CONNECT = 11
BPF_CGROUP_UDP4_SENDMSG = 14
BPF_CGROUP_UDP6_SENDMSG = 15
BPF_CGROUP_SYSCTL = 18
BPF_CGROUP_UDP4_RECVMSG = 19
BPF_CGROUP_INET4_GETPEERNAME = 29
BPF_PERF_EVENT = 41
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47

LINK_TYPES: dict[int, str] = dict(enumerate((
    "unspec", "raw_tracepoint", "tracing", "cgroup", "iter", "netns", "xdp", "perf_event",
    "kprobe_multi", "struct_ops", "netfilter", "tcx", "uprobe_multi", "netkit", "sockmap",
)))
_TC_INGRESS, _TC_EGRESS = 1, 2  # enum bpf_tc_attach_point
_TC_F_REPLACE = 1
_TC_HANDLE, _TC_PRIORITY = 1, 1
_NR_PERF_EVENT_OPEN = 298  # x86-64
_PERF_TYPE_TRACEPOINT = 2
_PERF_FLAG_FD_CLOEXEC = 8
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr up to PERF_ATTR_SIZE_VER0 (64 bytes); flags all zero (enabled)."""

    _fields_ = [
        ("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64), ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32), ("config1", ctypes.c_uint64),
    ]


@dataclass(frozen=True)
class LinkInfo:
    """What the kernel reports about a link; ifindex/cgroup_id/attach_type where the type has them."""

    id: int
    type: str
    prog_id: int
    attach_type: int | None = None
    ifindex: int | None = None
    cgroup_id: int | None = None


def link_info(fd: int) -> LinkInfo:
    """BPF_OBJ_GET_INFO_BY_FD on a link fd (refused for map or program fds, whose info differs)."""
    if os.readlink(f"/proc/self/fd/{fd}") not in ("anon_inode:bpf_link", "anon_inode:bpf-link"):
        raise DatapathError(f"fd {fd} is not a BPF link", errno.EINVAL)
    raw = libbpf.LinkInfoStruct()
    size = ctypes.c_uint32(ctypes.sizeof(raw))
    libbpf.check(libbpf.bpf_obj_get_info_by_fd(fd, ctypes.byref(raw), ctypes.byref(size)), "link info")
    kind = LINK_TYPES.get(raw.type, str(raw.type))
    u = raw.u
    if kind == "tcx":
        return LinkInfo(raw.id, kind, raw.prog_id, attach_type=u[1], ifindex=u[0])
    if kind == "cgroup":
        return LinkInfo(raw.id, kind, raw.prog_id, attach_type=u[2], cgroup_id=u[0] | (u[1] << 32))
    return LinkInfo(raw.id, kind, raw.prog_id)


@dataclass(frozen=True)
class _TcFilter:
    """A legacy clsact filter (no link): where it sits, for bpf_tc_detach."""

    ifindex: int
    attach_point: int


class Link:
    """An attachment: a BPF link fd (pinned at `pin_path` when given) or a legacy tc filter."""

    def __init__(self, fd: int, pin_path: Path | None, *, tc_filter: _TcFilter | None = None) -> None:
        self.fd = fd
        self.pin_path = pin_path
        self._tc = tc_filter

    @property
    def id(self) -> int:
        """Kernel link id (0 for a legacy tc filter, which has none)."""
        return self.info().id

    def info(self) -> LinkInfo:
        """Type, program id and target of the attachment."""
        if self._tc is not None:
            hook, opts = _tc_hook(self._tc.ifindex, self._tc.attach_point)
            libbpf.check(libbpf.bpf_tc_query(ctypes.byref(hook), ctypes.byref(opts)), "tc filter query")
            return LinkInfo(0, "tc", opts.prog_id, ifindex=self._tc.ifindex)
        return link_info(self.fd)

    def update(self, prog: Program) -> None:
        """Atomically replace the attached program (BPF_LINK_UPDATE; tc filters: replace in place)."""
        if self._tc is not None:
            _tc_attach(prog, self._tc)
            return
        libbpf.check(libbpf.bpf_link_update(self.fd, prog.fd, None), f"updating link to {prog.name}")

    def close(self) -> None:
        """Drop this process's fd; a pinned link stays attached."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def detach(self) -> None:
        """Remove the attachment: unpin, force-detach (BPF_LINK_DETACH where supported), close."""
        if self._tc is not None:
            hook, opts = _tc_hook(self._tc.ifindex, self._tc.attach_point)
            ret = libbpf.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts))
            if ret != -errno.ENOENT:
                libbpf.check(ret, "tc filter detach")
            return
        if self.pin_path is not None:
            self.pin_path.unlink(missing_ok=True)
        if self.fd >= 0:
            libbpf.bpf_link_detach(self.fd)  # perf-event links cannot; closing the last fd does it
        self.close()

    def __repr__(self) -> str:
        return f"Link(fd={self.fd}, pin_path={self.pin_path})"


def _pin(fd: int, pin_path: Path | None) -> Link:
    """Pin a fresh link fd (closing it if pinning fails) and wrap it."""
    if pin_path is not None:
        mounts.ensure_pin_dir(pin_path.parent)
        ret = libbpf.bpf_obj_pin(fd, str(pin_path).encode())
        if ret < 0:
            os.close(fd)
            libbpf.check(ret, f"pinning link at {pin_path}")
    return Link(fd, pin_path)


def open_pinned(pin_path: Path) -> Link:
    """Open a link pinned at `pin_path` (BPF_OBJ_GET)."""
    ret = libbpf.bpf_obj_get(str(pin_path).encode())
    return Link(libbpf.check(ret, f"opening pinned link {pin_path}"), pin_path)


def _adopt(pin_path: Path, prog: Program, *, kind: str, attach_type: int, ifindex: int | None = None,
           cgroup_id: int | None = None) -> Link | None:
    """Swap `prog` into a matching pinned link and return it; remove a non-matching one; None if none."""
    try:
        link = open_pinned(pin_path)
    except KeyNotFound:
        return None
    try:
        info = link.info()
    except DatapathError:
        link.detach()  # not a link (or a stale pin): clear the path
        return None
    if (info.type, info.attach_type, info.ifindex, info.cgroup_id) == (kind, attach_type, ifindex, cgroup_id):
        try:
            link.update(prog)
            return link
        except DatapathError:
            pass  # e.g. the new program's type differs: replace the link instead
    link.detach()
    return None


def attach_tcx(prog: Program, ifindex: int, direction: Literal["ingress", "egress"], pin_path: Path) -> Link:
    """Attach a sched_cls program at tcx ingress/egress of `ifindex` (this thread's netns), pinned.

    Falls back to a clsact direct-action filter (handle 1, priority 1, replaced in place) when the
    kernel has no tcx; that attachment persists without a pin and `pin_path` is then unused.
    """
    attach_type = BPF_TCX_INGRESS if direction == "ingress" else BPF_TCX_EGRESS
    adopted = _adopt(pin_path, prog, kind="tcx", attach_type=attach_type, ifindex=ifindex)
    if adopted is not None:
        return adopted
    ret = libbpf.bpf_link_create(prog.fd, ifindex, attach_type, None)
    if ret == -errno.EINVAL and not _kernel_has_tcx():
        return attach_tc_legacy(prog, ifindex, direction)
    fd = libbpf.check(ret, f"tcx {direction} attach of {prog.name} to ifindex {ifindex}",
                      feature=("tcx", "6.6"))
    return _pin(fd, pin_path)


def _kernel_has_tcx() -> bool:
    """Whether the running kernel knows tcx (Linux >= 6.6)."""
    release = os.uname().release.split(".")
    return (int(release[0]), int("".join(c for c in release[1] if c.isdigit()) or 0)) >= (6, 6)


def _tc_hook(ifindex: int, attach_point: int) -> tuple[libbpf.TcHook, libbpf.TcOpts]:
    """bpf_tc_hook and bpf_tc_opts for Velvet's one filter slot on a clsact hook."""
    hook = libbpf.TcHook(sz=ctypes.sizeof(libbpf.TcHook), ifindex=ifindex, attach_point=attach_point)
    opts = libbpf.TcOpts(sz=ctypes.sizeof(libbpf.TcOpts), handle=_TC_HANDLE, priority=_TC_PRIORITY)
    return hook, opts


def _tc_attach(prog: Program, where: _TcFilter) -> None:
    """Install or replace Velvet's direct-action filter on a clsact hook."""
    hook, opts = _tc_hook(where.ifindex, where.attach_point)
    opts.prog_fd = prog.fd
    opts.flags = _TC_F_REPLACE
    libbpf.check(libbpf.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts)), f"tc attach of {prog.name}")


def _clsact(ifindex: int) -> None:
    """Create the clsact qdisc of `ifindex` unless it has one."""
    hook, _ = _tc_hook(ifindex, _TC_INGRESS | _TC_EGRESS)
    with libbpf.capture_log():  # libbpf logs an existing qdisc (EEXIST) as an error; it is expected here
        ret = libbpf.bpf_tc_hook_create(ctypes.byref(hook))
    if ret != -errno.EEXIST:
        libbpf.check(ret, f"creating clsact on ifindex {ifindex}")


def attach_tc_legacy(prog: Program, ifindex: int, direction: Literal["ingress", "egress"]) -> Link:
    """Attach through clsact + a direct-action filter (Linux >= 4.5; no link, survives without a pin)."""
    where = _TcFilter(ifindex, _TC_INGRESS if direction == "ingress" else _TC_EGRESS)
    _clsact(ifindex)
    _tc_attach(prog, where)
    return Link(-1, None, tc_filter=where)


def attach_tc_pair(ingress: Program, egress: Program, ifindex: int) -> None:
    """Direct-action filters on both clsact hooks of `ifindex`, installed or replaced in place."""
    _clsact(ifindex)
    _tc_attach(ingress, _TcFilter(ifindex, _TC_INGRESS))
    _tc_attach(egress, _TcFilter(ifindex, _TC_EGRESS))


def tc_filter_program(ifindex: int, direction: Literal["ingress", "egress"]) -> int | None:
    """Program id of Velvet's filter on one clsact hook of `ifindex`; None when it has none."""
    hook, opts = _tc_hook(ifindex, _TC_INGRESS if direction == "ingress" else _TC_EGRESS)
    with libbpf.capture_log():  # no clsact / no filter is an answer here, not an error to log
        ret = libbpf.bpf_tc_query(ctypes.byref(hook), ctypes.byref(opts))
    return int(opts.prog_id) if ret == 0 else None


def detach_tc_pair(ifindex: int) -> None:
    """Remove Velvet's filters from both clsact hooks of `ifindex` (absent ones are fine)."""
    for point in (_TC_INGRESS, _TC_EGRESS):
        hook, opts = _tc_hook(ifindex, point)
        with libbpf.capture_log():
            ret = libbpf.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts))
        if ret not in (0, -errno.ENOENT, -errno.EINVAL, -errno.ENODEV):
            libbpf.check(ret, f"tc filter detach on ifindex {ifindex}")


def attach_cgroup(prog: Program, cgroup_path: Path, attach_type: int, pin_path: Path) -> Link:
    """Attach a cgroup program (e.g. sock_addr connect4) to a cgroup v2 directory with a pinned link."""
    cgroup_id = os.stat(cgroup_path).st_ino  # a cgroup v2 id is its kernfs inode number
    adopted = _adopt(pin_path, prog, kind="cgroup", attach_type=attach_type, cgroup_id=cgroup_id)
    if adopted is not None:
        return adopted
    cg_fd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        ret = libbpf.bpf_link_create(prog.fd, cg_fd, attach_type, None)
    finally:
        os.close(cg_fd)
    fd = libbpf.check(ret, f"cgroup attach of {prog.name} to {cgroup_path}",
                      feature=("cgroup BPF links", "5.7"))
    return _pin(fd, pin_path)


def _tracepoint_id(category: str, name: str) -> int:
    """The tracefs event id of a tracepoint (events/<category>/<name>/id)."""
    path = mounts.ensure_tracefs() / "events" / category / name / "id"
    try:
        return int(path.read_text())
    except OSError as exc:
        raise DatapathError(f"tracepoint {category}:{name}: {exc.strerror} ({path})", exc.errno or 0) from exc


def attach_tracepoint(prog: Program, category: str, name: str, pin_path: Path | None = None) -> Link:
    """Attach a tracepoint program through a perf-event BPF link (pinned when pin_path is given).

    Done by hand (perf_event_open + BPF_LINK_CREATE) rather than with libbpf's
    bpf_program__attach_tracepoint, whose link cannot be handed over without leaking its fds.
    """
    if pin_path is not None:
        detach_pinned(pin_path)  # perf-event links cannot be updated: replace
    attr = _PerfEventAttr(type=_PERF_TYPE_TRACEPOINT, size=ctypes.sizeof(_PerfEventAttr),
                          config=_tracepoint_id(category, name), sample_period=1, wakeup_events=1)
    pfd = _libc.syscall(_NR_PERF_EVENT_OPEN, ctypes.byref(attr), -1, 0, -1, _PERF_FLAG_FD_CLOEXEC)
    if pfd < 0:
        err = ctypes.get_errno()
        raise DatapathError(f"perf_event_open for {category}:{name}: {libbpf.strerror(err)}", err)
    try:
        ret = libbpf.bpf_link_create(prog.fd, pfd, BPF_PERF_EVENT, None)
        fd = libbpf.check(ret, f"attaching {prog.name} to tracepoint {category}:{name}",
                          feature=("BPF perf-event links", "5.15"))
    finally:
        os.close(pfd)  # the link holds the perf event from now on
    return _pin(fd, pin_path)


def attach_raw_tracepoint(prog: Program, name: str, pin_path: Path | None = None, *,
                          btf: bool = False) -> Link:
    """Attach a raw tracepoint program (BPF_RAW_TRACEPOINT_OPEN gives a link, pinned at pin_path if given);
    `btf`: a tp_btf program, whose tracepoint `name` was named at load (SEC("tp_btf/<name>"))."""
    if pin_path is not None:
        detach_pinned(pin_path)  # raw tracepoint links cannot be updated: replace
    fd = libbpf.check(libbpf.bpf_raw_tracepoint_open(None if btf else name.encode(), prog.fd),
                      f"attaching {prog.name} to raw tracepoint {name}")
    return _pin(fd, pin_path)


def detach_pinned(pin_path: Path) -> bool:
    """Remove the attachment pinned at `pin_path`; False if nothing was pinned there."""
    try:
        link = open_pinned(pin_path)
    except KeyNotFound:
        return False
    link.detach()
    return True


def list_pinned_links(directory: Path) -> list[tuple[Path, LinkInfo]]:
    """Every link pinned directly in `directory`, with its info (other pinned objects are skipped)."""
    found: list[tuple[Path, LinkInfo]] = []
    if not directory.is_dir():
        return found
    for path in sorted(directory.iterdir()):
        try:
            link = open_pinned(path)
        except DatapathError:
            continue
        try:
            found.append((path, link.info()))
        except DatapathError:
            pass  # a pinned map or program, not a link
        finally:
            link.close()
    return found
