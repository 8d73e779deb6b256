"""`velvet sandbox up | add-node | remove-node | down | status | exec`: the embedded cluster here."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from velvet.api.client import ApiClient
from velvet.cli.common import print_json, require_root
from velvet.errors import SandboxError
from velvet.paths import current_sandbox
from velvet.sandbox import (
    Node,
    PodRuntime,
    SandboxConfig,
    Supervisor,
    cleanup,
    etcd,
    exec_in_pod,
    netlink,
    routing,
    spawn_detached,
    underlay,
)
from velvet.sandbox.cgroups import create as create_cgroup
from velvet.sandbox.kubelet import Kubelet, container_path
from velvet.sandbox.naming import MAX_NODES, NODE_UPLINK_IF, node_config, node_index
from velvet.sandbox.process import alive
from velvet.sandbox.supervisor import write_pid
from velvet.system.netns import enter_netns

AGENT_START_TIMEOUT = 60.0
ETCD_DAEMON = "etcd-daemon"


def _config(args: argparse.Namespace) -> SandboxConfig:
    """The sandbox the command is for; every sandbox command works on namespaces, cgroups and pins."""
    require_root(f"`velvet sandbox {args.sandbox_command}` works on network namespaces, cgroups and BPF pins")
    return SandboxConfig(sandbox=current_sandbox(args.sandbox))


def _live_pid(path: Path) -> int | None:
    pid = cleanup.read_pid(path)
    return pid if pid is not None and alive(pid) else None


def _node_daemon_pid(cfg: SandboxConfig) -> int | None:
    return _live_pid(cfg.names.pid_file("node"))


def _node_count(text: str) -> int:
    """An argparse type: 1 to MAX_NODES nodes."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= MAX_NODES:
        raise argparse.ArgumentTypeError(f"a sandbox has 1 to {MAX_NODES} nodes, not {value}")
    return value


def _start_node(cfg: SandboxConfig, audit: bool, store: str, etcd_endpoint: str | None,
                kubeconfig: str | None = None) -> None:
    """Start the node's daemon (kubelet + supervised agent) unless it runs."""
    if _node_daemon_pid(cfg) is not None:
        return
    argv = [sys.executable, "-m", "velvet.cli.main", "--sandbox", cfg.sandbox, "sandbox", "node-daemon",
            "--node", str(cfg.node)]
    if audit:
        argv.append("--policy-audit-mode")
    if store == "etcd":
        argv += ["--store", "etcd"]
    if etcd_endpoint is not None:
        argv += ["--etcd-endpoint", etcd_endpoint]
    if kubeconfig is not None:
        argv += ["--kubeconfig", kubeconfig]
    # The daemon starts in the caller's netns and moves itself into the node's (see node-daemon).
    pid = spawn_detached(argv, netns=None, cgroup=cfg.names.cgroup_node, log=cfg.names.log_file("node"))
    write_pid(cfg.names.pid_file("node"), pid)


def _wait_for_agent(cfg: SandboxConfig) -> None:
    """Wait until the agent has started all of it (its health no longer says "starting")."""
    api = ApiClient(cfg.names.agent_socket, timeout=5.0)
    deadline = time.monotonic() + AGENT_START_TIMEOUT
    while not api.started():
        if time.monotonic() > deadline:
            raise SandboxError(f"the agent of {cfg.node_name} did not come up in "
                               f"{AGENT_START_TIMEOUT:.0f}s; "
                               f"see {cfg.names.log_file('agent')}")
        time.sleep(0.2)


