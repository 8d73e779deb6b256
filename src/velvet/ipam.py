"""The node's one pod IP allocator: leases from the pod CIDR in a JSON file shared between processes (flock).

The sandbox's kubelet leases by pod uid, the agent (the node's IPAM for runtimes calling `velvet-cni`)
by `cni:<container id>/<ifname>`; both go through this file, so their addresses never collide.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from velvet.errors import SandboxError

FIRST_POD_HOST = 10
"""Host number of the first pod address in the pod CIDR (below it: the gateway and room for the node)."""
CNI_LEASE_PREFIX = "cni:"
"""Leases of runtime attachments (`velvet-cni`); the sandbox's kubelet never releases them."""


def ipam_file(sandbox_dir: Path) -> Path:
    """Where a sandbox node keeps its leases (its kubelet and its agent both read it)."""
    return sandbox_dir / "ipam.json"


class PodIpam:
    """Leases `pod uid -> IPv4` in `path`; the same uid always gets its lease back until released."""

    def __init__(self, path: Path, cidr: str, first_host: int, reserved: tuple[str, ...] = ()) -> None:
        """Allocate from host number `first_host` of `cidr` upward, skipping `reserved` addresses."""
        self.path = path
        net = ipaddress.IPv4Network(cidr)
        skip = {ipaddress.IPv4Address(a) for a in reserved}
        self._pool = [a for a in list(net.hosts())[first_host - 1 :] if a not in skip]

    def allocate(self, uid: str) -> str:
        """Return the lease of `uid`, creating it with the lowest free address when it has none."""
        with self._leases() as leases:
            if uid in leases:
                return leases[uid]
            used = set(leases.values())
            for addr in self._pool:
                if str(addr) not in used:
                    leases[uid] = str(addr)
                    return str(addr)
        raise SandboxError(f"pod CIDR exhausted: all {len(self._pool)} addresses in {self.path} are leased")

    def release(self, uid: str) -> None:
        """Drop the lease of `uid` (no-op when it has none)."""
        with self._leases() as leases:
            leases.pop(uid, None)

    def free(self) -> int:
        """How many addresses are not leased."""
        with self._leases() as leases:
            return len(self._pool) - len(set(leases.values()))

    def leases(self) -> dict[str, str]:
        """A copy of every lease."""
        with self._leases() as leases:
            return dict(leases)

    @contextmanager
    def _leases(self) -> Iterator[dict[str, str]]:
        """Lock the lease file, yield its contents, write them back atomically if they changed."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                leases: dict[str, str] = json.loads(self.path.read_text())
            except FileNotFoundError:
                leases = {}
            except ValueError as exc:
                raise SandboxError(f"corrupt IPAM state {self.path}: {exc}") from exc
            before = dict(leases)
            yield leases
            if leases != before:
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(leases, indent=1, sort_keys=True))
                os.replace(tmp, self.path)
