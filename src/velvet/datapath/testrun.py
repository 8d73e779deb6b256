"""Run a loaded program on a test input with BPF_PROG_TEST_RUN (tc, xdp, cgroup_skb, ... since Linux 4.12).

For sched_cls programs the optional context is a `struct __sk_buff` image (see `skb_ctx`); the
kernel accepts only some fields there (mark, priority, ingress_ifindex, ifindex, cb, tstamp,
wire_len, gso_segs, gso_size, hwtstamp) and refuses a context with any other field non-zero.
An ifindex > 1 must name a device of the calling thread's network namespace (it becomes skb->dev).
"""

from __future__ import annotations

import ctypes
from ctypes import Structure, c_uint8, c_uint32, c_uint64
from dataclasses import dataclass

from velvet.datapath import libbpf
from velvet.datapath.bpfobject import Program
from velvet.errors import DatapathError


class SkBuff(Structure):
    """struct __sk_buff (uapi, Linux 6.x: 192 bytes); checked against BTF by the binding tests."""

    _fields_ = [
        ("len", c_uint32), ("pkt_type", c_uint32), ("mark", c_uint32), ("queue_mapping", c_uint32),
        ("protocol", c_uint32), ("vlan_present", c_uint32), ("vlan_tci", c_uint32), ("vlan_proto", c_uint32),
        ("priority", c_uint32), ("ingress_ifindex", c_uint32), ("ifindex", c_uint32), ("tc_index", c_uint32),
        ("cb", c_uint32 * 5), ("hash", c_uint32), ("tc_classid", c_uint32), ("data", c_uint32),
        ("data_end", c_uint32), ("napi_id", c_uint32), ("family", c_uint32), ("remote_ip4", c_uint32),
        ("local_ip4", c_uint32), ("remote_ip6", c_uint32 * 4), ("local_ip6", c_uint32 * 4),
        ("remote_port", c_uint32), ("local_port", c_uint32), ("data_meta", c_uint32),
        ("flow_keys", c_uint64), ("tstamp", c_uint64), ("wire_len", c_uint32), ("gso_segs", c_uint32),
        ("sk", c_uint64), ("gso_size", c_uint32), ("tstamp_type", c_uint8), ("hwtstamp", c_uint64),
    ]


@dataclass(frozen=True)
class TestRunResult:
    """What one BPF_PROG_TEST_RUN returned: program return value, output packet, mean ns per run."""

    __test__ = False  # not a pytest class

    retval: int
    data_out: bytes
    duration_ns: int
    ctx_out: bytes = b""


def skb_ctx(ifindex: int = 0, ingress_ifindex: int = 0, mark: int = 0, *, priority: int = 0,
            cb: tuple[int, ...] = (), tstamp: int = 0, wire_len: int = 0, gso_segs: int = 0,
            gso_size: int = 0) -> bytes:
    """A struct __sk_buff context for test_run of a tc program, zero except the fields the kernel takes."""
    if len(cb) > 5:
        raise DatapathError("__sk_buff.cb has 5 slots")
    skb = SkBuff(mark=mark, priority=priority, ingress_ifindex=ingress_ifindex, ifindex=ifindex,
                 tstamp=tstamp, wire_len=wire_len, gso_segs=gso_segs, gso_size=gso_size)
    for i, word in enumerate(cb):
        skb.cb[i] = word
    return bytes(skb)


def test_run(
    prog: Program,
    data: bytes,
    *,
    ctx: bytes | None = None,  # noqa: PT028 (a library function, not a pytest test)
    repeat: int = 1,  # noqa: PT028
    data_out_size: int = 0,  # noqa: PT028
) -> TestRunResult:
    """Run `prog` on `data` (and optional `ctx`) in the kernel; the output buffer allows growth."""
    out_size = data_out_size or len(data) + 256
    data_in = ctypes.create_string_buffer(data, len(data))
    data_out = ctypes.create_string_buffer(out_size)
    opts = libbpf.TestRunOpts(sz=ctypes.sizeof(libbpf.TestRunOpts), repeat=repeat)
    if data:
        opts.data_in = ctypes.addressof(data_in)
        opts.data_size_in = len(data)
        opts.data_out = ctypes.addressof(data_out)
        opts.data_size_out = out_size
    ctx_in = ctypes.create_string_buffer(ctx or b"", len(ctx or b""))
    ctx_out = ctypes.create_string_buffer(max(len(ctx or b""), 1))
    if ctx:
        opts.ctx_in = ctypes.addressof(ctx_in)
        opts.ctx_size_in = len(ctx)
        opts.ctx_out = ctypes.addressof(ctx_out)
        opts.ctx_size_out = len(ctx)
    ret = libbpf.bpf_prog_test_run_opts(prog.fd, ctypes.byref(opts))
    libbpf.check(ret, f"test run of {prog.name}",
                 feature=(f"BPF_PROG_TEST_RUN of {prog.type_name} programs", "4.12"))
    return TestRunResult(retval=ctypes.c_int32(opts.retval).value,
                         data_out=data_out.raw[: opts.data_size_out] if data else b"",
                         duration_ns=opts.duration,
                         ctx_out=ctx_out.raw[: opts.ctx_size_out] if ctx else b"")


test_run.__test__ = False  # type: ignore[attr-defined]  # keep pytest from collecting it when imported