def cmd_up(args: argparse.Namespace) -> int:
    """Create the node(s), start their daemons and wait for every agent."""
    cfg = _config(args)
    if args.nodes > 1:
        return _up_cluster(cfg.sandbox, args)
    if args.store == "etcd":
        etcd.etcd_binary()  # fail here, in one line, when etcd is not installed
    node = Node.create(cfg)
    routing.record(cfg.sandbox, args.routing)
    routing.record_host_routing(cfg.sandbox, args.host_routing)
    _start_node(cfg, args.policy_audit_mode, args.store, None, args.kubeconfig)
    _wait_for_agent(cfg)
    print(f"sandbox {cfg.sandbox} is up: node netns {node.netns}, pods from {cfg.pod_cidr}, "
          f"node IP {cfg.node_uplink_ip}, external client netns {node.ext_netns}")
    if args.store == "etcd":
        print(f"objects are kept in etcd at {etcd.CLIENT_URL} inside {node.netns}")
    if args.routing == "tunnel":
        print("tunnel routing: VXLAN device velvet_vxlan (UDP 8472) is up; no other node to reach yet")
    print("apply manifests with `velvet apply -f FILE`; tear down with `velvet sandbox down`")
    return 0


def _up_cluster(sandbox: str, args: argparse.Namespace) -> int:
    """N nodes on one underlay with etcd in its own namespace; native or tunnel routing between them."""
    etcd.etcd_binary()
    configs = [node_config(sandbox, k) for k in range(args.nodes)]
    names = configs[0].names
    for d in (names.state_dir, names.run_dir):
        d.mkdir(parents=True, exist_ok=True)
    names.run_dir.chmod(0o700)
    routing.record(sandbox, args.routing)
    routing.record_host_routing(sandbox, args.host_routing)
    underlay.create(sandbox, args.nodes)
    if _live_pid(names.pid_file(ETCD_DAEMON)) is None:
        create_cgroup(etcd.cgroup(names))
        argv = [sys.executable, "-m", "velvet.cli.main", "--sandbox", sandbox, "sandbox", "etcd-daemon"]
        pid = spawn_detached(argv, netns=None, cgroup=etcd.cgroup(names), log=names.log_file(ETCD_DAEMON))
        write_pid(names.pid_file(ETCD_DAEMON), pid)
    for cfg in configs:
        Node.create(cfg, lan=True)
        _start_node(cfg, args.policy_audit_mode, "etcd", etcd.LAN_CLIENT_URL)
    for cfg in configs:
        _wait_for_agent(cfg)
    mode = "native routing" if args.routing == "native" else "tunnel routing (VXLAN, UDP 8472)"
    print(f"sandbox {sandbox} is up: {args.nodes} nodes, {mode}, etcd at {etcd.LAN_CLIENT_URL} "
          f"in {names.etcd_netns}, external client netns {names.ext_netns}")
    for cfg in configs:
        print(f"  {cfg.node_name}: netns {cfg.names.node_netns}, node IP {cfg.node_uplink_ip}, "
              f"pods from {cfg.pod_cidr}")
    print("apply manifests with `velvet apply -f FILE`; tear down with `velvet sandbox down`")
    return 0


def cmd_add_node(args: argparse.Namespace) -> int:
    """Add a node to a multi-node sandbox, built as `up --nodes` builds its nodes; it joins through etcd."""
    cfg = _config(args)
    first = node_config(cfg.sandbox, 0)
    if not netlink.netns_exists(first.names.lan_netns):
        raise SandboxError(f"add-node: sandbox {cfg.sandbox} is not a multi-node sandbox "
                           "(start one with `velvet sandbox up --nodes N`)")
    present = {k for k in range(MAX_NODES) if Node.exists(node_config(cfg.sandbox, k))}
    if args.name is None:
        free = [k for k in range(1, MAX_NODES) if k not in present]
        if not free:
            raise SandboxError(f"add-node: sandbox {cfg.sandbox} already has {MAX_NODES} nodes")
        index = free[0]
    else:
        found = node_index(args.name)
        if found is None or found == 0:
            raise SandboxError(f"add-node: {args.name!r} is not a name of an added node "
                               f"(velvet-node-1 .. velvet-node-{MAX_NODES - 1})")
        if found in present:
            raise SandboxError(f"add-node: sandbox {cfg.sandbox} already has node {args.name}")
        index = found
    node = node_config(cfg.sandbox, index)
    Node.create(node, lan=True)
    underlay.route_to_node(cfg.sandbox, index)
    _start_node(node, _audits(first), "etcd", etcd.LAN_CLIENT_URL)
    _wait_for_agent(node)
    print(f"node {node.node_name} added to sandbox {cfg.sandbox}: netns {node.names.node_netns}, "
          f"node IP {node.node_uplink_ip}, pods from {node.pod_cidr}")
    return 0


