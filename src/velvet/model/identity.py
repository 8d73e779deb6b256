"""Security identities: numbers derived from the security-relevant labels of an endpoint."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum


class ReservedIdentity(IntEnum):
    """Identities with fixed numbers, as in Cilium."""

    UNKNOWN = 0
    HOST = 1
    WORLD = 2
    UNMANAGED = 3
    HEALTH = 4
    INIT = 5
    REMOTE_NODE = 6


FIRST_ALLOCATED_IDENTITY = 256


@dataclass(frozen=True, slots=True)
class Identity:
    """An identity number and the label set it stands for (labels carry source prefixes, e.g. k8s:)."""

    id: int
    labels: Mapping[str, str]
