"""How one node agent runs; the sandbox passes the node's cgroup, uplink and addresses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from velvet.paths import AgentPaths


@dataclass(frozen=True)
class AgentConfig:
    """The agent's options (see `velvet agent --help`)."""

    sandbox: str
    node_dir: str = ""
    """"" for a sandbox's first node, `node<k>` for node k (see `velvet.paths.AgentPaths`)."""
    node_name: str = "velvet-node"
    node_ips: tuple[str, ...] = ()
    pod_cidr: str = "10.244.0.0/24"
    service_cidr: str = "10.96.0.0/16"
    cgroup: Path | None = None
    uplink: str | None = None
    policy_audit_mode: bool = False
    flow_capacity: int = 4095
    metrics_address: str | None = "127.0.0.1:9962"
    metrics_netns: str | None = None
    """Network namespace (a path) of the /metrics + service map listener; None: the agent's own."""
    state_dir: Path | None = None  # default: /var/lib/velvet/<sandbox>/agent
    identity_exclude_labels: tuple[str, ...] = ()
    """Regexes of pod label keys left out of identities, on top of Cilium's default list."""
    store: str = "local"
    """Where applied objects are kept: "local" (files under state_dir) or "etcd" (at etcd_endpoint)."""
    etcd_endpoint: str = "http://127.0.0.1:2379"
    source: str = "local"
    """Where objects come from: "local" (the embedded API server, kept per `store`) or "kubernetes"."""
    kubeconfig: Path | None = None
    """The Kubernetes source's kubeconfig; None: the pod's service account (in-cluster)."""
    routing: str = "native"
    """How pods reach other nodes: "native" (podCIDR via nodeIP) or "tunnel" (VXLAN, VNI = identity)."""
    host_routing: str = "auto"
    kube_proxy_replacement: bool = True
    """Balance services in the datapath; False leaves them to kube-proxy (the LB maps stay empty)."""
    """Who forwards pod traffic: "bpf" (the tc programs, FIB lookup + redirect), "legacy" (the node's IP
    stack), "auto" (bpf when the kernel probe passes)."""
    syscall_metrics: bool = False
    """Count every syscall per pod (velvet_syscalls_total): a program on each syscall of the machine."""

    @property
    def host_ips(self) -> tuple[str, ...]:
        """The node's own addresses: its IPs and the pods' gateway (the first address of the pod CIDR)."""
        gateway = self.pod_cidr.split("/")[0].rsplit(".", 1)[0] + ".1"
        return (*self.node_ips, gateway)

    @property
    def resolved_state_dir(self) -> Path:
        """`state_dir`, or the node's default under its sandbox (`AgentPaths.state_dir`)."""
        return self.state_dir or AgentPaths(self.sandbox, self.node_dir).state_dir
