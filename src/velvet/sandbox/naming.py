"""Every name and address of a sandbox, derived from its name alone so a crash leaves nothing unfindable.

A sandbox `<sb>` owns exactly these objects (nothing in the root network namespace):

- network namespaces `velvet-<sb>-node` (node 0), `velvet-<sb>-node<k>` (node k of a multi-node
  sandbox), `velvet-<sb>-ext` (the external client), `velvet-<sb>-lan` (the nodes' underlay bridge)
  and `velvet-<sb>-etcd` (both only with several nodes), and `velvet-<sb>-p-<hash8>` per pod of node 0,
  `velvet-<sb>-p<k>-<hash8>` per pod of node k;
- inside a node namespace: the veth pair `velvet_host`/`velvet_net` (pod gateway), `uplink0` (veth
  to the external client's `eth0`, or to port `n<k>` of the underlay bridge) and one `vv<hash8>` veth
  per pod (its peer is `eth0` in the pod);
- cgroup v2 directories `<cgroup2>/velvet/<sb>/node` (`.../node<k>`), `.../pod-<hash8>` and `.../shims`
  below it, and `.../etcd`;
- `/sys/fs/bpf/velvet/<sb>` (pins), `/var/lib/velvet/<sb>` (state), `/run/velvet/<sb>` (runtime), as
  `velvet.paths` places them; node k's nest below them in `node<k>/`.

`<hash8>` is the first 8 hex digits of sha256("<namespace>/<name>").
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from velvet.errors import SandboxError
from velvet.paths import DEFAULT_SANDBOX, SANDBOX_NAME, AgentPaths, check_sandbox_name
from velvet.system.mounts import cgroup2_mount
from velvet.system.netns import NETNS_RUN_DIR

DEFAULT_HTTP_PORT = 9962

NODE_HOST_IF = "velvet_host"
NODE_NET_IF = "velvet_net"
NODE_UPLINK_IF = "uplink0"
EXT_UPLINK_IF = "eth0"
POD_IF = "eth0"
LAN_BRIDGE_IF = "br0"
LAN_EXT_PORT = "ext"
LAN_ETCD_PORT = "etcd"
MAX_NODES = 8
CLUSTER_POD_CIDR = "10.244.0.0/16"
ETCD_IP = "192.168.77.250"

NETNS_RE = re.compile(
    rf"velvet-(?P<sandbox>{SANDBOX_NAME.pattern})-(?P<role>node[1-7]?|ext|lan|etcd|p[1-7]?-[0-9a-f]{{8}})")


def cgroup_root() -> Path:
    """The cgroup v2 directory holding every sandbox's tree: `<cgroup2>/velvet`."""
    return cgroup2_mount() / "velvet"


def pod_hash(namespace: str, name: str) -> str:
    """Return the 8 hex digits that name every object of pod `namespace/name`."""
    return hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:8]


@dataclass(frozen=True)
class SandboxConfig:
    """Name and addresses of one sandbox; the defaults are the embedded default cluster."""

    sandbox: str = DEFAULT_SANDBOX
    pod_cidr: str = "10.244.0.0/24"
    pod_gateway: str = "10.244.0.1"
    first_pod_host: int = 10
    service_cidr: str = "10.96.0.0/16"
    node_uplink_ip: str = "192.168.77.2"
    ext_uplink_ip: str = "192.168.77.1"
    uplink_prefix: int = 24
    node: int = 0
    """Which node of the sandbox this is (0 for the first, the only one of a one-node sandbox)."""

    def __post_init__(self) -> None:
        """Refuse a name that is not a sandbox name (see `velvet.paths`), and inconsistent addresses."""
        check_sandbox_name(self.sandbox)
        net = ipaddress.IPv4Network(self.pod_cidr)
        if ipaddress.IPv4Address(self.pod_gateway) not in net:
            raise SandboxError(f"pod gateway {self.pod_gateway} is outside the pod CIDR {net}")
        if not 1 < self.first_pod_host < net.num_addresses - 1:
            raise SandboxError(f"first pod host {self.first_pod_host} does not fit in {net}")
        if not 0 <= self.node < MAX_NODES:
            raise SandboxError(f"node {self.node}: a sandbox has nodes 0 .. {MAX_NODES - 1}")

    @cached_property
    def names(self) -> SandboxNames:
        """Names of this sandbox's (this node's) objects."""
        return SandboxNames(self.sandbox, self.node)

    @property
    def node_name(self) -> str:
        """The node's Kubernetes name: `velvet-node`, then `velvet-node-1` .. `velvet-node-7`."""
        return "velvet-node" if self.node == 0 else f"velvet-node-{self.node}"


def node_config(sandbox: str, node: int) -> SandboxConfig:
    """Node `node` of a sandbox: pod CIDR 10.244.<node>.0/24 of the cluster's /16, IP 192.168.77.<2+node>."""
    if not 0 <= node < MAX_NODES:
        raise SandboxError(f"--nodes: a sandbox has 1 to {MAX_NODES} nodes")
    return SandboxConfig(sandbox=sandbox, pod_cidr=f"10.244.{node}.0/24", pod_gateway=f"10.244.{node}.1",
                         node_uplink_ip=f"192.168.77.{2 + node}", node=node)


def node_index(node_name: str) -> int | None:
    """The index of a node named as `SandboxConfig.node_name` names them, or None."""
    if node_name == "velvet-node":
        return 0
    head, _, tail = node_name.rpartition("-")
    if head == "velvet-node" and tail.isdigit() and 1 <= int(tail) < MAX_NODES and tail == str(int(tail)):
        return int(tail)
    return None


