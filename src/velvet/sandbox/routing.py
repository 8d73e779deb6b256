"""The sandbox's routing and host routing modes: recorded by `sandbox up`, read by every node daemon
and pod runtime.

Nodes started later (restarted daemons, added nodes) read the same record, so the whole sandbox runs
in one mode. In tunnel mode pods get an MTU 50 bytes below the underlay's, the room VXLAN over IPv4
takes (as Cilium does), so a full-size pod frame fits one outer packet instead of two fragments.
"""

from __future__ import annotations

from pathlib import Path

from velvet.sandbox.naming import SandboxConfig

MODES = ("native", "tunnel")
HOST_ROUTING_MODES = ("auto", "bpf", "legacy")
UNDERLAY_MTU = 1500  # the sandbox's veths keep the kernel's default
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8


def _record(sandbox: str, name: str) -> Path:
    """A record, in the sandbox's (node 0's) state directory; `sandbox down` removes it with it."""
    return SandboxConfig(sandbox=sandbox).names.state_dir / name


def _recorded(sandbox: str, name: str, choices: tuple[str, ...]) -> str:
    """A recorded mode; the first of `choices` when none (or none of them) was recorded."""
    try:
        mode = _record(sandbox, name).read_text().strip()
    except FileNotFoundError:
        return choices[0]
    return mode if mode in choices else choices[0]


def record(sandbox: str, mode: str) -> None:
    """Remember the routing mode `sandbox up` was given (the state directory exists by then)."""
    _record(sandbox, "routing").write_text(mode)


def recorded(sandbox: str) -> str:
    """The sandbox's routing mode ("native" when none was recorded)."""
    return _recorded(sandbox, "routing", MODES)


def record_host_routing(sandbox: str, mode: str) -> None:
    """Remember the --host-routing `sandbox up` was given, for every agent of the sandbox."""
    _record(sandbox, "host-routing").write_text(mode)


def recorded_host_routing(sandbox: str) -> str:
    """The sandbox's --host-routing for its agents ("auto" when none was recorded)."""
    return _recorded(sandbox, "host-routing", HOST_ROUTING_MODES)


def pod_mtu(sandbox: str) -> int:
    """The MTU of the sandbox's pod veths: the underlay's, less VXLAN's overhead in tunnel mode."""
    return UNDERLAY_MTU - VXLAN_OVERHEAD if recorded(sandbox) == "tunnel" else UNDERLAY_MTU
