"""Manifests sent by the CLI, parsed and validated with the origin (file, document) of every object."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from velvet.errors import InvalidManifest
from velvet.model import KubeObject
from velvet.model.codec import parse_located


@dataclass(frozen=True)
class Origin:
    """Where an object came from: file path and 1-based document index."""

    path: str
    document: int


def parse_all(documents: Sequence[Mapping[str, str]]) -> tuple[list[KubeObject], list[Origin]]:
    """Every object of every {path, text} document; the first invalid document raises InvalidManifest."""
    objects: list[KubeObject] = []
    origins: list[Origin] = []
    for doc in documents:
        for obj, index in parse_located(doc["text"], doc["path"]):
            objects.append(obj)
            origins.append(Origin(doc["path"], index))
    return objects, origins


def relocate(error: InvalidManifest, origins: Sequence[Origin]) -> InvalidManifest:
    """Re-aim an error the store raised about object N (1-based) at that object's file and document."""
    if 1 <= error.document <= len(origins):
        origin = origins[error.document - 1]
        return InvalidManifest(origin.path, origin.document, error.field, error.reason)
    return error
