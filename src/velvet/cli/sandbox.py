"""`velvet sandbox up | down | status | exec`: the embedded default cluster on this machine."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time

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
    spawn_detached,
)
from velvet.sandbox.cgroups import create as create_cgroup
from velvet.sandbox.kubelet import Kubelet, container_path
from velvet.sandbox.naming import NODE_UPLINK_IF
from velvet.sandbox.process import alive
from velvet.sandbox.supervisor import write_pid
from velvet.system.netns import enter_netns

AGENT_START_TIMEOUT = 60.0


def _config(args: argparse.Namespace) -> SandboxConfig:
    """The sandbox the command is for; every sandbox command works on namespaces, cgroups and pins."""
    require_root(f"`velvet sandbox {args.sandbox_command}` works on network namespaces, cgroups and BPF pins")
    return SandboxConfig(sandbox=current_sandbox(args.sandbox))


def _node_daemon_pid(cfg: SandboxConfig) -> int | None:
    pid = cleanup.read_pid(cfg.names.pid_file("node"))
    return pid if pid is not None and alive(pid) else None


def cmd_up(args: argparse.Namespace) -> int:
    """Create the node, start its daemon (kubelet + supervised agent) and wait for the agent."""
    cfg = _config(args)
    node = Node.create(cfg)
    if _node_daemon_pid(cfg) is None:
        argv = [sys.executable, "-m", "velvet.cli.main", "--sandbox", cfg.sandbox, "sandbox", "node-daemon"]
        if args.policy_audit_mode:
            argv.append("--policy-audit-mode")
        if args.store == "etcd":
            etcd.etcd_binary()  # fail here, in one line, when etcd is not installed
            argv += ["--store", "etcd"]
        # The daemon starts in the caller's netns and moves itself into the node's (see node-daemon).
        pid = spawn_detached(argv, netns=None, cgroup=node.cgroup, log=cfg.names.log_file("node"))
        write_pid(cfg.names.pid_file("node"), pid)
    api = ApiClient(cfg.names.agent_socket, timeout=5.0)
    deadline = time.monotonic() + AGENT_START_TIMEOUT
    while not api.healthy():
        if time.monotonic() > deadline:
            raise SandboxError(f"the agent did not come up in {AGENT_START_TIMEOUT:.0f}s; "
                               f"see {cfg.names.log_file('agent')}")
        time.sleep(0.2)
    print(f"sandbox {cfg.sandbox} is up: node netns {node.netns}, pods from {cfg.pod_cidr}, "
          f"node IP {cfg.node_uplink_ip}, external client netns {node.ext_netns}")
    if args.store == "etcd":
        print(f"objects are kept in etcd at {etcd.CLIENT_URL} inside {node.netns}")
    print("apply manifests with `velvet apply -f FILE`; tear down with `velvet sandbox down`")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the node daemon and agent, then remove everything of the sandbox, also after a crash."""
    cfg = _config(args)
    pid = _node_daemon_pid(cfg)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
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
    record = PodRuntime(cfg).find(namespace or "default", name)
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
    cfg = _config(args)
    names = cfg.names
    # Keep the caller's (host) netns for the agent's loopback /metrics + service map, then enter the node.
    host_netns = os.open("/proc/self/ns/net", os.O_RDONLY)
    enter_netns(names.node_netns)
    agent_argv = [sys.executable, "-m", "velvet.cli.main", "--sandbox", cfg.sandbox, "agent",
                  "--cgroup", str(names.cgroup_node), "--uplink", NODE_UPLINK_IF,
                  "--node-ip", cfg.node_uplink_ip, "--pod-cidr", cfg.pod_cidr,
                  "--metrics-address", f"127.0.0.1:{names.http_port}",
                  "--metrics-netns", f"/proc/self/fd/{host_netns}",
                  "--log-file", str(names.log_file("agent"))]
    if args.policy_audit_mode:
        agent_argv.append("--policy-audit-mode")
    etcd_supervisor = None
    if args.store == "etcd":
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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the sandbox command group."""
    p = sub.add_parser("sandbox", help="the embedded default cluster on this machine")
    group = p.add_subparsers(dest="sandbox_command", required=True, metavar="ACTION")
    up = group.add_parser("up", help="create the node and start its agent")
    up.add_argument("--policy-audit-mode", action="store_true", help="report policy verdicts, drop nothing")
    up.add_argument("--store", choices=["local", "etcd"], default="local",
                    help="keep applied objects in local files (default) or in an etcd the sandbox runs")
    up.set_defaults(func=cmd_up)
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
    nd.set_defaults(func=cmd_node_daemon)
