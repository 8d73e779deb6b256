"""`velvet agent`: run the node agent in the foreground (the sandbox supervises it)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from velvet.cli.common import require_root
from velvet.logs import LOG_BACKUPS, LOG_MAX_BYTES, setup_logging
from velvet.paths import current_sandbox


def cmd_agent(args: argparse.Namespace) -> int:
    """Run the agent with the options given, until SIGTERM."""
    from velvet.agent.config import AgentConfig
    from velvet.agent.lease import renew_predecessors_lease

    require_root("the agent loads eBPF programs, pins maps and keeps its state under /var/lib/velvet")
    setup_logging(Path(args.log_file) if args.log_file else None, args.log_max_bytes, args.log_backups)
    sandbox = current_sandbox(args.sandbox)
    config = AgentConfig(
        sandbox=sandbox, node_dir=args.node_dir, node_name=args.node_name,
        node_ips=tuple(args.node_ip), pod_cidr=args.pod_cidr,
        cgroup=Path(args.cgroup) if args.cgroup else None, uplink=args.uplink,
        policy_audit_mode=args.policy_audit_mode, flow_capacity=args.flow_capacity,
        metrics_address=args.metrics_address or None,
        identity_exclude_labels=tuple(args.identity_exclude_label), metrics_netns=args.metrics_netns or None,
        store=args.store, etcd_endpoint=args.etcd_endpoint, routing=args.routing,
        host_routing=args.host_routing, source=args.source,
        kube_proxy_replacement=args.kube_proxy_replacement == "true",
        kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None, syscall_metrics=args.syscall_metrics,
    )
    predecessor = renew_predecessors_lease(config)  # before the API server's and the agent's imports
    from velvet.agent.launch import main

    main(config, fake_datapath=args.fake_datapath, predecessor=predecessor)
    return 0


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= low (a log that never rotates would grow without bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value

    return parse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `velvet agent`."""
    p = sub.add_parser("agent", help="run the node agent (in the node's network namespace)")
    p.add_argument("--node-name", default="velvet-node")
    p.add_argument("--node-dir", default="", help=argparse.SUPPRESS)
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
    p.add_argument("--log-file", default=None,
                   help="write the log (and stdout/stderr) to this file, rotated by size (default: stderr)")
    p.add_argument("--log-max-bytes", type=_at_least(4096), default=LOG_MAX_BYTES,
                   help="size at which the log file rotates")
    p.add_argument("--log-backups", type=_at_least(1), default=LOG_BACKUPS, help="rotated log files kept")
    p.add_argument("--store", choices=["local", "etcd"], default="local",
                   help="where applied objects are kept: local files, or etcd (see --etcd-endpoint)")
    p.add_argument("--source", choices=["local", "kubernetes"], default="local",
                   help="where objects come from: the agent's own API (velvet apply; kept per --store), or "
                        "the Kubernetes API (kubectl; see --kubeconfig)")
    p.add_argument("--kubeconfig", default=None,
                   help="kubeconfig of the Kubernetes source (default: the pod's service account)")
    p.add_argument("--etcd-endpoint", default="http://127.0.0.1:2379", help="etcd's client URL (http)")
    p.add_argument("--routing", choices=["native", "tunnel"], default="native",
                   help="reach other nodes' pods via their IPs (native) or VXLAN, VNI = identity (tunnel)")
    p.add_argument("--host-routing", choices=["auto", "bpf", "legacy"], default="auto",
                   help="forward pod traffic from the tc programs, bypassing the node's IP stack (bpf), "
                        "through the stack (legacy), or bpf when the kernel has the helpers (auto)")
    p.add_argument("--kube-proxy-replacement", choices=["true", "false"], default="true",
                   help="balance services in the datapath (true), or leave them to kube-proxy (false)")
    p.add_argument("--syscall-metrics", action="store_true",
                   help="count syscalls per pod (velvet_syscalls_total; a program runs on every syscall)")
    p.add_argument("--fake-datapath", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_agent)
