"""`velvet agent`: run the node agent in the foreground (the sandbox supervises it)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from velvet.cli.common import require_root
from velvet.paths import current_sandbox


def cmd_agent(args: argparse.Namespace) -> int:
    """Run the agent with the options given, until SIGTERM."""
    from velvet.agent.config import AgentConfig
    from velvet.agent.daemon import main

    require_root("the agent loads eBPF programs, pins maps and keeps its state under /var/lib/velvet")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sandbox = current_sandbox(args.sandbox)
    config = AgentConfig(
        sandbox=sandbox, node_name=args.node_name, node_ips=tuple(args.node_ip), pod_cidr=args.pod_cidr,
        cgroup=Path(args.cgroup) if args.cgroup else None, uplink=args.uplink,
        policy_audit_mode=args.policy_audit_mode, flow_capacity=args.flow_capacity,
        metrics_address=args.metrics_address or None,
        identity_exclude_labels=tuple(args.identity_exclude_label), metrics_netns=args.metrics_netns or None,
    )
    main(config, fake_datapath=args.fake_datapath)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `velvet agent`."""
    p = sub.add_parser("agent", help="run the node agent (in the node's network namespace)")
    p.add_argument("--node-name", default="velvet-node")
    p.add_argument("--node-ip", action="append", default=[], help="an address of this node (repeatable)")
    p.add_argument("--pod-cidr", default="10.244.0.0/24")
    p.add_argument("--cgroup", default=None, help="cgroup v2 directory for the socket load balancer")
    p.add_argument("--uplink", default=None, help="interface receiving NodePort/external traffic")
    p.add_argument("--policy-audit-mode", action="store_true", help="report verdicts, drop nothing")
    p.add_argument("--identity-exclude-label", action="append", default=[], metavar="REGEX",
                   help="pod label keys left out of identities, beyond the default list (repeatable)")
    p.add_argument("--flow-capacity", type=int, default=4095, help="flows kept in memory")
    p.add_argument("--metrics-address", default="127.0.0.1:9962",
                   help="loopback address of /metrics and the service map /ui/ (empty: off)")
    p.add_argument("--metrics-netns", default=None,
                   help="network namespace file to open that listener in (default: the agent's)")
    p.add_argument("--fake-datapath", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_agent)
