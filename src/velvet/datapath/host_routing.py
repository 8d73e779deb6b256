"""Host routing (Cilium's bpf.hostRouting): whether the tc programs forward pod traffic themselves.

The mode is the agent's --host-routing; the kernel side is lib/fib.h (FIB lookup + redirect), switched
by node_config.flags. Kernel-free: the probe itself is in `features`.
"""

from __future__ import annotations

from velvet.datapath.protocol import KernelInfo
from velvet.errors import NotSupported

MODES = ("auto", "bpf", "legacy")
CHECK = "BPF host routing"
"""The name of the kernel check of the helpers it needs, as `velvet status` shows it."""
MIN_KERNEL = "5.10"


def host_routing_active(mode: str, kernel: KernelInfo) -> bool:
    """Whether the tc programs forward themselves: legacy never, bpf always (NotSupported on a kernel
    without the helpers), auto when the kernel probe passed."""
    if mode == "legacy":
        return False
    supported = kernel.supports(CHECK)
    if mode == "bpf" and not supported:
        raise NotSupported(f"{CHECK} (--host-routing bpf)", MIN_KERNEL)
    return supported