def _audits(first: SandboxConfig) -> bool:
    """Whether the sandbox's first node runs in policy audit mode (an added node runs as it does)."""
    pid = _node_daemon_pid(first)
    if pid is None:
        raise SandboxError(f"add-node: the daemon of {first.node_name} does not run; "
                           "the sandbox is down or half removed (`velvet sandbox down`)")
    try:
        return b"--policy-audit-mode" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError as err:
        raise SandboxError(f"add-node: cannot read the command line of {first.node_name}'s daemon: "
                           f"{err}") from None


def _daemon_pids(cfg: SandboxConfig) -> list[int]:
    """Every node daemon and the etcd daemon of the sandbox that still run."""
    files = [cfg.names.pid_file("node"), cfg.names.pid_file(ETCD_DAEMON)]
    files += sorted(cfg.names.run_dir.glob("node[1-7]/node.pid")) if cfg.names.run_dir.is_dir() else []
    return [pid for path in files if (pid := _live_pid(path)) is not None]


def _stop(pids: list[int], timeout: float = 10.0) -> None:
    """SIGTERM `pids` and wait (up to `timeout`) until they are gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


def cmd_remove_node(args: argparse.Namespace) -> int:
    """Take a node out of a multi-node sandbox: stop its daemon (its lease is revoked), remove its objects."""
    cfg = _config(args)
    index = node_index(args.node)
    if index is None:
        raise SandboxError(f"remove-node: {args.node!r} is not a sandbox node name (velvet-node-1 .. -7)")
    if index == 0:
        raise SandboxError("remove-node: velvet-node serves the API the CLI talks to; "
                           "use `velvet sandbox down` to remove the whole sandbox")
    node = node_config(cfg.sandbox, index)
    if not Node.exists(node):
        raise SandboxError(f"remove-node: sandbox {cfg.sandbox} has no node {args.node}")
    pid = _node_daemon_pid(node)
    if pid is not None:
        _stop([pid])
    cleanup.remove(cleanup.find_node_leftovers(node.names))
    print(f"node {args.node} removed from sandbox {cfg.sandbox}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the node daemon and agent, then remove everything of the sandbox, also after a crash."""
    cfg = _config(args)
    _stop(_daemon_pids(cfg))
    leftovers = cleanup.find_leftovers(cfg.sandbox)
    cleanup.remove(leftovers)
    _remove_empty_parents(cfg)
    print(f"sandbox {cfg.sandbox} removed")
    return 0


def _remove_empty_parents(cfg: SandboxConfig) -> None:
    """Remove Velvet's top-level directories once no sandbox uses them (a non-empty one stays)."""
    names = cfg.names
    for directory in (names.cgroup_sandbox.parent, names.pin_dir.parent, names.state_dir.parent,
                      names.run_dir.parent):
        with contextlib.suppress(OSError):
            directory.rmdir()


