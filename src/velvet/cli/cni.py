"""`velvet cni install`: let a container runtime on this machine attach its pods to a sandbox node."""

from __future__ import annotations

import argparse
from pathlib import Path

from velvet.cni.install import install
from velvet.errors import VelvetError
from velvet.paths import current_sandbox
from velvet.sandbox import routing


def cmd_install(args: argparse.Namespace) -> int:
    """Install the plugin and its conflist; say where and which agent socket it talks to."""
    sandbox = current_sandbox(args.sandbox)
    mtu = args.mtu or routing.pod_mtu(sandbox)
    if not 576 <= mtu <= 65535:
        raise VelvetError(f"cni install: --mtu {mtu} is not an MTU (576-65535)")
    plugin, conf = install(Path(args.conf_dir), Path(args.bin_dir), sandbox, args.network, mtu)
    print(f"installed {plugin} and {conf}: runtimes using them attach pods to sandbox {sandbox} (MTU {mtu})")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the cni command group."""
    p = sub.add_parser("cni", help="the CNI plugin for container runtimes")
    group = p.add_subparsers(dest="cni_command", required=True, metavar="ACTION")
    inst = group.add_parser("install", help="write the plugin and a conflist for a runtime")
    inst.add_argument("--conf-dir", required=True, help="the runtime's CNI config directory")
    inst.add_argument("--bin-dir", required=True, help="the runtime's CNI plugin directory")
    inst.add_argument("--sandbox", default=argparse.SUPPRESS, help="the sandbox node to attach pods to")
    inst.add_argument("--network", default="velvet", help="network name (default: velvet)")
    inst.add_argument("--mtu", type=int, default=0,
                      help="pods' MTU (default: the sandbox's, 1450 in tunnel mode for VXLAN, else 1500)")
    inst.set_defaults(func=cmd_install)
