"""Probe the running kernel for everything the datapath uses (libbpf probes, mounts, tcx, SCTP).

Needs root for the BPF probes; each check names what a failure disables instead of aborting.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from velvet.datapath import host_routing, libbpf
from velvet.datapath.attach import BPF_TCX_INGRESS
from velvet.datapath.protocol import FeatureCheck
from velvet.errors import DatapathError
from velvet.system import mounts

PROG_TYPES_NEEDED: dict[str, tuple[int, str]] = {
    "sched_cls": (3, "tc datapath (pod veth, node uplink)"),
    "cgroup_sock_addr": (18, "socket load balancing"),
    "tracepoint": (5, "process and TCP state events"),
    "cgroup_skb": (8, "cgroup packet accounting"),
}
MAP_TYPES_NEEDED: dict[str, tuple[int, str]] = {
    "hash": (1, "services, conntrack and policy maps"),
    "lru_hash": (9, "conntrack and session affinity"),
    "lpm_trie": (11, "ipcache (CIDR identities)"),
    "ringbuf": (27, "flow and process events"),
    "sk_storage": (24, "socket LB reverse translation of connected sockets"),
    "percpu_hash": (5, "per-CPU metrics"),
    "array": (2, "counters and settings"),
}
MIN_KERNEL = (5, 10)
HOST_ROUTING_HELPERS = {"bpf_fib_lookup": 69, "bpf_redirect_neigh": 152}
_SCHED_CLS = 3
_CLONE_NEWNET = 0x40000000
_TRIVIAL_PROG = bytes.fromhex("b700000000000000" "9500000000000000")  # r0 = 0; exit


def kernel_release() -> str:
    """The running kernel's release string (uname -r)."""
    return os.uname().release


def _version() -> tuple[int, int]:
    """(major, minor) of the running kernel."""
    major, minor = kernel_release().split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def _probe(fn: Callable[[int, None], Any], type_id: int) -> tuple[bool, str]:
    """Run a libbpf_probe_bpf_*_type: 1 supported, 0 not, < 0 probe failed."""
    ret = int(fn(type_id, None))
    if ret < 0:
        return False, f"probe failed: {libbpf.strerror(-ret)}"
    return ret == 1, "supported" if ret == 1 else "not supported by this kernel"


def _tcx_probe() -> tuple[bool, str]:
    """Attach a trivial tc program with tcx to lo of a throwaway netns (only a helper thread enters it)."""
    result: list[tuple[bool, str]] = []

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(_CLONE_NEWNET) != 0:
            result.append((False, f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}"))
            return
        insns = ctypes.create_string_buffer(_TRIVIAL_PROG, len(_TRIVIAL_PROG))
        prog_fd = libbpf.bpf_prog_load(3, b"velvet_probe", b"GPL", insns, len(_TRIVIAL_PROG) // 8, None)
        if prog_fd < 0:
            result.append((False, f"loading a probe program: {libbpf.strerror(-prog_fd)}"))
            return
        link_fd = libbpf.bpf_link_create(prog_fd, 1, BPF_TCX_INGRESS, None)
        os.close(prog_fd)
        if link_fd < 0:
            result.append((False, f"tcx link: {libbpf.strerror(-link_fd)}"))
            return
        os.close(link_fd)
        result.append((True, "tcx links work"))

    thread = threading.Thread(target=run, name="velvet-tcx-probe")
    thread.start()
    thread.join()
    return result[0]


def _host_routing_check() -> FeatureCheck:
    """Whether tc programs may call the helpers of host routing (libbpf_probe_bpf_helper)."""
    missing = []
    for name, func_id in HOST_ROUTING_HELPERS.items():
        ret = int(libbpf.libbpf_probe_bpf_helper(_SCHED_CLS, func_id, None))
        if ret != 1:
            missing.append(name if ret == 0 else f"{name} (probe failed: {libbpf.strerror(-ret)})")
    detail = ("bpf_fib_lookup and bpf_redirect_neigh work in tc programs" if not missing
              else f"missing {', '.join(missing)} (need Linux >= {host_routing.MIN_KERNEL})")
    disables = "BPF host routing (the node's IP stack forwards)"
    return FeatureCheck(host_routing.CHECK, not missing, detail, disables)


def _path_check(name: str, find: Callable[[], Path], disables: str) -> FeatureCheck:
    """A check that finds (or mounts) a path."""
    try:
        where = find()
    except DatapathError as exc:
        return FeatureCheck(name, False, str(exc), disables)
    return FeatureCheck(name, True, str(where), disables)


def probe() -> list[FeatureCheck]:
    """Check every kernel feature Velvet uses; missing ones say what they disable."""
    version = _version()
    checks = [
        FeatureCheck("kernel version", version >= MIN_KERNEL,
                     f"{kernel_release()} (need >= {MIN_KERNEL[0]}.{MIN_KERNEL[1]})", "the whole datapath"),
        FeatureCheck("BTF", Path("/sys/kernel/btf/vmlinux").is_file(), "/sys/kernel/btf/vmlinux",
                     "CO-RE programs (process events)"),
        _path_check("bpffs", mounts.ensure_bpffs, "pinned maps and links (datapath survives agent restarts)"),
        _path_check("cgroup v2", mounts.cgroup2_mount, "socket load balancing"),
        _path_check("tracefs", mounts.ensure_tracefs, "process and TCP state events"),
    ]
    for name, (type_id, disables) in PROG_TYPES_NEEDED.items():
        ok, detail = _probe(libbpf.libbpf_probe_bpf_prog_type, type_id)
        checks.append(FeatureCheck(f"program type {name}", ok, detail, disables))
    for name, (type_id, disables) in MAP_TYPES_NEEDED.items():
        ok, detail = _probe(libbpf.libbpf_probe_bpf_map_type, type_id)
        checks.append(FeatureCheck(f"map type {name}", ok, detail, disables))
    ok, detail = _tcx_probe()
    checks.append(FeatureCheck("tcx", ok, detail, "link-based tc attach (falls back to clsact filters)"))
    checks.append(_host_routing_check())
    sctp = sctp_supported()
    detail = "present" if sctp else "no /proc/net/sctp (CONFIG_IP_SCTP unset)"
    checks.append(FeatureCheck("SCTP", sctp, detail, "SCTP NetworkPolicy ports"))
    return checks


def sctp_supported() -> bool:
    """Whether this kernel has SCTP (CONFIG_IP_SCTP); without it no SCTP socket or packet exists."""
    return Path("/proc/net/sctp").exists() or Path("/proc/sys/net/sctp").exists()