def cmd_status(args: argparse.Namespace) -> int:
    """What exists of the sandbox: namespaces, cgroups, pins, pods, daemons."""
    cfg = _config(args)
    state = cleanup.status(cfg.sandbox)
    if args.output == "json":
        print_json(state)
        return 0
    print(f"Sandbox:    {state['sandbox']}")
    print(f"Node:       {'up' if state['node'] else 'absent'}")
    for name, daemon in state["daemons"].items():
        print(f"Daemon:     {name} pid {daemon['pid']} {'running' if daemon['running'] else 'dead'}")
    print(f"Netns:      {', '.join(state['netns']) or '-'}")
    print(f"Cgroup:     {state['cgroup'] or '-'}")
    print(f"Pins:       {state['pin_dir'] or '-'}")
    for pod in state["pods"]:
        running = ", ".join(f"{c}={'running' if up else 'exited'}" for c, up in pod["running"].items())
        print(f"Pod:        {pod['namespace']}/{pod['name']} {pod['ip']} {running}")
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    """Run a command in a pod's network namespace and cgroup, with the pod's environment (kubectl exec)."""
    cfg = _config(args)
    namespace, _, name = args.pod.rpartition("/")
    nodes = [node_config(cfg.sandbox, k) for k in range(MAX_NODES)]
    found = (PodRuntime(n).find(namespace or "default", name) for n in nodes if Node.exists(n))
    record = next((r for r in found if r is not None), None)
    if record is None:
        raise SandboxError(f"pod {namespace or 'default'}/{name} is not running in sandbox {cfg.sandbox}")
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise SandboxError("nothing to run: velvet sandbox exec NS/POD -- CMD [ARGS...]")
    env = {"PATH": container_path(), "HOME": "/root", "HOSTNAME": name,
           "TERM": os.environ.get("TERM", "dumb")}
    return exec_in_pod(record, argv, env=env)


