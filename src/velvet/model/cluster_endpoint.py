"""A pod as its node publishes it to the cluster: IP, identity number, node and pod name."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from velvet.errors import VelvetError


class InvalidClusterEndpoint(VelvetError):
    """An endpoint record that does not decode (e.g. written by something else under the prefix)."""


@dataclass(frozen=True, slots=True)
class ClusterEndpoint:
    """One endpoint of the cluster: `ip` has `identity` and lives on `node` as pod `pod` (namespace/name)."""

    ip: str
    identity: int
    node: str
    pod: str

    def __post_init__(self) -> None:
        """Refuse a record whose address is not IPv4 or identity not a number (it feeds the ipcache)."""
        try:
            ipaddress.IPv4Address(self.ip)
        except ValueError as err:
            raise InvalidClusterEndpoint(f"endpoint {self.ip!r}: {err}") from None
        if isinstance(self.identity, bool) or not isinstance(self.identity, int) or \
                not 0 < self.identity < 1 << 32:
            raise InvalidClusterEndpoint(f"endpoint {self.ip}: identity {self.identity!r} is not a number")
        if not self.node:
            raise InvalidClusterEndpoint(f"endpoint {self.ip}: no node")

    def encode(self) -> bytes:
        """The record as stored (JSON)."""
        return json.dumps({"ip": self.ip, "identity": self.identity, "node": self.node, "pod": self.pod},
                          sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes, where: str) -> ClusterEndpoint:
        """Inverse of `encode`; `InvalidClusterEndpoint` naming `where` when it is not an endpoint record."""
        try:
            doc = json.loads(raw)
            return cls(str(doc["ip"]), doc["identity"], str(doc["node"]), str(doc.get("pod", "")))
        except (ValueError, KeyError, TypeError) as err:
            raise InvalidClusterEndpoint(f"{where}: not an endpoint record ({err})") from None
