"""Sandbox names, and where a sandbox keeps its socket, state and pins: one place for the CLI and the agent.

A sandbox name becomes part of paths (`/run/velvet/<sb>`, `/var/lib/velvet/<sb>`, the bpffs pin
directory, the cgroup tree) and of network namespace names `velvet-<sb>-<role>` that cleanup parses
back, so it is 1-16 characters of [a-z0-9]: no '/' or '.' can climb out of a root, and no '-' can
make one sandbox's names start like another's (`velvet-a-` is a prefix of sandbox `a-b`'s).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from velvet.errors import SandboxError
from velvet.system.mounts import BPFFS

DEFAULT_SANDBOX = "default"
SANDBOX_NAME = re.compile(r"[a-z0-9]{1,16}")
NODE_DIR = re.compile(r"node[1-7]")
BPFFS_ROOT = BPFFS / "velvet"
STATE_ROOT = Path("/var/lib/velvet")
RUN_ROOT = Path("/run/velvet")


def check_sandbox_name(name: str, source: str = "sandbox name") -> str:
    """Return `name` if it may name a sandbox; else raise SandboxError naming `source` (e.g. --sandbox)."""
    if not SANDBOX_NAME.fullmatch(name):
        raise SandboxError(f"{source}: {name!r} is not a sandbox name: use 1-16 characters of [a-z0-9]")
    return name


def current_sandbox(explicit: str | None = None) -> str:
    """The sandbox the CLI talks to: `explicit` (--sandbox), else $VELVET_SANDBOX, else "default"; checked."""
    if explicit is not None:
        return check_sandbox_name(explicit, "--sandbox")
    from_env = os.environ.get("VELVET_SANDBOX")
    if from_env is not None:
        return check_sandbox_name(from_env, "$VELVET_SANDBOX")
    return DEFAULT_SANDBOX


@dataclass(frozen=True)
class AgentPaths:
    """Filesystem locations of one sandbox node and its agent.

    `node` is "" for a sandbox's first node (its directories are the sandbox's own) and `node<k>` for
    node k of a multi-node sandbox, whose directories nest below the sandbox's so that removing the
    sandbox's removes every node's.
    """

    sandbox: str
    node: str = ""

    def __post_init__(self) -> None:
        """Refuse a name that is not a sandbox name (or node directory) before it becomes a path."""
        check_sandbox_name(self.sandbox)
        if self.node and not NODE_DIR.fullmatch(self.node):
            raise SandboxError(f"node directory {self.node!r}: expected node1 .. node7")

    @property
    def run_dir(self) -> Path:
        """Runtime directory (socket, pid files)."""
        return RUN_ROOT / self.sandbox / self.node

    @property
    def socket(self) -> Path:
        """The agent's root-only API socket; $VELVET_API_SOCKET overrides it."""
        override = os.environ.get("VELVET_API_SOCKET")
        return Path(override) if override else self.run_dir / "agent.sock"

    @property
    def sandbox_dir(self) -> Path:
        """Persistent state of the whole sandbox (pod records, IPAM leases, logs); the agent's is below."""
        return STATE_ROOT / self.sandbox / self.node

    @property
    def state_dir(self) -> Path:
        """Persistent agent state (the local store, endpoints, identities)."""
        return self.sandbox_dir / "agent"

    @property
    def pin_dir(self) -> Path:
        """bpffs directory holding the pinned maps and links."""
        return BPFFS_ROOT / self.sandbox / self.node
