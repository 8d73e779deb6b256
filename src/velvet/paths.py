"""Where a sandbox keeps its socket, state and pins; one place so the CLI and the agent agree."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SANDBOX = "default"
BPFFS_ROOT = Path("/sys/fs/bpf/velvet")
STATE_ROOT = Path("/var/lib/velvet")
RUN_ROOT = Path("/run/velvet")


def current_sandbox() -> str:
    """The sandbox the CLI talks to: $VELVET_SANDBOX or "default"."""
    return os.environ.get("VELVET_SANDBOX", DEFAULT_SANDBOX)


@dataclass(frozen=True)
class AgentPaths:
    """Filesystem locations of one agent (one sandbox node)."""

    sandbox: str

    @property
    def run_dir(self) -> Path:
        """Runtime directory (socket, pid files)."""
        return RUN_ROOT / self.sandbox

    @property
    def socket(self) -> Path:
        """The agent's root-only API socket; $VELVET_API_SOCKET overrides it."""
        override = os.environ.get("VELVET_API_SOCKET")
        return Path(override) if override else self.run_dir / "agent.sock"

    @property
    def state_dir(self) -> Path:
        """Persistent agent state (the local store, endpoints, identities)."""
        return STATE_ROOT / self.sandbox / "agent"

    @property
    def pin_dir(self) -> Path:
        """bpffs directory holding the pinned maps and links."""
        return BPFFS_ROOT / self.sandbox