def cmd_node_daemon(args: argparse.Namespace) -> int:
    """The node's daemon (inside the node netns): supervises the agent and runs the kubelet loop."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = node_config(_config(args).sandbox, args.node)
    names = cfg.names
    # Keep the caller's (host) netns for the agent's loopback /metrics + service map, then enter the node.
    host_netns = os.open("/proc/self/ns/net", os.O_RDONLY)
    enter_netns(names.node_netns)
    agent_argv = [sys.executable, "-m", "velvet.cli.main", "--sandbox", cfg.sandbox, "agent",
                  "--cgroup", str(names.cgroup_node), "--uplink", NODE_UPLINK_IF,
                  "--node-name", cfg.node_name, "--node-ip", cfg.node_uplink_ip, "--pod-cidr", cfg.pod_cidr,
                  "--metrics-address", f"127.0.0.1:{names.http_port}",
                  "--metrics-netns", f"/proc/self/fd/{host_netns}",
                  "--log-file", str(names.log_file("agent"))]
    if args.policy_audit_mode:
        agent_argv.append("--policy-audit-mode")
    if routing.recorded(cfg.sandbox) == "tunnel":
        agent_argv += ["--routing", "tunnel"]
    agent_argv += ["--host-routing", routing.recorded_host_routing(cfg.sandbox)]
    if names.node_dir:
        agent_argv += ["--node-dir", names.node_dir]
    etcd_supervisor = None
    if args.kubeconfig:  # objects from a Kubernetes API server (its kubeconfig), not velvet apply
        agent_argv += ["--source", "kubernetes", "--kubeconfig", args.kubeconfig]
    elif args.etcd_endpoint:
        agent_argv += ["--store", "etcd", "--etcd-endpoint", args.etcd_endpoint]
    elif args.store == "etcd":
        etcd.prepare(names)
        create_cgroup(etcd.cgroup(names))
        etcd_supervisor = Supervisor(etcd.argv(names), netns=None, cgroup=etcd.cgroup(names),
                                     log=names.log_file("etcd"), pid_file=names.pid_file("etcd"))
        etcd_supervisor.start()
        agent_argv += ["--store", "etcd", "--etcd-endpoint", etcd.CLIENT_URL]
    supervisor = Supervisor(agent_argv, netns=None, cgroup=names.cgroup_node, log=names.log_file("agent"),
                            pid_file=names.pid_file("agent"), pass_fds=(host_netns,))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    supervisor.start()
    runtime = PodRuntime(cfg)
    runtime.adopt()
    Kubelet(ApiClient(names.agent_socket, timeout=10.0), runtime, cfg.node_uplink_ip).run(stop)
    supervisor.stop()
    if etcd_supervisor is not None:
        etcd_supervisor.stop()
    return 0


def cmd_etcd_daemon(args: argparse.Namespace) -> int:
    """etcd's daemon of a multi-node sandbox: keeps etcd running in its namespace on the underlay."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    names = _config(args).names
    etcd.prepare(names)
    supervisor = Supervisor(etcd.argv(names, etcd.LAN_CLIENT_URL, etcd.LAN_PEER_URL),
                            netns=names.etcd_netns, cgroup=etcd.cgroup(names), log=names.log_file("etcd"),
                            pid_file=names.pid_file("etcd"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    supervisor.start()
    stop.wait()
    supervisor.stop()
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the sandbox command group."""
    p = sub.add_parser("sandbox", help="the embedded default cluster on this machine")
    group = p.add_subparsers(dest="sandbox_command", required=True, metavar="ACTION")
    up = group.add_parser("up", help="create the node and start its agent")
    up.add_argument("--policy-audit-mode", action="store_true", help="report policy verdicts, drop nothing")
    up.add_argument("--store", choices=["local", "etcd"], default="local",
                    help="keep applied objects in local files (default) or in an etcd the sandbox runs")
    up.add_argument("--kubeconfig", default=None,
                    help="one node whose agent reads objects from this Kubernetes API (--source kubernetes)")
    up.add_argument("--nodes", type=_node_count, default=1,
                    help=f"nodes (1-{MAX_NODES}); more than one implies --store etcd")
    up.add_argument("--routing", choices=["native", "tunnel"], default="native",
                    help="how pods reach other nodes: routes via the nodes' IPs (native, the default) or "
                         "VXLAN with VNI = the source's identity (tunnel)")
    up.add_argument("--host-routing", choices=list(routing.HOST_ROUTING_MODES), default="auto",
                    help="who forwards pod traffic on each node: the tc programs (bpf), the node's IP "
                         "stack (legacy), or bpf when the kernel allows (auto, the default)")
    up.set_defaults(func=cmd_up)
    add = group.add_parser("add-node", help="add a node to a multi-node sandbox")
    add.add_argument("--name", default=None,
                     help=f"the node's name, velvet-node-1 .. -{MAX_NODES - 1} (default: the lowest free)")
    add.set_defaults(func=cmd_add_node)
    rm = group.add_parser("remove-node", help="take one node out of a multi-node sandbox")
    rm.add_argument("node", help="the node's name, e.g. velvet-node-2")
    rm.set_defaults(func=cmd_remove_node)
    group.add_parser("down", help="remove everything the sandbox made").set_defaults(func=cmd_down)
    st = group.add_parser("status", help="list what exists of the sandbox")
    st.add_argument("-o", "--output", choices=["json"], default=None)
    st.set_defaults(func=cmd_status)
    ex = group.add_parser("exec", help="run a command in a pod: velvet sandbox exec NS/POD -- CMD")
    ex.add_argument("pod")
    ex.add_argument("argv", nargs=argparse.REMAINDER)
    ex.set_defaults(func=cmd_exec)
    nd = group.add_parser("node-daemon", help=argparse.SUPPRESS)
    nd.add_argument("--policy-audit-mode", action="store_true")
    nd.add_argument("--store", choices=["local", "etcd"], default="local")
    nd.add_argument("--node", type=int, default=0)
    nd.add_argument("--etcd-endpoint", default=None)
    nd.add_argument("--kubeconfig", default=None)
    nd.set_defaults(func=cmd_node_daemon)
    group.add_parser("etcd-daemon", help=argparse.SUPPRESS).set_defaults(func=cmd_etcd_daemon)