@dataclass(frozen=True)
class PodNames:
    """Names of one pod's objects."""

    hash8: str
    netns: str
    host_veth: str
    cgroup: Path
    state_dir: Path

    @property
    def netns_path(self) -> Path:
        """The bind mount that holds the pod's network namespace."""
        return NETNS_RUN_DIR / self.netns

    @property
    def record_file(self) -> Path:
        """The pod record (JSON)."""
        return self.state_dir / "record.json"

    def log_file(self, container: str) -> Path:
        """Where a container's stdout and stderr go."""
        return self.state_dir / f"{container}.log"

    def exit_file(self, container: str) -> Path:
        """Where the container's shim writes its exit status."""
        return self.state_dir / f"{container}.exit"


@dataclass(frozen=True)
class SandboxNames:
    """Every name of sandbox `sandbox`; pure computation except for locating the cgroup2 mount."""

    sandbox: str = DEFAULT_SANDBOX
    node: int = 0

    def __post_init__(self) -> None:
        """Refuse a name that is not a sandbox name before it becomes a path."""
        check_sandbox_name(self.sandbox)

    @property
    def node_dir(self) -> str:
        """"" for node 0, `node<k>` for node k: the node's part of its paths and names."""
        return f"node{self.node}" if self.node else ""

    @cached_property
    def paths(self) -> AgentPaths:
        """The node's roots (state, runtime, pins), as the CLI and the agent find them."""
        return AgentPaths(self.sandbox, self.node_dir)

    @property
    def prefix(self) -> str:
        """Prefix of every network namespace of this sandbox."""
        return f"velvet-{self.sandbox}-"

    @property
    def node_netns(self) -> str:
        """The node's network namespace."""
        return f"{self.prefix}node{self.node or ''}"

    @property
    def lan_netns(self) -> str:
        """The namespace of the nodes' underlay bridge (multi-node sandboxes)."""
        return f"{self.prefix}lan"

    @property
    def etcd_netns(self) -> str:
        """etcd's own namespace on the underlay (multi-node sandboxes)."""
        return f"{self.prefix}etcd"

    @property
    def lan_port(self) -> str:
        """This node's port on the underlay bridge (the peer of its uplink)."""
        return f"n{self.node}"

    @property
    def pod_role(self) -> str:
        """How this node's pod namespaces start after the sandbox prefix: `p-` or `p<k>-`."""
        return f"p{self.node or ''}-"

    @property
    def ext_netns(self) -> str:
        """The external client's network namespace."""
        return f"{self.prefix}ext"

    @cached_property
    def cgroup_sandbox(self) -> Path:
        """Top cgroup of the sandbox: `<cgroup2>/velvet/<sb>`."""
        return cgroup_root() / self.sandbox

    @property
    def cgroup_node(self) -> Path:
        """The node's cgroup (agent and supervisor run here)."""
        return self.cgroup_sandbox / f"node{self.node or ''}"

    @property
    def cgroup_shims(self) -> Path:
        """Cgroup of the container shims (they wait for containers and record their exit status)."""
        return self.cgroup_node / "shims"

    @property
    def pin_dir(self) -> Path:
        """bpffs directory for this sandbox's pinned maps and programs."""
        return self.paths.pin_dir

    @property
    def state_dir(self) -> Path:
        """Persistent state: pod records, logs, IPAM leases (the agent's own is below it)."""
        return self.paths.sandbox_dir

    @property
    def run_dir(self) -> Path:
        """Runtime files: agent API socket, pid files."""
        return self.paths.run_dir

    @property
    def http_port(self) -> int:
        """Loopback port of /metrics and the service map: 9962 (+ node) for "default", else 10000-30006.

        Derived from the name so that sandboxes side by side do not collide (the agent moves to a free
        port if it is taken anyway, and reports the port it got).
        """
        if self.sandbox == DEFAULT_SANDBOX:
            return DEFAULT_HTTP_PORT + self.node
        return 10000 + int(hashlib.sha256(self.sandbox.encode()).hexdigest()[:8], 16) % 20000 + self.node

    @property
    def agent_socket(self) -> Path:
        """The agent's local API socket."""
        return self.paths.socket

    @property
    def ipam_file(self) -> Path:
        """IPAM leases (JSON, pod uid -> IP)."""
        return self.state_dir / "ipam.json"

    @property
    def pods_dir(self) -> Path:
        """Directory holding one sub-directory per pod."""
        return self.state_dir / "pods"

    def netns_path(self, netns: str) -> Path:
        """Path of a named network namespace."""
        return NETNS_RUN_DIR / netns

    def pid_file(self, process: str) -> Path:
        """Pid file of a supervised process (e.g. `agent`, `supervisor`)."""
        return self.run_dir / f"{process}.pid"

    def log_file(self, process: str) -> Path:
        """Log of a supervised process."""
        return self.state_dir / f"{process}.log"

    def pod(self, namespace: str, name: str) -> PodNames:
        """Names of pod `namespace/name`."""
        return self.pod_by_hash(pod_hash(namespace, name))

    def pod_by_hash(self, h: str) -> PodNames:
        """Names of the pod whose hash is `h` (for cleaning up pods known only by their objects)."""
        return PodNames(h, f"{self.prefix}{self.pod_role}{h}", f"vv{h}", self.cgroup_node / f"pod-{h}",
                        self.pods_dir / h)
