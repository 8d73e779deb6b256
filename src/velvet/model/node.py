"""A cluster node as its agent registers it (name, InternalIP, pod CIDR, API address), and as a v1 Node."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from velvet.errors import VelvetError


class InvalidNode(VelvetError):
    """A node record that does not decode (e.g. written by something else under the nodes' prefix)."""


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """One registered node; `created` is when it registered (RFC 3339, UTC), `api` where its agent's API
    answers (a unix socket path in the sandbox, whose nodes share one filesystem; "" when not advertised)."""

    name: str
    internal_ip: str
    pod_cidr: str
    created: str = ""
    api: str = ""

    def __post_init__(self) -> None:
        """Refuse a record whose address or CIDR is not IPv4 (it would become a route)."""
        try:
            ipaddress.IPv4Address(self.internal_ip)
            ipaddress.IPv4Network(self.pod_cidr)
        except ValueError as err:
            raise InvalidNode(f"node {self.name!r}: {err}") from None
        if not self.name:
            raise InvalidNode("a node needs a name")

    def encode(self) -> bytes:
        """The record as stored (JSON)."""
        return json.dumps({"name": self.name, "internalIP": self.internal_ip, "podCIDR": self.pod_cidr,
                           "created": self.created, "api": self.api}, sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes, where: str) -> NodeRecord:
        """Inverse of `encode`; `InvalidNode` naming `where` when it is not a node record."""
        try:
            doc = json.loads(raw)
            return cls(str(doc["name"]), str(doc["internalIP"]), str(doc["podCIDR"]),
                       str(doc.get("created", "")), str(doc.get("api", "")))
        except (ValueError, KeyError, TypeError) as err:
            raise InvalidNode(f"{where}: not a node record ({err})") from None

    def to_v1(self) -> dict[str, Any]:
        """The v1 Node, in the shape `kubectl get node -o json` prints (Ready: it holds its lease)."""
        return {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.name, "creationTimestamp": self.created,
                             "labels": {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux"}},
                "spec": {"podCIDR": self.pod_cidr, "podCIDRs": [self.pod_cidr]},
                "status": {"addresses": [{"type": "InternalIP", "address": self.internal_ip},
                                         {"type": "Hostname", "address": self.name}],
                           "conditions": [{"type": "Ready", "status": "True", "reason": "VelvetAgentReady",
                                           "message": "the node's agent holds its lease"}]}}
