"""v1 Namespace."""

from __future__ import annotations

from dataclasses import dataclass

from velvet.model.meta import ObjectMeta

NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True, slots=True)
class Namespace:
    """A namespace; its labels always include kubernetes.io/metadata.name=<name>, as the API server sets."""

    metadata: ObjectMeta
    phase: str = "Active"
