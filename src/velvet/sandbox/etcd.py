"""The sandbox's etcd: a plain `etcd` process (Debian's etcd-server) inside the node's network namespace.

With one node it runs in the node namespace and listens on that namespace's loopback only (client
127.0.0.1:2379, peer 127.0.0.1:2380): the agent is its only client, and nothing of it is reachable
from the host or any other namespace; the node daemon supervises it like the agent. With several
nodes it runs in `velvet-<sb>-etcd` on the nodes' underlay (client 192.168.77.250:2379), supervised
by a daemon of its own (`sandbox etcd-daemon`), so that removing any node leaves it running. Its data
lives in `/var/lib/velvet/<sb>/etcd` (0700), removed with the sandbox; it is stopped by its pid.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from velvet.errors import SandboxError
from velvet.sandbox.naming import ETCD_IP, SandboxNames

CLIENT_URL = "http://127.0.0.1:2379"
PEER_URL = "http://127.0.0.1:2380"
LAN_CLIENT_URL = f"http://{ETCD_IP}:2379"
LAN_PEER_URL = f"http://{ETCD_IP}:2380"
MEMBER = "velvet"
MAX_TXN_OPS = 65536  # etcd's default, 128, is less than one apply of 64 Services with their slices
MAX_REQUEST_BYTES = 64 << 20  # etcd's default is 1.5 MiB; the agent takes 32 MiB requests (base64 grows)


def etcd_binary() -> str:
    """Path of the etcd server, or a `SandboxError` saying how to install it."""
    found = shutil.which("etcd")
    if found is None:
        raise SandboxError("etcd is not installed: run scripts/setup.sh (Debian package etcd-server)")
    return found


def data_dir(names: SandboxNames) -> Path:
    """Where the sandbox's etcd keeps its data."""
    return names.state_dir / "etcd"


def cgroup(names: SandboxNames) -> Path:
    """The cgroup etcd runs in (beside the node's, so the node's socket programs do not see it)."""
    return names.cgroup_sandbox / "etcd"


def argv(names: SandboxNames, client_url: str = CLIENT_URL, peer_url: str = PEER_URL) -> list[str]:
    """The etcd command line of one single-member cluster listening on `client_url` and `peer_url`, taking
    an apply of every object the agent's API accepts in one transaction (`velvet apply` is all-or-nothing)."""
    return [etcd_binary(), "--name", MEMBER, "--data-dir", str(data_dir(names)),
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"{MEMBER}={peer_url}", "--initial-cluster-state", "new",
            "--max-txn-ops", str(MAX_TXN_OPS), "--max-request-bytes", str(MAX_REQUEST_BYTES),
            "--log-level", "warn"]


def prepare(names: SandboxNames) -> None:
    """Create the data directory, private to root (0700)."""
    path = data_dir(names)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
